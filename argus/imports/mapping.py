"""The mapping file: how a user's own columns become Argus events, validated before any row is read.

A mapping is TOML with five tables (only ``[fields]`` is needed in every mapping)::

    [source]                      # how to read the file; the format defaults to the file's suffix
    format = "csv"                # csv, jsonl or parquet
    delimiter = ";"

    [event]                       # constants, set on every event
    event_type = "payment"
    context = "shop"

    [fields.ts]                   # target field <- source column, converted
    column = "booked_at"
    format = "%d/%m/%Y %H:%M"     # iso, epoch_s, epoch_ms or a strptime pattern
    tz = "Europe/Berlin"          # for times without an offset (default UTC)

    [fields.instrument_id]
    column = "card_number"
    hash = true                   # HMAC-SHA256 with the salt of [hash], hex, truncated

    [hash]
    salt_env = "ARGUS_IMPORT_SALT"   # the salt's environment variable, so it is never committed
    length = 32

    [event_id]                    # when the source has no event ids: a stable hash of these columns
    columns = ["booked_at", "card_number", "amount"]   # or "*" for the whole row

Every mistake becomes one :class:`MappingError` line that names the key and what to do.
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from argus.schemas.models import EVENT_MODELS, EVENT_TYPES

SourceFormat = Literal["csv", "jsonl", "parquet"]
ValueType = Literal["str", "int", "float", "bool"]
TIME_KEYWORDS = ("iso", "epoch_s", "epoch_ms")
TIME_FORMAT_HELP = "use iso, epoch_s, epoch_ms or a strptime pattern like %d/%m/%Y %H:%M"
SUFFIX_FORMATS: dict[str, SourceFormat] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}
ALL_TARGET_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(f for m in EVENT_MODELS.values() for f in m.model_fields))


class MappingError(ValueError):
    """A mistake in the mapping file; one line naming the key."""


class _Table(BaseModel):
    # strict: TOML values are already typed, so `column = 5` is a mistake, not a number to coerce.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class SourceSpec(_Table):
    """How to read the source file."""

    format: SourceFormat | None = Field(default=None, description="default: from the file's suffix")
    delimiter: str = Field(default=",", min_length=1, max_length=1, description="csv only")
    quotechar: str = Field(default='"', min_length=1, max_length=1, description="csv only")
    encoding: str = "utf-8"
    batch_rows: int = Field(default=10_000, ge=1, description="rows read and written at a time")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}; e.g. utf-8, latin-1, cp1252") from None
        return value


class FieldSpec(_Table):
    """One target field read from one source column. Steps: pattern, map, default, type or time, hash."""

    column: str = Field(min_length=1)
    type: ValueType | None = Field(default=None, description="default: the target field's type")
    format: str | None = Field(default=None, description="ts only: iso, epoch_s, epoch_ms or a strptime pattern")
    tz: str | None = Field(default=None, description="ts only: zone of times without an offset; default UTC")
    pattern: str | None = Field(default=None, description="a regular expression; its first group is the value")
    decimal: Literal[".", ","] = Field(default=".", description="decimal mark of numbers; ',' drops '.' and spaces")
    map: dict[str, str | int | float | bool] | None = Field(default=None, description="source value -> value")
    default: str | int | float | bool | None = Field(default=None, description="used when the value is empty")
    hash: bool = False
    lowercase: bool = Field(default=False, description="lowercase (after trimming) before hashing or mapping")

    @field_validator("format")
    @classmethod
    def _known_time_format(cls, value: str | None) -> str | None:
        if value is None or value in TIME_KEYWORDS:
            return value
        if "%" not in value:
            raise ValueError(f"unknown time format {value!r}; {TIME_FORMAT_HELP}")
        sample = datetime(2001, 2, 3, 4, 5, 6)
        try:
            datetime.strptime(sample.strftime(value), value)
        except ValueError as exc:
            raise ValueError(
                f"time format {value!r} does not parse its own output ({exc}); {TIME_FORMAT_HELP}"
            ) from None
        return value

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            close = sorted(z for z in available_timezones() if z.lower().endswith(value.lower().split("/")[-1]))
            hint = f"; did you mean {close[0]}?" if close else "; use an IANA name such as Europe/Berlin or UTC"
            raise ValueError(f"unknown time zone {value!r}{hint}") from None
        return value

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        if compiled.groups < 1:
            raise ValueError(f"{value!r} has no group; put the part to keep in parentheses")
        return value


class EventIdSpec(_Table):
    """Derive ``event_id`` from source columns, so re-importing the same rows gives the same ids."""

    columns: list[str] | Literal["*"] = Field(description='source columns to hash, or "*" for the whole row')
    prefix: str = Field(default="", max_length=32)

    @field_validator("columns")
    @classmethod
    def _not_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError('name at least one column, or "*" for the whole row')
        return value


class HashSpec(_Table):
    """The salt of hashed fields: ``salt_env`` (an environment variable, preferred) or ``salt``."""

    salt: str | None = Field(default=None, min_length=8)
    salt_env: str | None = Field(default=None, min_length=1)
    length: int = Field(default=32, ge=8, le=64, description="hex characters kept")

    @model_validator(mode="after")
    def _one_salt(self) -> HashSpec:
        if (self.salt is None) == (self.salt_env is None):
            raise ValueError("give exactly one of salt_env (an environment variable's name) or salt")
        return self


class Mapping(_Table):
    """A whole mapping file."""

    source: SourceSpec = SourceSpec()
    event: dict[str, str | int | float | bool] = Field(default_factory=dict, description="constants")
    fields: dict[str, FieldSpec] = Field(default_factory=dict)
    event_id: EventIdSpec | None = None
    hash: HashSpec | None = None

    @property
    def event_types(self) -> tuple[str, ...]:
        """The event types this mapping can produce (all of them when a column says, without a map)."""
        if "event_type" in self.event:
            return (str(self.event["event_type"]),)
        spec = self.fields.get("event_type")
        if spec is not None and spec.map:
            return tuple(dict.fromkeys(str(v) for v in spec.map.values()))
        return EVENT_TYPES

    def salt(self) -> bytes | None:
        """The hashing salt, read from the environment when the mapping names a variable."""
        if self.hash is None:
            return None
        if self.hash.salt_env is not None:
            value = os.environ.get(self.hash.salt_env)
            if not value:
                raise MappingError(
                    f"hash.salt_env: the environment variable {self.hash.salt_env} is not set; export it, "
                    "with the same value for every import so hashes stay comparable"
                )
            return value.encode()
        return str(self.hash.salt).encode()

    @model_validator(mode="after")
    def _consistent(self) -> Mapping:
        _check_event_type(self)
        for name in (*self.event, *self.fields):
            if name not in ALL_TARGET_FIELDS:
                raise _KeyError(
                    f"fields.{name}" if name in self.fields else f"event.{name}",
                    f"unknown target field {name!r}; event fields are {', '.join(ALL_TARGET_FIELDS)}",
                )
        for name in self.event:
            if name in self.fields:
                raise _KeyError(f"fields.{name}", f"{name} is both a constant in [event] and a column; keep one")
        types = self.event_types
        for name in (*self.event, *self.fields):
            if not any(name in EVENT_MODELS[t].model_fields for t in types):
                raise _KeyError(
                    f"fields.{name}" if name in self.fields else f"event.{name}",
                    f"{' and '.join(types)} events have no field {name!r}; they have {', '.join(_fields_of(types))}",
                )
        for name, spec in self.fields.items():
            _check_field(name, spec, self)
        for name, value in self.event.items():
            _check_constant(name, value, types)
        if self.event_id is not None and "event_id" in self.fields:
            raise _KeyError("event_id", "event_id comes from [fields.event_id] or is derived by [event_id], not both")
        for event_type in types:
            for name, info in EVENT_MODELS[event_type].model_fields.items():
                given = name in self.fields or name in self.event or (name == "event_id" and self.event_id)
                if info.is_required() and not given:
                    raise _KeyError(f"fields.{name}", _missing_help(name, event_type))
        return self


class _KeyError(ValueError):
    """A consistency error that belongs to another key than the one pydantic is checking."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"@{key}@{message}")


def _fields_of(types: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(f for t in types for f in EVENT_MODELS[t].model_fields))


def _missing_help(name: str, event_type: str) -> str:
    if name == "event_id":
        return (
            f"{event_type} events need event_id; map a column with [fields.event_id] or derive one with "
            '[event_id] columns = [...] (or "*" for the whole row)'
        )
    return f"{event_type} events need {name}; map a column with [fields.{name}] or set a constant in [event]"


def _check_event_type(mapping: Mapping) -> None:
    constant = mapping.event.get("event_type")
    if constant is not None and constant not in EVENT_TYPES:
        raise _KeyError("event.event_type", f"{constant!r} is not an event type; use one of {', '.join(EVENT_TYPES)}")
    spec = mapping.fields.get("event_type")
    if constant is None and spec is None:
        raise _KeyError(
            "event.event_type",
            'say which events these are: event_type = "chat" in [event], or [fields.event_type] with a column',
        )
    for source, target in (spec.map or {}).items() if spec else ():
        if target not in EVENT_TYPES:
            raise _KeyError(
                f"fields.event_type.map.{source}",
                f"{target!r} is not an event type; use one of {', '.join(EVENT_TYPES)}",
            )


def _check_field(name: str, spec: FieldSpec, mapping: Mapping) -> None:
    key = f"fields.{name}"
    if name != "ts":
        for option in ("format", "tz"):
            if getattr(spec, option) is not None:
                raise _KeyError(f"{key}.{option}", f"{option} applies to ts only")
    elif spec.type is not None:
        raise _KeyError(f"{key}.type", "ts is a time; say how to read it with format (iso, epoch_s, epoch_ms, ...)")
    if spec.hash and mapping.hash is None:
        raise _KeyError(f"{key}.hash", 'hashing needs a salt: add [hash] with salt_env = "YOUR_SALT_VARIABLE"')
    if name in ("ts", "event_type", "schema_version") and spec.hash:
        raise _KeyError(f"{key}.hash", f"{name} cannot be hashed")


def _check_constant(name: str, value: object, types: tuple[str, ...]) -> None:
    for event_type in types:
        info = EVENT_MODELS[event_type].model_fields.get(name)
        if info is None or name == "event_type":
            continue
        try:
            field_type: Any = typing.Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
            TypeAdapter(field_type).validate_python(value, strict=True)
        except ValidationError as exc:
            message = exc.errors(include_url=False)[0]["msg"]
            raise _KeyError(f"event.{name}", f"{value!r} is not valid for {event_type} events: {message}") from None


def target_type(event_type: str, name: str) -> type:
    """The Python type a target field holds (str for literals and identifiers)."""
    info = EVENT_MODELS[event_type].model_fields[name]
    for candidate in (datetime, float, int):
        if _mentions(info.annotation, candidate):
            return candidate
    return str


def _mentions(annotation: object, wanted: type) -> bool:
    if annotation is wanted:
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return any(type(a) is wanted for a in args)
    return any(_mentions(a, wanted) for a in args)


def source_format(path: Path, mapping: Mapping) -> SourceFormat:
    if mapping.source.format is not None:
        return mapping.source.format
    found = SUFFIX_FORMATS.get(path.suffix.lower())
    if found is None:
        raise MappingError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
            'set format = "csv", "jsonl" or "parquet" in [source]'
        )
    return found


def load_mapping(path: Path) -> Mapping:
    """Read and check a mapping file; every problem is one ``MappingError`` line starting with the path."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MappingError(f"{path}: no such mapping file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"{path}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{path}: not valid TOML: {exc}") from None
    mapping = parse_mapping(data, str(path))
    try:
        mapping.salt()  # a salt variable that is not set is found now, before any file is written
    except MappingError as exc:
        raise MappingError(f"{path}: {exc}") from None
    return mapping


def parse_mapping(data: dict[str, Any], name: str = "mapping") -> Mapping:
    try:
        return Mapping.model_validate(data)
    except ValidationError as exc:
        raise MappingError(f"{name}: {_one_line(exc)}") from None


_ALLOWED_KEYS: dict[tuple[str, ...], type[_Table]] = {(): Mapping, ("source",): SourceSpec, ("event_id",): EventIdSpec}


def _one_line(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    error = errors[0]
    loc = tuple(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith("@"):
        key, _, message = message[1:].partition("@")
        loc = tuple(key.split("."))
    elif error["type"] == "extra_forbidden":
        message = f"unknown key {loc[-1]!r}; the keys here are {', '.join(_keys_at(loc[:-1]))}"
    elif error["type"] == "missing":
        message = "required key is missing"
    elif loc[:2] == ("event_id", "columns") and error["type"] in ("list_type", "literal_error"):
        errors = errors[:1]
        message = f'expected a list of column names or "*", got {error["input"]!r}'
    elif error["type"] == "literal_error" and loc[-1:] == ("type",):
        message = f"{error['input']!r} is not a type; use str, int, float or bool"
    elif error["type"].endswith("_type") and not isinstance(error.get("input"), dict):
        message = f"{message}, got {type(error['input']).__name__} {error['input']!r}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{'.'.join(_tidy(loc)) or '(top level)'}: {message}{more}"


def _tidy(loc: tuple[str, ...]) -> tuple[str, ...]:
    # pydantic names union branches ("list[str]", "literal['*']"); they are not keys of the file.
    return tuple(part for part in loc if part not in _BRANCHES and not part.startswith(("list[", "literal[")))


_BRANCHES = frozenset({"str", "int", "float", "bool"})


def _keys_at(loc: tuple[str, ...]) -> list[str]:
    if loc[:1] == ("fields",) and len(loc) == 2:
        return list(FieldSpec.model_fields)
    if loc == ("hash",):
        return list(HashSpec.model_fields)
    model = _ALLOWED_KEYS.get(loc, Mapping)
    return list(model.model_fields)
