"""Where a world's events go: a Parquet (or JSON Lines) lake, or Kafka topics."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from argus.infra.topics import event_topic
from argus.schemas.privacy import current_privacy
from argus.world.simulate import World
from argus.world.truth import truth_summary, truth_table

Progress = Callable[[int], None]


def lake_path(root: Path, event_type: str, day: date, fmt: str = "parquet") -> Path:
    """The lake layout shared with the Spark ingest job: partitioned by event type and date."""
    return root / "events" / f"event_type={event_type}" / f"date={day.isoformat()}" / f"part-00000.{fmt}"


def to_json_lines(table: pa.Table) -> list[bytes]:
    """One JSON document per row in the event schema (RFC 3339 UTC timestamps)."""
    if table.num_rows == 0:
        return []
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    frame["ts"] = np.char.add(np.datetime_as_string(table["ts"].to_numpy().astype("datetime64[ms]"), unit="ms"), "Z")
    text = frame.to_json(orient="records", lines=True, force_ascii=False, double_precision=15)
    return [line.encode() for line in text.splitlines()]


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial")
    write(staging)
    os.replace(staging, path)


def write_table(table: pa.Table, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        _atomic_write(path, lambda p: pq.write_table(table, p, compression="zstd"))
    else:
        _atomic_write(path, lambda p: p.write_bytes(b"".join(line + b"\n" for line in to_json_lines(table))))


def write_world(world: World, out: Path, fmt: str = "parquet", progress: Progress | None = None) -> dict[str, Any]:
    """Write every day of ``world`` under ``out`` plus its truth; rerunning overwrites, never appends.

    Fields named by ``[privacy] hash_fields`` are stored salted-hashed (``argus.schemas.privacy``).
    """
    privacy = current_privacy()
    counts: dict[str, dict[str, int]] = {}
    for day, tables in world.days():
        for event_type, table in tables.items():
            write_table(privacy.table(table), lake_path(out, event_type, day, fmt), fmt)
            counts.setdefault(event_type, {})[day.isoformat()] = table.num_rows
            if progress:
                progress(table.num_rows)
    write_truth(world, out)
    manifest = {"format": fmt, "world": world.cfg.to_json(), "events": counts}
    _atomic_write(out / "manifest.json", lambda p: p.write_text(json.dumps(manifest, indent=2, sort_keys=True)))
    return manifest


def write_truth(world: World, out: Path) -> None:
    truth = out / "truth"
    users = current_privacy().table(truth_table(world))  # usernames hashed like the events' ones
    _atomic_write(truth / "users.parquet", lambda p: pq.write_table(users, p))
    summary = json.dumps(truth_summary(world), indent=2, sort_keys=True)
    _atomic_write(truth / "truth.json", lambda p: p.write_text(summary))


def event_records(world: World) -> Iterator[tuple[str, list[bytes], list[bytes]]]:
    """(topic, keys, values) per day and event type, in event-time order within each."""
    for _, tables in world.days():
        for event_type, table in tables.items():
            if table.num_rows:
                keys = [k.encode() for k in table["user_id"].to_pylist()]
                yield event_topic(event_type), keys, to_json_lines(table)
