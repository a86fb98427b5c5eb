"""Shared fixtures: one real Kafka broker per test session, and one small world."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from argus.detectors.events import Events
from argus.evals.common import world_events as events_of
from argus.infra.broker import LocalBroker, free_port
from argus.world.config import WorldConfig
from argus.world.simulate import World

SMALL_WORLD = WorldConfig(users=400, days=3, seed=11, events_per_user_day=40.0, profile="dense")


@pytest.fixture(scope="session")
def small_world() -> World:
    return World(SMALL_WORLD)


@pytest.fixture(scope="session")
def small_world_events(small_world: World) -> Events:
    """The small world's events as the detectors read them."""
    return events_of(small_world)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Apache Kafka broker (KRaft) on a free port, for the whole session."""
    broker = LocalBroker(home=tmp_path_factory.mktemp("kafka"), port=free_port(), heap="512m")
    broker.up()
    try:
        yield broker.bootstrap
    finally:
        broker.down()


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """A local Spark session with the Kafka connector, shared by the batch-job tests."""
    from argus.infra.spark import local_session

    small = {"spark.sql.shuffle.partitions": "2", "spark.databricks.delta.snapshotPartitions": "2"}
    session = local_session("argus-tests", **small, **{"spark.driver.memory": "1g"})
    yield session
    session.stop()


@pytest.fixture
def unique_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands under test never touch the user's ~/.argus or argus.toml, but share the jar cache."""
    from argus.infra.broker import argus_home

    cache = argus_home() / "cache"
    home = tmp_path / "argus-home"
    home.mkdir()
    (home / "cache").symlink_to(cache, target_is_directory=True)
    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("ARGUS_HOME", str(home))
    (tmp_path / "argus.toml").write_text("")
    monkeypatch.setenv("ARGUS_CONFIG", str(tmp_path / "argus.toml"))
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
