"""Validation of raw event bytes: every record becomes an event or a rejection, never an exception."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from pydantic import ValidationError

from argus.schemas.bounds import EARLIEST_SETTING, SKEW_SETTING, EventTimeBounds, current_bounds
from argus.schemas.models import EVENT_MODELS, DeadLetter, EventBase

MAX_MESSAGE_BYTES = 64 * 1024

# Rejection reason codes, stable for dashboards and DLQ replays.
OVERSIZE = "oversize"
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
WRONG_TYPE = "wrong_type"
UNEXPECTED_FIELD = "unexpected_field"
INVALID_VALUE = "invalid_value"
TS_IN_FUTURE = "ts_in_future"
TS_TOO_OLD = "ts_too_old"
DUPLICATE_EVENT_ID = "duplicate_event_id"
DUPLICATE_KEY = "duplicate_key"

_TYPE_ERRORS = ("_type", "_parsing", "is_instance_of", "literal_error_type")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why ``raw`` was refused; ``raw`` is kept byte for byte."""

    reason_code: str
    reason: str
    raw: bytes

    def to_dead_letter(
        self,
        source_topic: str | None = None,
        source_partition: int | None = None,
        source_offset: int | None = None,
        rejected_at: datetime | None = None,
    ) -> DeadLetter:
        return DeadLetter(
            original_b64=base64.b64encode(self.raw).decode("ascii"),
            source_topic=source_topic,
            source_partition=source_partition,
            source_offset=source_offset,
            reason_code=self.reason_code,
            reason=self.reason,
            rejected_at=rejected_at or datetime.now(UTC),
        )


def validate(
    raw: bytes,
    *,
    now: datetime | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
    bounds: EventTimeBounds | None = None,
) -> EventBase | Rejection:
    """Parse and check one record. Never raises on bad bytes.

    ``bounds`` is the accepted event-time range; by default the configured one (argus.schemas.bounds).
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        return Rejection(NOT_UTF8, f"expected bytes, got {type(raw).__name__}", b"")
    raw = bytes(raw)
    if len(raw) > max_bytes:
        return Rejection(OVERSIZE, f"message is {len(raw)} bytes; the limit is {max_bytes}", raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(NOT_UTF8, f"invalid UTF-8 at byte {exc.start}: {exc.reason}", raw)
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return Rejection(NOT_JSON, f"not JSON: {exc}", raw)
    if not isinstance(obj, dict):
        return Rejection(NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}", raw)
    repeated = _repeated_key(text, obj)
    if repeated is not None:
        # Parsers disagree on which copy wins; a record that reads differently to another consumer is refused.
        return Rejection(DUPLICATE_KEY, f"{repeated!r}: the field appears more than once", raw)
    event_type = obj.get("event_type")
    if event_type is None:
        return Rejection(MISSING_FIELD, "event_type: field required", raw)
    model = EVENT_MODELS.get(event_type) if isinstance(event_type, str) else None
    if model is None:
        known = ", ".join(EVENT_MODELS)
        return Rejection(UNKNOWN_EVENT_TYPE, f"event_type {event_type!r} is not one of: {known}", raw)
    try:
        event = model.model_validate_json(text)
    except ValidationError as exc:
        return _rejection_from_error(exc, raw)
    return _check_event_time(event, raw, now or datetime.now(UTC), bounds or current_bounds())


def validate_batch(
    raws: Iterable[bytes],
    *,
    now: datetime | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
    bounds: EventTimeBounds | None = None,
) -> Iterator[EventBase | Rejection]:
    """Validate records in order; a repeated ``event_id`` within the batch is rejected."""
    seen: set[str] = set()
    now = now or datetime.now(UTC)
    bounds = bounds or current_bounds()
    for raw in raws:
        result = validate(raw, now=now, max_bytes=max_bytes, bounds=bounds)
        if isinstance(result, EventBase):
            if result.event_id in seen:
                result = Rejection(
                    DUPLICATE_EVENT_ID,
                    f"event_id {result.event_id!r} already seen in this batch",
                    bytes(raw),
                )
            else:
                seen.add(result.event_id)
        yield result


class _Repeated(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _refuse_repeats(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Repeated(key)
            seen.add(key)
    return obj


def _repeated_key(text: str, obj: dict[str, object]) -> str | None:
    """A key that ``text`` repeats, at any depth, or None.

    Fast path for flat objects without ``\\u`` escapes (nearly every event): each key is followed by
    one colon, and the only other colons are inside strings, all of which the parsed object still
    holds, so the colons outside strings count the keys exactly; a repeated key makes the count
    exceed the keys that survived. The other escapes (``\\"``, ``\\\\``, ``\\/``, ``\\n``, ...) neither
    hide nor make a colon, so a string's colons are the same in the text and in the parsed value;
    only ``\\u003a`` can turn into one. A key spelled two ways (``"a/b"``, ``"a\\/b"``) is one key
    of the parsed object, so the count still sees the repeat. Anything else is checked by a second,
    pair-preserving parse.
    """
    if "\\u" not in text:
        values = obj.values()
        kinds = set(map(type, values))  # orjson gives exact types: no subclasses to miss
        if dict not in kinds and list not in kinds:
            inside = "".join(obj).count(":") + "".join([v for v in values if type(v) is str]).count(":")
            if text.count(":") - inside == len(obj):
                return None
    try:
        json.loads(text, object_pairs_hook=_refuse_repeats)
    except _Repeated as exc:
        return exc.key[:64]
    except (ValueError, RecursionError):
        return None  # orjson accepted it; the model refuses what the standard parser cannot read
    return None


def _rejection_from_error(exc: ValidationError, raw: bytes) -> Rejection:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "(record)"
    kind = error["type"]
    if kind == "missing":
        code = MISSING_FIELD
    elif kind == "extra_forbidden":
        code = UNEXPECTED_FIELD
    elif kind.endswith(_TYPE_ERRORS) or kind == "json_invalid":
        code = WRONG_TYPE
    else:
        code = INVALID_VALUE
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return Rejection(code, f"{where}: {error['msg']}{more}", raw)


def _check_event_time(event: EventBase, raw: bytes, now: datetime, bounds: EventTimeBounds) -> EventBase | Rejection:
    ts = event.ts
    if ts.tzinfo is None or ts.utcoffset() is None:
        return Rejection(INVALID_VALUE, "ts: must carry a UTC offset, e.g. 2026-11-01T12:00:00Z", raw)
    if ts < bounds.earliest:
        return Rejection(
            TS_TOO_OLD,
            f"ts {ts.isoformat()} is before the earliest accepted time {bounds.earliest.isoformat()}"
            f" (to accept older data, set {EARLIEST_SETTING})",
            raw,
        )
    if ts > now + bounds.max_future_skew:
        return Rejection(
            TS_IN_FUTURE,
            f"ts {ts.isoformat()} is more than {bounds.max_future_skew} in the future (the limit is {SKEW_SETTING})",
            raw,
        )
    return event
