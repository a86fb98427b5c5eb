"""The nightly benchmark's memory accounting: which process is which part, and what the sampler adds up."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from argus.bench_nightly import MemorySampler, descendants, process_part

JAVA = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"
JARS = [JAVA, "-cp", "jars/*"]


@pytest.mark.parametrize(
    ("cmdline", "part"),
    [
        ([*JARS, "-Xmx4g", "org.apache.spark.deploy.SparkSubmit", "--master", "local[2]"], "driver_jvm"),
        ([*JARS, "org.apache.spark.launcher.Main", "org.apache.spark.deploy.SparkSubmit"], None),
        ([*JARS, "org.apache.spark.executor.CoarseGrainedExecutorBackend", "--driver-url", "x"], "executor_jvm"),
        ([*JARS, "org.apache.spark.deploy.worker.Worker", "spark://127.0.0.1:7077"], None),
        (["/venv/bin/python3", "/work/jobs/nightly.py", "--lake", "lake", "--date", "2026-10-02"], "driver_python"),
        (["/venv/bin/python", "-m", "pyspark.daemon", "pyspark.worker"], "python_workers"),
        (["/venv/bin/python3", "-m", "pytest", "tests/test_nightly.py"], None),
        ([], None),
    ],
)
def test_each_process_of_a_spark_application_is_named_by_its_command_line(cmdline: list[str], part: str | None) -> None:
    assert process_part(cmdline) == part


# Runs its arguments as its only child: a sampler rooted at it sees nothing else the test process
# started (a broker or a Spark JVM of earlier tests). Named "holder", it is no part of an application.
HOLDER = "import subprocess, sys; sys.exit(subprocess.Popen(sys.argv[2:], executable=sys.argv[1]).wait())"


def _held(argv: list[str]) -> subprocess.Popen[str]:
    """``argv`` (run by this interpreter, ``argv[0]`` as its name) below a holder of its own; prints "ready"."""
    holder = ["holder", "-c", HOLDER, sys.executable, *argv]
    process = subprocess.Popen(holder, executable=sys.executable, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def _end(holder: subprocess.Popen[str]) -> None:
    for pid in descendants(holder.pid):
        os.kill(pid, 9)
    holder.kill()
    holder.wait()


@pytest.fixture
def python_worker_holding_64_mb() -> Iterator[subprocess.Popen[str]]:
    """A holder whose child's command line reads like a PySpark worker and holds 64 MiB resident."""
    code = "import sys, time; block = bytearray(64 * 2**20); print('ready', flush=True); time.sleep(60)"
    holder = _held([sys.executable, "-c", code, "pyspark.daemon"])
    yield holder
    _end(holder)


def test_the_sampler_adds_up_the_rss_of_the_processes_below_it(
    python_worker_holding_64_mb: subprocess.Popen[str],
) -> None:
    assert python_worker_holding_64_mb.pid in descendants(os.getpid())
    sampler = MemorySampler(root=python_worker_holding_64_mb.pid)
    sampler.sample()
    assert sampler.samples == 1
    assert 64 <= sampler.peaks["python_workers"] < 64 + 200  # the block plus an interpreter
    # Local mode: no executor JVM, so the tasks' side is the driver JVM (none here) plus the Python workers.
    assert sampler.peaks["executor"] == sampler.peaks["python_workers"]
    assert sampler.peaks["driver"] == 0 and sampler.peaks["executor_jvm"] == 0


def test_a_child_the_driver_jvm_is_spawning_is_not_counted_as_a_second_jvm() -> None:
    """Until its ``exec`` a child of the JVM shows the JVM's command line and shares its memory: a "driver
    JVM" holding 128 MiB (an interpreter named ``java``) forks a child that never execs; the driver counts once."""
    code = (
        "import os, sys, time\n"
        "block = bytearray(128 * 2**20)\n"
        "if os.fork() == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = _held(["java", "-c", code, "org.apache.spark.deploy.SparkSubmit", "--master", "spark://127.0.0.1:7077"])
    try:
        _driver, child = descendants(holder.pid)
        assert process_part(Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")) == "driver_jvm"
        sampler = MemorySampler(root=holder.pid)
        sampler.sample()
        assert 128 <= sampler.peaks["driver_jvm"] < 128 + 60  # the block plus an interpreter, once (not 2 x 128)
    finally:
        _end(holder)


def test_a_master_spark_does_not_know_is_one_line_before_any_work() -> None:
    from tests.cli_run import one_line_error, run_argus

    result = run_argus("bench", "nightly", "--users", "50", "--master", "mesos://host:5050")
    one_line_error(result, "--master", "'mesos://host:5050'", "standalone")


def test_the_world_is_written_by_a_child_process_the_same_as_here(tmp_path: Path) -> None:
    """The bench plans its world in a child (its memory leaves with it): same files, and the child's peak."""
    import hashlib

    from argus.bench_nightly import generate_apart
    from argus.world.config import WorldConfig
    from argus.world.simulate import World
    from argus.world.sinks import write_world

    cfg = WorldConfig(users=200, days=2, seed=3)
    manifest, peak_mb = generate_apart(cfg, tmp_path / "apart")
    assert manifest == write_world(World(cfg), tmp_path / "here")

    def digest(root: Path) -> dict[str, str]:
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    assert digest(tmp_path / "apart") == digest(tmp_path / "here")
    assert 30 < peak_mb < 2_000  # the child's own peak: an interpreter with numpy and pyarrow and a small world


@pytest.fixture
def jvm_holding_256_mb(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A JVM (a single-file Java program) that keeps a 256 MiB array on its heap."""
    source = tmp_path / "Hold.java"
    source.write_text(
        "public class Hold { public static void main(String[] a) throws Exception {"
        " byte[] block = new byte[256 << 20]; block[7] = 1;"
        ' System.out.println("ready"); System.out.flush(); Thread.sleep(60000); System.out.println(block[7]); } }'
    )
    child = subprocess.Popen([JAVA, "-Xmx512m", str(source)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    yield child
    child.kill()
    child.wait()


def test_the_heap_of_a_jvm_is_read_from_its_perf_data(jvm_holding_256_mb: subprocess.Popen[str]) -> None:
    from argus.bench_nightly import jvm_heap_mb

    heap = jvm_heap_mb(jvm_holding_256_mb.pid)
    assert heap is not None and 256 <= heap < 512  # the array, within -Xmx
    assert jvm_heap_mb(os.getpid()) is None  # not a JVM: no perf-data file


def test_the_sampler_counts_the_cpu_time_of_the_processes_below_it() -> None:
    """CPU seconds, not wall seconds: a child that burnt one CPU second counts one, however busy the machine.

    Sampled from a process of its own, whose only child is the burner (pytest's own children, a broker or
    a Spark JVM started by other tests, would count too)."""
    burner = "import time\nwhile time.process_time() < 1.0: pass\nprint('burnt', flush=True); time.sleep(60)"
    probe = (
        "import subprocess, sys\n"
        "from argus.bench_nightly import MemorySampler\n"
        f"child = subprocess.Popen([sys.executable, '-c', {burner!r}], stdout=subprocess.PIPE, text=True)\n"
        "assert child.stdout.readline().strip() == 'burnt'\n"
        "sampler = MemorySampler()\n"
        "before = sampler.cpu_seconds()\n"
        "sampler.sample()\n"
        "print(before, sampler.cpu_seconds())\n"
        "child.kill()\n"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    before, after = map(float, ran.stdout.split())
    assert before == 0.0
    assert 0.9 <= after < 3.0  # the loop plus an interpreter's start, in clock ticks


def test_settings_for_the_chain_reach_its_spark_submit_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The standalone bench gives the executor its heap as a user would: a ``--conf`` setting of the run
    (``NightlyRun.spark_conf``), not an environment variable that only spark-submit's scripts read."""
    import json
    from datetime import date

    from rich.console import Console

    import argus.nightly
    from argus.bench_nightly import STANDALONE_SETTINGS, run_chain

    commands: list[list[str]] = []

    def submit(run: argus.nightly.NightlyRun, console: Console, emit: object) -> int:
        commands.append(argus.nightly.nightly_command(run, console))
        run.steps.append({"step": "done", "alerts": 0, "application": "app-1"})
        emit(json.dumps(run.steps[-1]))  # type: ignore[operator]
        return 0

    monkeypatch.setattr(argus.nightly, "run_nightly_submit", submit)
    chain = run_chain(
        tmp_path / "lake", date(2026, 10, 1), "spark://127.0.0.1:7077", Console(quiet=True), STANDALONE_SETTINGS
    )
    (cmd,) = commands
    confs = [cmd[i + 1] for i, arg in enumerate(cmd[:-1]) if arg == "--conf"]
    assert "spark.executor.memory=3g" in confs and chain.application == "app-1"


AFFINITY_OF_A_GRANDCHILD = (
    "import subprocess, sys; "
    "subprocess.run([sys.executable, '-c', 'import os; print(sorted(os.sched_getaffinity(0)))'], check=True)"
)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell one from all")
def test_the_chain_held_to_one_cpu_runs_every_process_below_it_on_that_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``run_chain(cpus=...)``: what spark-submit starts (here a child that starts a grandchild, as the JVM
    starts the Python workers) has that CPU alone; the bench's own threads keep theirs."""
    import json
    from datetime import date

    from rich.console import Console

    import argus.nightly
    from argus.bench_nightly import run_chain

    allowed = os.sched_getaffinity(0)
    one = {max(allowed)}
    seen: list[str] = []

    def submit(run: argus.nightly.NightlyRun, console: Console, emit: object) -> int:
        child = subprocess.run([sys.executable, "-c", AFFINITY_OF_A_GRANDCHILD], capture_output=True, text=True)
        seen.append(child.stdout.strip())
        run.steps.append({"step": "done", "alerts": 0, "application": "app-1"})
        emit(json.dumps(run.steps[-1]))  # type: ignore[operator]
        return 0

    monkeypatch.setattr(argus.nightly, "run_nightly_submit", submit)
    run_chain(tmp_path / "lake", date(2026, 10, 1), "local[1]", Console(quiet=True), cpus=one)
    run_chain(tmp_path / "lake", date(2026, 10, 1), "local[2]", Console(quiet=True))
    assert seen == [str(sorted(one)), str(sorted(allowed))]
    assert os.sched_getaffinity(0) == allowed  # this thread's own affinity is back


def test_the_local1_run_is_held_to_one_cpu_of_the_bench_and_says_which(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import argus.bench_nightly as bench
    from argus.bench_nightly import ChainRun, bench_nightly

    runs: list[tuple[str, set[int] | None]] = []

    def generate(cfg: object, lake: Path) -> tuple[dict[str, object], float]:
        lake.mkdir(parents=True)
        return {"events": {}}, 1.0

    def chain(
        lake: Path, day: object, master: str, console: object, spark_conf: object = None, cpus: object = None
    ) -> ChainRun:
        runs.append((master, cpus))  # type: ignore[arg-type]
        return ChainRun(
            10.0, {}, dict.fromkeys(bench.PARTS + bench.HEAPS + ("driver", "executor"), 0), 0, "app", 1.0, {}
        )

    monkeypatch.setattr(bench, "generate_apart", generate)
    monkeypatch.setattr(bench, "run_chain", chain)
    result = bench_nightly(50, 1)
    first = min(os.sched_getaffinity(0))
    assert runs == [("local[2]", None), ("local[1]", {first})]
    assert result["cpus_local1"] == [first] and result["ratio_local1"] == 1.0
