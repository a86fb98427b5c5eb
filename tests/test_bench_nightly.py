"""The nightly benchmark's memory accounting: which process is which part, and what the sampler adds up."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

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


@pytest.fixture
def python_worker_holding_64_mb() -> Iterator[subprocess.Popen[str]]:
    """A child whose command line reads like a PySpark worker and that holds 64 MiB resident."""
    code = "import sys, time; block = bytearray(64 * 2**20); print('ready', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code, "pyspark.daemon"], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    yield child
    child.kill()
    child.wait()


def test_the_sampler_adds_up_the_rss_of_the_processes_below_it(
    python_worker_holding_64_mb: subprocess.Popen[str],
) -> None:
    import os

    assert python_worker_holding_64_mb.pid in descendants(os.getpid())
    sampler = MemorySampler()
    sampler.sample()
    assert sampler.samples == 1
    assert 64 <= sampler.peaks["python_workers"] < 64 + 200  # the block plus an interpreter
    # Local mode: no executor JVM, so the tasks' side is the driver JVM (none here) plus the Python workers.
    assert sampler.peaks["executor"] == sampler.peaks["python_workers"]
    assert sampler.peaks["driver"] == 0 and sampler.peaks["executor_jvm"] == 0


def test_a_master_spark_does_not_know_is_one_line_before_any_work() -> None:
    from tests.cli_run import one_line_error, run_argus

    result = run_argus("bench", "nightly", "--users", "50", "--master", "mesos://host:5050")
    one_line_error(result, "--master", "'mesos://host:5050'", "standalone")
