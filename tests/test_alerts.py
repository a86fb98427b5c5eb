"""Alerts end to end: evidence on every kind, compacted topics keyed by alert id, and `argus alerts tail`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from argus.alerts_tail import TailStats, parse_since, tail_alerts, topics_for
from argus.cli import app
from argus.detectors.alerts import alerts_from_scores
from argus.detectors.events import Events
from argus.detectors.registry import detector_class
from argus.preflight import PreflightError
from argus.schemas.models import Alert
from tests.test_publish_alerts import topic_keys

runner = CliRunner()
WINDOW = (pd.Timestamp("2026-10-01", tz="UTC"), pd.Timestamp("2026-10-04", tz="UTC"))


# --- evidence ------------------------------------------------------------------------------------


def _owners(events: Events) -> dict[str, tuple[str, str, object]]:
    """event_id -> (event_type, user_id, counterparty or action)."""
    out: dict[str, tuple[str, str, object]] = {}
    for event_type, frame in events.frames.items():
        extra = "counterparty_id" if event_type == "payment" else "action"
        others = frame[extra] if extra in frame.columns else [None] * len(frame)
        for event_id, user, other in zip(frame["event_id"], frame["user_id"], others, strict=True):
            out[str(event_id)] = (event_type, str(user), other)
    return out


@pytest.mark.parametrize("name", ["trolls", "evaders", "fraud", "churn"])
def test_every_alert_cites_the_events_behind_it(name: str, small_world_events: Events) -> None:
    detector = detector_class(name)()
    features = detector.features(small_world_events)
    scores = detector.fit(features).score(features)
    alerts = alerts_from_scores(scores, detector, *WINDOW, events=small_world_events, features=features)
    assert alerts, f"the small world should give {name} alerts"
    owners = _owners(small_world_events)
    for alert in alerts:
        ids = alert.evidence_event_ids
        assert ids and len(ids) == len(set(ids)) <= 20, alert
        cited = [owners[i] for i in ids]
        first_type, first_user, first_other = cited[0]
        if name == "trolls":  # the user's own chat messages, the most violating first
            assert all(t == "chat" and u == alert.user_id for t, u, _ in cited[:5])
        elif name == "fraud":  # the payments that drove the score: sent by the user, or transfers it received
            assert first_type == "payment" and alert.user_id in (first_user, first_other)
        elif name == "evaders":  # the new account's sign-up first, and the matched banned account's ban
            assert (first_type, first_user, first_other) == ("account", alert.user_id, "signup")
            parent = next(r.text.rsplit(": ", 1)[1] for r in alert.reasons if r.feature == "parent")
            assert any(u == parent and o == "ban" for _, u, o in cited), (parent, cited)
        else:  # churn: the user's own events, newest first
            assert all(u == alert.user_id for _, u, _ in cited)


def test_evidence_lists_users_own_items_highest_score_first(small_world_events: Events) -> None:
    detector = detector_class("trolls")()
    features = detector.features(small_world_events)
    scores = detector.fit(features).score(features)
    alerts = alerts_from_scores(scores, detector, *WINDOW, events=small_world_events, features=features)
    items = detector.score_items(small_world_events, features).set_index("event_id")
    for alert in alerts[:5]:
        mine = items[items["user_id"] == alert.user_id]
        best = mine.sort_values(["flagged", "score"], ascending=False).index[0]
        assert alert.evidence_event_ids[0] == best


# --- since and kinds ---------------------------------------------------------------------------


def test_since_takes_iso_times_and_durations() -> None:
    now = datetime(2026, 10, 3, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now) == datetime(2026, 10, 3, 10, 0, tzinfo=UTC)
    assert parse_since("30m", now) == datetime(2026, 10, 3, 11, 30, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 9, 26, 12, 0, tzinfo=UTC)
    assert parse_since("2026-10-03", now) == datetime(2026, 10, 3, tzinfo=UTC)
    assert parse_since("2026-10-03T12:00+02:00", now) == datetime(2026, 10, 3, 10, 0, tzinfo=UTC)
    with pytest.raises(PreflightError, match="--since must be"):
        parse_since("yesterday", now)


def test_a_long_follower_forgets_the_oldest_ids_first() -> None:
    from argus.alerts_tail import _RecentIds

    ids = _RecentIds({"a"}, limit=2)
    ids.add("b")
    ids.add("c")
    assert "a" not in ids and "b" in ids and "c" in ids


def test_kinds_map_to_topics() -> None:
    assert topics_for([]) == ["alerts.churn", "alerts.evader", "alerts.fraud", "alerts.troll"]
    assert topics_for(["raid", "troll"]) == ["alerts.troll"]
    with pytest.raises(PreflightError, match="--kind must be one of"):
        topics_for(["frauds"])


# --- against the broker --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("alerts-world")
    args = ["--users", "300", "--days", "3", "--profile", "dense", "--events-per-user-day", "20", "--seed", "5"]
    result = runner.invoke(app, ["generate", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _detect_fraud_alerts(world: Path, out: Path, bootstrap: str) -> dict[str, object]:
    result = runner.invoke(
        app, ["detect", "fraud", "--events", str(world), "--out", str(out), "--alerts", "--bootstrap", bootstrap]
    )
    assert result.exit_code == 0, result.output
    summary: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def _tail(bootstrap: str, *args: str) -> list[Alert]:
    result = runner.invoke(app, ["alerts", "tail", "--json", "--bootstrap", bootstrap, *args])
    assert result.exit_code == 0, result.output
    return [Alert.model_validate_json(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.kafka
def test_alert_topics_are_compacted_and_existing_ones_altered(kafka_bootstrap: str) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    from argus.infra.clients import admin
    from argus.infra.topics import ALERT_TOPICS, ensure_topics, topic_configs

    ensure_topics(kafka_bootstrap)
    client = admin(kafka_bootstrap)
    try:  # an alert topic made before compaction was part of the layout
        client.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, "alerts.churn", configs={"cleanup.policy": "delete"})]
        )
    finally:
        client.close()
    _eventually(lambda: topic_configs(["alerts.churn"], kafka_bootstrap)["alerts.churn"]["cleanup.policy"] == "delete")
    ensure_topics(kafka_bootstrap)
    _eventually(
        lambda: all(
            c["cleanup.policy"] == "compact" for c in topic_configs(list(ALERT_TOPICS), kafka_bootstrap).values()
        )
    )
    events = topic_configs(["events.chat"], kafka_bootstrap)["events.chat"]
    assert events["cleanup.policy"] == "delete"  # events are never compacted: one user's key has many events


def _eventually(check: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the broker did not apply the topic settings"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def published_twice(world_dir: Path, tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Path:
    """`argus detect fraud --alerts` run twice over the same world; the first run's scores CSV."""
    out = tmp_path_factory.mktemp("alerts-scores")
    first = _detect_fraud_alerts(world_dir, out / "a.csv", kafka_bootstrap)
    second = _detect_fraud_alerts(world_dir, out / "b.csv", kafka_bootstrap)
    assert first["alerts"] == second["alerts"] and first["flagged"] == first["alerts"]["alerts.fraud"]  # type: ignore[index]
    (out / "model_version").write_text(str(first["model_version"]))
    return out / "a.csv"


@pytest.mark.kafka
def test_detect_twice_then_tail_shows_each_alert_once(published_twice: Path, kafka_bootstrap: str) -> None:
    flagged = pd.read_csv(published_twice)
    ours = {str(u) for u in flagged.loc[flagged["flagged"], "user_id"]}
    version = (published_twice.parent / "model_version").read_text()

    # On the topic: every record keyed by its alert id, ours twice (compaction keeps the last of each).
    keys = Counter(topic_keys(kafka_bootstrap, "alerts.fraud"))
    shown = _tail(kafka_bootstrap, "--kind", "fraud")
    by_user = {a.user_id: a for a in shown if a.model_version == version}
    assert set(by_user) == ours
    assert all(keys[a.alert_id] >= 2 for a in by_user.values())
    # The tail: one line per alert id, each a valid alert with its evidence.
    assert len({a.alert_id for a in shown}) == len(shown)
    assert all(a.kind == "fraud" and a.evidence_event_ids for a in shown)


@pytest.mark.kafka
def test_a_restarted_group_resumes_and_never_repeats(published_twice: Path, kafka_bootstrap: str) -> None:
    from argus.infra.clients import publish_alerts

    everything = _tail(kafka_bootstrap, "--kind", "fraud")
    group = f"on-call-{time.time_ns()}"
    head = _tail(kafka_bootstrap, "--kind", "fraud", "--group", group, "--max", "3")
    rest = _tail(kafka_bootstrap, "--kind", "fraud", "--group", group)
    assert len(head) == 3
    assert [a.alert_id for a in head + rest] == [a.alert_id for a in everything]
    # The same alerts published again (a replayed night): the group has seen those ids.
    assert publish_alerts(everything, kafka_bootstrap) == {"alerts.fraud": len(everything)}
    assert _tail(kafka_bootstrap, "--kind", "fraud", "--group", group) == []
    assert _tail(kafka_bootstrap, "--kind", "fraud") == everything  # and a new reader sees each once


@pytest.mark.kafka
def test_since_malformed_records_and_text_output(published_twice: Path, kafka_bootstrap: str) -> None:
    from argus.infra.clients import producer

    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert _tail(kafka_bootstrap, "--kind", "fraud", "--since", future) == []
    assert _tail(kafka_bootstrap, "--kind", "fraud", "--since", "1h")

    sink = producer(kafka_bootstrap)
    sink.send("alerts.evader", key=b"not-an-alert", value=b'{"alert_id": "x"}')
    sink.flush()
    sink.close()
    stats = TailStats()
    list(tail_alerts(["evader"], bootstrap=kafka_bootstrap, stats=stats))
    assert stats.malformed >= 1 and "not an alert" in stats.problems[0]

    text = runner.invoke(app, ["alerts", "tail", "--kind", "fraud", "--max", "2", "--bootstrap", kafka_bootstrap])
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0].split()[0] in ("CRITICAL", "HIGH", "MEDIUM", "LOW") and "fraud" in lines[0]
    assert any(line.startswith("    - ") for line in lines)  # reasons under the alert
    assert any("evidence:" in line for line in lines)


def test_tail_with_no_broker_is_one_line_and_fast() -> None:
    from argus.infra.broker import free_port

    result = subprocess.run(
        [sys.executable, "-m", "argus.cli", "alerts", "tail", "--bootstrap", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "no Kafka broker answers" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.kafka
def test_follow_shows_alerts_as_they_arrive(published_twice: Path, kafka_bootstrap: str) -> None:
    import threading

    from argus.infra.clients import publish_alerts

    template = _tail(kafka_bootstrap, "--kind", "fraud", "--max", "1")[0]
    fresh = [template.model_copy(update={"alert_id": f"fraud-follow-{time.time_ns()}-{i}"}) for i in range(3)]
    arrived: list[str] = []
    since = datetime.now(UTC)

    def follow() -> None:
        for tailed in tail_alerts(["fraud"], since=since, follow=True, max_alerts=3, bootstrap=kafka_bootstrap):
            arrived.append(tailed.alert.alert_id)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    time.sleep(2)  # the follower is waiting at the end of the topic
    publish_alerts(fresh + fresh, kafka_bootstrap)  # twice: shown once each
    reader.join(timeout=120)
    assert not reader.is_alive()
    assert arrived == [a.alert_id for a in fresh]
