"""The generator's entry points: build a world, write it to a lake, or produce it to Kafka."""

from __future__ import annotations

from collections import Counter
from datetime import date

from argus.infra.clients import BulkProducer
from argus.world.bad_records import malformed_records
from argus.world.config import WorldConfig
from argus.world.simulate import World
from argus.world.sinks import Progress, event_records, write_world

__all__ = ["World", "config", "expected_events", "produce_world", "write_world"]


def config(
    users: int,
    days: int,
    seed: int,
    start: date,
    events_per_user_day: float | None = None,
    profile: str = "realistic",
) -> WorldConfig:
    """A world's settings; ``events_per_user_day=None`` takes the profile's default."""
    return WorldConfig(
        users=users, days=days, seed=seed, start=start, events_per_user_day=events_per_user_day, profile=profile
    )


def expected_events(world: World) -> int:
    """About how many events the world holds (for progress bars)."""
    return int((world.pop.rate * world.pop.visit_prob).sum() * world.cfg.days * 1.05)


def produce_world(
    world: World, bootstrap: str | None, progress: Progress | None = None, bad_records: int = 0
) -> Counter[str]:
    """Produce every event (and ``bad_records`` malformed ones) to the events.* topics; return counts per topic."""
    producer = BulkProducer(bootstrap)
    sent: Counter[str] = Counter()
    for topic, keys, values in event_records(world):
        producer.send_many(topic, keys, values)
        sent[topic] += len(values)
        if progress:
            progress(len(values))
    for topic, key, value, _ in malformed_records(bad_records):
        producer.send_many(topic, [key], [value])
        sent[topic] += 1
    producer.flush()
    return sent
