"""`argus alerts publish`: a night's alert files from the lake to the alert topics, keyed by alert id."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from argus.schemas.models import Alert, AlertReason
from tests.alert_files import publish_alert_file
from tests.cli_run import run_argus

DAY = "2026-10-03"


def _argus(*args: str) -> subprocess.CompletedProcess[str]:
    return run_argus("alerts", "publish", *args)


def _write_night(lake: Path, prefix: str) -> list[str]:
    ids = []
    for detector, kind, users in (("trolls", "troll", 2), ("churn", "churn", 1)):
        alerts = [
            Alert(
                alert_id=f"{prefix}-{kind}-{n}",
                kind=kind,  # type: ignore[arg-type]
                user_id=f"u{n}",
                score=0.8,
                severity="high",
                reasons=[],
                model_version="m1",
                window_start=datetime(2026, 9, 4, tzinfo=UTC),
                window_end=datetime(2026, 10, 4, tzinfo=UTC),
            )
            for n in range(users)
        ]
        publish_alert_file(lake, detector, date.fromisoformat(DAY), [a.model_dump_json() for a in alerts])
        ids += [a.alert_id for a in alerts]
    return ids


def topic_keys(bootstrap: str, topic: str, isolation_level: str = "read_uncommitted") -> list[str]:
    """Every record key on ``topic``, all partitions, from the beginning (compaction not yet applied);
    ``read_committed``: only those of committed transactions."""
    from kafka import TopicPartition

    from argus.infra.clients import consumer

    reader = consumer(bootstrap=bootstrap, enable_auto_commit=False, isolation_level=isolation_level)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or [])]
        reader.assign(parts)
        reader.seek_to_beginning(*parts)
        ends = reader.end_offsets(parts)
        keys: list[str] = []
        while any(reader.position(tp) < ends[tp] for tp in parts):
            for records in reader.poll(timeout_ms=500).values():
                keys += [r.key.decode() for r in records if r.key]
        return keys
    finally:
        reader.close()


@pytest.mark.kafka
def test_publish_a_night_twice_writes_the_same_keys(kafka_bootstrap: str, tmp_path: Path, unique_name: str) -> None:
    ids = _write_night(tmp_path, unique_name)
    for lake in (str(tmp_path), tmp_path.as_uri()):  # a folder, then the same lake as a URI (object storage's way)
        result = _argus("--date", DAY, "--lake", lake, "--detectors", "trolls,churn", "--bootstrap", kafka_bootstrap)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"date": DAY, "produced": {"alerts.troll": 2, "alerts.churn": 1}}
    keys = topic_keys(kafka_bootstrap, "alerts.troll") + topic_keys(kafka_bootstrap, "alerts.churn")
    ours = [k for k in keys if k in ids]
    assert sorted(set(ours)) == sorted(ids) and len(ours) == 2 * len(ids)  # same keys: compaction keeps one each


def test_missing_night_or_broker_is_one_line(tmp_path: Path) -> None:
    from argus.infra.broker import free_port

    missing = _argus("--date", DAY, "--lake", str(tmp_path))
    assert missing.returncode == 2 and "no trolls alerts for 2026-10-03" in missing.stderr
    assert missing.stderr.count("\n") == 1
    _write_night(tmp_path, "x")
    down = _argus(
        "--date", DAY, "--lake", str(tmp_path), "--detectors", "trolls", "--bootstrap", f"127.0.0.1:{free_port()}"
    )
    assert down.returncode == 2 and "no Kafka broker answers" in down.stderr and "Traceback" not in down.stderr


def _break_line(lake: Path, detector: str, number: int) -> Path:
    """Replace line ``number`` of ``detector``'s published alert file with one that is not an alert."""
    from argus.jobs.alert_blocks import alerts_file

    published = alerts_file(lake, detector, date.fromisoformat(DAY))
    assert published is not None
    path = lake / published
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = "{not an alert}\n"
    path.write_text("".join(lines))
    return path


def test_a_broken_first_line_is_refused_before_the_broker_is_asked(tmp_path: Path) -> None:
    from argus.infra.broker import free_port

    _write_night(tmp_path, "x")
    path = _break_line(tmp_path, "trolls", 1)
    result = _argus(
        "--date", DAY, "--lake", str(tmp_path), "--detectors", "trolls", "--bootstrap", f"127.0.0.1:{free_port()}"
    )
    assert result.returncode == 2 and f"{path}:1 is not an alert" in result.stderr, result.stderr
    assert "no Kafka broker answers" not in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.kafka
def test_a_broken_line_further_on_publishes_nothing(kafka_bootstrap: str, tmp_path: Path, unique_name: str) -> None:
    ids = _write_night(tmp_path, unique_name)  # trolls 0 and 1, then churn 0
    path = _break_line(tmp_path, "trolls", 2)
    broken = _argus(
        "--date", DAY, "--lake", str(tmp_path), "--detectors", "trolls,churn", "--bootstrap", kafka_bootstrap
    )
    assert broken.returncode == 2 and f"{path}:2 is not an alert" in broken.stderr, broken.stderr
    assert broken.stderr.count("\n") == 1 and "Traceback" not in broken.stderr

    def ours(isolation_level: str) -> list[str]:
        keys = [k for t in ("alerts.troll", "alerts.churn") for k in topic_keys(kafka_bootstrap, t, isolation_level)]
        return [k for k in keys if k in ids]

    assert ours("read_committed") == []  # not even the alert before the broken line: the night was aborted
    fixed = _write_night(tmp_path / "fixed", unique_name)
    mended = _argus(
        "--date", DAY, "--lake", str(tmp_path / "fixed"), "--detectors", "trolls,churn", "--bootstrap", kafka_bootstrap
    )
    assert mended.returncode == 0, mended.stderr
    assert sorted(ours("read_committed")) == sorted(fixed)  # the mended night, whole


def test_a_night_streams_in_flat_memory_and_a_broken_line_is_refused(tmp_path: Path) -> None:
    import tracemalloc

    from argus.jobs.alert_blocks import AlertFileError
    from argus.publish_alerts import night_alerts

    template = Alert(
        alert_id="ALERT",
        kind="troll",
        user_id="u1",
        score=0.8,
        severity="high",
        reasons=[AlertReason(feature="spam_ratio", value=0.9, norm=0.1, text="spam ratio 0.9 against 0.1")],
        model_version="m1",
        window_start=datetime(2026, 9, 4, tzinfo=UTC),
        window_end=datetime(2026, 10, 4, tzinfo=UTC),
    ).model_dump_json()
    # An older lake's file (before manifests named alert files): read where no manifest names the night.
    path = tmp_path / "alerts" / "detector=trolls" / f"date={DAY}" / "alerts.jsonl"
    path.parent.mkdir(parents=True)
    many = 20_000  # as a list of alerts these take well over 10 MB
    path.write_text("".join(template.replace("ALERT", f"a{n}") + "\n" for n in range(many)))
    day = datetime.fromisoformat(DAY).date()
    tracemalloc.start()
    try:
        streamed = night_alerts(tmp_path, day, ["trolls"])
        first = next(streamed)
        rest = sum(1 for _ in streamed)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (first.alert_id, 1 + rest) == ("a0", many)
    assert peak < 2**20, f"publishing a night held {peak / 2**20:.1f} MiB"
    with path.open("a") as more:
        more.write("{not an alert}\n")
    read = 0
    with pytest.raises(AlertFileError, match=f"alerts.jsonl:{many + 1} is not an alert"):
        for _ in night_alerts(tmp_path, day, ["trolls"]):
            read += 1
    assert read == many  # every alert before the broken line, each parsed once on the way
