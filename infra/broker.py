"""A single-node Apache Kafka 4.x broker in KRaft mode, run from Maven Central jars.

``argus kafka up`` fetches the jars once (``mvn dependency:copy-dependencies`` on
``infra/kafka/pom.xml``), formats the storage on first start, launches the JVM in the
background and creates the topic layout. The data directory persists across ``down``/``up``.
State lives in ``$ARGUS_HOME/kafka`` (default ``~/.argus/kafka``).

``secure=True`` (``argus kafka up --secure``) serves clients only over SASL_SSL with SCRAM-SHA-512,
with principals and ACLs; ``argus.infra.security`` makes and describes that material. A home formatted
in one mode stays in it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from base64 import urlsafe_b64encode
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argus.infra import maven
from argus.infra.maven import argus_home
from argus.infra.procfs import is_running, process_stat
from argus.infra.security import ADMIN, PRINCIPALS, SecureMaterial, apply_acls, write_private

KAFKA_DIR = Path(__file__).parent / "kafka"
POM = KAFKA_DIR / "pom.xml"
LOG4J_CONFIG = KAFKA_DIR / "log4j2.properties"
DEFAULT_PORT = 9092
__all__ = ["BrokerError", "LocalBroker", "argus_home", "fetch_jars", "free_port"]


class BrokerError(RuntimeError):
    """The local broker could not be fetched, started or stopped; the message says why."""


def fetch_jars() -> Path:
    """The broker's jars from Maven Central (or ~/.m2), fetched once."""
    try:
        return maven.fetch_jars(POM, "kafka")
    except maven.MavenError as exc:
        raise BrokerError(str(exc)) from exc


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(span: int = 3) -> int:
    """A port whose next ``span - 1`` ports are free too (the broker also binds port+1 and port+2)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + span - 1 <= 65535 and all(_bindable(port + offset) for offset in range(1, span)):
            return port
    raise BrokerError(f"no run of {span} free ports found on 127.0.0.1")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class LocalBroker:
    """One broker+controller process; ``home`` holds its data, logs, pid and settings."""

    home: Path
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    heap: str = "1g"
    secure: bool = False

    @classmethod
    def default(cls) -> LocalBroker:
        """The broker of ``$ARGUS_HOME``, on the port and in the mode it was last started with."""
        home = argus_home() / "kafka"
        saved = home / "broker.json"
        state = json.loads(saved.read_text()) if saved.exists() else {}
        return cls(home=home, port=state.get("port", DEFAULT_PORT), secure=state.get("secure", False))

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def internal_port(self) -> int:
        """The secure mode's certificate-authenticated inter-broker listener."""
        return self.port + 2

    @property
    def material(self) -> SecureMaterial:
        return SecureMaterial(self.home)

    def admin_settings(self) -> dict[str, Any]:
        """kafka-python settings for this broker's super user (plain settings when not secure)."""
        settings: dict[str, Any] = {"bootstrap_servers": self.bootstrap}
        if self.secure:
            client = self.material.client_settings(ADMIN, self.bootstrap)
            settings.update(
                security_protocol=client["security_protocol"],
                sasl_mechanism=client["sasl_mechanism"],
                sasl_plain_username=ADMIN,
                sasl_plain_password=self.material.password(ADMIN),
                ssl_cafile=client["ssl_cafile"],
            )
        return settings

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "server.log"

    def pid(self) -> int | None:
        """The broker's pid while its process runs; the pid file also names the process's start, so a
        pid the system has since given to another process does not count."""
        try:
            pid_text, _, started = self.pid_file.read_text().partition(" ")
            pid, start = int(pid_text), int(started) if started else None
        except (FileNotFoundError, ValueError):
            return None
        if not is_running(pid, start):
            return None
        if start is None:  # a pid file written before starts were recorded: the pid must still be a Kafka JVM
            cmdline = Path(f"/proc/{pid}/cmdline")
            if cmdline.exists() and b"kafka.Kafka" not in cmdline.read_bytes():
                return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None and port_open(self.host, self.port)

    def up(self, timeout: float = 90.0) -> None:
        """Start the broker unless it already runs; wait until it accepts connections."""
        secure_marker = self.home / "secure"
        if (self.data_dir / "meta.properties").exists() and secure_marker.exists() != self.secure:
            mode = "with --secure" if secure_marker.exists() else "without --secure"
            raise BrokerError(
                f"the broker's data in {self.data_dir} was created {mode}; start it the same way, "
                f"or remove {self.home} to start over in the other mode"
            )
        if self.pid() is not None:
            self._wait_ready(timeout)
            return
        if port_open(self.host, self.port):
            raise BrokerError(
                f"port {self.port} is taken by another process; "
                "pick another with --port or point KAFKA_BOOTSTRAP at that cluster"
            )
        libs = fetch_jars()
        self.home.mkdir(parents=True, exist_ok=True)
        formatted = (self.data_dir / "meta.properties").exists()
        if self.secure:
            self.home.chmod(0o700)
            self.material.ensure([self.host])
        (self.home / "logs").mkdir(exist_ok=True)
        config = self._write_config()
        if not formatted:
            self._format(libs, config)
            if self.secure:
                secure_marker.touch()
        java = shutil.which("java")
        if java is None:
            raise BrokerError("Java is not installed; Kafka needs Java 17+ (apt-get install openjdk-17-jre)")
        cmd = [
            java,
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(config),
        ]
        with open(self.home / "logs" / "stdout.log", "ab") as out:
            process = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        stat = process_stat(process.pid)
        self.pid_file.write_text(f"{process.pid} {stat.started}" if stat is not None else str(process.pid))
        (self.home / "broker.json").write_text(json.dumps({"port": self.port, "secure": self.secure}))
        self._wait_ready(timeout, process)
        if self.secure:
            self._apply_acls()
            self.material.write_client_files(self.bootstrap)

    def down(self, timeout: float = 60.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after ``timeout``); False if it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not is_running(pid):
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> dict[str, Any]:
        return {
            "running": self.is_running(),
            "pid": self.pid(),
            "bootstrap": self.bootstrap,
            "secure": self.secure,
            "home": str(self.home),
            "log": str(self.log_file),
        }

    def _cluster_id(self) -> str:
        path = self.home / "cluster_id"
        if not path.exists():
            path.write_text(urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        return path.read_text().strip()

    def _write_config(self) -> Path:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "3",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": str(8 * 1024 * 1024),
            "log.retention.hours": "168",
            "auto.create.topics.enable": "false",
        }
        if self.secure:
            settings.update(
                self.material.server_properties(self.host, self.port, self.controller_port, self.internal_port)
            )
        path = self.home / "server.properties"
        write_private(path, "".join(f"{key}={value}\n" for key, value in settings.items()))
        return path

    def _format(self, libs: Path, config: Path) -> None:
        tool_args = ["format", "--ignore-formatted", f"--cluster-id={self._cluster_id()}", "-c", str(config)]
        if self.secure:
            tool_args += self.material.scram_arguments()
        # The tool's arguments (SCRAM passwords, in secure mode) go through a Java @argfile readable
        # by the owner only, so that they never show in the process list.
        argfile = self.home / "format.args"
        write_private(argfile, "\n".join(_quote_java_arg(a) for a in ["kafka.tools.StorageTool", *tool_args]))
        cmd = [
            "java",
            "-cp",
            f"{libs}/*",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            f"@{argfile}",
        ]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True)
        finally:
            argfile.unlink(missing_ok=True)
        if result.returncode != 0:
            said = self._redact(f"{result.stdout}{result.stderr}".strip())
            raise BrokerError(f"formatting Kafka storage failed: {said}")

    def _redact(self, text: str) -> str:
        if self.secure:
            for principal in PRINCIPALS:
                text = text.replace(self.material.password(principal), "***")
        return text

    def _apply_acls(self) -> None:
        from kafka import KafkaAdminClient

        client = KafkaAdminClient(**self.admin_settings(), request_timeout_ms=30_000)
        try:
            apply_acls(client)
        finally:
            client.close()

    def _wait_ready(self, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise BrokerError(f"the broker exited with code {process.returncode}; see {self.log_file}")
            if port_open(self.host, self.port) and self._metadata_ready():
                return
            time.sleep(0.3)
        raise BrokerError(f"the broker did not accept connections within {timeout:.0f}s; see {self.log_file}")

    def _metadata_ready(self) -> bool:
        # The port opens a moment before the broker has registered with its controller.
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            client = KafkaAdminClient(**self.admin_settings(), request_timeout_ms=3000)
        except (KafkaError, OSError, ValueError):
            return False
        try:
            return len(client.describe_cluster().get("brokers", [])) > 0
        except (KafkaError, OSError):
            return False
        finally:
            client.close()


def _quote_java_arg(arg: str) -> str:
    """One argument of a Java @argfile: quoted, with backslashes and quotes escaped."""
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
