"""Malformed records of every class the validator must dead-letter, for demos and tests."""

from __future__ import annotations

import orjson

from argus.infra.topics import event_topic

# reason_code -> a raw record of that class (built around a valid chat event).
_VALID = {
    "event_id": "bad-0",
    "event_type": "chat",
    "ts": "2026-10-01T12:00:00.000Z",
    "user_id": "u9999999",
    "context": "ch-0001",
    "text": "hello",
    "schema_version": 1,
}


def _variant(i: int, **changes: object) -> bytes:
    record = {**_VALID, "event_id": f"bad-{i}", **changes}
    return orjson.dumps({k: v for k, v in record.items() if v is not ...})


def malformed_records(count: int) -> list[tuple[str, bytes, bytes, str | None]]:
    """Records cycling through every rejection class: (topic, key, value, expected reason code).

    Duplicates come as pairs whose first copy is valid (expected reason ``None``).
    """
    makers = [
        ("not_json", lambda i: b"{not json at all " + str(i).encode()),
        ("not_utf8", lambda i: b'{"event_id": "bad-\xff\xfe' + str(i).encode() + b'"}'),
        ("wrong_type", lambda i: _variant(i, user_id=12345)),
        ("missing_field", lambda i: _variant(i, text=...)),
        ("unknown_event_type", lambda i: _variant(i, event_type="telepathy")),
        ("ts_in_future", lambda i: _variant(i, ts="2999-01-01T00:00:00Z")),
        ("ts_too_old", lambda i: _variant(i, ts="1999-12-31T23:59:59Z")),
        ("oversize", lambda i: _variant(i, text="x" * 70_000)),
    ]
    topic = event_topic("chat")
    out: list[tuple[str, bytes, bytes, str | None]] = []
    for i in range(count):
        if i % (len(makers) + 1) == len(makers):
            # A duplicate needs an original: the first copy is a valid event, the second is rejected.
            original = _variant(i, event_id=f"dup-{i}")
            out += [(topic, b"u9999999", original, None), (topic, b"u9999999", original, "duplicate_event_id")]
            continue
        code, make = makers[i % (len(makers) + 1)]
        out.append((topic, b"u9999999", make(i), code))
    return out
