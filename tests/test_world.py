"""The synthetic world: deterministic by seed, a consistent truth file, the lake layout."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from world.config import WorldConfig
from world.simulate import World
from world.sinks import lake_path, write_world
from world.truth import truth_summary, truth_table

from .conftest import SMALL_WORLD


@pytest.fixture(scope="module")
def events(small_world: World) -> dict[str, pa.Table]:
    """All days of the small world, concatenated per event type."""
    days = [tables for _, tables in small_world.days()]
    return {t: pa.concat_tables([d[t] for d in days]) for t in days[0]}


@pytest.fixture(scope="module")
def truth(small_world: World) -> pd.DataFrame:
    return truth_table(small_world).to_pandas().set_index("user_id", drop=False)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    cfg = WorldConfig(users=150, days=2, seed=5, events_per_user_day=20.0)
    write_world(World(cfg), tmp_path / "a")
    write_world(World(cfg), tmp_path / "b")
    write_world(World(WorldConfig(users=150, days=2, seed=6, events_per_user_day=20.0)), tmp_path / "c")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_days_are_independent_of_generation_order() -> None:
    world = World(WorldConfig(users=120, days=3, seed=9, events_per_user_day=20.0))
    later_first = world.day(2)
    world.day(0)
    assert world.day(2)["chat"].equals(later_first["chat"])


def test_lake_layout_and_idempotent_rerun(tmp_path: Path) -> None:
    cfg = WorldConfig(users=100, days=2, seed=3, events_per_user_day=20.0)
    manifest = write_world(World(cfg), tmp_path)
    before = _digest(tmp_path)
    for event_type in ("chat", "click", "payment", "account", "moderation"):
        for day in (date(2026, 10, 1), date(2026, 10, 2)):
            path = lake_path(tmp_path, event_type, day)
            assert path.exists()
            table = pq.read_table(path)
            assert table.num_rows == manifest["events"][event_type][day.isoformat()]
            if table.num_rows:
                dates = pc.unique(pc.strftime(table["ts"], format="%Y-%m-%d")).to_pylist()
                assert dates == [day.isoformat()]
    write_world(World(cfg), tmp_path)
    assert _digest(tmp_path) == before
    assert json.loads((tmp_path / "truth" / "truth.json").read_text())["world"]["seed"] == 3


def test_event_ids_are_unique_and_files_are_in_time_order(events: dict[str, pa.Table]) -> None:
    ids = pa.concat_arrays([t["event_id"].combine_chunks() for t in events.values()])
    assert pc.count_distinct(ids).as_py() == len(ids)
    for table in events.values():
        ts = table["ts"].to_numpy().astype("int64")
        # Sorted within each day (days are concatenated in order, so globally too).
        assert (np.diff(ts) >= 0).all()


def _user_events(events: dict[str, pa.Table]) -> pa.Table:
    return pa.concat_tables([t.select(["user_id", "ts", "event_type"]) for t in events.values()])


def test_banned_accounts_go_quiet_and_evaders_return_after_the_ban(
    events: dict[str, pa.Table], truth: pd.DataFrame
) -> None:
    everything = _user_events(events).to_pandas()
    last_seen = everything[everything.event_type != "moderation"].groupby("user_id").ts.max()
    first_seen = everything.groupby("user_id").ts.min()
    accounts = events["account"].to_pandas()
    banned = truth[truth.banned_ts.notna() & truth.unbanned_ts.isna()]
    assert len(banned) > 0
    for user in banned.user_id:
        bans = accounts[(accounts.user_id == user) & (accounts.action == "ban")]
        assert len(bans) == 1
        if user in last_seen:  # nothing but the ban itself after the ban
            assert last_seen[user] <= bans.ts.iloc[0]
    evaders = truth[truth.is_evader]
    assert len(evaders) > 0
    for child in evaders.itertuples():
        parent = truth.loc[child.parent_user_id]
        assert parent.evaded_as == child.user_id
        assert child.signup_ts > parent.banned_ts
        if child.user_id in first_seen:
            assert first_seen[child.user_id] >= child.signup_ts
            signups = accounts[(accounts.user_id == child.user_id) & (accounts.action == "signup")]
            assert len(signups) == 1


def test_churners_stop_and_fraud_rings_act(events: dict[str, pa.Table], truth: pd.DataFrame) -> None:
    everything = _user_events(events).to_pandas()
    active = everything[everything.event_type.isin(["chat", "click", "payment"])]
    last_seen = active.groupby("user_id").ts.max()
    for churner in truth[truth.churn_ts.notna()].itertuples():
        if churner.user_id in last_seen:
            assert last_seen[churner.user_id] < churner.churn_ts
    payments = events["payment"].to_pandas()
    rings = truth[truth.fraud_ring.notna()].groupby("fraud_ring")
    assert rings.ngroups == 3  # one per pattern in a small world
    for ring, members in rings:
        pattern = members.fraud_pattern.iloc[0]
        assert payments.user_id.isin(members.user_id).any(), f"{ring} ({pattern}) made no payments"
        after = payments[payments.user_id.isin(members.user_id) & (payments.ts >= members.fraud_start_ts.min())]
        if pattern == "card_testing":
            small = after[(after.amount <= 5) & (after.action == "purchase")]
            assert len(small) >= 8 * len(members) * 0.5
            assert (small.status == "declined").mean() > 0.4
        if pattern == "money_mule":
            received = payments[payments.counterparty_id.isin(members.user_id)]
            assert received.user_id.nunique() >= 8


def test_raids_are_trolls_flooding_one_channel(small_world: World, truth: pd.DataFrame) -> None:
    summary = truth_summary(small_world)
    assert summary["raids"]
    trolls = set(truth.user_id[truth.is_troll])
    for raid in summary["raids"]:
        assert set(raid["members"]) <= trolls


def test_truth_counts_match_the_table(small_world: World, truth: pd.DataFrame) -> None:
    counts = truth_summary(small_world)["counts"]
    assert counts["trolls"] == int(truth.is_troll.sum())
    assert counts["evaders"] == int(truth.is_evader.sum())
    assert counts["fraud_ring_members"] == int(truth.fraud_ring.notna().sum())
    assert len(truth) == SMALL_WORLD.users + counts["evaders"]


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="at least 50 users"):
        WorldConfig(users=3)
    with pytest.raises(ValueError, match="at least one day"):
        WorldConfig(days=0)
