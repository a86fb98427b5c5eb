"""Read a source file, map every row, validate it, write the events and dead-letter the rest.

Reading streams (CSV and JSON Lines line by line, Parquet in record batches), so memory does not
grow with the file, except for the set of event ids seen (duplicates are rejected). Every row
ends up in exactly one place: an events file or topic, or the dead-letter file with its reason;
rows of users that ``argus forget`` erased from the lake are left out and counted (``erased``).

Lake output follows the project's layout (``events/event_type=T/date=D/``, dates in UTC, Parquet
in the event's Arrow schema or JSON Lines), one file per source file name and partition,
``import-<source name>.<format>``. A re-import of a file of the same name replaces its files,
including those in partitions it no longer has rows for, so importing twice gives the same lake.
"""

from __future__ import annotations

import base64
import csv
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from argus.imports.convert import RowConverter, RowError
from argus.imports.mapping import Mapping, SourceFormat, source_format
from argus.schemas.arrow import ARROW_SCHEMAS
from argus.schemas.bounds import EventTimeBounds, current_bounds
from argus.schemas.models import DeadLetter, EventBase
from argus.schemas.privacy import ErasedSubjects, current_privacy, erased_subjects
from argus.schemas.validate import DUPLICATE_EVENT_ID, NOT_JSON, NOT_OBJECT, NOT_UTF8, Rejection, validate

Progress = Callable[[int], None]

BAD_ROW = "bad_row"
LAKE_FORMATS = ("parquet", "jsonl")
_PROGRESS_EVERY = 1000


class SourceError(ValueError):
    """The source file cannot be read as the mapping says; one line that says what to do."""


class ImportDeadLetter(DeadLetter):
    """A dead letter of an import: ``source_topic`` is the source file, ``source_offset`` the row number
    (1-based; CSV counts data rows after the header, JSON Lines counts lines, Parquet counts rows).

    ``original_b64`` holds the row's original bytes (its CSV record or JSON line); Parquet rows,
    which have none, are kept as JSON. ``row`` is the original row as an object, where it could be
    read, and ``mapped`` the candidate event the validator refused, where mapping got that far.
    """

    row: dict[str, Any] | None = None
    mapped: dict[str, Any] | None = None


@dataclass(frozen=True)
class SourceRow:
    number: int
    values: dict[str, Any] | None
    raw: bytes | None
    error: RowError | None = None


@dataclass
class ImportSummary:
    source: str
    rows: int = 0
    imported: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    rejects_file: str | None = None
    out: str | None = None
    files: int = 0
    produced: Counter[str] = field(default_factory=Counter)
    erased: int = 0  # rows of users erased from the lake by `argus forget`, left out again

    def to_json(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "source": self.source,
            "rows": self.rows,
            "imported": dict(sorted(self.imported.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "rejects_file": self.rejects_file,
        }
        if self.out is not None:
            summary["out"] = self.out
            summary["files"] = self.files
        if self.produced:
            summary["produced"] = dict(sorted(self.produced.items()))
        if self.erased:
            summary["erased"] = self.erased
        return summary


def default_rejects_path(source: Path, out: Path | None) -> Path:
    """``<out>.rejected.jsonl`` beside the lake, or ``<source name>.rejected.jsonl`` here for Kafka."""
    if out is not None:
        return out.with_name(f"{out.name}.rejected.jsonl")
    return Path(f"{source.name}.rejected.jsonl")


def run_import(
    source: Path,
    mapping: Mapping,
    *,
    out: Path | None = None,
    out_format: str = "parquet",
    kafka: bool = False,
    bootstrap: str | None = None,
    rejects: Path | None = None,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import ``source`` into a lake folder and/or the ``events.*`` topics; see the module doc."""
    if out is None and not kafka:
        raise ValueError("an import needs a destination: a lake folder, Kafka, or both")
    if out_format not in LAKE_FORMATS:
        raise SourceError(f"the lake format must be parquet or jsonl, not {out_format!r}")
    fmt = source_format(source, mapping)
    rows = read_rows(source, fmt, mapping)
    converter = RowConverter(mapping)
    rejects = rejects or default_rejects_path(source, out)
    summary = ImportSummary(source=str(source), rejects_file=str(rejects), out=str(out) if out else None)
    lake = LakeWriter(out, out_format, source.name, mapping.source.batch_rows) if out is not None else None
    topics = KafkaWriter(bootstrap, mapping.source.batch_rows) if kafka else None
    dead = DeadLetterWriter(rejects, str(source))
    seen: set[str] = set()
    bounds = current_bounds()  # once per import, not per row
    erased = erased_subjects(out) if out is not None else ErasedSubjects()  # `argus forget` holds
    try:
        for row in rows:
            summary.rows += 1
            if progress and summary.rows % _PROGRESS_EVERY == 0:
                progress(_PROGRESS_EVERY)
            result = _check(row, converter, seen, bounds)
            if erased:
                kept = _unless_erased(result, erased)
                if kept is None:
                    summary.erased += 1  # an erased user's row: imported nowhere, dead-lettered nowhere
                    continue
                result = kept
            if isinstance(result, EventBase):
                summary.imported[result.event_type] += 1  # type: ignore[attr-defined]
                if lake:
                    lake.add(result)
                if topics:
                    topics.add(result)
            else:
                reason_code, reason, mapped = result
                summary.rejected[reason_code] += 1
                dead.add(row, reason_code, reason, mapped)
        if progress:
            progress(summary.rows % _PROGRESS_EVERY)
        if lake:
            summary.files = lake.commit()
        if topics:
            summary.produced = topics.flush()
        dead.commit()
    except BaseException:
        if lake:
            lake.abort()
        dead.abort()
        raise
    return summary


def _check(
    row: SourceRow, converter: RowConverter, seen: set[str], bounds: EventTimeBounds
) -> EventBase | tuple[str, str, dict[str, Any] | None]:
    """The row's valid event, or (reason code, reason, candidate event) for its dead letter."""
    if row.error is not None:
        return row.error.reason_code, row.error.reason, None
    assert row.values is not None
    try:
        candidate = converter.convert(row.values)
    except RowError as exc:
        return exc.reason_code, exc.reason, None
    result = validate(orjson.dumps(candidate), bounds=bounds)
    if isinstance(result, Rejection):
        return result.reason_code, result.reason, candidate
    if result.event_id in seen:
        return DUPLICATE_EVENT_ID, f"event_id {result.event_id!r} already imported from an earlier row", candidate
    seen.add(result.event_id)
    return result


def _unless_erased(
    result: EventBase | tuple[str, str, dict[str, Any] | None], erased: ErasedSubjects
) -> EventBase | tuple[str, str, dict[str, Any] | None] | None:
    """None for a row of an erased user (valid or not); else the row, references pseudonymised."""
    if isinstance(result, EventBase):
        return erased.event(result)
    mapped = result[2]
    return None if mapped is not None and erased.is_erased(mapped.get("user_id")) else result


# --- reading ------------------------------------------------------------------------------------------


def read_rows(path: Path, fmt: SourceFormat, mapping: Mapping) -> Iterator[SourceRow]:
    """The rows of ``path``, lazily; checks up front that the file exists and has the mapped columns."""
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    if fmt == "csv":
        return _csv_rows(path, mapping)
    if fmt == "jsonl":
        return _json_rows(path)
    return _parquet_rows(path, mapping)


def count_rows(path: Path, fmt: SourceFormat) -> int | None:
    """About how many rows ``path`` has (line count for text; exact for Parquet), for the progress bar."""
    try:
        if fmt == "parquet":
            return int(pq.ParquetFile(path).metadata.num_rows)
        lines = 0
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                lines += chunk.count(b"\n")
        return max(lines - (1 if fmt == "csv" else 0), 0)
    except (OSError, pa.ArrowException):
        return None


def _mapped_columns(mapping: Mapping) -> dict[str, str]:
    """Source column -> the mapping key that reads it."""
    columns = {spec.column: f"fields.{name}.column" for name, spec in mapping.fields.items()}
    if mapping.event_id is not None and mapping.event_id.columns != "*":
        columns.update({c: "event_id.columns" for c in mapping.event_id.columns if c not in columns})
    return columns


def _check_header(path: Path, header: list[str], mapping: Mapping) -> None:
    for column, key in _mapped_columns(mapping).items():
        if column not in header:
            # Names come from the file: control characters are shown escaped, so a crafted header
            # cannot break the one-line error or drive the terminal.
            shown = ", ".join(_printable(name) for name in header[:20]) + (", ..." if len(header) > 20 else "")
            raise SourceError(f"{path}: column {column!r} ({key}) is not in the file; its columns are: {shown}")


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _csv_rows(path: Path, mapping: Mapping) -> Iterator[SourceRow]:
    spec = mapping.source
    consumed: list[bytes] = []
    undecodable: list[bool] = []

    def lines(handle: Any) -> Iterator[str]:
        # The csv module pulls one physical line at a time, so `consumed` ends up holding exactly
        # the bytes of the record just read: its original bytes for the dead letter.
        for line in handle:
            consumed.append(line)
            try:
                yield line.decode(spec.encoding)
            except UnicodeDecodeError:
                undecodable.append(True)
                yield line.decode(spec.encoding, errors="replace")

    with path.open("rb") as handle:
        reader = csv.reader(lines(handle), delimiter=spec.delimiter, quotechar=spec.quotechar, strict=False)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise SourceError(f"{path}: cannot read the CSV header: {exc}") from None
        header = [name.lstrip("\ufeff").strip() for name in header]
        _check_header(path, header, mapping)
        consumed.clear()
        undecodable.clear()
        number = 0
        while True:
            error: RowError | None = None
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                fields, error = [], RowError(BAD_ROW, f"not a CSV record: {exc}")
            raw = b"".join(consumed)
            consumed.clear()
            if not fields and error is None:
                continue  # a blank line is not a row
            number += 1
            if undecodable:
                undecodable.clear()
                error = RowError(NOT_UTF8, f"the row is not valid {spec.encoding}; set encoding in [source]")
            elif error is None and len(fields) > len(header):
                error = RowError(BAD_ROW, f"the row has {len(fields)} fields; the header has {len(header)}")
            values = dict(zip(header, fields, strict=False))
            yield SourceRow(number, values, raw, error)


def _json_rows(path: Path) -> Iterator[SourceRow]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            raw = line.rstrip(b"\r\n")
            try:
                values = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield SourceRow(number, None, raw, RowError(NOT_JSON, f"not JSON: {exc}"))
                continue
            if not isinstance(values, dict):
                error = RowError(NOT_OBJECT, f"expected a JSON object, got {type(values).__name__}")
                yield SourceRow(number, None, raw, error)
                continue
            yield SourceRow(number, values, raw)


def _parquet_rows(path: Path, mapping: Mapping) -> Iterator[SourceRow]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"{path}: not a readable Parquet file: {exc}") from None
    _check_header(path, parquet.schema_arrow.names, mapping)
    return _parquet_batches(parquet, mapping.source.batch_rows)


def _parquet_batches(parquet: pq.ParquetFile, batch_rows: int) -> Iterator[SourceRow]:
    number = 0
    for batch in parquet.iter_batches(batch_size=batch_rows):
        for values in batch.to_pylist():
            number += 1
            yield SourceRow(number, values, None)


# --- writing ------------------------------------------------------------------------------------------


def _staging(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


class LakeWriter:
    """Events into ``root/events/event_type=T/date=D/import-<source>.<format>``, replaced on commit."""

    def __init__(self, root: Path, fmt: str, source_name: str, batch_rows: int) -> None:
        self.root = root
        self.fmt = fmt
        self.stem = "import-" + re.sub(r"[^A-Za-z0-9._-]", "_", source_name)
        self.batch_rows = batch_rows
        self._buffers: dict[Path, list[EventBase]] = {}
        self._parquet: dict[Path, pq.ParquetWriter] = {}
        self._written: set[Path] = set()
        self._privacy = current_privacy()  # [privacy] hash_fields, applied to what the lake stores

    def path(self, event_type: str, day: date) -> Path:
        partition = self.root / "events" / f"event_type={event_type}" / f"date={day.isoformat()}"
        return partition / f"{self.stem}.{self.fmt}"

    def add(self, event: EventBase) -> None:
        path = self.path(event.event_type, event.ts.astimezone(UTC).date())  # type: ignore[attr-defined]
        buffer = self._buffers.setdefault(path, [])
        buffer.append(self._privacy.event(event))
        if len(buffer) >= self.batch_rows:
            self._flush(path)

    def _flush(self, path: Path) -> None:
        events = self._buffers.pop(path, [])
        if not events:
            return
        staging = _staging(path)
        if path not in self._written:
            staging.parent.mkdir(parents=True, exist_ok=True)
            staging.unlink(missing_ok=True)
            self._written.add(path)
        if self.fmt == "jsonl":
            with staging.open("ab") as handle:
                handle.writelines(e.model_dump_json().encode() + b"\n" for e in events)
            return
        schema = ARROW_SCHEMAS[events[0].event_type]  # type: ignore[attr-defined]
        writer = self._parquet.get(path)
        if writer is None:
            writer = self._parquet[path] = pq.ParquetWriter(staging, schema, compression="zstd")
        writer.write_table(pa.Table.from_pylist([e.model_dump() for e in events], schema=schema))

    def commit(self) -> int:
        """Publish every file written and remove this source's files from partitions it has left."""
        for path in list(self._buffers):
            self._flush(path)
        for writer in self._parquet.values():
            writer.close()
        for path in self._written:
            os.replace(_staging(path), path)
        for fmt in LAKE_FORMATS:
            for stale in (self.root / "events").glob(f"event_type=*/date=*/{self.stem}.{fmt}"):
                if stale not in self._written:
                    stale.unlink()
        return len(self._written)

    def abort(self) -> None:
        for writer in self._parquet.values():
            writer.close()
        for path in self._written:
            _staging(path).unlink(missing_ok=True)


class KafkaWriter:
    """Events as JSON to ``events.<type>``, keyed by ``user_id`` (one user's events stay in order)."""

    def __init__(self, bootstrap: str | None, batch_rows: int) -> None:
        from argus.infra.clients import BulkProducer

        self._producer = BulkProducer(bootstrap)
        self.batch_rows = batch_rows
        self._batches: dict[str, tuple[list[bytes], list[bytes]]] = {}
        self.sent: Counter[str] = Counter()

    def add(self, event: EventBase) -> None:
        from argus.infra.topics import event_topic

        topic = event_topic(event.event_type)  # type: ignore[attr-defined]
        keys, values = self._batches.setdefault(topic, ([], []))
        keys.append(event.user_id.encode())
        values.append(event.model_dump_json().encode())
        if len(values) >= self.batch_rows:
            self._send(topic)

    def _send(self, topic: str) -> None:
        keys, values = self._batches.pop(topic, ([], []))
        if values:
            self._producer.send_many(topic, keys, values)
            self.sent[topic] += len(values)

    def flush(self) -> Counter[str]:
        for topic in list(self._batches):
            self._send(topic)
        self._producer.flush()
        return self.sent


class DeadLetterWriter:
    """Rejected rows as JSON Lines of :class:`ImportDeadLetter`, replaced on commit.

    Several sources can share one dead-letter file (the default one of a lake): the lines of other
    sources are kept, this source's earlier lines are replaced, so a re-import does not repeat them.
    """

    def __init__(self, path: Path, source: str) -> None:
        self.path = path
        self.source = source
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = _staging(path).open("wb")
        if path.is_file():
            with path.open("rb") as previous:
                self._handle.writelines(line for line in previous if not self._ours(line))

    def _ours(self, line: bytes) -> bool:
        try:
            letter = orjson.loads(line)
        except orjson.JSONDecodeError:
            return False
        return isinstance(letter, dict) and letter.get("source_topic") == self.source

    def add(self, row: SourceRow, reason_code: str, reason: str, mapped: dict[str, Any] | None) -> None:
        values = _json_safe(row.values) if row.values is not None else None
        original = row.raw if row.raw is not None else _row_bytes(row.values)
        letter = ImportDeadLetter(
            original_b64=base64.b64encode(original).decode("ascii"),
            source_topic=self.source,
            source_offset=row.number,
            reason_code=reason_code,
            reason=reason,
            rejected_at=datetime.now(UTC),
            row=values,
            mapped=_json_safe(mapped) if mapped is not None else None,
        )
        self._handle.write(letter.model_dump_json().encode() + b"\n")

    def commit(self) -> None:
        self._handle.close()
        os.replace(_staging(self.path), self.path)

    def abort(self) -> None:
        self._handle.close()
        _staging(self.path).unlink(missing_ok=True)


# Deeper rows are kept only as their original bytes: JSON readers (pydantic's included) refuse to
# read, and sometimes to write, documents nested much deeper, and a dead letter must stay readable.
MAX_KEPT_DEPTH = 64


def _row_bytes(values: dict[str, Any] | None) -> bytes:
    """A source row without original bytes (Parquet), as JSON; its repr if it cannot be JSON."""
    try:
        return orjson.dumps(values, default=str, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return repr(values).encode("utf-8", "backslashreplace")


def _json_safe(values: dict[str, Any]) -> dict[str, Any] | None:
    """``values`` as plain JSON types, or None when it cannot be (too deep, not encodable)."""
    try:
        safe: dict[str, Any] = orjson.loads(_row_bytes(values))
    except orjson.JSONDecodeError:
        return None
    return safe if isinstance(safe, dict) and _depth(safe) <= MAX_KEPT_DEPTH else None


def _depth(value: Any) -> int:
    deepest, level = 0, [value]
    while level:
        deepest += 1
        if deepest > MAX_KEPT_DEPTH:
            return deepest
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
    return deepest
