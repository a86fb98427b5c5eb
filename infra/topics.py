"""The Kafka topic layout every Argus part agrees on.

Alert topics are compacted and keyed by ``alert_id``: a replayed night or stream writes the same
keys again, and the log cleaner keeps the newest record of each, so a consumer reading from the
beginning sees one record per alert once the cleaner has run (``argus alerts tail`` deduplicates
the records the cleaner has not reached yet).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from argus.schemas.models import EVENT_TYPES

DLQ_TOPIC = "dlq.events"
ALERT_KINDS = ("troll", "evader", "fraud", "churn")


# Topic settings per role. Compaction keeps the last record per key; short segments and a low dirty
# ratio let the cleaner reach replayed alerts within the hour instead of after the default week.
ROLE_CONFIGS: dict[str, dict[str, str]] = {
    "alerts": {"cleanup.policy": "compact", "segment.ms": "3600000", "min.cleanable.dirty.ratio": "0.1"},
}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    role: str  # "events", "alerts" or "dlq"

    @property
    def configs(self) -> dict[str, str]:
        return ROLE_CONFIGS.get(self.role, {})


def event_topic(event_type: str) -> str:
    return f"events.{event_type}"


def alert_topic(kind: str) -> str:
    return f"alerts.{kind}"


EVENT_TOPICS = tuple(event_topic(t) for t in EVENT_TYPES)
ALERT_TOPICS = tuple(alert_topic(k) for k in ALERT_KINDS)
TOPICS = (
    *(TopicSpec(t, "events") for t in EVENT_TOPICS),
    *(TopicSpec(t, "alerts") for t in ALERT_TOPICS),
    TopicSpec(DLQ_TOPIC, "dlq"),
)


def ensure_topics(
    bootstrap: str | None = None,
    event_partitions: int = 3,
    other_partitions: int = 1,
    client_settings: dict[str, Any] | None = None,
) -> list[str]:
    """Create the missing topics of the layout with their role's settings; return the names created.

    Existing topics keep their data; those whose settings differ from the layout's (alert topics
    made before they were compacted) are altered in place.
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from argus.infra.clients import admin

    client = admin(bootstrap, client_settings)  # client_settings: e.g. the secure local broker's admin
    try:
        existing = set(client.list_topics())
        missing = [
            NewTopic(
                spec.name,
                event_partitions if spec.role == "events" else other_partitions,
                1,
                topic_configs=dict(spec.configs),
            )
            for spec in TOPICS
            if spec.name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # created concurrently elsewhere
                client.create_topics(missing)
        _align_configs(client, [spec for spec in TOPICS if spec.name in existing and spec.configs])
        return [t.name for t in missing]
    finally:
        client.close()


def ensure_alert_topics(bootstrap: str | None = None) -> None:
    """Before alerts are published: the layout's topics exist, alert topics compacted. A cluster whose
    admins manage its topics (this client may not create or alter them) is used as it is."""
    from kafka.errors import AuthorizationError

    with contextlib.suppress(AuthorizationError):
        ensure_topics(bootstrap)


def topic_configs(names: list[str], bootstrap: str | None = None) -> dict[str, dict[str, str]]:
    """The current value of every setting of each named topic (defaults included)."""
    from argus.infra.clients import admin

    client = admin(bootstrap)
    try:
        return _describe(client, names)
    finally:
        client.close()


def _describe(client: Any, names: list[str]) -> dict[str, dict[str, str]]:
    from kafka.admin import ConfigResource, ConfigResourceType

    if not names:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    described = client.describe_configs(resources, config_filter="all")  # {"topic": {name: {key: {"value": ...}}}}
    return {
        str(name): {str(key): str(entry["value"]) for key, entry in entries.items()}
        for name, entries in described.get("topic", {}).items()
    }


def _align_configs(client: Any, specs: list[TopicSpec]) -> None:
    """Alter the topics whose settings differ from their role's (only the differing keys)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    current = _describe(client, [spec.name for spec in specs])
    changes = [
        ConfigResource(ConfigResourceType.TOPIC, spec.name, configs=diff)
        for spec in specs
        if (diff := {k: v for k, v in spec.configs.items() if current.get(spec.name, {}).get(k) != v})
    ]
    if changes:
        from kafka.errors import KafkaError, TopicAuthorizationFailedError

        results = client.alter_configs(changes).get("topic", {})
        failed = {name: str(result) for name, result in results.items() if str(result) != "OK"}
        if any("Authorization" in why for why in failed.values()):
            raise TopicAuthorizationFailedError(f"not allowed to change the settings of {', '.join(failed)}")
        if failed:
            raise KafkaError(f"could not apply the layout's topic settings: {failed}")


def topic_sizes(
    bootstrap: str | None = None, client_settings: dict[str, Any] | None = None
) -> dict[str, dict[str, int]]:
    """Per topic of the layout: partitions and records retained (end minus beginning offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    from argus.infra.clients import consumer

    client = consumer(bootstrap=bootstrap) if client_settings is None else KafkaConsumer(**client_settings)
    try:
        sizes = {}
        available = client.topics()
        for spec in TOPICS:
            if spec.name not in available:
                continue
            parts = [TopicPartition(spec.name, p) for p in sorted(client.partitions_for_topic(spec.name) or [])]
            ends, begins = client.end_offsets(parts), client.beginning_offsets(parts)
            sizes[spec.name] = {"partitions": len(parts), "records": sum(ends[p] - begins[p] for p in parts)}
        return sizes
    finally:
        client.close()
