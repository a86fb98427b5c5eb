"""Benchmarks behind ``argus bench``: each returns a dict that the CLI prints as one JSON line."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra.broker import LocalBroker, free_port
from infra.topics import ensure_topics
from world.config import WorldConfig
from world.generate import World, produce_world, write_world


@contextmanager
def scratch_broker() -> Iterator[str]:
    """A throw-away local broker on a free port, stopped and deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="argus-bench-kafka-") as home:
        broker = LocalBroker(home=Path(home), port=free_port())
        broker.up()
        try:
            ensure_topics(broker.bootstrap)
            yield broker.bootstrap
        finally:
            broker.down()


def bench_generate(users: int, days: int, kafka: bool = True, bootstrap: str | None = None) -> dict[str, Any]:
    cfg = WorldConfig(users=users, days=days)
    result: dict[str, Any] = {"users": users, "days": days}
    with tempfile.TemporaryDirectory(prefix="argus-bench-") as out:
        started = time.perf_counter()
        manifest = write_world(World(cfg), Path(out), "parquet")
        seconds = time.perf_counter() - started
    events = sum(sum(d.values()) for d in manifest["events"].values())
    result.update(events=events, files_s=round(seconds, 3), events_per_s_files=round(events / seconds))
    if kafka:
        target = bootstrap or os.environ.get("KAFKA_BOOTSTRAP")
        with _given(target) if target else scratch_broker() as servers:
            started = time.perf_counter()
            sent = sum(produce_world(World(cfg), servers).values())
            seconds = time.perf_counter() - started
        result.update(kafka_s=round(seconds, 3), events_per_s_kafka=round(sent / seconds))
    return result


@contextmanager
def _given(bootstrap: str) -> Iterator[str]:
    ensure_topics(bootstrap)
    yield bootstrap
