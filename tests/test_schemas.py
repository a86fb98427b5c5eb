"""The contracts: JSON Schema files and models agree, every event type round-trips, bad input is rejected precisely."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import jsonschema
import numpy as np
import orjson
import pytest

from argus.schemas import EVENT_MODELS, EventBase, Rejection, validate, validate_batch
from argus.schemas.export import SCHEMA_DIR, json_schemas, render
from argus.world.bad_records import malformed_records
from argus.world.sinks import to_json_lines

NOW = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def samples(small_world) -> dict[str, list[bytes]]:  # type: ignore[no-untyped-def]
    """The first day's events of the small world, as JSON, by event type."""
    day = small_world.day(0)
    return {event_type: to_json_lines(table) for event_type, table in day.items()}


def test_schema_files_match_the_models() -> None:
    for file_name, schema in json_schemas().items():
        path = SCHEMA_DIR / file_name
        assert path.exists(), f"{file_name} missing: run `argus schemas export`"
        assert path.read_text() == render(schema), f"{file_name} is stale: run `argus schemas export`"


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_every_event_type_round_trips(event_type: str, samples: dict[str, list[bytes]]) -> None:
    raws = samples[event_type]
    assert raws, f"the small world has no {event_type} events on day 0"
    schema = json.loads((SCHEMA_DIR / f"{event_type}_event.v1.schema.json").read_text())
    for raw in raws[:200]:
        event = validate(raw, now=NOW)
        assert isinstance(event, EVENT_MODELS[event_type]), event
        jsonschema.validate(orjson.loads(raw), schema)  # the published file accepts it too
        again = validate(event.model_dump_json().encode(), now=NOW)
        assert again == event


def test_a_whole_world_validates(small_world) -> None:  # type: ignore[no-untyped-def]
    rejected = []
    for _, tables in small_world.days():
        for table in tables.values():
            rejected += [r for r in validate_batch(to_json_lines(table), now=NOW) if isinstance(r, Rejection)]
    assert rejected == []


def test_every_bad_input_class_is_rejected_with_its_reason() -> None:
    records = malformed_records(40)
    results = list(validate_batch((value for _, _, value, _ in records), now=NOW))
    expected = [reason for _, _, _, reason in records]
    got = [r.reason_code if isinstance(r, Rejection) else None for r in results]
    assert got == expected
    assert set(expected) >= {
        "not_json",
        "not_utf8",
        "wrong_type",
        "missing_field",
        "unknown_event_type",
        "ts_in_future",
        "ts_too_old",
        "oversize",
        "duplicate_event_id",
        None,
    }
    for (_, _, value, _), result in zip(records, results, strict=True):
        if isinstance(result, Rejection):
            assert result.raw == value


VALID = {
    "event_id": "e1",
    "event_type": "payment",
    "ts": "2026-10-01T12:00:00Z",
    "user_id": "u1",
    "context": "m1",
    "action": "purchase",
    "amount": 12.5,
    "currency": "USD",
    "instrument_id": "abcdef0123456789",
    "status": "approved",
    "schema_version": 1,
}


@pytest.mark.parametrize(
    ("change", "reason_code", "message"),
    [
        ({"amount": "12.5"}, "wrong_type", "amount"),
        ({"amount": -3}, "invalid_value", "amount"),
        ({"amount": 1e12}, "invalid_value", "amount"),
        ({"currency": "usd"}, "invalid_value", "currency"),
        ({"status": "maybe"}, "invalid_value", "status"),
        ({"user_id": ""}, "invalid_value", "user_id"),
        ({"ts": "2026-10-01T12:00:00"}, "invalid_value", "UTC offset"),
        ({"ts": "yesterday"}, "wrong_type", "ts"),
        ({"schema_version": 2}, "invalid_value", "schema_version"),
        ({"surprise": 1}, "unexpected_field", "surprise"),
        ({"event_type": 7}, "unknown_event_type", "7"),
    ],
)
def test_field_errors_name_the_field(change: dict[str, object], reason_code: str, message: str) -> None:
    result = validate(orjson.dumps({**VALID, **change}), now=NOW)
    assert isinstance(result, Rejection)
    assert result.reason_code == reason_code
    assert message in result.reason


def test_non_object_json_is_rejected() -> None:
    result = validate(b"[1, 2, 3]", now=NOW)
    assert isinstance(result, Rejection) and result.reason_code == "not_object"


def test_offsets_are_normalised_to_utc() -> None:
    event = validate(orjson.dumps({**VALID, "ts": "2026-10-01T14:00:00+02:00"}), now=NOW)
    assert isinstance(event, EventBase)
    assert event.ts == datetime(2026, 10, 1, 12, tzinfo=UTC)


def test_validate_never_raises_on_random_bytes() -> None:
    rng = np.random.default_rng(3)
    base = orjson.dumps(VALID)
    for _ in range(2000):
        raw = bytearray(base)
        for pos in rng.integers(0, len(raw), rng.integers(1, 6)):
            raw[pos] = int(rng.integers(0, 256))
        result = validate(bytes(raw), now=NOW)
        assert isinstance(result, EventBase | Rejection)


def test_dead_letter_keeps_the_original_bytes_and_source() -> None:
    raw = b"\xff\xfe not utf-8"
    rejection = validate(raw, now=NOW)
    assert isinstance(rejection, Rejection)
    letter = rejection.to_dead_letter("events.chat", 2, 41, rejected_at=NOW)
    assert base64.b64decode(letter.original_b64) == raw
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("events.chat", 2, 41)
    assert letter.reason_code == "not_utf8" and "byte 0" in letter.reason
