"""One source row → one candidate event (a dict in the event schema), or a :class:`RowError` saying why not.

Each mapped field goes through the same steps, in order: read the column (a missing column is an
error; an empty value takes the field's ``default`` or is left out), trim, ``lowercase``,
``pattern`` (keep the first group), ``map``, then convert (a time for ``ts``, else the ``type``,
by default the target field's own), then ``hash``. A field the row's event type does not have is
left out, so one mapping can describe a file that mixes event types. The candidate is checked
afterwards by the one validator, ``argus.schemas.validate``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Mapping as MappingType
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from argus.imports.mapping import FieldSpec, Mapping, target_type
from argus.schemas.models import EVENT_MODELS

# Reason codes of rows that cannot be mapped (the validator's codes cover the rest).
MISSING_COLUMN = "missing_column"
BAD_TIME = "bad_time"
BAD_NUMBER = "bad_number"
BAD_VALUE = "bad_value"
UNMAPPED_VALUE = "unmapped_value"

_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})
# Versioned so that a future change of the derivation can never collide with today's ids.
_EVENT_ID_DOMAIN = b"argus-import-event-id-v1\x00"


@dataclass(frozen=True)
class RowError(Exception):
    """Why a row could not be mapped; ``reason`` names the field and the offending value."""

    reason_code: str
    reason: str

    def __str__(self) -> str:
        return f"{self.reason_code}: {self.reason}"


class RowConverter:
    """Converts rows with one mapping; built once per import (patterns compiled, salt read)."""

    def __init__(self, mapping: Mapping) -> None:
        self.mapping = mapping
        self._salt = mapping.salt()
        self._hash_length = mapping.hash.length if mapping.hash else 32
        self._patterns = {n: re.compile(s.pattern) for n, s in mapping.fields.items() if s.pattern}
        self._zones = {n: ZoneInfo(s.tz or "UTC") for n, s in mapping.fields.items() if n == "ts"}

    def convert(self, row: MappingType[str, Any]) -> dict[str, Any]:
        """The candidate event for ``row``; raises :class:`RowError`."""
        event_type = self._event_type(row)
        fields = EVENT_MODELS[event_type].model_fields if event_type in EVENT_MODELS else {}
        event: dict[str, Any] = {"event_type": event_type}
        for name, constant in self.mapping.event.items():
            if name in fields:
                event[name] = constant
        for name, spec in self.mapping.fields.items():
            if name == "event_type" or name not in fields:
                continue
            value = self._field(name, spec, row, event_type)
            if value is not None:
                event[name] = value
        if self.mapping.event_id is not None:
            event["event_id"] = self._derived_event_id(row)
        return event

    def _event_type(self, row: MappingType[str, Any]) -> str:
        if "event_type" in self.mapping.event:
            return str(self.mapping.event["event_type"])
        value = self._field("event_type", self.mapping.fields["event_type"], row, "chat")
        return "" if value is None else str(value)

    def _field(self, name: str, spec: FieldSpec, row: MappingType[str, Any], event_type: str) -> Any:
        if spec.column not in row:
            raise RowError(MISSING_COLUMN, f"fields.{name}: column {spec.column!r} is missing from the row")
        value = row[spec.column]
        if isinstance(value, str):
            value = value.strip()
            if spec.lowercase:
                value = value.lower()
        if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
            return spec.default
        if spec.pattern:
            match = self._patterns[name].search(_text(value))
            if match is None or match.group(1) is None:
                raise RowError(BAD_VALUE, f"fields.{name}: {value!r} does not match the pattern {spec.pattern!r}")
            value = match.group(1)
        if spec.map is not None:
            key = _text(value)
            if key not in spec.map:
                known = ", ".join(repr(k) for k in list(spec.map)[:8])
                raise RowError(UNMAPPED_VALUE, f"fields.{name}: {key!r} is not in its map (known: {known})")
            value = spec.map[key]
        if name == "ts":
            value = parse_time(value, spec.format or "iso", self._zones["ts"])
        elif name != "event_type":
            wanted = spec.type or {str: "str", int: "int", float: "float"}.get(target_type(event_type, name), "str")
            value = convert_value(value, wanted, name, spec.decimal)
        if spec.hash:
            value = self.hash(_text(value))
        return value

    def hash(self, text: str) -> str:
        """HMAC-SHA256 of ``text`` with the mapping's salt, as truncated lowercase hex."""
        assert self._salt is not None  # the mapping check requires [hash] wherever hash = true
        digest = hmac.new(self._salt, text.encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[: self._hash_length]

    def _derived_event_id(self, row: MappingType[str, Any]) -> str:
        spec = self.mapping.event_id
        assert spec is not None
        if spec.columns == "*":
            # Empty values are left out, so a row read from JSON (key absent) and from Parquet
            # (null) gets the same id.
            parts: list[Any] = sorted((str(k), _text(v)) for k, v in row.items() if _text(v) != "")
        else:
            missing = [c for c in spec.columns if c not in row]
            if missing:
                raise RowError(MISSING_COLUMN, f"event_id.columns: column {missing[0]!r} is missing from the row")
            parts = [_text(row[c]) for c in spec.columns]
        # With a salt the id is keyed too: ids built from personal columns (an e-mail and a time)
        # cannot be reversed by hashing guesses. Ids stay stable as long as the salt does, which
        # hashed user ids need anyway.
        payload = _EVENT_ID_DOMAIN + orjson.dumps(parts)
        if self._salt is not None:
            digest = hmac.new(self._salt, payload, hashlib.sha256).hexdigest()
        else:
            digest = hashlib.sha256(payload).hexdigest()
        return f"{spec.prefix}{digest[:32]}"


def parse_time(value: Any, fmt: str, zone: ZoneInfo) -> str:
    """An RFC 3339 UTC string from ``value`` read as ``fmt``; times without an offset are in ``zone``."""
    try:
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, date):
            parsed = datetime(value.year, value.month, value.day)
        elif fmt in ("epoch_s", "epoch_ms"):
            if isinstance(value, bool):
                raise ValueError("a boolean is not a time")
            seconds = float(value) / (1000 if fmt == "epoch_ms" else 1)
            if not math.isfinite(seconds):
                raise ValueError("not a finite number")
            parsed = datetime.fromtimestamp(seconds, UTC)
        elif fmt == "iso":
            if not isinstance(value, str):
                raise ValueError(f"expected text, got {type(value).__name__}")
            parsed = datetime.fromisoformat(value)
        else:
            parsed = datetime.strptime(_text(value), fmt)
    except (ValueError, OverflowError, OSError) as exc:
        raise RowError(BAD_TIME, f"fields.ts: {value!r} is not a time in format {fmt!r} ({exc})") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC).isoformat().replace("+00:00", "Z")


def convert_value(value: Any, wanted: str, name: str, decimal: str = ".") -> Any:
    """``value`` as ``wanted`` (str, int, float or bool); raises :class:`RowError`."""
    if wanted == "str":
        return _text(value)
    if wanted == "bool":
        if isinstance(value, bool):
            return value
        text = _text(value).lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise RowError(BAD_VALUE, f"fields.{name}: {value!r} is not a boolean (true/false, yes/no, 1/0)")
    number = _number(value, name, decimal)
    if wanted == "float":
        return number
    if not number.is_integer():
        raise RowError(BAD_NUMBER, f"fields.{name}: {value!r} is not a whole number")
    return int(number)


def _number(value: Any, name: str, decimal: str) -> float:
    if isinstance(value, bool):
        raise RowError(BAD_NUMBER, f"fields.{name}: {value!r} is a boolean, not a number")
    if isinstance(value, int | float):
        number = float(value)
    else:
        text = _text(value).replace("\u00a0", "").replace(" ", "")
        if decimal == ",":
            text = text.replace(".", "").replace(",", ".")
        try:
            number = float(text)
        except ValueError:
            raise RowError(BAD_NUMBER, f"fields.{name}: {value!r} is not a number (decimal mark {decimal!r})") from None
    if not math.isfinite(number):
        raise RowError(BAD_NUMBER, f"fields.{name}: {value!r} is not a finite number")
    return number


def _text(value: Any) -> str:
    """The text form of a source value, the same whether it came from CSV, JSON or Parquet."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict | list):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode()
    return str(value)
