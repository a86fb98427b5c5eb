"""A Spark standalone cluster on this machine: one master and its workers, from pyspark's own jars.

pyspark ships ``bin/spark-class`` and every jar a standalone master and worker need, but not the
``sbin/start-*.sh`` scripts; this module starts the daemons with ``spark-class`` directly, bound to
127.0.0.1 on free ports, each in its own process group. Stopping sends SIGTERM to each group, then
SIGKILL to whatever is left, so the executors a worker launched (and their Python workers) go too.

It exists to rehearse what a cluster changes before a real one is at hand: executors in their own
JVMs, the job's code shipped with ``--py-files``, nothing shared with the driver's memory. Used by
``tests/test_spark_cluster.py`` and ``argus bench nightly --master standalone``::

    with StandaloneCluster(Path("/tmp/spark-cluster"), cores=2, memory="2g") as cluster:
        subprocess.run(["argus", "batch", "nightly", "--date", "2026-10-02", "--master", cluster.master_url])

Production clusters (YARN, Kubernetes, a standalone cluster run by its own scripts) are started by
their operators; ``infra/README.md`` shows how to submit to them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from argus.infra.broker import free_port
from argus.infra.procfs import process_stats

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


class ClusterError(RuntimeError):
    """The master or a worker did not come up; the message names the log to read."""


def spark_class() -> Path:
    """pyspark's ``bin/spark-class``, the launcher of any Spark JVM class with pyspark's jars."""
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


@dataclass
class StandaloneCluster:
    """A master and ``workers`` workers; each worker offers ``cores`` cores and ``memory`` to executors.

    ``home`` holds the daemons' logs (``master.log``, ``worker-N.log``) and the workers' folders,
    where each executor's stdout and stderr land (``work-N/<app id>/<executor id>/``).
    """

    home: Path
    workers: int = 1
    cores: int = 2
    memory: str = "2g"
    daemon_memory: str = "256m"  # the master's and workers' own heap; executors get ``memory``
    host: str = "127.0.0.1"
    master_port: int = 0
    ui_port: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def master_url(self) -> str:
        return f"spark://{self.host}:{self.master_port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.ui_port}"

    def start(self, timeout_s: float = 180.0) -> StandaloneCluster:
        """Start the master, then the workers; return once every worker has registered."""
        if self.processes:
            raise ClusterError("this cluster is already started")
        self.home.mkdir(parents=True, exist_ok=True)
        self.master_port = self.master_port or free_port(span=1)
        self.ui_port = self.ui_port or free_port(span=1)
        atexit.register(self.stop)  # a crashed caller still takes its daemons down with it
        try:
            self._launch(
                "master.log",
                [MASTER_CLASS, "--host", self.host, "--port", str(self.master_port), "--webui-port", str(self.ui_port)],
            )
            self._wait_until(lambda state: state.get("status") == "ALIVE", "the master", timeout_s)
            offer = ["--cores", str(self.cores), "--memory", self.memory]
            for n in range(self.workers):
                work_dir = self.home / f"work-{n}"
                work_dir.mkdir(exist_ok=True)
                where = ["--host", self.host, "--webui-port", "0", "--work-dir", str(work_dir)]
                self._launch(f"worker-{n}.log", [WORKER_CLASS, *where, *offer, self.master_url])
            self._wait_until(lambda state: state.get("aliveworkers", 0) >= self.workers, "the workers", timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def state(self) -> dict[str, Any]:
        """The master's own view (its web UI's ``/json``): workers, cores, active and completed apps."""
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
        with direct.open(f"{self.ui_url}/json/", timeout=5) as reply:
            state: dict[str, Any] = json.load(reply)
        return state

    def application(self, app_id: str) -> dict[str, Any] | None:
        """What the master knows of an application, running or completed."""
        state = self.state()
        return next((a for a in state["activeapps"] + state["completedapps"] if a["id"] == app_id), None)

    def executor_logs(self, app_id: str) -> list[Path]:
        """The stderr files of the application's executors, on every worker."""
        return sorted(self.home.glob(f"work-*/{app_id}/*/stderr"))

    def stop(self) -> None:
        """End every daemon and what it started; safe to call twice."""
        for process in reversed(self.processes):
            end_process_group(process)
        self.processes.clear()
        atexit.unregister(self.stop)

    def __enter__(self) -> StandaloneCluster:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def _launch(self, log_name: str, args: list[str]) -> None:
        env = {
            **os.environ,
            "SPARK_LOCAL_IP": self.host,
            "SPARK_DAEMON_MEMORY": self.daemon_memory,
            # No REST submission server: it would bind the fixed port 6066.
            "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
        }
        with (self.home / log_name).open("ab") as log:
            process = subprocess.Popen(
                [str(spark_class()), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stop() ends it and its executors together
            )
        self.processes.append(process)

    def _wait_until(self, ready: Callable[[dict[str, Any]], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for process, log in zip(self.processes, self._logs(), strict=True):
                if _has_exited(process):
                    raise ClusterError(f"{log.stem} exited before the cluster was ready; see {log}")
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                if ready(self.state()):
                    return
            time.sleep(0.5)
        raise ClusterError(f"{what} did not come up within {timeout_s:.0f} s; see the logs in {self.home}")

    def _logs(self) -> list[Path]:
        return [self.home / "master.log"] + [self.home / f"worker-{n}.log" for n in range(len(self.processes) - 1)]


def _has_exited(process: subprocess.Popen[Any]) -> bool:
    """Whether the process has exited, without reaping it: while unreaped, its group id stays ours."""
    if process.returncode is not None:
        return True
    return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def end_process_group(process: subprocess.Popen[Any], grace_s: float = 15.0) -> None:
    """SIGTERM the group that ``process`` leads, give it ``grace_s`` to exit, then SIGKILL the group and
    wait until none of it is left.

    The leader is reaped only after the SIGKILL: until then the group id cannot be reused, so the
    signals reach this process and what it started, never an unrelated one.
    """
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while not _has_exited(process) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10.0
    while group_members(process.pid) and time.monotonic() < deadline:  # SIGKILL is delivered asynchronously
        time.sleep(0.1)


def group_members(pgid: int) -> list[int]:
    """The live processes of group ``pgid`` (zombies, already dead and waiting for their parent, left out)."""
    return [process.pid for process in process_stats() if process.group == pgid and process.state not in ("Z", "X")]
