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
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra import maven

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

POM = Path(__file__).parent / "spark" / "pom.xml"
DEFAULT_MASTER = "local[2]"
DEFAULTS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "4g",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


def connector_jars() -> list[Path]:
    """spark-sql-kafka and its dependencies (not those pyspark ships), fetched once."""
    return sorted(maven.fetch_jars(POM, "spark-kafka").glob("*.jar"))


def spark_settings(extra: dict[str, str] | None = None) -> dict[str, str]:
    from infra.clients import load_config

    configured = {k: str(v) for k, v in load_config().get("spark", {}).items()}
    return {**DEFAULTS, **configured, **(extra or {})}


def local_session(app_name: str = "argus", master: str = DEFAULT_MASTER, **extra: str) -> SparkSession:
    """A SparkSession with the Kafka connector on its classpath."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name).master(master)
    builder = builder.config("spark.jars", ",".join(str(p) for p in connector_jars()))
    for key, value in spark_settings(extra).items():
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


def submit_command(job: str, args: list[str], master: str = DEFAULT_MASTER, py_files: Path | None = None) -> list[str]:
    """The spark-submit command line that runs ``jobs/<job>.py`` with ``args``."""
    import pyspark

    spark_submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    cmd = [str(spark_submit), "--master", master, "--name", f"argus-{job}"]
    cmd += ["--jars", ",".join(str(p) for p in connector_jars())]
    for key, value in spark_settings().items():
        cmd += ["--conf", f"{key}={value}"]
    if py_files is not None:
        cmd += ["--py-files", str(py_files)]
    entry = Path(__file__).resolve().parent.parent / "jobs" / f"{job}.py"
    return [*cmd, str(entry), *args]


def py_files_archive() -> Path:
    """A zip of Argus's packages for ``--py-files`` (cluster executors import the jobs' code from it)."""
    import hashlib
    import zipfile

    root = Path(__file__).resolve().parent.parent
    sources = sorted(
        p for package in ("schemas", "jobs", "infra", "detectors", "world") for p in (root / package).rglob("*.py")
    )
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    archive = maven.argus_home() / "cache" / f"argus-jobs-{digest}.zip"
    if not archive.exists():
        archive.parent.mkdir(parents=True, exist_ok=True)
        staging = archive.with_suffix(".partial")
        with zipfile.ZipFile(staging, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sources:
                zf.write(path, path.relative_to(root))
        staging.rename(archive)
    return archive


def environment_for_submit() -> dict[str, Any]:
    env = dict(os.environ)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return env
