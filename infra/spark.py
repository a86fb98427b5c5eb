"""Spark for the batch jobs: the Kafka connector's jars, a local session, and spark-submit commands.

Local mode (``local[2]``) by default; ``--master`` and a ``[spark]`` table in ``argus.toml``
(any ``spark.*`` settings) run the same jobs on a cluster.

The JVM's own output (log4j warnings, the JDK's and native BLAS notices) goes to
``$ARGUS_HOME/logs/spark.log``, never to the terminal: the JVM inherits the process's stdout and
stderr when it starts, so they point at the log file for that moment only.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from argus.infra import maven

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

POM = Path(__file__).parent / "spark" / "pom.xml"
DEFAULT_MASTER = "local[2]"
# argus's subpackages: their folders sit beside argus/ in a checkout and inside it in a wheel.
SUBPACKAGES = ("detectors", "jobs", "schemas", "infra", "world", "pipelines")
DEFAULTS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # The lake's tables are Delta tables (argus.jobs.lake): Delta's SQL (RESTORE, DESCRIBE HISTORY) and catalog.
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    # Tasks that rebuild a Delta table's state from its log (Delta's default, 50, suits huge logs, not ours).
    "spark.databricks.delta.snapshotPartitions": "8",
}


def connector_jars() -> list[Path]:
    """spark-sql-kafka and Delta Lake with their dependencies (not those pyspark ships), fetched once."""
    return sorted(maven.fetch_jars(POM, "spark-kafka").glob("*.jar"))


# In local mode the driver's JVM also runs every task, so it gets a large heap and the throughput
# collector: G1's concurrent marking and refinement threads compete with the tasks for the cores (the
# million-user nightly chain at local[2]: 432 s with G1, 323 s with ParallelGC, same outputs;
# infra/spark/README.md). A user's own collector goes in spark.driver.defaultJavaOptions, which
# replaces this one (the JVM refuses two collectors).
LOCAL_DRIVER_SETTINGS = {"spark.driver.memory": "4g", "spark.driver.defaultJavaOptions": "-XX:+UseParallelGC"}
# On a cluster the driver only plans jobs, broadcasts models and brings back counts and the bounded fit
# samples (a partition at a time), so its memory stays flat with the users; what bounds the JVM's footprint
# beside the heap is set here (infra/spark/README.md, "Driver memory", has the measurements):
CLUSTER_DRIVER_SETTINGS = {
    "spark.driver.memory": "1g",  # -Xmx: Spark's default, said out loud
    # Prepended to any spark.driver.extraJavaOptions, so a user's own JVM options add to these (and a
    # repeated flag there wins: the JVM takes the last one).
    "spark.driver.defaultJavaOptions": " ".join(
        (
            "-XX:+UseG1GC",
            "-Xms128m",  # commit the heap as it is needed, not a 64th of the machine's memory up front
            # Shrink the committed heap after each concurrent cycle and, when the driver idles while the
            # executors work, after a periodic collection: committed but unused heap is resident memory.
            "-XX:MinHeapFreeRatio=10",
            "-XX:MaxHeapFreeRatio=30",
            "-XX:G1PeriodicGCInterval=30000",
            # G1 grows the heap while collections take over 1/13 of the time (GCTimeRatio=12), as they seem to
            # on a busy host; a driver that mostly waits can spend 1/5 on them and stay small.
            "-XX:GCTimeRatio=4",
            "-XX:MaxDirectMemorySize=256m",  # Netty's buffers for fetched task results; default: as large as -Xmx
            "-XX:ReservedCodeCacheSize=128m",  # default 240m; the driver compiles far less than an executor
        )
    ),
    # Results brought back at once (a collect) larger than this fail with a clear error instead of
    # filling the heap; the fit samples arrive a block at a time, far below it.
    "spark.driver.maxResultSize": "512m",
}
# The driver's environment on a cluster: glibc makes up to 8 malloc arenas per core for a process's
# threads, each holding freed memory; two serve a driver's few busy threads (the JVM's and Python's).
CLUSTER_DRIVER_ENVIRONMENT = {"MALLOC_ARENA_MAX": "2"}


def spark_settings(extra: dict[str, str] | None = None, master: str = DEFAULT_MASTER) -> dict[str, str]:
    """Spark settings for ``master``: ours, then the config file's ``[spark]`` table, then ``extra``."""
    from argus.infra.clients import load_config

    configured = {k: str(v) for k, v in load_config().get("spark", {}).items()}
    ours = dict(DEFAULTS)
    if is_local(master):
        ours.update(LOCAL_DRIVER_SETTINGS)
    else:
        ours.update(CLUSTER_DRIVER_SETTINGS)
    return {**ours, **configured, **(extra or {})}


def is_local(master: str) -> bool:
    """Whether ``master`` runs the tasks in the driver's own JVM (``local``, ``local[N]``, ``local[N,F]``)."""
    return master.startswith("local")


def local_session(app_name: str = "argus", master: str = DEFAULT_MASTER, **extra: str) -> SparkSession:
    """A SparkSession with the Kafka connector on its classpath."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name).master(master)
    builder = builder.config("spark.jars", ",".join(str(p) for p in connector_jars()))
    for key, value in spark_settings(extra, master).items():
        builder = builder.config(key, value)
    with jvm_output_to(spark_log()):
        return builder.getOrCreate()


def spark_log() -> Path:
    """Where the local JVM's own output goes."""
    return maven.argus_home() / "logs" / "spark.log"


@contextlib.contextmanager
def jvm_output_to(log: Path) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``log`` while a JVM is started here (it inherits them)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with log.open("ab") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def parse_spark_conf(pairs: list[str]) -> dict[str, str]:
    """``--conf KEY=VALUE`` arguments as settings; a malformed one is a ValueError saying what to give."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().startswith("spark."):
            raise ValueError(f"--conf {pair!r}: give KEY=VALUE with a spark.* key, e.g. spark.executor.memory=4g")
        settings[key.strip()] = value.strip()
    return settings


def submit_command(
    job: str,
    args: list[str],
    master: str = DEFAULT_MASTER,
    py_files: Path | None = None,
    extra: dict[str, str] | None = None,
) -> list[str]:
    """The spark-submit command line that runs ``jobs/<job>.py`` with ``args``; ``extra`` settings win
    over the config file's and ours (``spark_settings``)."""
    import pyspark

    spark_submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    cmd = [str(spark_submit), "--master", master, "--name", f"argus-{job}"]
    cmd += ["--jars", ",".join(str(p) for p in connector_jars())]
    for key, value in spark_settings(extra, master).items():
        cmd += ["--conf", f"{key}={value}"]
    if py_files is not None:
        cmd += ["--py-files", str(py_files)]
    entry = Path(import_module("argus.jobs").__file__ or "").parent / f"{job}.py"
    return [*cmd, str(entry), *args]


def py_files_archive() -> Path:
    """Argus for ``--py-files``: what executors import ``argus.jobs``, ``argus.detectors``, ... from.

    ``ARGUS_WHEEL`` names a built wheel (``make dist``) to ship as it is; otherwise this installation's
    ``argus`` package is packed with the wheel's layout (``argus/detectors/...``), so the executors run the
    driver's code whether Argus is installed from a wheel or editable from a checkout. Spark puts only
    ``.zip``, ``.egg`` and ``.jar`` files of ``--py-files`` on the executors' ``sys.path``, so the archive
    is always a ``.zip``: a pure-Python wheel is a zip that Python imports from as it is.
    """
    import hashlib

    cache = maven.argus_home() / "cache"
    wheel = os.environ.get("ARGUS_WHEEL")
    if wheel:
        source = Path(wheel).expanduser()
        if source.suffix != ".whl" or not source.is_file():
            from argus.infra.clients import ConfigError

            raise ConfigError(f"ARGUS_WHEEL={wheel} is not a wheel file; build one with `make dist` (dist/*.whl)")
        data = source.read_bytes()
        archive = cache / f"{source.stem}-{hashlib.sha256(data).hexdigest()[:12]}.zip"
        if not archive.exists():
            _write_atomically(archive, lambda staging: staging.write_bytes(data))
        return archive
    files = package_modules()
    digest = hashlib.sha256()
    for name, path in files.items():
        digest.update(name.encode() + b"\0" + path.read_bytes())
    archive = cache / f"argus-{_version()}-{digest.hexdigest()[:12]}.zip"
    if not archive.exists():
        _write_atomically(archive, lambda staging: _zip(staging, files))
    return archive


def package_modules() -> dict[str, Path]:
    """Every module of the installed ``argus`` package by its path in a wheel (``argus/jobs/score.py``)."""
    names = ["argus", *(f"argus.{name}" for name in SUBPACKAGES)]
    files: dict[str, Path] = {}
    for name in names:
        spec = find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"{name} is not importable: reinstall Argus (pip install -e . or the wheel)")
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*.py")):
            relative = path.relative_to(root)
            inside = [root.joinpath(*relative.parts[:i]) for i in range(len(relative.parts))]
            if "__pycache__" in relative.parts or not all((d / "__init__.py").is_file() for d in inside):
                continue
            files.setdefault("/".join((*name.split("."), *relative.parts)), path)
    return dict(sorted(files.items()))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("argus-behaviour")
    except PackageNotFoundError:
        return "0+unknown"


def _zip(target: Path, files: dict[str, Path]) -> None:
    import zipfile

    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, path in files.items():
            zf.write(path, name)


def _write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_suffix(f".{os.getpid()}.partial")
    write(staging)
    staging.replace(target)


def environment_for_submit(master: str = DEFAULT_MASTER) -> dict[str, Any]:
    """spark-submit's environment, which a client-mode driver (its JVM and its Python) inherits: this
    process's, with ``CLUSTER_DRIVER_ENVIRONMENT`` for a cluster master where the user has not set it."""
    env = dict(os.environ)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if not is_local(master):
        for key, value in CLUSTER_DRIVER_ENVIRONMENT.items():
            env.setdefault(key, value)
    return env
