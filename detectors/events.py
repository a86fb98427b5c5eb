"""Events as pandas frames, one per event type, read from the files users point detectors at.

Accepted inputs (all in the event schema of ``schemas/``):

* a folder in the lake layout (``events/event_type=T/date=D/*.parquet`` or ``*.jsonl``; the folder
  itself, its ``events/`` child, or a world written by ``argus generate``); a lake's ingested Delta
  tables (``ingested/event_type=T``) are read too, at the version its manifest publishes;
* one Parquet file with an ``event_type`` column (the wide event schema);
* one JSON Lines file, one event per line; lines that fail validation are kept with their
  reason in ``Events.rejected`` (never dropped silently, never guessed at).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from argus.schemas.arrow import ARROW_SCHEMAS
from argus.schemas.models import EVENT_TYPES
from argus.schemas.validate import Rejection, validate_batch


class EventsError(ValueError):
    """The events path cannot be read; one line that says what to do."""


@dataclass
class Events:
    """One frame per event type with the type's columns; an absent type is an empty frame."""

    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    # Tables derived from the frames (``derived``): name -> (the source frames, the table).
    _derived: dict[str, tuple[tuple[pd.DataFrame | None, ...], pd.DataFrame]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __getitem__(self, event_type: str) -> pd.DataFrame:
        frame = self.frames.get(event_type)
        if frame is None:
            frame = ARROW_SCHEMAS[event_type].empty_table().to_pandas()
        return frame

    @property
    def user_ids(self) -> pd.Index:
        """Every user with at least one event, sorted."""
        ids = [f["user_id"] for f in self.frames.values() if len(f)]
        if not ids:
            return pd.Index([], dtype=object, name="user_id")
        return pd.Index(sorted(pd.unique(pd.concat(ids))), name="user_id")

    def derived(self, name: str, event_types: tuple[str, ...], build: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """``build()`` once while the frames of ``event_types`` stay the same objects; a shallow copy each call.

        Feature functions that each need, say, the payments with parsed times share one table per
        Events instead of parsing and sorting them again. Frames are read, never changed in place.
        """
        sources = tuple(self.frames.get(t) for t in event_types)
        cached = self._derived.get(name)
        if cached is None or any(a is not b for a, b in zip(cached[0], sources, strict=True)):
            cached = (sources, build())
            self._derived[name] = cached
        return cached[1].copy(deep=False)

    @property
    def count(self) -> int:
        return sum(len(f) for f in self.frames.values())

    @classmethod
    def from_tables(cls, tables: dict[str, pa.Table]) -> Events:
        return cls({t: _normalise(table.to_pandas()) for t, table in tables.items()})

    @classmethod
    def from_frames(cls, frames: dict[str, pd.DataFrame]) -> Events:
        return cls({t: _normalise(frame.reset_index(drop=True)) for t, frame in frames.items()})

    def restrict(self, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None) -> Events:
        """Events with ``start <= ts < end`` (either bound optional)."""
        frames = {}
        for event_type, frame in self.frames.items():
            keep = pd.Series(True, index=frame.index)
            if start is not None:
                keep &= frame["ts"] >= start
            if end is not None:
                keep &= frame["ts"] < end
            frames[event_type] = frame[keep]
        return Events(frames, self.rejected)


def load_events(path: Path) -> Events:
    """Read events from a lake folder, a wide Parquet file or a JSON Lines file (see the module doc)."""
    path = Path(path)
    if not path.exists():
        raise EventsError(f"no events at {path}: give a lake folder, a .parquet file or a .jsonl file")
    if path.is_dir():
        return _from_lake(path)
    if path.suffix == ".parquet":
        return _from_wide(pq.read_table(path))
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        return _from_json_lines(path.read_bytes().splitlines())
    raise EventsError(f"{path}: unknown format {path.suffix!r}; use .parquet, .jsonl or a lake folder")


def _from_lake(root: Path) -> Events:
    base = root / "events" if (root / "events").is_dir() else root
    frames: dict[str, pd.DataFrame] = {}
    rejected: list[Rejection] = []
    for event_type in EVENT_TYPES:
        folder = base / f"event_type={event_type}"
        parquet = sorted(folder.glob("date=*/*.parquet"))
        json_lines = sorted(folder.glob("date=*/*.jsonl"))
        if parquet:
            tables = [pq.read_table(p, schema=ARROW_SCHEMAS[event_type]) for p in parquet]
            frames[event_type] = _normalise(pa.concat_tables(tables).to_pandas())
        elif json_lines:
            part = _from_json_lines([line for p in json_lines for line in p.read_bytes().splitlines()])
            frames[event_type] = part[event_type]
            rejected += part.rejected
        ingested = _ingested(root, event_type)
        if ingested is not None:
            landed = [frames[event_type]] if event_type in frames else []
            frames[event_type] = _normalise(pd.concat([*landed, ingested], ignore_index=True))
    if not frames:
        raise EventsError(f"{root}: no events/event_type=*/date=*/ files; is this a lake or world folder?")
    return Events(frames, rejected)


def _ingested(root: Path, event_type: str) -> pd.DataFrame | None:
    """The published rows of a lake's ingested Delta table of ``event_type``; None when ``root`` has none."""
    if not (root / "ingested").is_dir():
        return None
    from argus.detectors.lake_tables import events_table, read_pandas  # Delta's reader, never a file listing

    frame = read_pandas(root, events_table(event_type), columns=ARROW_SCHEMAS[event_type].names)
    return frame if frame is not None and len(frame) else None


def _from_wide(table: pa.Table) -> Events:
    if "event_type" not in table.column_names:
        raise EventsError("the Parquet file has no event_type column; write it in the wide event schema")
    frame = table.to_pandas()
    frames = {}
    for event_type, part in frame.groupby("event_type", sort=True):
        if event_type not in ARROW_SCHEMAS:
            raise EventsError(f"unknown event_type {event_type!r} in the Parquet file; known: {', '.join(EVENT_TYPES)}")
        columns = [c for c in ARROW_SCHEMAS[str(event_type)].names if c in part.columns]
        frames[str(event_type)] = _normalise(part[columns].reset_index(drop=True))
    return Events(frames)


def _from_json_lines(lines: list[bytes]) -> Events:
    rows: dict[str, list[dict[str, object]]] = {}
    rejected = []
    for result in validate_batch(line for line in lines if line.strip()):
        if isinstance(result, Rejection):
            rejected.append(result)
            continue
        row = result.model_dump()
        rows.setdefault(str(row["event_type"]), []).append(row)
    frames = {
        t: _normalise(pa.Table.from_pylist(r, schema=ARROW_SCHEMAS[t]).to_pandas()) for t, r in sorted(rows.items())
    }
    return Events(frames, rejected)


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """UTC timestamps and a stable order (event time, then event id)."""
    if "ts" in frame.columns:
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
        frame = frame.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)
    return frame
