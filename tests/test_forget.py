"""`argus forget`: a user's rows leave every table and date, mentions become a pseudonym, the audit
keeps counts and digests only, a rerun changes nothing, and compacted alert topics get tombstones."""

from __future__ import annotations

import base64
import json
import pickle
import re
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from argus.forget import AUDIT_LOG, delta_tables, forget, lake_files, subject_salt
from argus.schemas.arrow import ARROW_SCHEMAS
from argus.schemas.privacy import PSEUDONYM_PREFIX, subject_digest
from tests.alert_files import publish_alert_file

TARGET = "u042"
OTHERS = ("u001", "u0420", "u7")  # u0420 shares a prefix with the target: never touched
DATES = ("2026-10-01", "2026-10-02", "2026-10-03")
TOKEN = re.compile(rf"(?<![A-Za-z0-9_\-]){TARGET}(?![A-Za-z0-9_\-])")


def _event(event_type: str, n: int, user: str, day: str, **fields: Any) -> dict[str, Any]:
    base = {
        "event_id": f"{event_type}-{day}-{n}",
        "ts": f"{day}T12:00:{n % 60:02d}Z",
        "user_id": user,
        "context": "ch-1",
        "schema_version": 1,
        "event_type": event_type,
    }
    return {**base, **fields}


def _write_parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema) if schema else pa.Table.from_pylist(rows)
    pq.write_table(table, path, compression="snappy")


def _typed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from datetime import datetime

    return [{**r, "ts": datetime.fromisoformat(r["ts"].replace("Z", "+00:00"))} for r in rows]


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """Every table the pipeline writes, over several dates, with the target and other users."""
    root = tmp_path / "lake"
    users = (TARGET, *OTHERS)
    for day in DATES:
        chat = [_event("chat", i, u, day, text=f"hello from {u} on {day}") for i, u in enumerate(users)]
        part = root / "events" / "event_type=chat" / f"date={day}" / "part-00000.parquet"
        _write_parquet(part, _typed(chat), ARROW_SCHEMAS["chat"])
        payments = [
            _event("payment", 10, TARGET, day, action="purchase", amount=5.0, currency="EUR",
                   instrument_id="ab" * 8, status="approved"),
            _event("payment", 11, "u001", day, action="transfer", amount=9.0, currency="EUR",
                   instrument_id="cd" * 8, status="approved", counterparty_id=TARGET),
            _event("payment", 12, "u7", day, action="transfer", amount=1.0, currency="EUR",
                   instrument_id="ef" * 8, status="approved", counterparty_id="u0420"),
        ]  # fmt: skip
        part = root / "events" / "event_type=payment" / f"date={day}" / "part-00000.parquet"
        _write_parquet(part, _typed(payments), ARROW_SCHEMAS["payment"])
    # A JSON Lines partition (argus generate --format jsonl, argus import --format jsonl).
    moderation = [
        _event("moderation", 20, "u7", DATES[0], action="report", actor_id=TARGET, label="spam"),
        _event("moderation", 21, TARGET, DATES[0], action="warn", actor_id="u001"),
        _event("moderation", 22, "u001", DATES[0], action="report", actor_id="u7"),
    ]
    jsonl = root / "events" / "event_type=moderation" / f"date={DATES[0]}" / "part-00000.jsonl"
    jsonl.parent.mkdir(parents=True)
    escaped = orjson.dumps(_event("moderation", 23, "u7", DATES[0], action="warn", actor_id="u001"))
    escaped = escaped.replace(b'"user_id":"u7"', b'"user_id":"u\\u0030\\u0034\\u0032"')  # the target, escaped
    jsonl.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in moderation) + escaped + b"\n")
    # `argus import --out LAKE` keeps its dead letters beside the lake; one is not even JSON.
    rejects = [
        {"original_b64": base64.b64encode(f'{{"email": "{TARGET}", "ty'.encode()).decode(),
         "source_topic": "orders.jsonl", "source_offset": 3, "reason_code": "not_json", "reason": "truncated"},
        {"original_b64": base64.b64encode(b'{"email": "u7"}').decode(), "row": {"email": "u7"},
         "source_topic": "orders.jsonl", "source_offset": 4, "reason_code": "missing_column", "reason": "no ts"},
    ]  # fmt: skip
    (tmp_path / "lake.rejected.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rejects))
    # Spark-written per-user tables, with the checksum files Spark leaves beside its parts.
    for kind in ("profiles", "embeddings"):
        folder = root / kind / f"date={DATES[-1]}"
        rows = [{"user_id": u, "value": float(i), "vector": [float(i)] * 3} for i, u in enumerate(users)]
        _write_parquet(folder / "part-00000-abc.snappy.parquet", rows)
        (folder / ".part-00000-abc.snappy.parquet.crc").write_bytes(b"crc")
        (folder / "_SUCCESS").write_bytes(b"")
    scores = [
        {"user_id": TARGET, "score": 0.9, "flagged": True, "reasons": "shares a device with u7"},
        {"user_id": "u7", "score": 0.8, "flagged": True, "reasons": f"new account like banned {TARGET}"},
        {"user_id": "u001", "score": 0.1, "flagged": False, "reasons": ""},
    ]
    _write_parquet(root / "scores" / "detector=evaders" / f"date={DATES[-1]}" / "part-00000.parquet", scores)
    alerts = [
        {"alert_id": "evaders-aaa", "kind": "evader", "user_id": TARGET, "members": []},
        {"alert_id": "evaders-bbb", "kind": "evader", "user_id": "u7", "members": []},
        {"alert_id": "trolls-raid", "kind": "raid", "user_id": "raid-1", "members": [TARGET, "u001", "u0420"]},
    ]
    publish_alert_file(root, "evaders", date.fromisoformat(DATES[-1]), [orjson.dumps(a) for a in alerts])
    letters = [
        {"original_b64": base64.b64encode(f'{{"user_id":"{TARGET}","text":"trunc'.encode()).decode(),
         "source_topic": "events.chat", "reason_code": "not_json", "reason": "truncated"},
        {"original_b64": base64.b64encode(b'{"user_id":"u0420"}').decode(),
         "source_topic": "events.chat", "reason_code": "missing_field", "reason": "event_type: field required"},
        {"original_b64": base64.b64encode(b"\xff\xfe").decode(),
         "source_topic": "events.chat", "reason_code": "not_utf8", "reason": "invalid UTF-8"},
    ]  # fmt: skip
    _write_parquet(root / "dead_letter" / f"date={DATES[1]}" / "part-r1-00000.parquet", letters)
    _write_parquet(root / "truth" / "users.parquet", [{"user_id": u, "parent_user_id": None} for u in users])
    # The model store: an old version and the one in use both name the target; trolls names no one.
    for version, current in (("fraud-old", False), ("fraud-new", True)):
        folder = root / "models" / "fraud" / version
        folder.mkdir(parents=True)
        (folder / "state.pkl").write_bytes(
            pickle.dumps({"users": [TARGET, "u7"], "clusters": {0: {"members": ["u7"]}}})
        )
        (folder / "model.json").write_text("{}")
        if current:
            (root / "models" / "fraud" / "CURRENT").write_text(version + "\n")
    trolls = root / "models" / "trolls" / "trolls-1"
    trolls.mkdir(parents=True)
    (trolls / "state.pkl").write_bytes(pickle.dumps({"reference": [[0.1, 0.2]], "threshold": 40.0}))
    (trolls / "model.json").write_text("{}")
    return root


def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _lake_rows(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Rows by file, and the published version's rows of each Delta table by its folder."""
    from argus.jobs.lake import read_pandas

    rows = {p.as_posix(): _rows(p) for p in lake_files(root) if p.suffix in (".parquet", ".jsonl", ".txt")}
    for folder in delta_tables(root):
        frame = read_pandas(root, folder.relative_to(root).as_posix())
        rows[folder.as_posix()] = [] if frame is None else frame.to_dict("records")
    return rows


def _mentions(value: Any) -> bool:
    return TOKEN.search(json.dumps(value, default=str)) is not None


def test_forget_removes_only_the_users_rows_everywhere(lake: Path) -> None:
    before = _lake_rows(lake)
    report = forget(lake, [TARGET], "ticket-7", kafka=False)

    assert report.tables == {
        "alerts/evaders": 1,
        "dead_letter": 1,
        "embeddings": 1,
        "events/chat": 3,
        "events/moderation": 2,
        "events/payment": 3,
        "import_dead_letters": 1,
        "profiles": 1,
        "scores/evaders": 1,
        "truth": 1,
    }
    # Other users' rows that named the target: payments to them, a report they filed, a reason, a raid.
    assert report.redacted == {"alerts/evaders": 1, "events/moderation": 1, "events/payment": 3, "scores/evaders": 1}
    assert report.alert_ids == ["evaders-aaa"]
    assert report.models_deleted == ["fraud/fraud-old"]
    assert report.models_pending_refit == ["fraud/fraud-new"]
    assert (lake / "models" / "trolls" / "trolls-1" / "state.pkl").is_file()

    after = _lake_rows(lake)
    assert set(after) == set(before)  # no file lost, none added
    pseudonym = PSEUDONYM_PREFIX
    for path, rows in after.items():
        assert not _mentions(rows), path
        kept = [r for r in before[path] if r.get("user_id") != TARGET and not _dead_letter_of_target(r)]
        assert (path.endswith("lake.rejected.jsonl") and len(kept) == 1) or not path.endswith(".rejected.jsonl")
        assert len(rows) == len(kept), path
        for old, new in zip(kept, rows, strict=True):
            if _mentions(old):
                assert pseudonym in json.dumps(new, default=str)
                assert {k: v for k, v in new.items() if not _mentions(old[k])} == {
                    k: v for k, v in old.items() if not _mentions(v)
                }
            else:
                assert new == old, path
    # Spark's stale checksums went with the rewritten parts; files that did not change kept theirs.
    assert not list((lake / "profiles").rglob(".*.crc"))
    # The prefix-sharing user is untouched: its chat rows on every date are still there.
    chats = [r for p, rows in after.items() if "event_type=chat" in p for r in rows if r["user_id"] == "u0420"]
    assert len(chats) == len(DATES)


def _dead_letter_of_target(row: dict[str, Any]) -> bool:
    encoded = row.get("original_b64")
    return bool(encoded) and TOKEN.search(base64.b64decode(encoded).decode(errors="replace")) is not None


def test_the_audit_records_digests_and_counts_never_the_content(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARGUS_HASH_SALT", "a-salt-of-sixteen-or-more")
    forget(lake, [TARGET], "GDPR request 12", kafka=False)
    lines = (lake / AUDIT_LOG).read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    salt, source = subject_salt(lake)
    assert source == "ARGUS_HASH_SALT"
    assert record["subjects"] == [subject_digest(salt, TARGET)]
    assert record["reason"] == "GDPR request 12"
    assert record["rows_removed"] == 15
    assert record["files"]["events/event_type=chat/date=2026-10-01/part-00000.parquet"] == {"removed": 1, "redacted": 0}
    assert not TOKEN.search(lines[0])
    assert "hello from" not in lines[0] and "trunc" not in lines[0]


def test_a_rerun_is_a_no_op_that_is_still_audited(lake: Path) -> None:
    forget(lake, [TARGET], "first", kafka=False)
    snapshot = {p: p.read_bytes() for p in lake_files(lake)}
    again = forget(lake, [TARGET], "second", kafka=False)
    assert again.rows_removed == 0 and again.files == {} and again.alert_ids == [] and again.models_deleted == []
    assert again.models_pending_refit == ["fraud/fraud-new"]  # until the next fit replaces it
    assert {p: p.read_bytes() for p in lake_files(lake)} == snapshot
    records = [json.loads(line) for line in (lake / AUDIT_LOG).read_text().splitlines()]
    assert [r["reason"] for r in records] == ["first", "second"]
    assert records[0]["subjects"] == records[1]["subjects"]  # the lake's own key, kept owner-only
    assert (lake / "_audit" / "subject.key").stat().st_mode & 0o077 == 0


def test_the_command_prints_json_and_refuses_a_missing_lake_in_one_line(lake: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", "from argus.cli import main; main()", "forget", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    done = run("--user", TARGET, "--lake", str(lake), "--no-kafka", "--reason", "cli")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows_removed"] == 15
    assert "fraud/fraud-new" in done.stderr  # the model still in use is pointed out
    missing = run("--user", TARGET, "--lake", str(tmp_path / "nowhere"), "--no-kafka")
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "--lake" in missing.stderr


@pytest.mark.kafka
def test_tombstones_on_a_compacted_alert_topic(lake: Path, kafka_bootstrap: str, unique_name: str) -> None:
    from kafka.admin import NewTopic

    from argus.infra import clients

    alerts_topic, events_topic = f"alerts.{unique_name}", f"events.{unique_name}"
    admin = clients.admin(kafka_bootstrap)
    try:
        admin.create_topics(
            [
                NewTopic(alerts_topic, 1, 1, topic_configs={"cleanup.policy": "compact"}),
                NewTopic(events_topic, 2, 1),
            ]
        )
    finally:
        admin.close()
    on_topic = {
        b"evaders-aaa": {"alert_id": "evaders-aaa", "kind": "evader", "user_id": TARGET, "members": []},
        b"evaders-bbb": {"alert_id": "evaders-bbb", "kind": "evader", "user_id": "u7", "members": []},
        b"trolls-raid": {"alert_id": "trolls-raid", "kind": "raid", "user_id": "raid-1", "members": [TARGET, "u7"]},
        b"fraud-ccc": {"alert_id": "fraud-ccc", "kind": "fraud", "user_id": TARGET, "members": []},
    }
    producer = clients.producer(kafka_bootstrap)
    for key, value in on_topic.items():
        producer.send(alerts_topic, key=key, value=orjson.dumps(value))
    producer.send(alerts_topic, key=b"fraud-ccc", value=None)  # already deleted: no second tombstone
    producer.send(events_topic, key=TARGET.encode(), value=b"{}")
    producer.flush()
    producer.close()

    def forget_here() -> Any:
        return forget(
            lake, [TARGET], "kafka", bootstrap=kafka_bootstrap, alert_topics=[alerts_topic], keyed_topics=[events_topic]
        )

    report = forget_here()
    assert report.kafka["tombstones"] == {alerts_topic: 1}
    assert report.kafka["redacted_alerts"] == {alerts_topic: 1}
    assert set(report.kafka["expires_by_retention"]) == {events_topic}  # delete policy: retention erases
    assert report.alert_ids == ["evaders-aaa"]

    from argus.forget import _latest_values

    latest = _latest_values(alerts_topic, kafka_bootstrap)
    assert latest[b"evaders-aaa"] is None
    assert orjson.loads(latest[b"evaders-bbb"] or b"") == on_topic[b"evaders-bbb"]
    raid = orjson.loads(latest[b"trolls-raid"] or b"")
    assert TARGET not in raid["members"] and "u7" in raid["members"]
    assert raid["members"][0].startswith(PSEUDONYM_PREFIX)

    again = forget_here()
    assert again.kafka["tombstones"] == {} and again.kafka["redacted_alerts"] == {}
    assert again.alert_ids == []


@pytest.mark.parametrize(
    ("state", "names_target"),
    [
        ({"users": ["u7", TARGET]}, True),
        ({"frame": pd.DataFrame({"score": [0.5]}, index=pd.Index([TARGET], name="user_id"))}, True),
        ({"series": pd.Series([TARGET, "u7"])}, True),
        ({"ids": np.array(["u7", TARGET], dtype=object)}, True),
        ({"nested": [{"cluster": {"members": (TARGET,)}}]}, True),
        ({"users": ["u0420", "u7"], "text": f"not {TARGET}-ish"}, False),  # other ids, a longer token
        ({"reference": np.zeros((3, 2), dtype=np.float32), "threshold": 40.0}, False),
    ],
)
def test_model_versions_naming_the_user_are_found_and_old_ones_deleted(
    tmp_path: Path, state: dict[str, Any], names_target: bool
) -> None:
    from argus.forget import UserMatcher, forget_in_models

    store = tmp_path / "models"
    for version in ("m-1", "m-2"):
        (store / "fraud" / version).mkdir(parents=True)
        (store / "fraud" / version / "state.pkl").write_bytes(pickle.dumps(state))
    (store / "fraud" / "CURRENT").write_text("m-2\n")
    deleted, pending = forget_in_models(store, UserMatcher.build([TARGET], b"k" * 16))
    assert (deleted, pending) == ((["fraud/m-1"], ["fraud/m-2"]) if names_target else ([], []))
    assert (store / "fraud" / "m-1").exists() is not names_target


def _payment(n: int, user: str, **fields: Any) -> bytes:
    event = _event("payment", n, user, DATES[0], action="transfer", amount=2.0, currency="EUR",
                   instrument_id="ab" * 8, status="approved", **fields)  # fmt: skip
    return orjson.dumps(event)


@pytest.mark.kafka
def test_a_replay_does_not_bring_an_erased_user_back(
    spark: object, kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    from kafka.admin import NewTopic

    from argus.infra import clients
    from argus.jobs.ingest import run_ingest

    topic = f"{unique_name}.payment"
    admin = clients.admin(kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        admin.close()
    records = [
        _payment(1, TARGET),
        _payment(2, "u7", counterparty_id=TARGET),
        _payment(3, "u7"),
        orjson.dumps({"event_type": "payment", "user_id": TARGET, "event_id": "bad-1"}),  # rejected, names them
    ]
    producer = clients.producer(kafka_bootstrap)
    for value in records:
        producer.send(topic, key=b"k", value=value)
    producer.flush()
    producer.close()
    lake = tmp_path / "replay"
    first = run_ingest(spark, kafka_bootstrap, lake, [topic])  # type: ignore[arg-type]
    assert (first.valid, first.rejected, first.erased) == (3, 1, 0)
    assert forget(lake, [TARGET], "replay", kafka=False).tables == {"ingested/payment": 1, "dead_letter": 1}

    again = run_ingest(spark, kafka_bootstrap, lake, [topic], rerun=first.run_id)  # type: ignore[arg-type]
    assert (again.valid, again.rejected, again.erased) == (2, 0, 2)
    stored = _lake_rows(lake)
    assert not any(_mentions(rows) for rows in stored.values())
    payments = [r for path, rows in stored.items() if "event_type=payment" in path for r in rows]
    assert sorted(r["user_id"] for r in payments) == ["u7", "u7"]
    assert any(str(r["counterparty_id"]).startswith(PSEUDONYM_PREFIX) for r in payments)
    assert not [r for path, rows in stored.items() if "dead_letter" in path for r in rows]


def test_a_reimport_does_not_bring_an_erased_user_back(lake: Path, tmp_path: Path) -> None:
    from argus.imports import load_mapping, run_import

    forget(lake, [TARGET], "import", kafka=False)
    source = tmp_path / "payments.jsonl"
    rows = [_payment(30, TARGET, counterparty_id="u7"), _payment(31, "u7", counterparty_id=TARGET)]
    source.write_bytes(b"\n".join(rows) + b"\n")
    mapping = tmp_path / "payments.toml"
    names = ("event_id", "ts", "user_id", "context", "action", "amount", "currency", "instrument_id", "status")
    mapping.write_text(
        "[source]\nformat = 'jsonl'\n[event]\nevent_type = 'payment'\n"
        + "".join(f"[fields.{n}]\ncolumn = '{n}'\n" for n in names)
        + "[fields.counterparty_id]\ncolumn = 'counterparty_id'\n"
    )
    summary = run_import(source, load_mapping(mapping), out=lake)
    assert (summary.erased, sum(summary.imported.values()), sum(summary.rejected.values())) == (1, 1, 0)
    imported = pq.read_table(next(lake.rglob("import-payments.jsonl.parquet"))).to_pylist()
    assert [r["user_id"] for r in imported] == ["u7"]
    assert imported[0]["counterparty_id"].startswith(PSEUDONYM_PREFIX)
