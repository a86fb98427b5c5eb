"""The Kafka topic layout every Argus part agrees on."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from schemas.models import EVENT_TYPES

DLQ_TOPIC = "dlq.events"
ALERT_KINDS = ("troll", "evader", "fraud", "churn")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    role: str  # "events", "alerts" or "dlq"


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


def ensure_topics(bootstrap: str | None = None, event_partitions: int = 3, other_partitions: int = 1) -> list[str]:
    """Create the missing topics of the layout; return the names created. Existing topics are kept."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from infra.clients import admin

    client = admin(bootstrap)
    try:
        existing = set(client.list_topics())
        missing = [
            NewTopic(spec.name, event_partitions if spec.role == "events" else other_partitions, 1)
            for spec in TOPICS
            if spec.name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # created concurrently elsewhere
                client.create_topics(missing)
        return [t.name for t in missing]
    finally:
        client.close()


def topic_sizes(bootstrap: str | None = None) -> dict[str, dict[str, int]]:
    """Per topic of the layout: partitions and records retained (end minus beginning offsets)."""
    from kafka import TopicPartition

    from infra.clients import consumer

    client = consumer(bootstrap=bootstrap)
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
