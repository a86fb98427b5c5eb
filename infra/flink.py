"""A Beam Flink job server on this machine, with Flink embedded, and a Python environment that matches it.

Beam's portable runners need the job server and the submitting SDK at one Beam version. Argus pins
apache-beam 2.77, but the newest Beam release whose Flink runner *and* job service are on the Maven
mirror these machines reach is 2.62.0 (``infra/flink/pom.xml``; 2.70.0 has the runner without the job
service, and no version has the shaded ``*-job-server`` jar). So the Flink path is rehearsed with:

- the job server's classpath fetched once from the pom (``mvn dependency:copy-dependencies``) into
  ``$ARGUS_HOME/cache/flink-jobserver-<pom hash>/libs``, its main class
  ``org.apache.beam.runners.flink.FlinkJobServerDriver`` started with ``--flink-master=[local]`` (a Flink
  MiniCluster inside the job server's JVM);
- a virtual environment at ``$ARGUS_HOME/cache/beam-<version>-venv`` with apache-beam at the pom's
  version, Argus's other dependencies, and this checkout installed editable (``--no-deps``), so its
  ``argus stream run`` submits the same pipeline code with the SDK the job server speaks.

The pipeline then runs with ``--runner=PortableRunner --job_endpoint=localhost:PORT --environment_type=LOOPBACK``
(the SDK harness in the submitting process). What was verified is in ``infra/README.md``.

**Flink checkpointing** needs the Beam options of ``checkpointed_run_args`` (``argus stream run --runner
flink`` adds them): without ``--finish_bundle_before_checkpointing`` the runner finishes a bundle caught
by a checkpoint inside the snapshot, holds that bundle's outputs back until the operator's next bundle
or watermark, and meanwhile lets the watermark pass them; a stage that gets no further input never
releases them, and the Kafka source stalls (infra/README.md, Flink).

``python -m argus.infra.flink fetch`` builds both (``make flink-jobserver``); ``python -m argus.infra.flink
serve`` runs the job server in the foreground.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import requires
from pathlib import Path
from types import TracebackType

from argus.infra import maven
from argus.infra.maven import argus_home

FLINK_DIR = Path(__file__).parent / "flink"
POM = FLINK_DIR / "pom.xml"
DRIVER = "org.apache.beam.runners.flink.FlinkJobServerDriver"
DEFAULT_JOB_PORT = 8099
# Installed at the job server's version instead of the project's pins, or not needed to submit a pipeline.
NOT_IN_ENV = {"apache-beam", "pyspark", "great-expectations", "plotly", "pyarrow"}
__all__ = [
    "DEFAULT_JOB_PORT",
    "FlinkError",
    "FlinkJobServer",
    "beam_version",
    "build_python_env",
    "checkpointed_run_args",
    "fetch_job_server",
    "job_server_libs",
    "python_env",
]


class FlinkError(RuntimeError):
    """The job server or its Python environment could not be built or started; the message says why."""


def beam_version() -> str:
    """The Beam version of the job server (``beam.version`` in ``infra/flink/pom.xml``)."""
    found = re.search(r"<beam\.version>([^<]+)</beam\.version>", POM.read_text())
    if found is None:
        raise FlinkError(f"{POM} names no <beam.version>")
    return found.group(1).strip()


def checkpointed_run_args(checkpoint_interval_s: float, bounded: bool) -> list[str]:
    """The Flink runner's checkpoint options for the streaming pipeline (Beam's ``FlinkPipelineOptions``).

    - ``--checkpointing_interval``: Flink's checkpoints every ``checkpoint_interval_s``.
    - ``--finish_bundle_before_checkpointing``: finish the open bundle before the checkpoint barrier
      (``prepareSnapshotPreBarrier``). By default the runner finishes it inside the snapshot, after the
      barrier went downstream, so it keeps that bundle's outputs in operator state until the operator
      starts another bundle or takes another watermark, while the same bundle's end already advanced
      the watermark past them. After an Impulse (whose one element is all that stage ever gets) or a
      source's last read, neither happens: the element that starts the Kafka source, or the last
      records it read, stay there and the job never finishes (apache/beam#12345 lets a later watermark
      release them; here none comes). The cost: a checkpoint waits for the source's current read to
      return (``ReadKafka``'s ``bundle_s``, at most ``poll_budget_s``).
    - ``--shutdown_sources_after_idle_ms=0`` for a bounded run: with checkpointing on the runner keeps
      its Impulse sources up forever so that checkpoints go on, and a bounded job would never end. With
      it the sources end at once and the runner drains the rest (as with checkpointing off).
    """
    args = [f"--checkpointing_interval={int(checkpoint_interval_s * 1000)}", "--finish_bundle_before_checkpointing"]
    if bounded:
        args.append("--shutdown_sources_after_idle_ms=0")
    return args


def job_server_libs() -> Path:
    """Where the job server's jars are cached (they may not be fetched yet)."""
    return maven.jar_dir(POM, "flink-jobserver")


def fetch_job_server() -> Path:
    """Fetch the job server's jars once; return their folder."""
    try:
        return maven.fetch_jars(POM, "flink-jobserver")
    except maven.MavenError as exc:
        raise FlinkError(str(exc)) from exc


def python_env() -> Path:
    """The virtual environment whose apache-beam matches the job server (it may not be built yet)."""
    return argus_home() / "cache" / f"beam-{beam_version()}-venv"


def _env_requirements() -> list[str]:
    """Argus's runtime requirements, less what the environment takes at the job server's version."""
    wanted = []
    for requirement in requires("argus-behaviour") or []:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()
        if name not in NOT_IN_ENV:
            wanted.append(requirement.split(";")[0].strip())
    return wanted


def _pip(env: Path, *args: str) -> None:
    result = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "-q", *args], capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-10:])
        raise FlinkError(f"pip install {' '.join(args)[:200]} failed:\n{tail}")


def build_python_env(checkout: Path | None = None) -> Path:
    """Build the matching environment once (a few minutes); return it. Idempotent.

    Two installs: Argus's requirements first, then apache-beam at the job server's version, which
    moves the packages it pins (cloudpickle 2.2, pyarrow < 17, numpy < 2.3) to versions it accepts;
    pip then reports joblib's wish for cloudpickle 3, which the pipeline does not use. Last, the
    checkout itself, editable and without dependencies.
    """
    env = python_env()
    marker = env / ".argus-complete"
    if marker.exists():
        return env
    checkout = checkout or Path(__file__).resolve().parents[1]
    if not (checkout / "pyproject.toml").is_file():
        raise FlinkError(f"{checkout} is not an Argus checkout; the Flink environment installs Argus from one")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
    _pip(env, "install", "--upgrade", "pip")
    _pip(env, "install", *_env_requirements())
    _pip(env, "install", f"apache-beam=={beam_version()}")
    _pip(env, "install", "--no-deps", "-e", str(checkout))
    marker.touch()
    return env


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


class FlinkJobServer:
    """The job server with an embedded Flink (``--flink-master=[local]``), in its own process session.

    Use as a context manager, or ``start()`` and ``stop()``. Jobs go to ``endpoint``; its log is ``log``.
    """

    def __init__(self, port: int = DEFAULT_JOB_PORT, heap: str = "1g", log: Path | None = None) -> None:
        self.port, self.heap = port, heap
        self.log = log or argus_home() / "flink" / "jobserver.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"localhost:{self.port}"

    def command(self, libs: Path) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap}",
            "-cp",
            f"{libs}/*",
            DRIVER,
            "--flink-master=[local]",
            f"--job-port={self.port}",
            "--artifact-port=0",
            "--expansion-port=-1",  # no cross-language transforms in Argus's pipelines
            f"--artifacts-dir={self.log.parent / 'artifacts'}",
        ]

    def start(self, timeout_s: float = 120.0) -> FlinkJobServer:
        libs = job_server_libs()
        if not (libs / ".complete").exists():
            raise FlinkError("the Flink job server is not built; run `make flink-jobserver` first")
        if _answers(self.port):
            raise FlinkError(f"port {self.port} is taken; choose another job port")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self._process = subprocess.Popen(
                self.command(libs), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while not _answers(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-10:])
                raise FlinkError(f"the Flink job server did not start (log {self.log}):\n{tail}")
            time.sleep(0.5)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def wait(self) -> int | None:
        """Block until the job server exits (its exit code; None if it was not started)."""
        return self._process.wait() if self._process is not None else None

    def __enter__(self) -> FlinkJobServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m argus.infra.flink", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="fetch the job server's jars and build the matching Python environment")
    serve = commands.add_parser("serve", help="run the job server (embedded Flink) until interrupted")
    serve.add_argument("--port", type=int, default=DEFAULT_JOB_PORT, help="job service port (default 8099)")
    serve.add_argument("--heap", default="1g", help="the JVM's -Xmx (default 1g)")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(f"job server jars (Beam {beam_version()}): {fetch_job_server()}")
            print(f"Python environment: {build_python_env()}")
            return 0
        # SIGTERM (a service manager, or `kill`) stops the job server too, as Ctrl+C does.
        signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
        with FlinkJobServer(args.port, args.heap) as server:
            print(f"Flink job server at {server.endpoint} (log {server.log}); Ctrl+C stops it")
            print(
                f"submit with: {python_env()}/bin/argus stream run --runner flink ... -- --runner=PortableRunner "
                f"--job_endpoint={server.endpoint} --environment_type=LOOPBACK"
            )
            code = server.wait()
            print(f"the job server exited ({code}); see {server.log}", file=sys.stderr)
            return 1
    except FlinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
