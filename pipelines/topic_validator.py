"""Kafka -> validate -> dead-letter, with plain kafka-python consumers (no engine needed).

Used by ``argus validate`` and the demo to check what landed on the event topics; the Beam
pipeline applies the same ``argus.schemas.validate`` per record. Offsets are committed only after
the dead letters of a poll are flushed, so a crash never loses a rejected record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from argus.infra import clients
from argus.infra.topics import DLQ_TOPIC, EVENT_TOPICS
from argus.schemas.bounds import EventTimeBounds, current_bounds
from argus.schemas.models import EventBase
from argus.schemas.validate import DUPLICATE_EVENT_ID, Rejection, validate

MAX_REMEMBERED_IDS = 5_000_000


@dataclass
class ValidationReport:
    valid: Counter[str] = field(default_factory=Counter)  # per topic
    rejected: Counter[str] = field(default_factory=Counter)  # per reason code
    rejected_by_topic: Counter[str] = field(default_factory=Counter)

    @property
    def dead_lettered(self) -> int:
        return sum(self.rejected.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": dict(sorted(self.valid.items())),
            "valid_total": sum(self.valid.values()),
            "dead_lettered": self.dead_lettered,
            "rejected_by_reason": dict(sorted(self.rejected.items())),
        }


def validate_topics(
    topics: Sequence[str] = EVENT_TOPICS,
    group_id: str = "argus-validator",
    bootstrap: str | None = None,
    idle_timeout_s: float = 10.0,
    progress: Callable[[int], None] | None = None,
    dlq_topic: str = DLQ_TOPIC,
) -> ValidationReport:
    """Validate every record up to the topics' current ends; dead-letter the rejects."""
    # Denied topics would otherwise read as empty (a consumer is told nothing) or fail at the first reject.
    clients.require_topic_access(topics, "READ", bootstrap)
    clients.require_topic_access([dlq_topic], "WRITE", bootstrap)
    consumer = clients.consumer(bootstrap=bootstrap, group_id=group_id, enable_auto_commit=False, max_poll_records=5000)
    dlq = clients.producer(bootstrap=bootstrap)
    report = ValidationReport()
    seen: set[str] = set()
    bounds = current_bounds()
    try:
        consumer.subscribe(list(topics))
        ends: dict[Any, int] | None = None
        idle_since = datetime.now(UTC)
        while True:
            batch = consumer.poll(timeout_ms=500)
            if ends is None and consumer.assignment():
                ends = consumer.end_offsets(list(consumer.assignment()))
            handled = 0
            for partition, records in batch.items():
                for record in records:
                    _handle(record, partition.topic, seen, report, dlq, dlq_topic, bounds)
                handled += len(records)
            if handled:
                dlq.flush()
                consumer.commit()
                idle_since = datetime.now(UTC)
                if progress:
                    progress(handled)
            if ends is not None and all(consumer.position(tp) >= end for tp, end in ends.items()):
                break
            if (datetime.now(UTC) - idle_since).total_seconds() > idle_timeout_s:
                break
    finally:
        dlq.flush()
        dlq.close()
        consumer.close()
    return report


def _handle(
    record: Any,
    topic: str,
    seen: set[str],
    report: ValidationReport,
    dlq: Any,
    dlq_topic: str,
    bounds: EventTimeBounds,
) -> None:
    result = validate(record.value or b"", bounds=bounds)
    if isinstance(result, EventBase):
        if result.event_id in seen:
            result = Rejection(DUPLICATE_EVENT_ID, f"event_id {result.event_id!r} already seen", record.value)
        else:
            if len(seen) >= MAX_REMEMBERED_IDS:
                seen.clear()
            seen.add(result.event_id)
            report.valid[topic] += 1
            return
    letter = result.to_dead_letter(topic, record.partition, record.offset)
    dlq.send(dlq_topic, key=record.key, value=letter.model_dump_json().encode())
    report.rejected[result.reason_code] += 1
    report.rejected_by_topic[topic] += 1
