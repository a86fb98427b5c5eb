"""The lake's published tables, read without Spark: locations, manifests and delta-rs reads.

The lake (``argus.jobs.lake`` writes it) keeps Delta tables under one root, a local folder or a URI
Spark's Hadoop file systems know (``s3a://``, ``gs://``, ``hdfs://``, ``abfss://``), and a manifest,
``LAKE/_manifests/<sequence>.json``, per publication: every published table and the Delta version to
read, and the plain files published with them (each night's alert file). This module is the read
side that needs no JVM: it parses lake locations, reads manifests and other plain files
(``read_file``, ``list_files``) through pyarrow's file systems, and tables through ``deltalake``
(delta-rs), never by listing Parquet files (a Delta table's folder also holds the files of replaced
versions). Detectors read ingested events through it (``argus.detectors.events``); the Spark jobs
write through ``argus.jobs.lake``, which builds on it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from pyarrow.fs import FileSystem

Lake = Path | str
PARTITION = "date"
MANIFESTS = "_manifests"
INGESTED_EVENTS = "ingested"
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# Hadoop's scheme -> the scheme pyarrow and delta-rs use for the same store.
_NATIVE_SCHEME = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}
SUPPORTED_SCHEMES = ("file", "s3a", "s3", "gs", "hdfs", "abfs", "abfss")


# --- locations ---------------------------------------------------------------------------


class LakeError(ValueError):
    """A lake location or table the user named is unusable; the message says what to do."""


def lake_location(value: Lake) -> Lake:
    """A local folder as an absolute ``Path``; a URI (``s3a://bucket/lake``) as the same string, never a path."""
    text = str(value)
    match = _SCHEME.match(text)
    if match is None:
        return Path(text).expanduser().resolve()
    scheme = match.group(1).lower()
    if scheme not in SUPPORTED_SCHEMES:
        known = ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
        raise LakeError(f"--lake {text}: unknown scheme {scheme}://; use a folder or one of {known}")
    if scheme == "file":
        return Path(text.removeprefix("file://")).resolve()
    if not text[match.end() :].strip("/"):
        raise LakeError(f"--lake {text}: name a bucket or host and a folder, e.g. {scheme}://bucket/lake")
    return text.rstrip("/")


def is_uri(lake: Lake) -> bool:
    return not isinstance(lake, Path) and _SCHEME.match(str(lake)) is not None


def join(lake: Lake, *parts: str) -> Lake:
    """``lake / parts``, keeping a URI a URI."""
    if is_uri(lake):
        return "/".join([str(lake).rstrip("/"), *parts])
    return Path(lake).joinpath(*parts)


def table_location(lake: Lake, table: str) -> str:
    """Where Spark reads and writes ``table`` (a path for a local lake, the URI otherwise)."""
    return str(join(lake, *table.split("/")))


def events_table(event_type: str) -> str:
    """The Delta table of ``event_type``'s ingested events."""
    return f"{INGESTED_EVENTS}/event_type={event_type}"


def native_location(location: str) -> str:
    """``location`` as pyarrow and delta-rs name it (``s3a://`` is ``s3://`` outside Hadoop)."""
    match = _SCHEME.match(location)
    if match is None:
        return location
    scheme = match.group(1).lower()
    return _NATIVE_SCHEME.get(scheme, scheme) + location[match.end() - 3 :]


def lake_filesystem(lake: Lake) -> tuple[FileSystem, str]:
    """The pyarrow file system holding ``lake`` and the lake's root in it (a path, or a bucket and prefix)."""
    from pyarrow.fs import FileSystem, LocalFileSystem

    if not is_uri(lake):
        return LocalFileSystem(), str(lake)
    fs, root = FileSystem.from_uri(native_location(str(lake)))
    return fs, root.rstrip("/")


def read_file(lake: Lake, relative: str) -> bytes | None:
    """The bytes of the plain file ``relative`` under the lake (``_offsets/RUN.json``); None when it is absent."""
    from pyarrow.fs import FileType

    fs, root = lake_filesystem(lake)
    path = f"{root}/{relative}"
    if fs.get_file_info(path).type != FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return bytes(stream.read())


def is_folder(lake: Lake, relative: str) -> bool:
    """Whether the lake holds the folder ``relative`` (on object storage: objects under that prefix)."""
    from pyarrow.fs import FileType

    fs, root = lake_filesystem(lake)
    return bool(fs.get_file_info(f"{root}/{relative}".rstrip("/")).type == FileType.Directory)


def list_folders(lake: Lake, folder: str) -> list[str]:
    """The names of the folders in ``folder`` under the lake, sorted; none when it is absent."""
    from pyarrow.fs import FileSelector, FileType

    fs, root = lake_filesystem(lake)
    infos = fs.get_file_info(FileSelector(f"{root}/{folder}", allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == FileType.Directory)


def list_files(lake: Lake, folder: str, suffix: str = "") -> list[str]:
    """The names of the plain files in ``folder`` under the lake ending in ``suffix``, sorted; none when
    the folder is absent."""
    from pyarrow.fs import FileSelector, FileType

    fs, root = lake_filesystem(lake)
    infos = fs.get_file_info(FileSelector(f"{root}/{folder}", allow_not_found=True))
    return sorted(name for i in infos if i.type == FileType.File and (name := i.base_name).endswith(suffix))


# --- the manifest: one commit point for several tables --------------------------------------


@dataclass(frozen=True)
class Manifest:
    """What one publication made visible: every published table and the Delta version to read, and
    every published plain file (a night's alerts: ``alerts/detector=X/date=D`` -> the file to read,
    relative to the lake; manifests older than this field have none)."""

    sequence: int
    tables: dict[str, int]
    name: str = ""
    changed: list[str] = field(default_factory=list)
    committed_at: str = ""
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "name": self.name,
            "committed_at": self.committed_at,
            "changed": self.changed,
            "tables": dict(sorted(self.tables.items())),
            "files": dict(sorted(self.files.items())),
        }


def latest_manifest(lake: Lake) -> Manifest | None:
    """The newest manifest; None before the first publication."""
    sequences = _manifest_sequences(lake)
    return read_manifest(lake, sequences[-1]) if sequences else None


def manifest_before(lake: Lake, sequence: int) -> Manifest | None:
    """The newest manifest older than ``sequence`` (the previous night's); None when there is none."""
    older = [s for s in _manifest_sequences(lake) if s < sequence]
    return read_manifest(lake, older[-1]) if older else None


def read_manifest(lake: Lake, sequence: int) -> Manifest:
    fs, root = lake_filesystem(lake)
    with fs.open_input_stream(f"{root}/{MANIFESTS}/{sequence:020d}.json") as stream:
        data = json.loads(stream.read())
    return Manifest(
        data["sequence"], data["tables"], data["name"], data["changed"], data["committed_at"], data.get("files", {})
    )


def published_version(lake: Lake, table: str) -> int | None:
    manifest = latest_manifest(lake)
    return None if manifest is None else manifest.tables.get(table)


def manifests(lake: Lake) -> list[Manifest]:
    """Every manifest, oldest first: the lake's publication history."""
    return [read_manifest(lake, sequence) for sequence in _manifest_sequences(lake)]


def _manifest_sequences(lake: Lake) -> list[int]:
    names = list_files(lake, MANIFESTS, ".json")
    return sorted(int(n.removesuffix(".json")) for n in names if re.fullmatch(r"\d{20}\.json", n))


# --- tables, read through delta-rs ---------------------------------------------------------


def read_pandas(
    lake: Lake,
    table: str,
    day: date | None = None,
    columns: list[str] | None = None,
    version: int | None = None,
) -> pd.DataFrame | None:
    """``read_spark`` for pandas readers (report, evaluations, demo) through delta-rs; the same rows."""
    from deltalake import DeltaTable

    if version is None:
        version = published_version(lake, table)
    if version is None:
        return None
    delta = DeltaTable(native_location(table_location(lake, table)), version=version)
    if day is None:
        return delta.to_pandas(columns=columns)
    wanted = None if columns is None else [c for c in columns if c != PARTITION]
    frame = delta.to_pandas(filters=[(PARTITION, "=", day.isoformat())], columns=wanted)
    if not len(frame):
        return None
    return frame.drop(columns=[PARTITION], errors="ignore")


def published_dates(lake: Lake, table: str) -> list[str]:
    """The dates the newest manifest's version of ``table`` holds, oldest first."""
    from deltalake import DeltaTable

    version = published_version(lake, table)
    if version is None:
        return []
    delta = DeltaTable(native_location(table_location(lake, table)), version=version)
    return sorted({p[PARTITION] for p in delta.partitions()})
