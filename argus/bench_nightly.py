"""``argus bench nightly``: the whole nightly chain on a generated world, timed per step, with its memory.

One world (the realistic profile) is generated into a scratch lake, then ``argus batch nightly``
runs on its last day exactly as a user runs it: one spark-submit, all four detectors fitted and
scored, the date published. Then the same chain again on an untouched copy of the lake at
``local[1]``, so ``seconds_local1 / seconds`` says how much the second core buys. The ``local[1]``
run is held to one CPU (``cpus_local1``, the first this process may use): its spark-submit and every
process below it (the JVM, the Python workers) get that CPU alone as their affinity. Otherwise the
JVM's garbage collector and compiler threads and the Python worker beside the task thread use a
second core (about 1.45 cores were busy), and the ratio would not say whether the chain scales.

What the JSON line holds:

- ``seconds``: the chain's wall time, spark-submit start to exit (JVM start included).
- ``steps``: seconds per step, as ``argus batch nightly`` shows them: the time from the previous
  step's line to this one's. The first step (``quality``) includes the JVM's and the session's start.
  Score steps are named ``score.<detector>``.
- ``cpu_s`` and ``steps_cpu_s``: CPU seconds (user and system) of every process of the chain, in
  all and per step, from the same samples. On a machine shared with other work the wall times
  stretch with the load; the CPU seconds do not, so they are what to compare between runs and
  sizes (a process that ends between two samples loses at most its last half second).
- Memory, from the process tree of the chain sampled every 0.5 s from ``/proc`` (RSS; a peak
  shorter than the interval can be missed): ``driver_peak_rss_mb`` is the driver, its JVM
  (``SparkSubmit``) and its Python process (``jobs/nightly.py``) summed; ``executor_peak_mb`` is
  what runs tasks, the executor JVMs and the Python workers (``pyspark.daemon``) summed. In local
  mode there is no executor JVM: tasks run as threads of the driver's JVM, so both figures count
  that JVM. ``rss_peak_mb`` gives each part's own peak, so the two can be told apart. A child that a
  JVM is starting (Hadoop's shell commands, the driver's Python) shows that JVM's command line and
  memory until it execs, and is not counted again.
- ``jvm_heap_peak_mb``: the peak Java heap in use in the driver's JVM and in the executor JVMs, read
  from their perf-data files (as ``jstat`` does); garbage counts until it is collected, so the
  peak nears what the heap may grow to (``spark.driver.memory``) whenever allocation is brisk.
- ``generate_s`` and ``generate_peak_rss_mb``: writing the world, done in a child process before
  the chain starts (so the world's memory is not held beside the chain), and that child's peak RSS.
- With ``--master standalone`` a master and one worker start on this machine
  (``infra/spark_cluster.py``): the executor gets its own JVM and ``executor_peak_mb`` no longer
  overlaps the driver's figure.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pwd
import re
import resource
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from argus.infra.procfs import ProcessStat, process_stats
from argus.world.config import WorldConfig
from argus.world.simulate import World
from argus.world.sinks import write_world

DETECTORS = ["trolls", "evaders", "fraud", "churn"]
STANDALONE = "standalone"
# The executor's heap takes most of the standalone worker's 4g offer (Spark's own 1g default ran out of
# heap caching a million users' evader blocks); passed as a user passes ``--conf``, over the config file's.
STANDALONE_SETTINGS = {"spark.executor.memory": "3g"}
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20
PARTS = ("driver_jvm", "driver_python", "executor_jvm", "python_workers")
HEAPS = ("driver_jvm_heap", "executor_jvm_heap")
# HotSpot's perf-data file: a header (magic, byte order, ..., entries' offset and count at byte 24),
# then entries whose names include sun.gc.generation.<g>.space.<s>.used, the bytes used per heap space.
HSPERF_MAGIC = bytes.fromhex("cafec0c0")
HSPERF_HEADER = struct.Struct("4sbbbbiiqii")
HSPERF_HEAP_SPACE = re.compile(rb"sun\.gc\.generation\.\d+\.space\.\d+\.used")


class BenchNightlyError(Exception):
    """The chain failed or could not start; the message says where to look."""


def process_part(cmdline: list[str]) -> str | None:
    """Which part of a Spark application a process is, from its command line; None for anything else."""
    text = " ".join(cmdline)
    program = os.path.basename(cmdline[0]) if cmdline else ""
    if program == "java":
        if "org.apache.spark.deploy.SparkSubmit" in text and "org.apache.spark.launcher.Main" not in text:
            return "driver_jvm"
        if "CoarseGrainedExecutorBackend" in text:
            return "executor_jvm"
        return None  # the launcher, a standalone master or worker, another job's JVM
    if program.startswith("python"):
        if "pyspark.daemon" in text or "pyspark.worker" in text:
            return "python_workers"
        if any(arg.endswith(("jobs/nightly.py", "argus.jobs.nightly")) for arg in cmdline):
            return "driver_python"
    return None


def is_spawning_copy(part: str, parent_part: str | None) -> bool:
    """Whether a JVM part's process is a child its JVM is starting (a shell command such as Hadoop's
    ``chmod``, or the driver's Python): until the child's ``exec``, ``/proc`` shows it with the JVM's
    command line and, sharing the JVM's memory (``posix_spawn``'s ``vfork``), the JVM's RSS again. Counting
    it doubled the driver's figure whenever a sample fell in that moment, which a loaded machine stretches."""
    return part.endswith("_jvm") and parent_part == part


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (not ``root`` itself), from ``/proc``."""
    return [process.pid for process in processes_below(root)]


def processes_below(root: int) -> list[ProcessStat]:
    """The ``/proc`` figures of every process below ``root`` (not ``root`` itself), parents before their children."""
    children: dict[int, list[ProcessStat]] = {}
    for process in process_stats():
        children.setdefault(process.parent, []).append(process)
    found, frontier = [], [root]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += [process.pid for process in below]
    return found


def _rss_mb(pid: int) -> tuple[list[str], float] | None:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None  # it ended between the listing and the read
    return [arg.decode(errors="replace") for arg in cmdline if arg], resident * PAGE_MB


def jvm_heap_mb(pid: int) -> float | None:
    """The Java heap in use (all generations, live objects and garbage not yet collected) of HotSpot
    JVM ``pid``, from the perf-data file it keeps in ``/tmp/hsperfdata_<user>/`` (what ``jstat -gc``
    reads); None when it keeps none (``-XX:-UsePerfData``) or is gone."""
    try:
        owner = pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name
        data = (Path(tempfile.gettempdir()) / f"hsperfdata_{owner}" / str(pid)).read_bytes()
    except (OSError, KeyError):
        return None
    if len(data) < HSPERF_HEADER.size or data[:4] != HSPERF_MAGIC:
        return None
    order = "<" if data[4] == 1 else ">"
    entry_at, entries = struct.unpack_from(order + "ii", data, 24)
    used = 0
    try:
        for _ in range(entries):
            length, name_at, vector_length, kind, data_at = struct.unpack_from(order + "iiic3xi", data, entry_at)
            name = data[entry_at + name_at : data.index(b"\0", entry_at + name_at)]
            if vector_length == 0 and kind == b"J" and HSPERF_HEAP_SPACE.fullmatch(name):
                used += struct.unpack_from(order + "q", data, entry_at + data_at)[0]
            entry_at += length
    except (struct.error, ValueError):
        return None  # a file the JVM was still writing
    return used / 2**20


@dataclass
class MemorySampler:
    """Peaks of the RSS of each part of the Spark application below this process, and of its JVMs'
    heaps (``driver_jvm_heap``, ``executor_jvm_heap``), sampled in a thread; and the CPU time of every
    process below it (``cpu_seconds``), which a busy machine does not inflate as it does wall time."""

    interval_s: float = 0.5
    root: int = field(default_factory=os.getpid)  # the processes below it are sampled
    peaks: dict[str, float] = field(default_factory=lambda: dict.fromkeys((*PARTS, *HEAPS, "driver", "executor"), 0.0))
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _cpu_s: dict[tuple[int, int], float] = field(default_factory=dict)  # (pid, start) -> its latest CPU time
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cpu_seconds(self) -> float:
        """CPU seconds of the processes below, as of the last sample (a process ending between two
        samples loses at most its last ``interval_s`` of CPU)."""
        with self._lock:
            return sum(self._cpu_s.values())

    def sample(self) -> None:
        now = dict.fromkeys((*PARTS, *HEAPS), 0.0)
        below = processes_below(self.root)
        with self._lock:
            self._cpu_s.update({(process.pid, process.started): process.cpu_s for process in below})
        parts: dict[int, str | None] = {}
        for process in below:  # parents before their children
            seen = _rss_mb(process.pid)
            part = parts[process.pid] = process_part(seen[0]) if seen else None
            if seen is None or part is None or is_spawning_copy(part, parts.get(process.parent)):
                continue
            now[part] += seen[1]
            if part.endswith("_jvm"):
                now[f"{part}_heap"] += jvm_heap_mb(process.pid) or 0.0
        now["driver"] = now["driver_jvm"] + now["driver_python"]
        # Local mode: the tasks run inside the driver's JVM, so it counts for the executor too.
        tasks_jvm = now["executor_jvm"] or now["driver_jvm"]
        now["executor"] = tasks_jvm + now["python_workers"]
        for key, value in now.items():
            self.peaks[key] = max(self.peaks[key], value)
        self.samples += 1

    @contextmanager
    def running(self) -> Iterator[MemorySampler]:
        thread = threading.Thread(target=self._loop, name="argus-bench-rss", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)


@dataclass
class ChainRun:
    """One run of the nightly chain: its wall and CPU time, the seconds of each step and its memory peaks."""

    seconds: float
    steps: dict[str, float]
    memory: dict[str, int]
    alerts: int
    application: str
    cpu_s: float
    steps_cpu_s: dict[str, float]


@contextmanager
def processes_started_on(cpus: set[int]) -> Iterator[None]:
    """Processes this thread starts meanwhile, and so every process below them, run on ``cpus`` only.

    Linux keeps an affinity per thread and a new process inherits its starting thread's, so this
    process's other threads (the memory sampler) keep theirs; the thread's own comes back after.
    """
    saved = os.sched_getaffinity(0)  # 0: the calling thread
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def run_chain(
    lake: Path,
    day: Any,
    master: str,
    console: Console,
    spark_conf: dict[str, str] | None = None,
    cpus: set[int] | None = None,
) -> ChainRun:
    """``argus batch nightly --date DAY --skip-ingest --master MASTER [--conf K=V ...]`` on ``lake``, measured;
    with ``cpus``, its processes held to those CPUs (``processes_started_on``)."""
    from argus.nightly import NightlyError, NightlyRun, run_nightly_submit

    run = NightlyRun(lake, [day], list(DETECTORS), master, spark_conf=dict(spark_conf or {}))
    arrivals: list[tuple[str, float, float]] = []
    sampler = MemorySampler()

    def record(line: str) -> None:
        step = json.loads(line)
        name = f"score.{step['detector']}" if step["step"] == "score" else step["step"]
        arrivals.append((name, time.monotonic(), sampler.cpu_seconds()))

    started = time.monotonic()
    pinned = processes_started_on(cpus) if cpus else nullcontext()
    with sampler.running(), pinned:
        try:
            code = run_nightly_submit(run, console, emit=record)
        except NightlyError as exc:
            raise BenchNightlyError(f"the nightly chain failed at {master}: {exc}") from exc
    seconds = time.monotonic() - started
    if code != 0:
        raise BenchNightlyError(f"the nightly chain stopped at {master}: the quality gate failed (log: {run.log})")
    sampler.sample()  # the CPU of the processes still there at the end
    steps, steps_cpu, last, last_cpu = {}, {}, started, 0.0
    for name, when, cpu in arrivals:
        if name != "done":
            steps[name] = round(when - last, 1)
            steps_cpu[name] = round(cpu - last_cpu, 1)
        last, last_cpu = when, cpu
    done = run.steps[-1]
    memory = {key: round(value) for key, value in sampler.peaks.items()}
    return ChainRun(
        round(seconds, 1),
        steps,
        memory,
        int(done.get("alerts", 0)),
        str(done.get("application")),
        round(sampler.cpu_seconds(), 1),
        steps_cpu,
    )


def bench_nightly(
    users: int,
    days: int,
    *,
    master: str = "local[2]",
    local1: bool = True,
    seed: int = 7,
    console: Console | None = None,
) -> dict[str, Any]:
    """Generate a realistic world, run the chain on its last day at ``master`` (and at local[1]); one dict."""
    from argus.infra.spark_cluster import StandaloneCluster

    console = console or Console(stderr=True, quiet=True)
    load_before = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="argus-bench-nightly-"))
    lake, lake_local1 = scratch / "lake", scratch / "lake-local1"
    cfg = WorldConfig(users=users, days=days, seed=seed)
    day = cfg.start + timedelta(days=days - 1)
    started = time.monotonic()
    with console.status(f"generating {users:,} users x {days} days (realistic)..."):
        manifest, generate_rss_mb = generate_apart(cfg, lake)
    generate_s = time.monotonic() - started
    if local1:
        shutil.copytree(lake, lake_local1)
    result: dict[str, Any] = {
        "users": users,
        "days": days,
        "date": day.isoformat(),
        "events": sum(sum(per_day.values()) for per_day in manifest["events"].values()),
        "master": master,
        "cpus": os.cpu_count(),
        "load_avg_before": round(load_before, 2),
        "generate_s": round(generate_s, 1),
        "generate_peak_rss_mb": round(generate_rss_mb),
    }
    try:
        if master == STANDALONE:
            cores = os.cpu_count() or 2
            with (
                StandaloneCluster(scratch / "spark-cluster", cores=cores, memory="4g") as cluster,
                _environment(SPARK_LOCAL_IP=cluster.host),  # the driver binds where the executors look for it
            ):
                chain = run_chain(lake, day, cluster.master_url, console, STANDALONE_SETTINGS)
        else:
            chain = run_chain(lake, day, master, console)
        result.update(
            seconds=chain.seconds,
            steps=chain.steps,
            cpu_s=chain.cpu_s,
            steps_cpu_s=chain.steps_cpu_s,
            driver_peak_rss_mb=chain.memory["driver"],
            executor_peak_mb=chain.memory["executor"],
            rss_peak_mb={part: chain.memory[part] for part in PARTS},
            jvm_heap_peak_mb={part.removesuffix("_jvm_heap"): chain.memory[part] for part in HEAPS},
            alerts=chain.alerts,
            application=chain.application,
        )
        if local1:
            one_cpu = {min(os.sched_getaffinity(0))}
            single = run_chain(lake_local1, day, "local[1]", console, cpus=one_cpu)
            result.update(
                cpus_local1=sorted(one_cpu),
                seconds_local1=single.seconds,
                steps_local1=single.steps,
                cpu_s_local1=single.cpu_s,
                ratio_local1=round(single.seconds / chain.seconds, 2),
            )
    except BaseException:
        console.print(f"the scratch lakes and their logs are kept in {scratch}", highlight=False)
        raise
    result["load_avg_after"] = round(os.getloadavg()[0], 2)
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def generate_apart(cfg: WorldConfig, lake: Path) -> tuple[dict[str, Any], float]:
    """Write the world of ``cfg`` to ``lake`` from a child process; (its manifest, the child's peak RSS in MB).

    A world's population (every account's habits and fingerprints) grows with its users; planned in
    a child, that memory is returned when the child ends instead of staying in this process beside
    the chain it measures.
    """
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of this one's memory
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as child:
        return child.submit(_write_world, cfg, lake).result()


def _write_world(cfg: WorldConfig, lake: Path) -> tuple[dict[str, Any], float]:
    manifest = write_world(World(cfg), lake)
    return manifest, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
