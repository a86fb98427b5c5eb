"""`argus import`: the example mappings end to end, every dead-letter class, mapping mistakes, idempotency."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from argus.detectors.events import load_events
from argus.imports import ImportDeadLetter, load_mapping, run_import
from argus.imports.run import ImportSummary
from argus.schemas.models import DeadLetter
from tests.cli_run import run_argus

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "import"
SALT = "test-salt-do-not-use"


@pytest.fixture(autouse=True)
def _salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARGUS_IMPORT_SALT", SALT)
    monkeypatch.delenv("ARGUS_EARLIEST_TS", raising=False)


def _import(name: str, lake: Path, source: Path | None = None, **options: object) -> ImportSummary:
    mapping = load_mapping(EXAMPLES / f"{name}.toml")
    suffix = ".jsonl" if name == "orders" else ".csv"
    return run_import(source or EXAMPLES / f"{name}{suffix}", mapping, out=lake, **options)  # type: ignore[arg-type]


def _dead_letters(path: Path) -> dict[int, ImportDeadLetter]:
    letters = [ImportDeadLetter.model_validate_json(line) for line in path.read_bytes().splitlines()]
    return {int(letter.source_offset or 0): letter for letter in letters}


def _hmac(value: str) -> str:
    return hmac.new(SALT.encode(), value.encode(), hashlib.sha256).hexdigest()[:32]


def _argus(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_argus(*args, cwd=cwd, timeout=120)


# --- the three examples, round trip through the detectors' reader -----------------------------------


def test_twitch_chat_round_trip(tmp_path: Path) -> None:
    summary = _import("twitch_chat", tmp_path / "lake")
    assert summary.rows == 11
    assert dict(summary.imported) == {"chat": 8}
    assert dict(summary.rejected) == {"bad_time": 1, "duplicate_event_id": 1, "missing_field": 1}

    chat = load_events(tmp_path / "lake")["chat"]
    assert len(chat) == 8
    first = chat.iloc[0]
    assert first["ts"] == pd.Timestamp("2024-11-01T12:00:00Z")
    assert (first["user_id"], first["context"], first["text"]) == ("ash_k", "#pokemon_plays", "up")
    assert chat["ts"].iloc[1] == pd.Timestamp("2024-11-01T12:00:00.500Z")
    assert chat["user_id"].value_counts()["ash_k"] == 3  # Ash_K and ash_k are one login
    assert 'hello "chat"' in set(chat["text"])
    assert chat["event_id"].str.fullmatch(r"twitch-[0-9a-f]{32}").all()


def test_payments_round_trip(tmp_path: Path) -> None:
    summary = _import("payments", tmp_path / "lake")
    assert dict(summary.imported) == {"payment": 5}
    assert dict(summary.rejected) == {"bad_number": 1, "bad_time": 1, "invalid_value": 1, "unmapped_value": 1}

    payments = load_events(tmp_path / "lake")["payment"].set_index("event_id")
    assert list(payments.index) == ["B-1001", "B-1002", "B-1003", "B-1004", "B-1005"]
    # 00:15 in Berlin on 4 November is 23:15 UTC on the 3rd, and is partitioned on that UTC day.
    assert payments.loc["B-1004", "ts"] == pd.Timestamp("2024-11-03T23:15:00Z")
    assert (tmp_path / "lake/events/event_type=payment/date=2024-11-03/import-payments.csv.parquet").is_file()
    assert payments.loc["B-1002", "amount"] == 1249.0
    assert payments.loc["B-1001", "currency"] == "EUR"
    assert (payments.loc["B-1003", "status"], payments.loc["B-1005", "action"]) == ("declined", "refund")
    card = payments.loc["B-1001", "instrument_id"]
    assert card != "4111 1111 1111 1111" and "4111" not in card
    assert card == _hmac("4111 1111 1111 1111") == payments.loc["B-1005", "instrument_id"]


def test_orders_round_trip_mixed_types_and_hashed_emails(tmp_path: Path) -> None:
    summary = _import("orders", tmp_path / "lake")
    assert dict(summary.imported) == {"click": 3, "payment": 4}
    assert dict(summary.rejected) == {"bad_number": 1, "missing_column": 1, "not_json": 1}

    events = load_events(tmp_path / "lake")
    clicks, payments = events["click"], events["payment"]
    assert list(clicks["action"]) == ["view", "add_to_cart", "view"]
    assert list(clicks["item_id"]) == ["SKU-88", "SKU-88", "SKU-03"]
    alice = _hmac("alice@example.com")
    assert list(clicks["user_id"][:2]) == [alice, alice]  # "Alice@Example.com" is lowercased first
    assert "alice@example.com" not in set(events.user_ids)
    bob = payments[payments["user_id"] == _hmac("bob@example.org")]
    # a naive 09:12 in Paris (CET, UTC+1 on 30 October 2024) is 08:12 UTC
    assert list(bob["ts"]) == [pd.Timestamp("2024-10-30T08:12:00Z"), pd.Timestamp("2024-10-30T08:14:30Z")]
    assert list(bob["status"]) == ["declined", "approved"]
    assert list(payments["amount"]) == [59.9, 18.0, 18.0, 129.0]  # "129.00" as text, too
    assert payments["event_id"].str.fullmatch(r"shop-[0-9a-f]{32}").all()


def test_orders_from_parquet_get_the_same_ids_as_from_json_lines(tmp_path: Path) -> None:
    rows = []
    for line in (EXAMPLES / "orders.jsonl").read_bytes().splitlines():
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    pq.write_table(_orders_table(rows), tmp_path / "orders.parquet")
    from_parquet = run_import(tmp_path / "orders.parquet", load_mapping(EXAMPLES / "orders.toml"), out=tmp_path / "a")
    _import("orders", tmp_path / "b")
    # Parquet has nulls where the JSON rows lack a key: the row without an e-mail and the one whose
    # total was not a number now lack a required field.
    assert dict(from_parquet.imported) == {"click": 3, "payment": 4}
    assert dict(from_parquet.rejected) == {"missing_field": 2}
    a, b = load_events(tmp_path / "a"), load_events(tmp_path / "b")
    assert list(a["click"]["event_id"]) == list(b["click"]["event_id"])
    pd.testing.assert_frame_equal(a["click"], b["click"])
    # the same rows hash to the same ids; the one whose total was the text "129.00" is now the number 129
    same = set(a["payment"]["event_id"]) & set(b["payment"]["event_id"])
    assert len(same) == 3
    assert list(a["payment"]["amount"]) == list(b["payment"]["amount"]) == [59.9, 18.0, 18.0, 129.0]


def _orders_table(rows: list[dict[str, object]]) -> pa.Table:
    # Parquet is typed: every column text except the total, a double (null where absent or not a number).
    names = list(dict.fromkeys(k for row in rows for k in row))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        if name == "total":
            numbers = [float(v) if isinstance(v, float) or str(v).replace(".", "").isdigit() else None for v in values]
            columns[name] = pa.array(numbers, pa.float64())
        else:
            columns[name] = pa.array(values, pa.string())
    return pa.table(columns)


def test_hashes_and_ids_are_stable_across_runs_and_depend_on_the_salt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _import("orders", tmp_path / "one")
    _import("orders", tmp_path / "two")
    one, two = load_events(tmp_path / "one")["payment"], load_events(tmp_path / "two")["payment"]
    assert list(one["event_id"]) == list(two["event_id"])
    assert list(one["user_id"]) == list(two["user_id"])
    monkeypatch.setenv("ARGUS_IMPORT_SALT", "another-salt-entirely")
    _import("orders", tmp_path / "three")
    three = load_events(tmp_path / "three")["payment"]
    assert not set(three["user_id"]) & set(one["user_id"])
    # Ids are keyed with the salt too (personal columns cannot be recovered from them).
    assert not set(three["event_id"]) & set(one["event_id"])


# --- dead letters ---------------------------------------------------------------------------------


def test_every_bad_row_class_is_dead_lettered_with_its_row(tmp_path: Path) -> None:
    _import("twitch_chat", tmp_path / "chat", rejects=tmp_path / "chat.rejects.jsonl")
    _import("payments", tmp_path / "pay", rejects=tmp_path / "pay.rejects.jsonl")
    _import("orders", tmp_path / "orders", rejects=tmp_path / "orders.rejects.jsonl")
    chat = _dead_letters(tmp_path / "chat.rejects.jsonl")
    pay = _dead_letters(tmp_path / "pay.rejects.jsonl")
    orders = _dead_letters(tmp_path / "orders.rejects.jsonl")
    chat_lines = (EXAMPLES / "twitch_chat.csv").read_bytes().splitlines(keepends=True)
    order_lines = (EXAMPLES / "orders.jsonl").read_bytes().splitlines()

    expected = [
        (chat[9], "bad_time", "fields.ts: 'yesterday'"),
        (chat[7], "duplicate_event_id", "already imported"),
        (chat[10], "missing_field", "text"),
        (pay[6], "bad_number", "fields.amount: 'zwölf'"),
        (pay[7], "bad_time", "'31/04/2024 10:00'"),
        (pay[8], "invalid_value", "amount: Input should be less than or equal to 10000000"),
        (pay[9], "unmapped_value", "fields.action: 'gift'"),
        (orders[8], "missing_column", "fields.user_id: column 'email'"),
        (orders[9], "bad_number", "fields.amount: 'a lot'"),
        (orders[10], "not_json", "not JSON"),
    ]
    for letter, code, reason in expected:
        assert letter.reason_code == code
        assert reason in letter.reason, (code, letter.reason)
    assert len(chat) == 3 and len(pay) == 4 and len(orders) == 3
    # the original bytes, byte for byte, and the row as an object
    assert base64.b64decode(chat[9].original_b64) == chat_lines[9]
    assert chat[9].row == {
        "timestamp": "yesterday",
        "channel": "#speedruns",
        "username": "team_rocket",
        "message": "prepare for trouble",
    }
    assert chat[9].source_topic == str(EXAMPLES / "twitch_chat.csv")
    assert base64.b64decode(orders[10].original_b64) == order_lines[9] and orders[10].row is None
    assert pay[8].mapped is not None and pay[8].mapped["amount"] == 20_000_000.0
    # every line is also a plain DeadLetter once the import's extras are set aside
    for letter in (*chat.values(), *pay.values(), *orders.values()):
        DeadLetter.model_validate(letter.model_dump(exclude={"row", "mapped"}))


def _chat_csv(path: Path, *rows: str) -> Path:
    path.write_text("timestamp,channel,username,message\n" + "".join(f"{row}\n" for row in rows))
    return path


def test_short_and_long_csv_rows(tmp_path: Path) -> None:
    source = _chat_csv(tmp_path / "chat.csv", "1730462400000,#a,ann,hi", "1730462401000,#a", "1730462402000,#a,b,c,d")
    summary = _import("twitch_chat", tmp_path / "lake", source=source, rejects=tmp_path / "r.jsonl")
    assert dict(summary.imported) == {"chat": 1}
    letters = _dead_letters(tmp_path / "r.jsonl")
    assert letters[2].reason_code == "missing_column" and "'username'" in letters[2].reason
    assert letters[3].reason_code == "bad_row"


def test_a_1997_backfill_is_too_old_by_default_and_accepted_with_the_bound_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 852076800000 ms is 1997-01-01T00:00:00Z
    source = _chat_csv(tmp_path / "old.csv", "852076800000,#a,ann,hi", "852076860000,#a,bob,hello")
    summary = _import("twitch_chat", tmp_path / "lake", source=source, rejects=tmp_path / "r.jsonl")
    assert dict(summary.rejected) == {"ts_too_old": 2} and not summary.imported
    assert _dead_letters(tmp_path / "r.jsonl")[1].row == {
        "timestamp": "852076800000",
        "channel": "#a",
        "username": "ann",
        "message": "hi",
    }
    monkeypatch.setenv("ARGUS_EARLIEST_TS", "1995-01-01")
    summary = _import("twitch_chat", tmp_path / "lake", source=source, rejects=tmp_path / "r.jsonl")
    assert dict(summary.imported) == {"chat": 2} and not summary.rejected
    chat = load_events(tmp_path / "lake")["chat"]
    assert list(chat["ts"]) == [pd.Timestamp("1997-01-01T00:00:00Z"), pd.Timestamp("1997-01-01T00:01:00Z")]


# --- idempotency ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_reimport_replaces_its_own_files(tmp_path: Path, fmt: str) -> None:
    lake = tmp_path / "lake"
    _import("payments", lake, out_format=fmt)
    _import("twitch_chat", lake, out_format=fmt)
    first = load_events(lake)
    files = sorted(p.relative_to(lake) for p in lake.rglob("*") if p.is_file())
    _import("payments", lake, out_format=fmt)
    again = load_events(lake)
    assert sorted(p.relative_to(lake) for p in lake.rglob("*") if p.is_file()) == files
    assert again.count == first.count == 13
    pd.testing.assert_frame_equal(again["payment"], first["payment"])

    # the same file name with fewer rows: its partition of 5 November goes, the other source stays
    smaller = tmp_path / "export" / "payments.csv"
    smaller.parent.mkdir()
    smaller.write_text("".join((EXAMPLES / "payments.csv").read_text().splitlines(keepends=True)[:5]))
    _import("payments", lake, source=smaller, out_format=fmt)
    assert not (lake / f"events/event_type=payment/date=2024-11-05/import-payments.csv.{fmt}").exists()
    after = load_events(lake)
    assert list(after["payment"]["event_id"]) == ["B-1001", "B-1002", "B-1003", "B-1004"]
    assert len(after["chat"]) == 8


# --- the command line -----------------------------------------------------------------------------


def test_cli_import_prints_a_json_summary_and_writes_rejects_beside_the_lake(tmp_path: Path) -> None:
    result = _argus(
        "import",
        str(EXAMPLES / "payments.csv"),
        "--mapping",
        str(EXAMPLES / "payments.toml"),
        "--out",
        str(tmp_path / "lake"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"] == 9 and summary["imported"] == {"payment": 5} and summary["files"] == 2
    assert summary["rejects_file"] == str(tmp_path / "lake.rejected.jsonl")
    assert len((tmp_path / "lake.rejected.jsonl").read_bytes().splitlines()) == 4


def test_sources_sharing_a_dead_letter_file_keep_each_others_lines(tmp_path: Path) -> None:
    rejects = tmp_path / "lake.rejected.jsonl"
    for _ in range(2):
        _import("twitch_chat", tmp_path / "lake")
        _import("payments", tmp_path / "lake")
    letters = [json.loads(line) for line in rejects.read_bytes().splitlines()]
    by_source = Counter(Path(letter["source_topic"]).name for letter in letters)
    assert by_source == {"twitch_chat.csv": 3, "payments.csv": 4}


GOOD = """
[event]
event_type = "chat"

[fields.ts]
column = "timestamp"
format = "epoch_ms"

[fields.user_id]
column = "username"

[fields.context]
column = "channel"

[fields.text]
column = "message"

[event_id]
columns = "*"
"""

BAD_MAPPINGS = {
    "unknown key": (
        GOOD.replace('format = "epoch_ms"', 'fromat = "epoch_ms"'),
        "fields.ts.fromat: unknown key 'fromat'",
    ),
    "unknown time format": (
        GOOD.replace('"epoch_ms"', '"YYYY"'),
        "fields.ts.format: unknown time format 'YYYY'; use iso, epoch_s, epoch_ms or a strptime pattern",
    ),
    "unknown target field": (GOOD + '[fields.txt]\ncolumn = "message"\n', "fields.txt: unknown target field 'txt'"),
    "field of another event type": (GOOD + '[fields.amount]\ncolumn = "x"\n', "fields.amount: chat events have no"),
    "wrong type": (GOOD.replace('column = "username"', "column = 7"), "fields.user_id.column: Input should be"),
    "missing required mapping": (
        GOOD.replace('[fields.text]\ncolumn = "message"', ""),
        "fields.text: chat events need text",
    ),
    "missing event id": (GOOD.replace('[event_id]\ncolumns = "*"', ""), "fields.event_id: chat events need event_id"),
    "invalid TOML": (GOOD.replace("[fields.ts]", "[fields.ts"), "not valid TOML"),
    "unknown time zone": (GOOD.replace('format = "epoch_ms"', 'tz = "Berlin"'), "fields.ts.tz: unknown time zone"),
    "salt variable unset": (
        GOOD.replace('column = "username"', 'column = "username"\nhash = true') + '[hash]\nsalt_env = "NO_SUCH_SALT"\n',
        "hash.salt_env: the environment variable NO_SUCH_SALT is not set",
    ),
}


@pytest.mark.parametrize("case", list(BAD_MAPPINGS))
def test_bad_mapping_files_get_one_line_naming_the_key(tmp_path: Path, case: str) -> None:
    text, message = BAD_MAPPINGS[case]
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(text)
    source = _chat_csv(tmp_path / "chat.csv", "1730462400000,#a,ann,hi")
    result = _argus("import", str(source), "--mapping", str(mapping), "--out", str(tmp_path / "lake"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: {mapping}: ") and message in lines[0], lines[0]
    assert not (tmp_path / "lake").exists()


def test_the_example_mapping_parses_and_a_missing_source_column_is_one_line(tmp_path: Path) -> None:
    source = tmp_path / "chat.csv"
    source.write_text("ts,channel,user,message\n1730462400000,#a,ann,hi\n")
    result = _argus(
        "import", str(source), "--mapping", str(EXAMPLES / "twitch_chat.toml"), "--out", str(tmp_path / "lake")
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {source}: column 'timestamp' (fields.ts.column) is not in the file; "
        "its columns are: ts, channel, user, message"
    ]
    assert not (tmp_path / "lake").exists()


# --- Kafka ----------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_import_to_kafka_and_read_back(kafka_bootstrap: str, tmp_path: Path) -> None:
    from argus.infra.clients import consumer
    from argus.infra.topics import ensure_topics

    ensure_topics(kafka_bootstrap)
    summary = run_import(
        EXAMPLES / "twitch_chat.csv",
        load_mapping(EXAMPLES / "twitch_chat.toml"),
        kafka=True,
        bootstrap=kafka_bootstrap,
        rejects=tmp_path / "rejects.jsonl",
    )
    assert dict(summary.produced) == {"events.chat": 8}
    reader = consumer("events.chat", bootstrap=kafka_bootstrap, consumer_timeout_ms=5000)
    found: dict[str, tuple[bytes, dict[str, object]]] = {}
    deadline = time.monotonic() + 60
    try:
        while len(found) < 8 and time.monotonic() < deadline:
            for record in reader:
                # The session broker's topics also hold other tests' records, malformed ones included.
                try:
                    value = json.loads(record.value)
                except (TypeError, ValueError):
                    continue
                if isinstance(value, dict) and str(value.get("event_id")).startswith("twitch-"):
                    found[value["event_id"]] = (record.key, value)
    finally:
        reader.close()
    assert len(found) == 8
    assert all(key == str(value["user_id"]).encode() for key, value in found.values())
    lake = tmp_path / "lake"
    _import("twitch_chat", lake)
    assert set(found) == set(load_events(lake)["chat"]["event_id"])


def test_examples_are_shipped_together() -> None:
    for name, suffix in [("twitch_chat", "csv"), ("payments", "csv"), ("orders", "jsonl")]:
        assert (EXAMPLES / f"{name}.{suffix}").is_file()
        assert load_mapping(EXAMPLES / f"{name}.toml").fields
