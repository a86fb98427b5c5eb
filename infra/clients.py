"""Kafka client settings: where the cluster is and how to authenticate, for every command.

Precedence: explicit argument > environment (``KAFKA_BOOTSTRAP``, ``KAFKA_SECURITY_PROTOCOL``,
``KAFKA_SASL_MECHANISM``, ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD``, ``KAFKA_SSL_CAFILE``,
``KAFKA_SSL_CERTFILE``, ``KAFKA_SSL_KEYFILE``) > the ``[kafka]`` table of the config file
(``ARGUS_CONFIG``, default ``argus.toml`` in the working directory) > the local broker
started by ``argus kafka up``. Keys of the ``[kafka]`` table are kafka-python client
settings and pass through unchanged (``security_protocol``, ``sasl_mechanism``, ``ssl_cafile``...).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from infra.broker import LocalBroker

_ENV_SETTINGS = {
    "KAFKA_SECURITY_PROTOCOL": "security_protocol",
    "KAFKA_SASL_MECHANISM": "sasl_mechanism",
    "KAFKA_SASL_USERNAME": "sasl_plain_username",
    "KAFKA_SASL_PASSWORD": "sasl_plain_password",
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


def kafka_settings(bootstrap: str | None = None) -> dict[str, Any]:
    """kafka-python settings shared by producers, consumers and admin clients."""
    settings: dict[str, Any] = dict(load_config().get("kafka", {}))
    if "bootstrap" in settings:
        settings["bootstrap_servers"] = settings.pop("bootstrap")
    for env, key in _ENV_SETTINGS.items():
        if os.environ.get(env):
            settings[key] = os.environ[env]
    bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP") or settings.get("bootstrap_servers")
    settings["bootstrap_servers"] = bootstrap or LocalBroker.default().bootstrap
    return settings


def producer(bootstrap: str | None = None, **overrides: Any) -> KafkaProducer:
    settings = {
        "acks": "all",
        "linger_ms": 20,
        "batch_size": 512 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        **kafka_settings(bootstrap),
        **overrides,
    }
    return KafkaProducer(**settings)


def consumer(*topics: str, bootstrap: str | None = None, **overrides: Any) -> KafkaConsumer:
    settings = {"auto_offset_reset": "earliest", **kafka_settings(bootstrap), **overrides}
    return KafkaConsumer(*topics, **settings)


def admin(bootstrap: str | None = None) -> KafkaAdminClient:
    return KafkaAdminClient(**kafka_settings(bootstrap))


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


class BulkProducer:
    """High-throughput, idempotent producer for loads of millions of records (librdkafka).

    Keys are partitioned with murmur2 like the Java and kafka-python clients, so a user's
    events land in the same partition whichever client wrote them.
    """

    def __init__(self, bootstrap: str | None = None) -> None:
        from confluent_kafka import Producer

        settings = kafka_settings(bootstrap)
        unknown = sorted(set(settings) - set(_LIBRDKAFKA_NAMES) - {"sasl_oauth_token_provider"})
        if unknown:
            raise ConfigError(f"the bulk producer cannot translate Kafka settings {unknown}; remove them from [kafka]")
        conf: dict[str, Any] = {_LIBRDKAFKA_NAMES[k]: v for k, v in settings.items()}
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
            }
        )
        self._producer = Producer(conf)
        self._errors: list[str] = []
        self.sent = 0

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def send_many(self, topic: str, keys: list[bytes], values: list[bytes]) -> None:
        produce, poll = self._producer.produce, self._producer.poll
        for key, value in zip(keys, values, strict=True):
            while True:
                try:
                    produce(topic, value, key, on_delivery=self._on_delivery)
                    break
                except BufferError:  # local queue full: let librdkafka drain it
                    poll(0.05)
        poll(0)
        self.sent += len(values)

    def flush(self, timeout: float = 120.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise RuntimeError(f"{remaining} records were not delivered within {timeout:.0f}s")
        if self._errors:
            raise RuntimeError(f"{len(self._errors)} records failed delivery; first error: {self._errors[0]}")


class AlertRecord(Protocol):
    """What ``publish_alerts`` needs of an alert (``schemas.Alert`` has it)."""

    @property
    def alert_id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def model_dump_json(self) -> str: ...


def publish_alerts(alerts: Iterable[AlertRecord], bootstrap: str | None = None) -> dict[str, int]:
    """Produce alerts to ``alerts.<kind>`` (raid groups to ``alerts.troll``), keyed by ``alert_id``:
    a replay writes the same keys, so a compacted topic keeps one record per alert."""
    from infra.topics import alert_topic

    sink = producer(bootstrap)
    counts: dict[str, int] = {}
    try:
        for alert in alerts:
            topic = alert_topic("troll" if alert.kind == "raid" else alert.kind)
            sink.send(topic, key=alert.alert_id.encode(), value=alert.model_dump_json().encode())
            counts[topic] = counts.get(topic, 0) + 1
        sink.flush()
    finally:
        sink.close()
    return counts
