"""Kafka client settings: where the cluster is and how to authenticate, for every command.

Precedence: explicit argument > environment (``KAFKA_BOOTSTRAP``, ``KAFKA_SECURITY_PROTOCOL``,
``KAFKA_SASL_MECHANISM``, ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD``, ``KAFKA_SASL_PASSWORD_FILE``,
``KAFKA_SSL_CAFILE``, ``KAFKA_SSL_CERTFILE``, ``KAFKA_SSL_KEYFILE``) > the ``[kafka]`` table of the
config file (``ARGUS_CONFIG``, default ``argus.toml`` in the working directory) > the local broker
started by ``argus kafka up``. Keys of the ``[kafka]`` table are kafka-python client
settings and pass through unchanged (``security_protocol``, ``sasl_mechanism``, ``ssl_cafile``...),
plus ``sasl_password_file``: a file holding the password (first line), readable by its owner only.

Every client path takes its settings from here: kafka-python producers, consumers and admin clients,
the librdkafka bulk producer and Beam I/O (``librdkafka_settings``), and the Spark connector
(``spark_kafka_options``). A password file or config file with a password that group or others can
read draws a warning on stderr. ``explain_failure`` turns a refused connection, a rejected password
or a missing ACL into one line that says what to do; it never repeats a secret.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import sys
import time
import tomllib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from argus.infra.broker import LocalBroker
from argus.infra.security import redact_in_client_logs

_ENV_SETTINGS = {
    "KAFKA_SECURITY_PROTOCOL": "security_protocol",
    "KAFKA_SASL_MECHANISM": "sasl_mechanism",
    "KAFKA_SASL_USERNAME": "sasl_plain_username",
    "KAFKA_SASL_PASSWORD": "sasl_plain_password",
    "KAFKA_SASL_PASSWORD_FILE": "sasl_password_file",
    "KAFKA_SSL_CAFILE": "ssl_cafile",
    "KAFKA_SSL_CERTFILE": "ssl_certfile",
    "KAFKA_SSL_KEYFILE": "ssl_keyfile",
}


class ConfigError(ValueError):
    """A user's configuration mistake; the message says what to fix."""


def config_file() -> Path:
    return Path(os.environ.get("ARGUS_CONFIG", "argus.toml"))


def load_config(path: Path | None = None) -> dict[str, Any]:
    path = path or config_file()
    if not path.exists():
        if "ARGUS_CONFIG" in os.environ:
            raise ConfigError(f"ARGUS_CONFIG points at {path}, which does not exist")
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


# kafka-python-only tuning (e.g. how long a client tries to bootstrap); the librdkafka and Java
# translations leave these out.
KAFKA_PYTHON_ONLY = frozenset({"bootstrap_timeout_ms", "request_timeout_ms", "api_version_auto_timeout_ms"})
_PASSWORD_KEYS = ("sasl_plain_password", "ssl_password")
NO_BROKER_HINT = "start one with `argus kafka up` or set KAFKA_BOOTSTRAP to your cluster"


def kafka_settings(bootstrap: str | None = None) -> dict[str, Any]:
    """kafka-python settings shared by producers, consumers and admin clients (the password resolved)."""
    return portable_kafka_settings(bootstrap).resolve()


@dataclass(frozen=True)
class SecretRef:
    """Where a secret is read from: an environment variable, a file, or the config file's ``[kafka]`` table."""

    key: str  # the kafka-python setting it fills: sasl_plain_password or ssl_password
    source: str  # "env", "file" or "config"
    where: str  # the variable's name, or the file's absolute path

    def read(self) -> str:
        if self.source == "env":
            value = os.environ.get(self.where)
            if not value:
                raise ConfigError(f"{self.where} is not set in this process; set it where the Kafka clients run")
        elif self.source == "file":
            value = read_password_file(Path(self.where))
        else:
            table = load_config(Path(self.where)).get("kafka", {})
            if not table.get(self.key):
                raise ConfigError(f"[kafka] {self.key} is missing from {self.where}; add it or use sasl_password_file")
            value = str(table[self.key])
        redact_in_client_logs(value)  # a file's secret already is (read_secret_file)
        return value


@dataclass(frozen=True)
class PortableKafkaSettings:
    """Kafka client settings that may travel to worker processes (pickled into Beam DoFns): every setting but
    the secrets, which are named by where they are read (``SecretRef``) and read where a client is made.

    Resolved once where a pipeline is built, so workers agree on the cluster and the principal whatever
    their own environment; a worker needs only the password's file or variable. ``repr`` shows no secret.
    """

    settings: dict[str, Any]
    secrets: tuple[SecretRef, ...] = ()

    def resolve(self) -> dict[str, Any]:
        """kafka-python settings with the secrets read now."""
        return {**self.settings, **{ref.key: ref.read() for ref in self.secrets}}


def portable_kafka_settings(bootstrap: str | None = None) -> PortableKafkaSettings:
    """The shared settings (see the module doc for the precedence) with the secrets by reference."""
    path = config_file()
    settings: dict[str, Any] = dict(load_config().get("kafka", {}))
    if "bootstrap" in settings:
        settings["bootstrap_servers"] = settings.pop("bootstrap")
    if "sasl_plain_password" in settings and "sasl_password_file" in settings:
        raise ConfigError(f"[kafka] in {path} sets both sasl_plain_password and sasl_password_file; keep one")
    if any(key in settings for key in _PASSWORD_KEYS) and path.exists():
        warn_if_readable(path, "holds a Kafka password")
    if os.environ.get("KAFKA_SASL_PASSWORD") and os.environ.get("KAFKA_SASL_PASSWORD_FILE"):
        raise ConfigError("set KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both")
    secrets = [SecretRef(key, "config", str(path.resolve())) for key in _PASSWORD_KEYS if settings.pop(key, None)]
    if os.environ.get("KAFKA_SASL_PASSWORD") or os.environ.get("KAFKA_SASL_PASSWORD_FILE"):
        # The environment's password wins over the config file's.
        secrets = [ref for ref in secrets if ref.key != "sasl_plain_password"]
        settings.pop("sasl_password_file", None)
    for env, key in _ENV_SETTINGS.items():
        if os.environ.get(env) and key not in ("sasl_plain_password", "sasl_password_file"):
            settings[key] = os.environ[env]
    password_file = os.environ.get("KAFKA_SASL_PASSWORD_FILE") or settings.pop("sasl_password_file", None)
    if os.environ.get("KAFKA_SASL_PASSWORD"):
        secrets.append(SecretRef("sasl_plain_password", "env", "KAFKA_SASL_PASSWORD"))
    elif password_file:
        secrets.append(SecretRef("sasl_plain_password", "file", str(Path(password_file).expanduser().resolve())))
    bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP") or settings.get("bootstrap_servers")
    settings["bootstrap_servers"] = bootstrap or LocalBroker.default().bootstrap
    return PortableKafkaSettings(settings, tuple(secrets))


_warned: set[Path] = set()


def warn_if_readable(path: Path, what: str) -> None:
    """One stderr line (once per file and process) when ``path`` is readable by group or others."""
    from argus.infra.security import loose_permissions

    who = loose_permissions(path)
    if who is None or path in _warned:
        return
    _warned.add(path)
    print(f"warning: {path} {what} and is readable by {who}; run chmod 600 {path}", file=sys.stderr)


def read_password_file(path: Path) -> str:
    """The password in ``path`` (its first line); warns when the file is readable by others."""
    from argus.infra.security import SecretFileError, read_secret_file

    try:
        secret = read_secret_file(path)
    except SecretFileError as exc:
        raise ConfigError(f"{exc}; set KAFKA_SASL_PASSWORD_FILE or sasl_password_file to the right file") from exc
    warn_if_readable(path, "holds a Kafka password")
    return secret


def secrets_of(settings: dict[str, Any]) -> list[str]:
    """The secret values in ``settings`` (passwords), for redaction."""
    return [str(settings[key]) for key in _PASSWORD_KEYS if settings.get(key)]


def redact(text: str, settings: dict[str, Any]) -> str:
    for secret in secrets_of(settings):
        text = text.replace(secret, "***")
    return text


def producer(bootstrap: str | None = None, **overrides: Any) -> KafkaProducer:
    settings = {
        "acks": "all",
        "linger_ms": 20,
        "batch_size": 512 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        **kafka_settings(bootstrap),
        **overrides,
    }
    return _bootstrapped(KafkaProducer, settings)


def consumer(*topics: str, bootstrap: str | None = None, **overrides: Any) -> KafkaConsumer:
    settings = {"auto_offset_reset": "earliest", **kafka_settings(bootstrap), **overrides}
    return _bootstrapped(lambda **s: KafkaConsumer(*topics, **s), settings)


def admin(bootstrap: str | None = None, settings: dict[str, Any] | None = None) -> KafkaAdminClient:
    """An admin client with the shared settings, or with ``settings`` (e.g. the local broker's super user)."""
    return _bootstrapped(KafkaAdminClient, settings if settings is not None else kafka_settings(bootstrap))


# kafka-python keeps retrying a broker that refuses it (wrong protocol, bad password, untrusted certificate)
# for its whole bootstrap timeout, 30 s by default. The factories first give it this long, then probe the
# broker: a definite refusal is reported at once, anything else (a broker still starting, a slow network)
# gets the rest of kafka-python's default timeout. A configured bootstrap_timeout_ms is used as it is.
FIRST_BOOTSTRAP_MS = 5_000
DEFAULT_BOOTSTRAP_MS = 30_000


def _bootstrapped(make: Any, settings: dict[str, Any]) -> Any:
    """``make(**settings)``, failing fast with one line (``KafkaAccessError``) when the broker refuses us."""
    from kafka.errors import KafkaConnectionError, KafkaError

    if "bootstrap_timeout_ms" in settings:
        return make(**settings)
    started = time.monotonic()
    try:
        return make(**settings, bootstrap_timeout_ms=FIRST_BOOTSTRAP_MS)
    except KafkaError as exc:
        if not (isinstance(exc, KafkaConnectionError) or "Unable to bootstrap" in str(exc)):
            raise
        problem = connection_problem(settings)
        if problem is not None:
            raise KafkaAccessError(redact(problem, settings)) from None
    remaining_ms = DEFAULT_BOOTSTRAP_MS - int((time.monotonic() - started) * 1000)
    return make(**settings, bootstrap_timeout_ms=max(remaining_ms, FIRST_BOOTSTRAP_MS))


def require_topic_access(topics: Iterable[str], operation: str, bootstrap: str | None = None) -> list[str]:
    """Raise ``KafkaAccessError`` unless this principal may ``operation`` (READ, WRITE) every existing topic of
    ``topics``; return the topics that do not exist (what to do about them is the caller's).

    Asks the broker (Metadata with authorized operations, KIP-430) before any work: a consumer denied a
    topic would otherwise read nothing, silently, and a producer would fail only at its first send.
    """
    from kafka.admin import ACLOperation

    names = sorted(set(topics))
    settings = kafka_settings(bootstrap)
    client = admin(settings=settings)
    try:
        described = client.describe_topics(names)
    finally:
        client.close()
    wanted = int(ACLOperation[operation])
    denied, missing = [], []
    for topic in described:
        code = topic.get("error_code", 0)
        if code == UNKNOWN_TOPIC_OR_PARTITION:
            missing.append(topic["name"])
        elif code == TOPIC_AUTHORIZATION_FAILED:
            denied.append(topic["name"])
            continue
        allowed = topic.get("topic_authorized_operations")
        # A broker that did not report the operations (older than 2.3) gets the benefit of the doubt.
        if code == 0 and isinstance(allowed, int) and allowed != UNREPORTED_OPERATIONS and not allowed >> wanted & 1:
            denied.append(topic["name"])
    if denied:
        what = "read" if operation == "READ" else "write to" if operation == "WRITE" else operation.lower()
        raise KafkaAccessError(
            redact(_authorization_line(settings, "TopicAuthorizationFailedError", f"{what}: {denied}"), settings)
        )
    return missing


UNKNOWN_TOPIC_OR_PARTITION, TOPIC_AUTHORIZATION_FAILED = 3, 29  # Kafka's error codes
UNREPORTED_OPERATIONS = -(2**31)  # authorized operations the broker was not asked for or did not compute


# kafka-python setting -> librdkafka setting, for the bulk producer.
_LIBRDKAFKA_NAMES = {
    "bootstrap_servers": "bootstrap.servers",
    "client_id": "client.id",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
}


def librdkafka_conf(settings: dict[str, Any], client: str = "the bulk producer") -> dict[str, Any]:
    """kafka-python settings in librdkafka's names (confluent-kafka clients)."""
    settings = {k: v for k, v in settings.items() if k not in KAFKA_PYTHON_ONLY}
    unknown = sorted(set(settings) - set(_LIBRDKAFKA_NAMES))
    if unknown:
        raise ConfigError(f"{client} cannot translate Kafka settings {unknown}; remove them from [kafka]")
    return {_LIBRDKAFKA_NAMES[k]: v for k, v in settings.items()}


# kafka-python setting -> Java client property, for the Spark connector (``kafka.`` + property).
_JAVA_NAMES = {
    "bootstrap_servers": "bootstrap.servers",
    "client_id": "client.id",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
}
_JAAS_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def java_client_properties(bootstrap: str | None = None) -> dict[str, str]:
    """The shared settings as Java Kafka client properties (TLS files as PEM, the SASL login as JAAS)."""
    settings = {k: v for k, v in kafka_settings(bootstrap).items() if k not in KAFKA_PYTHON_ONLY}
    servers = settings.pop("bootstrap_servers")
    props = {"bootstrap.servers": servers if isinstance(servers, str) else ",".join(servers)}
    for key in list(settings):
        if key in _JAVA_NAMES:
            props[_JAVA_NAMES[key]] = str(settings.pop(key))
    username, password = settings.pop("sasl_plain_username", None), settings.pop("sasl_plain_password", None)
    if username is not None or password is not None:
        mechanism = props.get("sasl.mechanism", "PLAIN")
        if mechanism not in _JAAS_MODULES:
            raise ConfigError(f"the Spark Kafka connector supports SASL {', '.join(_JAAS_MODULES)}, not {mechanism}")
        props["sasl.jaas.config"] = (
            f'{_JAAS_MODULES[mechanism]} required username="{_jaas_quote(username or "")}"'
            f' password="{_jaas_quote(password or "")}";'
        )
    if "ssl_cafile" in settings:
        props["ssl.truststore.type"] = "PEM"
        props["ssl.truststore.location"] = str(settings.pop("ssl_cafile"))
    if "ssl_certfile" in settings or "ssl_keyfile" in settings:
        certfile, keyfile = settings.pop("ssl_certfile", None), settings.pop("ssl_keyfile", None)
        if not (certfile and keyfile):
            raise ConfigError("client certificates need both ssl_certfile and ssl_keyfile (KAFKA_SSL_CERTFILE/KEYFILE)")
        props["ssl.keystore.type"] = "PEM"
        props["ssl.keystore.certificate.chain"] = Path(certfile).read_text()
        props["ssl.keystore.key"] = Path(keyfile).read_text()
        if settings.get("ssl_password"):
            props["ssl.key.password"] = str(settings.pop("ssl_password"))
    if settings.pop("ssl_check_hostname", True) in (False, "false", "False"):
        props["ssl.endpoint.identification.algorithm"] = ""
    if settings:
        raise ConfigError(f"the Spark Kafka connector cannot translate Kafka settings {sorted(settings)}")
    return props


def spark_kafka_options(bootstrap: str | None = None) -> dict[str, str]:
    """``kafka.*`` options for Spark's Kafka source and sink, from the shared settings."""
    return {f"kafka.{key}": value for key, value in java_client_properties(bootstrap).items()}


def _jaas_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class KafkaAccessError(ConfigError):
    """The cluster refused this client (wrong protocol, untrusted certificate, bad password, no ACL)."""


class BulkProducer:
    """High-throughput, idempotent producer for loads of millions of records (librdkafka).

    Keys are partitioned with murmur2 like the Java and kafka-python clients, so a user's
    events land in the same partition whichever client wrote them.
    """

    def __init__(self, bootstrap: str | None = None) -> None:
        from confluent_kafka import Producer

        self._settings = kafka_settings(bootstrap)
        conf = librdkafka_conf(self._settings)
        conf.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 50,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
                "partitioner": "murmur2_random",
                "queue.buffering.max.messages": 500_000,
                "log_level": 3,  # errors only: transient broker states are retried quietly
                "error_cb": self._on_error,
            }
        )
        self._producer = Producer(conf)
        self._errors: list[str] = []
        self._refused: str | None = None  # why the cluster refused us before anything was delivered
        self._delivered_any = False
        self._topic: str | None = None  # the topic being written, for a refusal that does not name it
        self._denied = False  # the cluster refused this producer's writes before a topic was named
        self.sent = 0

    def _on_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        fatal = (KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError._ALL_BROKERS_DOWN)
        if _write_denied(err) and not self._delivered_any:
            # The idempotent producer's start-up can be refused before any topic is written: name it later.
            self._denied = True
            if self._topic:
                self._refused = f"authorization failed: writing to {self._topic}"
        elif err.code() in fatal and not self._delivered_any:
            self._refused = str(err.str())

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self._delivered_any = True
            return
        self._errors.append(str(err))

        if err.code() in _WRITE_DENIED and self._refused is None:
            self._refused = f"authorization failed: writing to {msg.topic()}"

    def _check_refused(self) -> None:
        if self._refused is not None:
            raise KafkaAccessError(explain_refusal(self._settings, self._refused))

    def send_many(self, topic: str, keys: list[bytes], values: list[bytes]) -> None:
        from confluent_kafka import KafkaException

        produce, poll = self._producer.produce, self._producer.poll
        self._topic = topic
        if self._denied and self._refused is None:
            self._refused = f"authorization failed: writing to {topic}"
        self._check_refused()
        for key, value in zip(keys, values, strict=True):
            while True:
                try:
                    produce(topic, value, key, on_delivery=self._on_delivery)
                    break
                except BufferError:  # local queue full: let librdkafka drain it
                    poll(0.05)
                    self._check_refused()
                except KafkaException as exc:
                    # Once librdkafka knows the topic is denied it refuses at produce(), before any delivery report.
                    # A refused idempotent start-up can surface here first, as a fatal error, before error_cb runs.
                    if not _write_denied(exc.args[0]) and not self._denied:
                        raise
                    self._refused = f"authorization failed: writing to {topic}"
                    self._check_refused()
        poll(0)
        self._check_refused()
        self.sent += len(values)

    def flush(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        remaining = self._producer.flush(0)
        while remaining and time.monotonic() < deadline:
            self._check_refused()
            remaining = self._producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
        self._check_refused()
        if remaining:
            raise RuntimeError(f"{remaining} records were not delivered within {timeout:.0f}s")
        if self._errors:
            raise RuntimeError(f"{len(self._errors)} records failed delivery; first error: {self._errors[0]}")


class AlertRecord(Protocol):
    """What ``publish_alerts`` needs of an alert (``argus.schemas.Alert`` has it)."""

    @property
    def alert_id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def model_dump_json(self) -> str: ...


# A publisher that dies mid-transaction holds back its partitions' committed readers until the broker
# aborts the transaction at this timeout, or until a rerun with the same transactional id fences it.
ALERT_TRANSACTION_TIMEOUT_MS = 300_000


def alert_transactional_id(source: str) -> str:
    """The transactional id of the publisher of ``source`` (a lake, an output file): reruns of one
    source share it, so a rerun fences a publisher of that source that died mid-way."""
    return "argus-alerts-" + hashlib.sha256(source.encode()).hexdigest()[:16]


def publish_alerts(
    alerts: Iterable[AlertRecord], bootstrap: str | None = None, source: str | None = None
) -> dict[str, int]:
    """Produce alerts to ``alerts.<kind>`` (raid groups to ``alerts.troll``), keyed by ``alert_id``:
    a replay writes the same keys, so a compacted topic keeps one record per alert.

    All of them go in one Kafka transaction: a reader of committed records (``isolation_level=
    read_committed``, as ``argus alerts tail`` reads) sees every alert of the call or none, and an
    error on the way (a broken line in an alert file, a lost broker) aborts what was sent. ``source``
    names what is published (``alert_transactional_id``); without it the id is this call's own."""
    from kafka.errors import KafkaError

    from argus.infra.topics import alert_topic, ensure_alert_topics

    ensure_alert_topics(bootstrap)  # the alert topics exist, compacted, before the first send
    sink = producer(
        bootstrap,
        enable_idempotence=True,
        transactional_id=alert_transactional_id(source if source is not None else f"call-{uuid.uuid4()}"),
        transaction_timeout_ms=ALERT_TRANSACTION_TIMEOUT_MS,
    )
    counts: dict[str, int] = {}
    try:
        sink.init_transactions()
        sink.begin_transaction()
        try:
            for alert in alerts:
                topic = alert_topic("troll" if alert.kind == "raid" else alert.kind)
                sink.send(topic, key=alert.alert_id.encode(), value=alert.model_dump_json().encode())
                counts[topic] = counts.get(topic, 0) + 1
            sink.commit_transaction()
        except KafkaError:
            raise  # the broker may be gone: its timeout, or the next run's fencing, aborts the transaction
        except BaseException:
            sink.abort_transaction()
            raise
    finally:
        sink.close()
    return counts


# --- why the cluster refused a client -----------------------------------------------------

_AUTHORIZATION_ERRORS = (
    "TopicAuthorizationFailedError",
    "GroupAuthorizationFailedError",
    "ClusterAuthorizationFailedError",
    "TransactionalIdAuthorizationFailedError",
    "DelegationTokenAuthorizationFailedError",
)


def explain_failure(exc: BaseException, bootstrap: str | None = None) -> str | None:
    """One line that says what to do about a Kafka failure, or None when it is not one we recognise.

    Authorization errors name the principal; an unreachable cluster is probed (TCP, TLS, certificate,
    SASL) to say which of them is wrong. No secret appears in the line.
    """
    if isinstance(exc, KafkaAccessError):
        return str(exc)
    name = type(exc).__name__
    text = str(exc)
    try:
        settings = kafka_settings(bootstrap or _bootstrap_in(text))
    except ConfigError as config_error:
        return str(config_error)
    if name in _AUTHORIZATION_ERRORS or "AUTHORIZATION_FAILED" in text:
        return redact(_authorization_line(settings, name, text), settings)
    unreachable = (
        "NoBrokersAvailable" in name
        or "KafkaConnectionError" in name
        or "Unable to bootstrap" in text
        or "_ALL_BROKERS_DOWN" in text
        or "_TRANSPORT" in text
    )
    if unreachable:
        return redact(diagnose_connection(settings), settings)
    return None


# Write refusals: denied on the topic, or on the cluster (an idempotent producer needs IdempotentWrite).
_WRITE_DENIED = (29, 31)  # KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED


def _write_denied(err: Any) -> bool:
    """Whether a librdkafka error is the cluster refusing this producer's writes."""
    return err.code() in _WRITE_DENIED or (err.fatal() and "authorization failed" in err.str().lower())


def explain_refusal(settings: dict[str, Any], reason: str) -> str:
    """The line for a librdkafka client that the cluster refused with ``reason``."""
    if "authorization failed" in reason.lower():
        return redact(_authorization_line(settings, "TopicAuthorizationFailedError", reason), settings)
    return redact(diagnose_connection(settings), settings)


def _bootstrap_in(text: str) -> str | None:
    marker = "Unable to bootstrap from "
    return text.split(marker, 1)[1].strip(" '\"[]") if marker in text else None


def _authorization_line(settings: dict[str, Any], name: str, text: str) -> str:
    principal = settings.get("sasl_plain_username") or "ANONYMOUS"
    what = {
        "TopicAuthorizationFailedError": "the topic(s)",
        "GroupAuthorizationFailedError": "the consumer group",
        "ClusterAuthorizationFailedError": "that cluster operation",
        "TransactionalIdAuthorizationFailedError": "that transactional id",
    }.get(name, "that resource")
    detail = text.split(":", 1)[1].strip() if ":" in text else text
    return (
        f"Kafka denied principal {principal!r} access to {what} ({detail or name}); use the credentials of a "
        "principal allowed to do this (KAFKA_SASL_USERNAME and its password file) or ask the cluster admin for an ACL"
    )


def diagnose_connection(settings: dict[str, Any], timeout: float = 5.0) -> str:
    """Why a client with ``settings`` cannot use the cluster: probes TCP, TLS, the certificate, then SASL."""
    first = _first_server(settings)
    return connection_problem(settings, timeout) or (
        f"Kafka at {first} accepts connections but did not answer this client; see the broker's log"
    )


def _first_server(settings: dict[str, Any]) -> str:
    servers = settings["bootstrap_servers"]
    return str((servers.split(",") if isinstance(servers, str) else list(servers))[0]).strip()


def connection_problem(settings: dict[str, Any], timeout: float = 5.0) -> str | None:
    """The line for what definitely keeps a client with ``settings`` out (no broker, wrong protocol, untrusted
    certificate, rejected credentials), or None when the broker accepts it as far as a probe can tell."""
    first = _first_server(settings)
    host, _, port_text = first.rpartition(":")
    host = host.strip("[]")
    protocol = str(settings.get("security_protocol", "PLAINTEXT")).upper()
    hint_files = "`argus kafka up --secure` writes them to $ARGUS_HOME/kafka/clients/<principal>.env and .toml"
    try:
        port = int(port_text)
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except (OSError, ValueError):
        return f"no Kafka broker answers at {first}; {NO_BROKER_HINT}"
    speaks_tls = _speaks_tls(host, port, timeout)
    if speaks_tls and protocol not in ("SSL", "SASL_SSL"):
        return (
            f"the Kafka broker at {first} requires TLS and authentication, but this client connects with {protocol}; "
            f"set security_protocol, sasl_mechanism, sasl_plain_username, the password and ssl_cafile ({hint_files})"
        )
    if not speaks_tls and protocol in ("SSL", "SASL_SSL"):
        return (
            f"the Kafka broker at {first} does not speak TLS, but this client connects with {protocol}; "
            "unset KAFKA_SECURITY_PROTOCOL / security_protocol, or point KAFKA_BOOTSTRAP at the TLS listener"
        )
    if speaks_tls:
        problem = _certificate_problem(host, port, settings, timeout)
        if problem:
            return (
                f"the Kafka broker's certificate at {first} is not trusted ({problem}); set KAFKA_SSL_CAFILE or "
                "ssl_cafile to the CA that signed it (the local secure broker's is $ARGUS_HOME/kafka/tls/ca.pem)"
            )
    if protocol.startswith("SASL"):
        refused = _sasl_refusal(settings, timeout)
        if refused:
            user = settings.get("sasl_plain_username") or "(none)"
            return (
                f"the Kafka broker at {first} rejected the credentials of {user!r} "
                f"({settings.get('sasl_mechanism', 'PLAIN')}); check KAFKA_SASL_USERNAME and the password "
                "(KAFKA_SASL_PASSWORD_FILE or sasl_password_file)"
            )
        if protocol == "SASL_SSL" and not speaks_tls:
            return f"the Kafka broker at {first} is not a SASL_SSL listener; check KAFKA_BOOTSTRAP's port"
    elif protocol == "SSL" and speaks_tls and _sasl_refusal(settings, timeout, dropped_connection=True):
        # A trusted TLS connection that the broker drops: the listener wants a login this client never sends.
        return (
            f"the Kafka broker at {first} requires authentication, but this client connects with SSL and no "
            f"login; set security_protocol SASL_SSL, sasl_mechanism, sasl_plain_username and the password "
            f"({hint_files})"
        )
    return None


def _speaks_tls(host: str, port: int, timeout: float) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except (OSError, ssl.SSLError):
        return False


def _certificate_problem(host: str, port: int, settings: dict[str, Any], timeout: float) -> str | None:
    cafile = settings.get("ssl_cafile")
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        return f"ssl_cafile {cafile}: {exc}"
    if settings.get("ssl_check_hostname", True) in (False, "false", "False"):
        context.check_hostname = False
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return None
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message or exc)
    except (OSError, ssl.SSLError):
        return None


def _sasl_refusal(settings: dict[str, Any], timeout: float, dropped_connection: bool = False) -> str | None:
    """librdkafka's authentication error for ``settings`` if the broker rejects them (with ``dropped_connection``,
    also the broker closing an established connection again and again, which is how a SASL listener answers
    a TLS client that sends no login)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list[str] = []
    drops: list[str] = []

    def on_error(err: Any) -> None:
        if err.code() == KafkaError._AUTHENTICATION:
            errors.append(str(err.str()))

    # Only the connection's settings: a producer's or consumer's tuning has no librdkafka translation.
    conf = librdkafka_conf({k: v for k, v in settings.items() if k in _LIBRDKAFKA_NAMES}, client="the check")
    probe_conf: dict[str, Any] = {**conf, "error_cb": on_error, "log_level": 0}
    client = AdminClient(probe_conf)
    deadline = time.monotonic() + timeout
    try:
        while not errors and len(drops) < 3 and time.monotonic() < deadline:
            try:
                client.list_topics(timeout=1.0)
                return None
            except KafkaException as exc:  # a timeout here is expected while the error callback catches up
                if dropped_connection and exc.args[0].code() == KafkaError._TRANSPORT:
                    drops.append(str(exc.args[0].str()))
                client.poll(0.1)
    finally:
        del client
    return errors[0] if errors else drops[0] if len(drops) >= 3 else None
