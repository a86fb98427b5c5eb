"""The sparse-user streaming adapters against the real broker: churn on silence, evaders on sign-up, one-message trolls.

One hand-made event log, one bounded pipeline run on Prism with the three adapters, several checks:
the churn alerts are raised on the day the nightly model first flags the silence, the streamed churn
features of each replayed day equal the nightly ones, a new account on a banned account's device is
flagged at sign-up (a ban from the stream and one the nightly model holds), and a user with one hostile
message gets a troll alert that says it rests on one message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from argus.detectors.churn import ChurnDetector
from argus.detectors.evaders import EvaderDetector
from argus.detectors.events import Events
from argus.detectors.store import ModelStore
from argus.detectors.trolls import TrollDetector
from argus.infra.topics import ALERT_KINDS
from tests.beam_state import FakeBag, FakeTimer, FakeValue

START = pd.Timestamp("2026-10-01", tz="UTC")
DAYS = 40
CHURN_USERS = 60
PHRASES = ("nice play", "gg well played", "what a save", "lets go team", "that was close", "love this stream")
DEVICE_OF_BANNED = "d5" * 8  # a device of an account the nightly evader model knows as banned
STREAM_DEVICE = "fa" * 8  # a device first seen in the stream, on an account a moderator bans there
WORDS = ("", "", "", "", "maplegrove", "tidalpool", "copperkettle", "saltmarsh", "hilltopfox", "embercloud")
HOSTILE = "@c40 you are a stupid idiot, shut up you worthless trash"


def _event(kind: str, user: str, ts: pd.Timestamp, event_id: str, **fields: object) -> dict[str, object]:
    stamp = ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return {"event_id": event_id, "event_type": kind, "ts": stamp, "user_id": user, **fields}


def churn_log() -> list[dict[str, object]]:
    """60 users chatting daily (clicks every other day); 36 leave on days 8..25, the rest stay to day 39."""
    events = []
    for i in range(CHURN_USERS):
        user = f"c{i:02d}"
        leaves = 8 + i % 18 if i < 36 else DAYS
        for day in range(leaves):
            at = START + pd.Timedelta(days=day, hours=10, minutes=i)
            text = PHRASES[(i + day) % len(PHRASES)]
            events.append(_event("chat", user, at, f"m-{user}-{day}", context=f"ch{i % 3}", text=text))
            if (day + i) % 2 == 0:
                click = at + pd.Timedelta(hours=2)
                events.append(_event("click", user, click, f"k-{user}-{day}", context="home", action="view"))
    return events


def evader_history() -> Events:
    """What the nightly evader model was fitted on: ten banned accounts and ten new ones, four on a
    banned account's device (the unsupervised fit learns from such pairs)."""
    rows = []
    for i in range(10):
        device = DEVICE_OF_BANNED if i == 5 else f"b{i}" * 8
        signup = START - pd.Timedelta(days=40)
        rows.append(_event("account", f"b{i}", signup, f"bs{i}", context="web", action="signup",
                           username=f"banned{i}wolf", device_fp=device, network_fp=f"{i}e" * 8))  # fmt: skip
        rows.append(_event("account", f"b{i}", signup + pd.Timedelta(days=9), f"bb{i}", context="web",
                           action="ban", username=f"banned{i}wolf"))  # fmt: skip
        child_device = f"b{i}" * 8 if i < 4 else f"c{i}" * 8
        rows.append(_event("account", f"n{i}", signup + pd.Timedelta(days=14), f"ns{i}", context="web",
                           action="signup", username=f"banned{i}wolf{i + 1}" if i < 4 else f"{WORDS[i]}{i * 7}",
                           device_fp=child_device,
                           network_fp=f"{i}f" * 8))  # fmt: skip
    frame = pd.DataFrame(rows).drop(columns="event_type")
    return Events.from_frames({"account": frame})


def evader_and_troll_events() -> list[dict[str, object]]:
    """Day 30: an account on a new device is banned by a moderator; two sign-ups on banned accounts'
    devices and one on a fresh device. Day 35: a user's one and only message is hostile."""
    day = START + pd.Timedelta(days=30)
    events = [
        _event(
            "account",
            "x1",
            day + pd.Timedelta(hours=9),
            "x1-login",
            context="web",
            action="login",
            username="stormrider",
            device_fp=STREAM_DEVICE,
            network_fp="ab" * 8,
        ),
        _event("moderation", "x1", day + pd.Timedelta(hours=10), "x1-ban", context="ch0", action="ban", actor_id="mod"),
        _event(
            "account",
            "e1",
            day + pd.Timedelta(hours=11),
            "e1-signup",
            context="web",
            action="signup",
            username="stormrider2",
            device_fp=STREAM_DEVICE,
            network_fp="ac" * 8,
        ),
        _event(
            "account",
            "e2",
            day + pd.Timedelta(hours=11, minutes=30),
            "e2-signup",
            context="web",
            action="signup",
            username="quietreader",
            device_fp=DEVICE_OF_BANNED,
            network_fp="ad" * 8,
        ),
        _event(
            "account",
            "e3",
            day + pd.Timedelta(hours=12),
            "e3-signup",
            context="web",
            action="signup",
            username="sunflowerfan",
            device_fp="ee" * 8,
            network_fp="ef" * 8,
        ),
    ]
    hostile_at = START + pd.Timedelta(days=35, hours=10, minutes=30)
    events.append(_event("chat", "t1", hostile_at, "t1-only", context="ch0", text=HOSTILE))
    return events


def as_events(records: list[dict[str, object]]) -> Events:
    frame = pd.DataFrame(records)
    return Events.from_frames(
        {k: part.drop(columns="event_type").dropna(axis=1, how="all") for k, part in frame.groupby("event_type")}
    )


def first_flagged_days(detector: ChurnDetector, events: Events, last_day: int) -> dict[str, int]:
    """Per user, the first day after their last activity at whose end the nightly model flags them."""
    last_active: dict[str, int] = {}
    for kind in ("chat", "click", "account"):
        frame = events[kind]
        own = frame[~frame["action"].isin(["ban", "unban"])] if "action" in frame else frame
        days = ((own["ts"] - START) // pd.Timedelta(days=1)).groupby(own["user_id"]).max()
        for user, day in days.items():
            last_active[str(user)] = max(int(day), last_active.get(str(user), -1))
    found: dict[str, int] = {}
    for day in range(1, last_day + 1):
        as_of = (START + pd.Timedelta(days=day)).date().isoformat()
        at = detector.at(as_of)
        scores = at.score(at.features(events.restrict(end=START + pd.Timedelta(days=day + 1))))
        for user, flagged in zip(scores["user_id"], scores["flagged"], strict=True):
            if flagged and user not in found and last_active.get(user, day) < day:
                found[user] = day
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    """The event log and the nightly models published: churn and trolls fitted on it, evaders on earlier accounts."""
    from argus.evals.common import world_events
    from argus.world.config import WorldConfig
    from argus.world.simulate import World

    records = churn_log() + evader_and_troll_events()
    events = as_events(records)
    store = ModelStore(tmp_path_factory.mktemp("models"))
    churn = ChurnDetector(horizon_days=7, lookback_days=14, history_days=DAYS, model="gbm", mode="daily")
    churn.fit(churn.features(events))
    assert churn.metrics["model"] == "gbm"
    store.publish(churn)
    evaders = EvaderDetector().fit(EvaderDetector().features(evader_history()))
    assert evaders.state is not None and evaders.state["fingerprint_rule"]
    store.publish(evaders)
    chat_world = world_events(World(WorldConfig(users=80, days=1, seed=5, troll_fraction=0.1, profile="dense")))
    trolls = TrollDetector()
    trolls.fit(trolls.features(chat_world))
    store.publish(trolls)
    return {"records": records, "events": events, "store": store.root, "churn": churn}


ADAPTERS = ["churn", "evaders", "troll-messages"]
EVENT_KINDS = ("chat", "click", "account", "moderation", "payment")


def _topics(bootstrap: str, prefix: str) -> list[str]:
    """A run's own event topics (two partitions each) and output topics; the event topics' names."""
    from kafka.admin import KafkaAdminClient, NewTopic

    topics = [f"{prefix}.events.{k}" for k in EVENT_KINDS]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics(
        [NewTopic(t, 2, 1) for t in topics]
        + [NewTopic(f"{prefix}.alerts.{k}", 1, 1) for k in ALERT_KINDS]
        + [NewTopic(f"{prefix}.dlq", 1, 1), NewTopic(f"{prefix}.features.churn", 1, 1)]
    )
    admin.close()
    return topics


def _produce(bootstrap: str, topics: list[str], records: list[dict[str, object]]) -> None:
    """``records`` in event-time order to their type's topic, keyed by user."""
    from argus.infra.clients import BulkProducer

    by_kind = {t.rsplit(".", 1)[1]: t for t in topics}
    producer = BulkProducer(bootstrap)
    for record in sorted(records, key=lambda r: str(r["ts"])):
        producer.send_many(
            by_kind[str(record["event_type"])], [str(record["user_id"]).encode()], [json.dumps(record).encode()]
        )
    producer.flush()


@pytest.fixture(scope="module")
def streamed(kafka_bootstrap: str, world: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    """A bounded, checkpointed run of the three adapters over the log; the alerts and churn snapshots it wrote."""
    from argus.pipelines.kafka_io import published_identities
    from argus.pipelines.stream import StreamConfig, run_stream
    from tests.test_stream import prism_or_skip

    prism_or_skip()
    prefix = f"sa{os.getpid()}"
    topics = _topics(kafka_bootstrap, prefix)
    _produce(kafka_bootstrap, topics, world["records"])
    config = StreamConfig(
        model_store=world["store"],
        detectors=ADAPTERS,
        topics=topics,
        bootstrap=kafka_bootstrap,
        bounded=True,
        alerts_prefix=f"{prefix}.alerts",
        dlq_topic=f"{prefix}.dlq",
        features_prefix=f"{prefix}.features",
        checkpoint_dir=tmp_path_factory.mktemp("checkpoints"),
        group=prefix,
    )
    counters = run_stream(config)
    alerts = [
        json.loads(v)
        for v in published_identities(
            kafka_bootstrap, [f"{prefix}.alerts.{k}" for k in ALERT_KINDS], lambda t, k, v: v.decode()
        )
    ]
    snapshots = [
        json.loads(v)
        for v in published_identities(kafka_bootstrap, [f"{prefix}.features.churn"], lambda t, k, v: v.decode())
    ]
    return {"counters": counters, "alerts": alerts, "snapshots": snapshots, "config": config, "prefix": prefix}


def _day(stamp: str) -> int:
    return int((pd.Timestamp(stamp) - START) // pd.Timedelta(days=1))


@pytest.mark.kafka
def test_churn_alerts_arrive_with_the_silence(world: dict, streamed: dict) -> None:  # type: ignore[type-arg]
    """Each user is alerted on the day the nightly model first flags their silence, once, no earlier."""
    assert streamed["counters"]["state"].endswith("DONE")
    assert streamed["counters"]["events"] == len(world["records"])
    expected = first_flagged_days(world["churn"], world["events"], DAYS - 1)
    leavers = {f"c{i:02d}" for i in range(36)}
    assert len(leavers & set(expected)) >= 30  # the model flags most of those who left
    alerts = [a for a in streamed["alerts"] if a["kind"] == "churn"]
    # Within the log: after it, the bounded run's end reads as everybody falling silent.
    streamed_days = {a["user_id"]: _day(a["window_start"]) for a in alerts if _day(a["window_start"]) < DAYS}
    assert streamed_days == expected
    by_user = [a["user_id"] for a in alerts]
    assert len(by_user) == len(set(by_user))  # one alert per silence
    leaver = next(a for a in alerts if a["user_id"] == "c00")
    assert leaver["evidence_event_ids"][0] == "m-c00-7"  # the last thing they did, first


@pytest.mark.kafka
def test_streamed_churn_features_equal_the_nightly_ones(world: dict, streamed: dict) -> None:  # type: ignore[type-arg]
    """The features snapshot of every user active on a replayed day equals ChurnDetector.at(day).features."""
    snapshots = pd.DataFrame(streamed["snapshots"])
    snapshots["day"] = snapshots["at_us"] // 86_400_000_000 - int(START.value // 86_400_000_000_000)
    churn: ChurnDetector = world["churn"]
    for day in (12, DAYS - 1):
        mine = snapshots[snapshots["day"] == day].set_index("user_id").sort_index()
        assert len(mine) >= 20  # everybody active that day (24 stay to the end)
        at = churn.at((START + pd.Timedelta(days=day)).date().isoformat())
        nightly = at.features(world["events"].restrict(end=START + pd.Timedelta(days=day + 1))).loc[mine.index]
        streamed_features = pd.DataFrame(list(mine["features"]), index=mine.index)
        columns = [c for c in nightly.select_dtypes("number").columns if c in streamed_features.columns]
        assert len(columns) > 100  # aggregates and the daily series
        pd.testing.assert_frame_equal(
            streamed_features[columns].astype(float), nightly[columns].astype(float), rtol=1e-9, atol=1e-12
        )
        scores = churn.score(nightly).set_index("user_id")["score"]
        assert np.allclose(mine["score"].astype(float), scores.loc[mine.index], rtol=1e-9, equal_nan=True)


@pytest.mark.kafka
def test_new_accounts_on_banned_devices_are_flagged_at_sign_up(streamed: dict) -> None:  # type: ignore[type-arg]
    alerts = {a["user_id"]: a for a in streamed["alerts"] if a["kind"] == "evader"}
    assert set(alerts) == {"e1", "e2"}  # e3 signed up on a device no banned account used
    # e1's parent was banned by a moderator in the stream; e2's is in the nightly model.
    assert "x1" in " ".join(r["text"] for r in alerts["e1"]["reasons"])
    assert "b5" in " ".join(r["text"] for r in alerts["e2"]["reasons"])
    assert alerts["e1"]["evidence_event_ids"][:2] == ["e1-signup", "x1-ban"]
    assert _day(alerts["e1"]["window_start"]) == 30


@pytest.mark.kafka
def test_one_hostile_message_gives_an_alert_that_says_so(streamed: dict) -> None:  # type: ignore[type-arg]
    alerts = [a for a in streamed["alerts"] if a["kind"] == "troll" and a["user_id"] == "t1"]
    assert len(alerts) == 1
    alert = alerts[0]
    status = alert["reasons"][0]
    assert status["feature"] == "status" and "1 chat message" in status["text"] and "one message" in status["text"]
    assert any(r["feature"] == "message" and "t1-only" in r["text"] for r in alert["reasons"])
    assert alert["evidence_event_ids"][0] == "t1-only"
    assert alert["alert_id"].startswith("trolls-messages-") and _day(alert["window_start"]) == 35


def test_a_model_without_a_message_part_is_refused_in_one_line(world: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    from argus.detectors.chat_features import chat_context_features
    from argus.pipelines.stream import StreamConfig, StreamError

    store = ModelStore(tmp_path / "models")
    chat = world["events"]["chat"].assign(channel_mode=None)
    profile_only = TrollDetector().fit(chat_context_features(chat))
    store.publish(profile_only)
    with pytest.raises(StreamError, match=r"--detectors troll-messages: .*no message-level part"):
        StreamConfig(model_store=store.root, detectors=["troll-messages"]).check()
    StreamConfig(model_store=store.root, detectors=["trolls"]).check()  # the context mode needs no message part


def _drive(logic: object, due: dict[int, list], state: object, until_us: int | None = None) -> tuple[list, dict]:  # type: ignore[type-arg]
    """Fire ``logic`` as a runner does: timers in event-time order, each handed the rows due by then.

    Returns the alerts and, when stopped at ``until_us``, the timers still pending (the restore's)."""
    from argus.detectors.alerts import Alert

    pending = dict(due)
    timers = set(pending)
    alerts = []
    while timers:
        at = min(timers)
        if until_us is not None and at > until_us:
            break
        timers.discard(at)
        rows = pending.pop(at, [])
        alerts += [o for o in logic.fire(state, rows, at, timers.add) if isinstance(o, Alert)]  # type: ignore[attr-defined]
    return alerts, {at: pending.get(at, []) for at in timers}


def test_churn_state_restored_mid_stream_gives_the_same_alerts(tmp_path: Path) -> None:
    """The churn stage's checkpoint (its state and waiting rows, pickled) restored on a fresh worker
    mid-stream: the wake-ups it re-arms give exactly the uninterrupted run's alerts."""
    import pickle

    from argus.pipelines.stream_adapters import ChurnLogic, ChurnShard
    from argus.pipelines.stream_detectors import StreamSettings, epoch_us
    from argus.schemas.validate import validate

    records = [r for r in churn_log() if int(str(r["user_id"])[1:]) % 4 == 0]  # 15 users: a lean run
    churn = ChurnDetector(horizon_days=7, lookback_days=7, history_days=DAYS, model="gbm", mode="daily")
    churn.fit(churn.features(as_events(records)))
    store = ModelStore(tmp_path / "models")
    store.publish(churn)
    rows = []
    for record in records:
        event = validate(json.dumps(record).encode()).model_dump()  # type: ignore[union-attr]
        rows.append((str(event["event_type"]), event, epoch_us(event["ts"])))
    settings = StreamSettings(model_store=store.root)

    def fresh() -> ChurnLogic:
        logic = ChurnLogic(settings, "churn")
        logic.setup()
        return logic

    first = fresh()
    due: dict[int, list] = {}  # type: ignore[type-arg]
    for at, part in first.due_times(rows, 0).items():
        due.setdefault(at, []).extend(part)
    uninterrupted, _ = _drive(first, due, ChurnShard())
    cut = first.close_us(int(START.value // 1000 // 86_400_000_000) + 15)  # mid-silence for several users
    state = ChurnShard()
    before, waiting = _drive(fresh(), due, state, until_us=cut)
    snapshot = pickle.dumps((state, waiting))  # what the stage's checkpoint holds for its shard
    restored_state, restored_waiting = pickle.loads(snapshot)
    worker = fresh()
    rearmed = {at: rows for at, rows in restored_waiting.items() if rows}
    rearmed.update({at: rearmed.get(at, []) for at in worker.wake_times(restored_state)})
    after, _ = _drive(worker, rearmed, restored_state)
    assert before and after  # alerts on both sides of the cut
    assert sorted(a.alert_id for a in before + after) == sorted(a.alert_id for a in uninterrupted)


def test_the_nightly_troll_model_gets_its_message_part(spark: object, tmp_path: Path) -> None:
    """`argus batch score --detector trolls` fits on the profile, then the message part on the night's
    chat (whole channels when sampled): the published model serves the per-message stream."""
    from argus.detectors.chat_features import chat_context_features
    from argus.jobs.score import night_chat
    from argus.pipelines.stream import StreamConfig
    from argus.world.config import WorldConfig
    from argus.world.simulate import World
    from argus.world.sinks import write_world

    write_world(World(WorldConfig(users=60, days=1, seed=7, troll_fraction=0.1, profile="dense")), tmp_path / "lake")
    day = (tmp_path / "lake" / "events" / "event_type=chat").glob("date=*")
    night = pd.Timestamp(next(day).name.split("=")[1]).date()
    chat = night_chat(spark, tmp_path / "lake", night)  # type: ignore[arg-type]
    assert chat is not None and len(chat) > 100
    sampled = night_chat(spark, tmp_path / "lake", night, limit=len(chat) // 3)  # type: ignore[arg-type]
    assert sampled is not None and 0 < len(sampled) < len(chat)
    per_channel = chat.groupby("context").size()
    kept = sampled.groupby("context").size()
    assert kept.equals(per_channel.loc[kept.index])  # whole channels
    trolls = TrollDetector().fit(chat_context_features(Events.from_frames({"chat": chat})["chat"]))
    store = ModelStore(tmp_path / "models")
    store.publish(trolls.fit_messages(chat))
    assert trolls.metrics["message_users_fitted"] > 0
    StreamConfig(model_store=store.root, detectors=["troll-messages"]).check()
    # Both streaming forms of the one model build side by side in one pipeline.
    import apache_beam as beam

    from argus.pipelines.stream import build_pipeline

    both = StreamConfig(model_store=store.root, detectors=["trolls", "troll-messages"], bootstrap="127.0.0.1:9")
    both.check()
    build_pipeline(beam.Pipeline(), both)


@pytest.mark.kafka
def test_a_restart_restores_the_adapters_state(kafka_bootstrap: str, streamed: dict) -> None:  # type: ignore[type-arg]
    """Run again on the same group: the first run's last cut was written (however soon after the one before),
    so the rerun restores every stage, reads nothing and raises no alert the first run did not."""
    from argus.pipelines.checkpoint import committed_offsets, load_checkpoints
    from argus.pipelines.kafka_io import published_identities
    from argus.pipelines.stream import run_stream
    from tests.test_stream import log_ends

    config = streamed["config"]
    topics = list(config.topics)
    checkpoint = next(iter(load_checkpoints(config.checkpoint_dir)))[1]
    assert {stage for stage, _ in checkpoint.snapshots} == {
        "churn.users",
        "evaders.accounts",
        "messages.channels",
        "messages.users",
    }
    ends = {t: {p: high for p, (_, high) in parts.items()} for t, parts in log_ends(kafka_bootstrap, topics).items()}
    assert checkpoint.offsets == ends  # the bounded run's last cut covers the whole log
    assert committed_offsets(kafka_bootstrap, config.group, topics) == ends
    again = run_stream(config)
    assert again["state"].endswith("DONE")
    assert again["records_read"] == 0
    alert_topics = [f"{config.alerts_prefix}.{k}" for k in ALERT_KINDS]
    ids = list(published_identities(kafka_bootstrap, alert_topics, lambda t, k, v: k.decode()))
    assert len(ids) == len(set(ids))
    assert set(ids) == {a["alert_id"] for a in streamed["alerts"]}


def _last_snapshot_per_user(bootstrap: str, topic: str) -> dict[str, dict[str, object]]:
    from argus.pipelines.kafka_io import published_identities

    last: dict[str, dict[str, object]] = {}
    for value in published_identities(bootstrap, [topic], lambda t, k, v: v.decode()):
        snapshot = json.loads(value)
        if snapshot["at_us"] >= last.get(snapshot["user_id"], {}).get("at_us", -1):
            last[snapshot["user_id"]] = snapshot
    return last


@pytest.mark.kafka
def test_killed_mid_stream_and_restarted_the_adapters_lose_nothing(
    kafka_bootstrap: str,
    world: dict,
    streamed: dict,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    """kill -9 of a live run after a checkpoint, the rest of the log produced meanwhile, a restart: it resumes
    at the committed offsets with the stages' state restored and ends with the uninterrupted run's alert ids
    (none twice) and churn features.

    The first run is unbounded over the log's first 31 days, so it cannot end before it is killed; the
    watermark then stops at the newest event it read (``--idle-slack`` far beyond the log), so nothing of
    the rest arrives late."""
    from argus.pipelines.checkpoint import committed_offsets
    from argus.pipelines.stream import run_stream
    from tests.test_stream import log_ends, prism_or_skip, published_outputs

    prism_or_skip()
    prefix = f"sk{os.getpid()}"
    topics = _topics(kafka_bootstrap, prefix)
    split = str(START + pd.Timedelta(days=31))
    first = [r for r in world["records"] if str(r["ts"]) < split]
    assert 0 < len(first) < len(world["records"])
    _produce(kafka_bootstrap, topics, first)
    common = [
        sys.executable, "-m", "argus.cli", "stream", "run", "--detectors", ",".join(ADAPTERS),
        "--model-store", str(world["store"]), "--topics", ",".join(topics), "--bootstrap", kafka_bootstrap,
        "--alerts-prefix", f"{prefix}.alerts", "--dlq-topic", f"{prefix}.dlq", "--features-prefix",
        f"{prefix}.features", "--checkpoint-dir", str(tmp_path / "checkpoints"), "--group", prefix,
        "--max-batch", "1000",  # a few batches per partition: the first cut can fall inside the log's first part
    ]  # fmt: skip
    log = (tmp_path / "first.log").open("wb")
    victim = subprocess.Popen(
        [*common, "--unbounded", "--idle-slack", "1e9"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not any(
            o for parts in committed_offsets(kafka_bootstrap, prefix, topics).values() for o in parts.values()
        ):
            assert victim.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
            time.sleep(0.5)
    finally:
        os.killpg(victim.pid, signal.SIGKILL)  # the pipeline and its Prism runner
        victim.wait()
    committed = committed_offsets(kafka_bootstrap, prefix, topics)
    _produce(kafka_bootstrap, topics, [r for r in world["records"] if str(r["ts"]) >= split])
    ends = log_ends(kafka_bootstrap, topics)
    consumed = sum(committed.get(t, {}).get(p, low) - low for t, parts in ends.items() for p, (low, _) in parts.items())
    assert 0 < consumed <= len(first)  # killed after a checkpoint, with the rest of the stream still to come
    # The restart: the same settings, bounded, in this process (its Prism runner is already up).
    restart = dataclasses.replace(
        streamed["config"],
        topics=topics,
        alerts_prefix=f"{prefix}.alerts",
        dlq_topic=f"{prefix}.dlq",
        features_prefix=f"{prefix}.features",
        checkpoint_dir=tmp_path / "checkpoints",
        group=prefix,
        max_batch=1000,
    )
    counters = run_stream(restart)
    assert counters["state"].endswith("DONE")
    # Resumed at the committed offsets: it read exactly what lay after them, no event skipped or read twice.
    assert counters["records_read"] == len(world["records"]) - consumed
    ids, _ = published_outputs(kafka_bootstrap, prefix)
    assert len(ids) == len(set(ids))  # none twice on the alert topics
    assert set(ids) == {a["alert_id"] for a in streamed["alerts"]}
    # The stages' state survived: each user's last churn features are the uninterrupted run's.
    killed = _last_snapshot_per_user(kafka_bootstrap, f"{prefix}.features.churn")
    uninterrupted = _last_snapshot_per_user(kafka_bootstrap, f"{streamed['prefix']}.features.churn")
    assert killed.keys() == uninterrupted.keys()
    for user, snapshot in uninterrupted.items():
        assert killed[user]["at_us"] == snapshot["at_us"], user
        np.testing.assert_allclose(
            pd.Series(killed[user]["features"], dtype=float).sort_index(),
            pd.Series(snapshot["features"], dtype=float).sort_index(),
            rtol=1e-9,
            atol=1e-12,
            err_msg=user,
        )


# --- the payment graph stage: its population kept from boundary to boundary ---------------------------------
def test_the_fraud_stage_gives_the_nightly_features_of_its_window_at_every_boundary(
    small_world_events: Events,
) -> None:
    """Three days through the payment-graph stage, six-hour boundaries and a one-day lookback (rows enter and
    leave its window), a twentieth of the rows arriving three batches late, one firing retried after its state
    was rolled back and a fresh worker half-way: at every boundary the users it scores get the rows of
    ``FraudDetector.features`` over the events it holds in the window, bit for bit; so do the users of the
    boundaries scored again for late rows. A boundary scored in order reads the population kept from the last."""
    from argus.detectors.fraud import FraudDetector
    from argus.pipelines.kafka_io import SourceBatch
    from argus.pipelines.stream_detectors import StreamSettings, _graph_batch, _PaymentGraphFn, epoch_us

    interval_s, lookback_us = 6 * 3_600, 86_400 * 1_000_000
    rows = [
        (kind, row, epoch_us(row["ts"].to_pydatetime()))
        for kind in ("payment", "account", "moderation", "click")
        for row in small_world_events[kind].to_dict("records")
    ]
    rows.sort(key=lambda item: item[2])
    late = np.random.default_rng(11).random(len(rows)) < 0.05
    batches: list[list[tuple[str, dict[str, object], int]]] = [[] for _ in range(0, len(rows), 400)]
    for i, (item, is_late) in enumerate(zip(rows, late, strict=True)):
        batches[min(i // 400 + 3 * is_late, len(batches) - 1)].append(item)
    delivered: list[tuple[str, dict[str, object], int]] = []
    checked: list[tuple[int, int]] = []  # (boundary, users scored)

    class Checked(FraudDetector):
        def features_for(self, events: Events, users: object, rolling: object = None) -> pd.DataFrame:
            assert rolling is not None or checked_boundary[0] <= scored_last[0]  # only one scored again builds it
            users = sorted(map(str, users))  # type: ignore[call-overload]
            streamed = super().features_for(events, users, rolling)  # type: ignore[arg-type]
            window = _window_events(delivered, checked_boundary[0] - lookback_us, checked_boundary[0])
            nightly = FraudDetector().features(window)
            assert set(streamed.index) == set(users) & set(nightly.index)
            numbers = [c for c in nightly.columns if c not in ("payment_rows", "payment_ids", "evidence")]
            pd.testing.assert_frame_equal(streamed[numbers], nightly.loc[streamed.index, numbers], check_exact=True)
            assert list(streamed["evidence"]) == list(nightly.loc[streamed.index, "evidence"])
            payment_rows = nightly.loc[streamed.index, "payment_rows"]
            for mine, everyones in zip(streamed["payment_rows"], payment_rows, strict=True):
                np.testing.assert_array_equal(mine, everyones)
            checked.append((checked_boundary[0], len(streamed)))
            return streamed.iloc[:0]  # nothing to score: the model is not what this test is about

    class Live:
        def get(self) -> FraudDetector:
            return Checked()

        def model_version(self) -> str:
            return "test"

    settings = StreamSettings(model_store=Path("unused"), fraud_interval_s=interval_s, fraud_lookback_days=1)

    def graph_stage() -> _PaymentGraphFn:
        """The stage, noting the boundary each scoring is for (a firing scores late rows' boundaries again)."""
        stage = _PaymentGraphFn(settings, "fraud")
        stage._live = Live()
        score_at = stage._score_at

        def noted(detector: FraudDetector, frames: object, boundary: int, *args: object) -> object:
            checked_boundary[0] = boundary
            return score_at(detector, frames, boundary, *args)  # type: ignore[arg-type]

        stage._score_at = noted  # type: ignore[method-assign]
        return stage

    stage = graph_stage()
    bag, ranges, done, timers = FakeBag(), FakeBag(), FakeValue(), FakeTimer()
    checked_boundary, scored_last = [0], [0]  # the boundary being scored; the last one scored before
    retried = taken_over = False
    for offset, batch in enumerate(batches):
        source = SourceBatch("events", 0, offset, offset + 1, batch)
        for key, element in _graph_batch(source, interval_s * 1_000_000):
            stage.process((key, element), ts=None, rows=bag, ranges=ranges, done=done, timer=timers)
        delivered += batch
        watermark = max(t for _, _, t in delivered) if offset < len(batches) - 1 else float("inf")
        for boundary in sorted(int(tag) for tag in timers.tags if int(tag) <= watermark):
            timers.tags.discard(str(boundary))
            scored_last[0] = done.value or 0
            scores = done.value is None or boundary > done.value  # else a late row's boundary, fired again
            if len(checked) == 4 and scores and not retried:  # the firing fails after its work: state rolls back
                retried = True
                saved, saved_done = list(bag.items), done.value
                list(stage.score(tag=str(boundary), fired=None, rows=bag, ranges=ranges, done=done))
                bag.items, done.value = saved, saved_done
            if len(checked) == 8 and scores and not taken_over:  # another worker takes the key over
                taken_over = True
                stage = graph_stage()
            list(stage.score(tag=str(boundary), fired=None, rows=bag, ranges=ranges, done=done))
    # Every six hours of the three days had users to score; boundaries were scored again for late rows (and the
    # retried firing).
    boundaries = [boundary for boundary, _ in checked]
    assert len(set(boundaries)) == 12 and len(boundaries) > 13 and min(n for _, n in checked) > 0


def _window_events(rows: list[tuple[str, dict[str, object], int]], start_us: int, end_us: int) -> Events:
    """The rows of ``[start_us, end_us)`` as ``Events`` (chat and clicks in the stage's per-interval buckets read
    the same per day)."""
    inside: dict[str, list[dict[str, object]]] = {}
    for kind, row, t_us in rows:
        if start_us <= t_us < end_us:
            inside.setdefault(kind, []).append(row)
    return Events.from_frames({kind: pd.DataFrame(part) for kind, part in inside.items()})
