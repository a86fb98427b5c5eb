"""The accepted event-time range is configuration: a 1997 backfill is refused by default, accepted when set."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from argus.schemas import EventBase, Rejection, validate
from argus.schemas.bounds import BoundsError, EventTimeBounds, current_bounds, load_bounds, parse_duration

NOW = datetime(2026, 11, 1, tzinfo=UTC)
OLD_ORDER = {
    "event_id": "order-1997-0001",
    "event_type": "payment",
    "ts": "1997-03-14T10:00:00Z",
    "user_id": "c00042",
    "context": "m7",
    "schema_version": 1,
    "action": "purchase",
    "amount": 23.5,
    "currency": "USD",
    "instrument_id": "9f2c4a1be07d3e55",
    "status": "approved",
}


def test_a_1997_backfill_is_refused_by_default_and_names_the_setting() -> None:
    result = validate(orjson.dumps(OLD_ORDER), now=NOW)
    assert isinstance(result, Rejection) and result.reason_code == "ts_too_old"
    assert "2000-01-01T00:00:00+00:00" in result.reason
    assert "ARGUS_EARLIEST_TS" in result.reason and "events.earliest_ts" in result.reason


def test_a_1997_backfill_is_accepted_under_a_configured_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "argus.toml"
    config.write_text('[events]\nearliest_ts = "1995-01-01"\n')
    monkeypatch.setenv("ARGUS_CONFIG", str(config))
    assert current_bounds().earliest == datetime(1995, 1, 1, tzinfo=UTC)
    event = validate(orjson.dumps(OLD_ORDER), now=NOW)
    assert isinstance(event, EventBase) and event.ts == datetime(1997, 3, 14, 10, tzinfo=UTC)
    # Older than the configured bound is still refused, with the configured bound in the reason.
    older = validate(orjson.dumps({**OLD_ORDER, "ts": "1994-12-31T23:59:59Z"}), now=NOW)
    assert isinstance(older, Rejection) and "1995-01-01T00:00:00+00:00" in older.reason


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = {"events": {"earliest_ts": "1995-01-01", "max_future_skew": "2h"}}
    bounds = load_bounds({"ARGUS_EARLIEST_TS": "1990-06-01T12:00:00+02:00"}, config)
    assert bounds == EventTimeBounds(datetime(1990, 6, 1, 10, tzinfo=UTC), timedelta(hours=2))
    assert load_bounds({}, {}) == EventTimeBounds()


def test_future_skew_is_configurable() -> None:
    ahead = {**OLD_ORDER, "ts": "2026-11-01T05:00:00Z"}
    refused = validate(orjson.dumps(ahead), now=NOW)
    assert isinstance(refused, Rejection) and refused.reason_code == "ts_in_future"
    assert "ARGUS_MAX_FUTURE_SKEW" in refused.reason
    wide = EventTimeBounds(max_future_skew=timedelta(hours=6))
    assert isinstance(validate(orjson.dumps(ahead), now=NOW, bounds=wide), EventBase)


@pytest.mark.parametrize(
    ("value", "seconds"), [("90", 90), (90, 90), ("30m", 1800), ("2h", 7200), ("1.5d", 129_600), ("1w", 604_800)]
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"earliest_ts": "last year"}, "events.earliest_ts: 'last year' is not a date"),
        ({"earliest_ts": "1997-01-01T00:00:00"}, "has no UTC offset"),
        ({"max_future_skew": "soon"}, "events.max_future_skew: 'soon' is not a duration"),
        ({"max_future_skew": -5}, "must not be negative"),
        ({"earliest": "1997-01-01"}, "unknown key 'earliest'"),
    ],
)
def test_bad_settings_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(BoundsError, match=message):
        load_bounds({}, {"events": table})


def test_a_bad_setting_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    records = tmp_path / "orders.jsonl"
    records.write_bytes(orjson.dumps(OLD_ORDER) + b"\n")
    env = {**os.environ, "ARGUS_EARLIEST_TS": "the nineties"}
    result = subprocess.run(
        [sys.executable, "-c", "from argus.cli import main; main()", "schemas", "check", str(records)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "ARGUS_EARLIEST_TS: 'the nineties' is not a date" in result.stderr and "Traceback" not in result.stderr
