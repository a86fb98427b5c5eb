"""The streaming pipeline on Prism against the real broker: alerts out, dead letters, replays, kill -9."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from argus.evals.common import world_events
from detectors.chat_features import chat_context_features
from detectors.events import Events
from detectors.fraud import FraudDetector
from detectors.store import ModelStore
from detectors.trolls import TrollDetector
from infra.topics import ALERT_KINDS
from pipelines.stream_detectors import UserChatState, apply_window_sums, chat_feature_rows, epoch_us, window_sums
from world.bad_records import malformed_records
from world.config import WorldConfig
from world.simulate import World

pytestmark = pytest.mark.kafka
WORLD = WorldConfig(users=150, days=2, seed=11, events_per_user_day=25.0, troll_fraction=0.1, profile="dense")


def _prism() -> Path:
    from infra.prism import PrismError, fetch_prism

    try:
        return fetch_prism()
    except PrismError as exc:
        pytest.skip(f"the Prism runner cannot be built here: {exc}")


@pytest.fixture(scope="module")
def world_and_events() -> tuple[World, Events]:
    world = World(WORLD)
    return world, world_events(world)


def test_streamed_chat_features_equal_the_nightly_ones(world_and_events: tuple[World, Events]) -> None:
    """Per-window sums by channel, added per user in event-time order, give chat_context_features exactly."""
    _, events = world_and_events
    chat = events["chat"]
    parts: dict[str, list] = {}  # type: ignore[type-arg]
    for channel, frame in chat.groupby("context"):
        messages = [
            (r.event_id, r.user_id, epoch_us(r.ts.to_pydatetime()), r.text, r.channel_mode)
            for r in frame.itertuples(index=False)
        ]
        for user, part in window_sums(str(channel), messages, 600):
            parts.setdefault(user, []).append(part)
    rows = []
    for user in sorted(parts):
        state = UserChatState()
        for slot in sorted({p.slot for p in parts[user]}):
            apply_window_sums(state, [p for p in parts[user] if p.slot == slot])
        rows.append((user, state.sums, state.texts))
    streamed = chat_feature_rows(rows, 600)
    nightly = chat_context_features(chat)
    pd.testing.assert_frame_equal(streamed, nightly, check_exact=False, rtol=1e-9)


@pytest.fixture(scope="module")
def published(world_and_events: tuple[World, Events], tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    """Troll and fraud models fitted on the world, published; the users they flag on all of it."""
    _, events = world_and_events
    store = ModelStore(tmp_path_factory.mktemp("models"))
    flagged = {}
    for detector in (TrollDetector(), FraudDetector()):
        features = detector.features(events)
        detector.fit(features)
        store.publish(detector)
        scores = detector.score(features)
        flagged[detector.alert_kind] = set(scores.loc[scores["flagged"], "user_id"])
    return {"store": store.root, "flagged": flagged}


@pytest.fixture(scope="module")
def stream_topics(kafka_bootstrap: str, world_and_events: tuple[World, Events]) -> dict:  # type: ignore[type-arg]
    """The world and malformed records produced to this module's own event topics."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from infra.clients import BulkProducer
    from world.sinks import event_records

    world, _ = world_and_events
    prefix = f"s{os.getpid()}"
    names = {t: f"{prefix}.events.{t}" for t in ("chat", "click", "payment", "account", "moderation")}
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(n, 3, 1) for n in names.values()])
    admin.close()
    producer = BulkProducer(kafka_bootstrap)
    for topic, keys, values in event_records(world):
        producer.send_many(names[topic.split(".", 1)[1]], keys, values)
    # Duplicates of a valid event pass the stateless check and are dropped (and counted) by the window state.
    bad = [r for r in malformed_records(16) if r[3] not in (None, "duplicate_event_id")]
    for _topic, key, value, _ in bad:
        producer.send_many(names["chat"], [key], [value])
    producer.flush()
    return {"topics": list(names.values()), "bad": bad, "prefix": prefix}


def _outputs(bootstrap: str, prefix: str) -> tuple[list[str], list[dict]]:  # type: ignore[type-arg]
    """(alert ids in the order written, dead letters) of one run's output topics."""
    from pipelines.kafka_io import published_identities

    ids = list(
        published_identities(bootstrap, [f"{prefix}.alerts.{k}" for k in ALERT_KINDS], lambda t, k, v: k.decode())
    )
    letters = list(published_identities(bootstrap, [f"{prefix}.dlq"], lambda t, k, v: v.decode()))
    return ids, [json.loads(x) for x in letters]


def _output_topics(bootstrap: str, prefix: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics(
        [NewTopic(f"{prefix}.alerts.{k}", 1, 1) for k in ALERT_KINDS] + [NewTopic(f"{prefix}.dlq", 1, 1)]
    )
    admin.close()


def _run(bootstrap: str, topics: dict, published: dict, out: str) -> dict:  # type: ignore[type-arg]
    from pipelines.stream import StreamConfig, run_stream

    _prism()
    _output_topics(bootstrap, out)
    config = StreamConfig(
        model_store=published["store"],
        topics=topics["topics"],
        bootstrap=bootstrap,
        bounded=True,
        alerts_prefix=f"{out}.alerts",
        dlq_topic=f"{out}.dlq",
    )
    return run_stream(config)


@pytest.fixture(scope="module")
def first_run(kafka_bootstrap: str, stream_topics: dict, published: dict) -> dict:  # type: ignore[type-arg]
    out = f"{stream_topics['prefix']}-a"
    counters = _run(kafka_bootstrap, stream_topics, published, out)
    ids, letters = _outputs(kafka_bootstrap, out)
    return {"counters": counters, "ids": ids, "letters": letters}


def test_events_in_alerts_out(
    first_run: dict,
    published: dict,
    world_and_events: tuple[World, Events],
    kafka_bootstrap: str,
    stream_topics: dict,  # type: ignore[type-arg]
) -> None:
    _, events = world_and_events
    counters = first_run["counters"]
    assert counters["state"].endswith("DONE")
    assert counters["events"] == events.count
    assert counters["late_events"] == 0
    out = f"{stream_topics['prefix']}-a"
    alerts = []
    from pipelines.kafka_io import published_identities

    for kind in ("troll", "fraud"):
        values = published_identities(kafka_bootstrap, [f"{out}.alerts.{kind}"], lambda t, k, v: v.decode())
        alerts += [json.loads(v) for v in values]
    by_kind: dict[str, set[str]] = {}
    for alert in alerts:
        by_kind.setdefault(alert["kind"], set()).add(alert["user_id"])
        day = pd.Timestamp(alert["window_start"])
        assert pd.Timestamp(alert["window_end"]) - day == pd.Timedelta(days=1) and day == day.floor("D")
        assert alert["evidence_event_ids"] and alert["model_version"].startswith(("trolls-", "fraud-"))
    # Whoever the nightly model flags on all the events is flagged by the stream by the time they arrive.
    for kind in ("troll", "fraud"):
        assert published["flagged"][kind], kind
        assert published["flagged"][kind] <= by_kind.get(kind, set()), kind
    assert len(first_run["ids"]) == len(set(first_run["ids"]))


def test_bad_records_go_to_the_dead_letter_topic_while_good_ones_flow(first_run: dict, stream_topics: dict) -> None:  # type: ignore[type-arg]
    letters = first_run["letters"]
    expected = sorted(code for *_, code in stream_topics["bad"])
    assert sorted(letter["reason_code"] for letter in letters) == expected
    originals = {base64.b64decode(letter["original_b64"]) for letter in letters}
    assert originals == {value for _, _, value, _ in stream_topics["bad"]}
    for letter in letters:
        assert letter["source_topic"] == stream_topics["topics"][0] and letter["source_offset"] >= 0
        assert letter["reason"]
    assert first_run["counters"]["dead_letters"] == len(expected)
    assert first_run["ids"]  # the good records around them still made alerts


def test_the_same_input_gives_the_same_alert_ids(
    first_run: dict,
    kafka_bootstrap: str,
    stream_topics: dict,
    published: dict,  # type: ignore[type-arg]
) -> None:
    out = f"{stream_topics['prefix']}-b"
    _run(kafka_bootstrap, stream_topics, published, out)
    ids, _ = _outputs(kafka_bootstrap, out)
    assert sorted(ids) == sorted(first_run["ids"])


def test_killed_mid_stream_and_restarted_loses_nothing_and_repeats_no_alert(
    first_run: dict,
    kafka_bootstrap: str,
    stream_topics: dict,
    published: dict,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    _prism()
    out = f"{stream_topics['prefix']}-k"
    _output_topics(kafka_bootstrap, out)
    cmd = [
        sys.executable,
        "-m",
        "argus.cli",
        "stream",
        "run",
        "--bounded",
        "--model-store",
        str(published["store"]),
        "--topics",
        ",".join(stream_topics["topics"]),
        "--bootstrap",
        kafka_bootstrap,
        "--alerts-prefix",
        f"{out}.alerts",
        "--dlq-topic",
        f"{out}.dlq",
    ]
    log = (tmp_path / "first.log").open("wb")
    victim = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None:  # kill once some output is out
        ids, letters = _outputs(kafka_bootstrap, out)
        if ids or letters:
            break
        time.sleep(0.5)
    assert victim.poll() is None, "the first run ended before it could be killed"
    os.killpg(victim.pid, signal.SIGKILL)  # the pipeline and its Prism runner
    victim.wait()
    partial_ids, _ = _outputs(kafka_bootstrap, out)
    assert len(partial_ids) < len(first_run["ids"])
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    ids, letters = _outputs(kafka_bootstrap, out)
    assert sorted(ids) == sorted(first_run["ids"])  # every alert, none twice
    assert sorted(letter["source_offset"] for letter in letters) == sorted(
        letter["source_offset"] for letter in first_run["letters"]
    )


def test_user_mistakes_are_one_line(tmp_path: Path) -> None:
    from pipelines.stream import StreamConfig, StreamError

    with pytest.raises(StreamError, match="unknown streaming detector"):
        StreamConfig(model_store=tmp_path, detectors=["gremlins"]).check()
    with pytest.raises(StreamError, match="no trolls model published"):
        StreamConfig(model_store=tmp_path, detectors=["trolls"]).check()
    with pytest.raises(StreamError, match="unknown runner"):
        StreamConfig(model_store=tmp_path, runner="spark").check()
