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

from argus.world.config import WorldConfig
from argus.world.figures import world_figures
from argus.world.simulate import World
from argus.world.sinks import lake_path, write_world
from argus.world.truth import truth_summary, truth_table

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
    cfg = WorldConfig(users=150, days=2, seed=5, events_per_user_day=20.0, profile="dense")
    write_world(World(cfg), tmp_path / "a")
    write_world(World(cfg), tmp_path / "b")
    write_world(
        World(WorldConfig(users=150, days=2, seed=6, events_per_user_day=20.0, profile="dense")), tmp_path / "c"
    )
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_days_are_independent_of_generation_order() -> None:
    world = World(WorldConfig(users=120, days=3, seed=9, events_per_user_day=20.0, profile="dense"))
    later_first = world.day(2)
    world.day(0)
    assert world.day(2)["chat"].equals(later_first["chat"])


def test_lake_layout_and_idempotent_rerun(tmp_path: Path) -> None:
    cfg = WorldConfig(users=100, days=2, seed=3, events_per_user_day=20.0, profile="dense")
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
    with pytest.raises(ValueError, match="realistic or dense"):
        WorldConfig(profile="sparse")
    with pytest.raises(ValueError, match="at most 1"):
        WorldConfig(household_fraction=0.6, carrier_nat_fraction=0.5)


# --- profiles ---------------------------------------------------------------------------


def test_profiles_resolve_their_defaults_and_tag_their_worlds() -> None:
    realistic, dense = WorldConfig(), WorldConfig(profile="dense")
    assert realistic.profile == "realistic" and realistic.events_per_user_day == 4.0
    assert dense.events_per_user_day == 118.0 and dense.ban_rate_trolls == 0.55
    assert WorldConfig(profile="dense", events_per_user_day=20.0).events_per_user_day == 20.0
    assert realistic.to_json()["profile"] == "realistic" and dense.to_json()["profile"] == "dense"
    assert "lurker_fraction" in realistic.to_json() and "lurker_fraction" not in dense.to_json()
    ids = {cfg.profile: World(cfg).day(0)["account"]["event_id"][0].as_py() for cfg in (realistic, dense)}
    assert ids["realistic"].split("-")[1] != ids["dense"].split("-")[1]


def test_dense_profile_is_unchanged() -> None:
    """Exact figures of the world the detectors were written against, recorded before profiles existed."""
    world = World(WorldConfig(users=150, days=2, seed=5, events_per_user_day=20.0, profile="dense"))
    counts: dict[str, list[int]] = {}
    for d in range(2):
        for event_type, table in world.day(d).items():
            counts.setdefault(event_type, []).append(table.num_rows)
    assert counts == {
        "chat": [1244, 1134],
        "click": [1103, 1132],
        "payment": [184, 322],
        "account": [204, 183],
        "moderation": [4, 3],
    }
    chat = world.day(1)["chat"]
    rows = zip(chat["event_id"].to_pylist(), chat["user_id"].to_pylist(), chat["text"].to_pylist(), strict=True)
    digest = hashlib.sha256("\n".join(f"{e}|{u}|{t}" for e, u, t in rows).encode()).hexdigest()
    assert chat["event_id"][0].as_py() == "e5-712e81-0001-ch0"
    assert digest == "57f9cf8f62d53fdc4ee3ac84fe67cc0bb1874ede370f1463b1b33041751ec624"


def test_realistic_world_is_deterministic_by_seed(tmp_path: Path) -> None:
    cfg = WorldConfig(users=300, days=3, seed=5)
    write_world(World(cfg), tmp_path / "a")
    write_world(World(cfg), tmp_path / "b")
    write_world(World(WorldConfig(users=300, days=3, seed=6)), tmp_path / "c")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


@pytest.fixture(scope="module")
def realistic() -> tuple[World, dict[str, pa.Table]]:
    """The default world: realistic, 2,000 users, 7 days."""
    world = World(WorldConfig())
    days = [tables for _, tables in world.days()]
    return world, {t: pa.concat_tables([d[t] for d in days]) for t in days[0]}


def _frame(tables: dict[str, pa.Table], event_type: str) -> pd.DataFrame:
    return tables[event_type].to_pandas()


def test_realistic_activity_is_heavy_tailed(realistic: tuple[World, dict[str, pa.Table]]) -> None:
    world, tables = realistic
    figures = world_figures(world, tables)
    assert figures["share_user_days_le3_events"] > 0.58  # most active days are a glance
    assert 0.4 <= figures["share_active_never_chat"] <= 0.62  # lurkers, 90-9-1
    assert figures["share_payers_paying_once"] > 0.35
    assert figures["share_payers_paying_at_most_twice"] > 0.55
    assert figures["events_per_user_day"] < 4.0
    # Return days: most active users come on one or two days, a few every day.
    bulk = pd.concat([_frame(tables, t)[["user_id", "ts"]] for t in ("chat", "click", "payment")])
    active_days = bulk.assign(day=bulk.ts.dt.date).groupby("user_id").day.nunique()
    assert (active_days <= 2).mean() > 0.6
    assert 0.02 < (active_days == 7).mean() < 0.15
    # Lurkers as planned: the share of base accounts that never chat matches the parameter.
    pop, cfg = world.pop, world.cfg
    base = np.arange(cfg.users)
    never = (pop.type_share[base, 0] == 0) & ~pop.is_troll[base]
    assert abs(never.mean() - cfg.lurker_fraction * (1 - cfg.troll_fraction)) < 0.04
    # Chatters write a few messages per session: per (user, hour) mostly 1-5.
    chat = _frame(tables, "chat")
    per_hour = chat.groupby([chat.user_id, chat.ts.dt.floor("h")]).size()
    assert ((per_hour >= 1) & (per_hour <= 5)).mean() > 0.7


def test_realistic_bad_actors_are_sparse_and_not_the_only_loud_ones(
    realistic: tuple[World, dict[str, pa.Table]],
) -> None:
    world, tables = realistic
    truth = truth_table(world).to_pandas().set_index("user_id")
    chat = _frame(tables, "chat")
    messages = chat.groupby("user_id").size()
    trolls = truth.index[truth.is_troll]
    troll_messages = messages.reindex(trolls, fill_value=0)
    assert troll_messages.median() <= 15
    assert (troll_messages <= 3).sum() >= 5
    top = messages.nlargest(30).index
    assert (~truth.loc[top, "is_troll"]).sum() >= 15  # heavy chatters are mostly fans and regulars
    first_word = chat.text.str.split().str[0]  # an emote may follow the words, in its own case
    shouting = chat.assign(caps=first_word.str.isupper()).groupby("user_id").caps.agg(["mean", "size"])
    loud_fans = shouting[(shouting["mean"] > 0.3) & (shouting["size"] >= 20)].index
    assert (~truth.loc[loud_fans, "is_troll"]).sum() >= 10
    evaders = truth[truth.is_evader]
    everything = pd.concat([_frame(tables, t)[["user_id"]] for t in ("chat", "click", "payment")])
    evader_events = everything.user_id.value_counts().reindex(evaders.index, fill_value=0)
    assert len(evaders) > 0 and evader_events.median() <= 10


def test_realistic_look_alikes_of_every_role(realistic: tuple[World, dict[str, pa.Table]]) -> None:
    world, tables = realistic
    truth = truth_table(world).to_pandas().set_index("user_id")
    honest = truth.index[truth.fraud_ring.isna() & ~truth.is_troll & ~truth.is_evader & truth.evaded_as.isna()]
    payments = _frame(tables, "payment")
    purchases = payments[payments.user_id.isin(honest) & (payments.action == "purchase")]
    cards = purchases.groupby("user_id").instrument_id.nunique()
    power = cards[cards >= 5].index
    assert len(power) >= 8  # power buyers: 5-10 cards
    assert (purchases[purchases.user_id.isin(power)].status == "declined").any()
    start = pd.Timestamp(world.cfg.start, tz="UTC")
    bulk = pd.concat([_frame(tables, t)[["user_id", "ts"]] for t in ("chat", "click", "payment")])
    first_seen = bulk.groupby("user_id").ts.min().reindex(honest)
    old = truth.loc[honest, "signup_ts"] < start - pd.Timedelta(days=180)
    returning = old & (first_seen > start + pd.Timedelta(days=2))
    assert returning.sum() >= 10  # dormant accounts back after months
    new_honest = truth.loc[honest, "signup_ts"] >= start
    assert new_honest.sum() >= 0.05 * world.cfg.users


def test_realistic_normal_users_share_devices_and_networks(realistic: tuple[World, dict[str, pa.Table]]) -> None:
    world, tables = realistic
    figures = world_figures(world, tables)
    assert 0.08 < figures["share_normal_sharing_device"] < 0.3
    assert 0.45 < figures["share_normal_sharing_network"] < 0.75
    pop = world.pop
    normal = ~pop.is_troll & (pop.ring < 0) & (pop.parent < 0) & (pop.child < 0)
    per_network = pd.Series(pop.network[normal]).value_counts()
    assert per_network.max() >= 100  # carrier NAT
    assert ((per_network >= 2) & (per_network <= 5)).sum() >= 100  # homes
    assert ((per_network >= 20) & (per_network <= 100)).sum() >= 1  # a café or library


def test_realistic_labels_are_late_partial_and_noisy(realistic: tuple[World, dict[str, pa.Table]]) -> None:
    world, tables = realistic
    figures = world_figures(world, tables)
    assert figures["share_trolls_never_actioned"] > 0.5
    assert figures["normal_users_actioned"] >= 5
    truth = truth_table(world).to_pandas().set_index("user_id")
    moderation = _frame(tables, "moderation")
    warned = moderation[moderation.action.isin(["warn", "timeout"])]
    assert (~truth.loc[warned.user_id, "is_troll"]).any()  # the truth file keeps the real truth
    labels = moderation[moderation.action == "label"]
    assert len(labels) <= 0.3 * truth.fraud_ring.notna().sum()
    # Chargebacks come at least chargeback_days[0] = 10 days later: none inside a 7-day world.
    payments = _frame(tables, "payment")
    assert not (payments.context == "chargebacks").any()
    trolls = truth.index[truth.is_troll]
    reports = moderation[(moderation.action == "report") & moderation.user_id.isin(trolls)]
    assert len(reports) / (len(trolls) * world.cfg.days) < 0.15  # troll_report_rate 0.08; dense 0.6


def test_sequential_picks_follow_the_law_of_gumbel_top_k() -> None:
    """Past GUMBEL_MAX_KEYS the picks are drawn row by row without a rows x choices matrix: the same
    law (weighted sampling without replacement), distinct within a row, in linear memory."""
    from argus.world.population import _pick_sets, _sequential_picks, _zipf_weights

    weights = _zipf_weights(6, 1.0)
    exact = _pick_sets(np.random.default_rng(1), 200_000, 3, weights)  # 1.2M keys: the Gumbel path
    linear = _sequential_picks(np.random.default_rng(2), 200_000, 3, weights)
    assert linear.shape == exact.shape == (200_000, 3)
    assert (np.sort(linear, axis=1)[:, 1:] != np.sort(linear, axis=1)[:, :-1]).all()  # no repeat in a row
    for position in range(3):  # first, second and third pick: the same frequencies within sampling noise
        ours = np.bincount(linear[:, position], minlength=6) / linear.shape[0]
        gumbel = np.bincount(exact[:, position], minlength=6) / exact.shape[0]
        assert np.abs(ours - gumbel).max() < 0.006
    assert np.allclose(np.bincount(linear[:, 0], minlength=6) / linear.shape[0], weights, atol=0.004)
    # More picks than choices: every choice once, as Gumbel top-k gives.
    assert sorted(_sequential_picks(np.random.default_rng(3), 5, 9, weights)[0]) == list(range(6))


def test_a_large_world_plans_its_population_in_linear_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Merchants and channels grow with the users: the Gumbel key matrix would be users x merchants."""
    import tracemalloc

    from argus.world import population

    monkeypatch.setattr(population, "GUMBEL_MAX_KEYS", 1_000)  # a small world takes the large one's path
    tracemalloc.start()
    pop = population.build_population(WorldConfig(users=8_000, days=1), np.random.default_rng([7, 0]))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8_000 * 300 * 8  # under one users x pages matrix of keys
    assert (np.diff(np.sort(pop.channels[:8_000], axis=1), axis=1) > 0).all()
