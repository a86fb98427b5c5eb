"""The accepted event-time range, a setting rather than a constant, so backfills of old data work.

An event is accepted when ``earliest <= ts <= now + max_future_skew``. The defaults
(2000-01-01, one hour of clock skew) suit a live platform; a historical backfill or the replay
of an old export widens them:

    [events]                       # argus.toml (the file named by ARGUS_CONFIG)
    earliest_ts = "1995-01-01"     # a date, or an RFC 3339 time with offset
    max_future_skew = "2h"         # 90s, 30m, 2h, 1d, or plain seconds

The environment (``ARGUS_EARLIEST_TS``, ``ARGUS_MAX_FUTURE_SKEW``) overrides the file. Jobs that
validate on other machines (Spark executors) resolve the bounds once where they start and pass
them on, so every worker applies the same range.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from argus.schemas.config_file import config_stamp, read_config_table

DEFAULT_EARLIEST_TS = datetime(2000, 1, 1, tzinfo=UTC)
DEFAULT_MAX_FUTURE_SKEW = timedelta(hours=1)

EARLIEST_SETTING = "events.earliest_ts (argus.toml) or ARGUS_EARLIEST_TS"
SKEW_SETTING = "events.max_future_skew (argus.toml) or ARGUS_MAX_FUTURE_SKEW"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class BoundsError(ValueError):
    """A malformed event-time setting; the message names the setting and the expected form."""


@dataclass(frozen=True, slots=True)
class EventTimeBounds:
    earliest: datetime = DEFAULT_EARLIEST_TS
    max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW

    def to_json(self) -> dict[str, Any]:
        return {"earliest_ts": self.earliest.isoformat(), "max_future_skew_s": self.max_future_skew.total_seconds()}


def parse_earliest(value: object, setting: str = "events.earliest_ts") -> datetime:
    """``2000-01-01`` or ``1997-06-01T00:00:00Z`` (an offset is required on a time) → an aware datetime."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise BoundsError(
                f"{setting}: {value!r} is not a date or time; use 1997-01-01 or 1997-01-01T00:00:00Z"
            ) from None
    else:
        raise BoundsError(f'{setting}: expected a date string such as "1997-01-01", got {type(value).__name__}')
    if parsed.tzinfo is None:
        if isinstance(value, str) and "T" in value:
            raise BoundsError(f"{setting}: {value!r} has no UTC offset; add one, e.g. {value}Z")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_duration(value: object, setting: str = "events.max_future_skew") -> timedelta:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d``, ``1w`` → a non-negative timedelta."""
    if isinstance(value, bool):
        raise BoundsError(f'{setting}: expected a duration such as "2h", got a boolean')
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise BoundsError(f"{setting}: {value!r} is not a duration; use seconds or a number with s, m, h, d or w")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise BoundsError(f"{setting}: must not be negative")
    return timedelta(seconds=seconds)


def load_bounds(environ: Mapping[str, str] | None = None, config: Mapping[str, Any] | None = None) -> EventTimeBounds:
    """The configured bounds: environment > the ``[events]`` table of argus.toml > the defaults."""
    environ = os.environ if environ is None else environ
    table = dict((_config_file_table(environ) if config is None else config).get("events", {}))
    unknown = sorted(set(table) - {"earliest_ts", "max_future_skew"})
    if unknown:
        raise BoundsError(f"[events]: unknown key {unknown[0]!r}; the keys are earliest_ts and max_future_skew")
    earliest = DEFAULT_EARLIEST_TS
    skew = DEFAULT_MAX_FUTURE_SKEW
    if "earliest_ts" in table:
        earliest = parse_earliest(table["earliest_ts"])
    if "max_future_skew" in table:
        skew = parse_duration(table["max_future_skew"])
    if environ.get("ARGUS_EARLIEST_TS"):
        earliest = parse_earliest(environ["ARGUS_EARLIEST_TS"], "ARGUS_EARLIEST_TS")
    if environ.get("ARGUS_MAX_FUTURE_SKEW"):
        skew = parse_duration(environ["ARGUS_MAX_FUTURE_SKEW"], "ARGUS_MAX_FUTURE_SKEW")
    return EventTimeBounds(earliest, skew)


_cache: dict[tuple[object, ...], EventTimeBounds] = {}


def current_bounds() -> EventTimeBounds:
    """``load_bounds()``, cached until the environment or the config file changes (cheap per record)."""
    path, stamp = config_stamp()
    key = (
        path,
        stamp,
        os.environ.get("ARGUS_CONFIG"),
        os.environ.get("ARGUS_EARLIEST_TS"),
        os.environ.get("ARGUS_MAX_FUTURE_SKEW"),
    )
    bounds = _cache.get(key)
    if bounds is None:
        _cache.clear()
        bounds = _cache[key] = load_bounds()
    return bounds


def _config_file_table(environ: Mapping[str, str]) -> dict[str, Any]:
    return read_config_table(environ, BoundsError)
