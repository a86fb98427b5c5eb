"""The lake's tables: Delta Lake tables, written through this module only.

Tables (each a Delta table under the lake root, partitioned by a string ``date`` column):
``profiles``, ``embeddings`` and ``scores/detector=<name>`` (published by ``argus.jobs.publish``);
``ingested/event_type=<type>`` (the events ``argus.jobs.ingest`` read from Kafka, one table per
type with that type's columns, dated by event time) and ``dead_letter`` (its rejects, with reason and
original bytes, dated by the run). Events landed as plain files (``argus import``, ``argus generate
--out``) stay under ``events/event_type=<type>/date=<date>/``; the events readers read both.

Ingest *merges* (``merge_new_rows``): it inserts only rows whose key (``event_id``; the Kafka
topic, partition and offset of a dead letter) the table lacks, so reading the same Kafka range again
adds nothing and loses nothing.

Every write of a date is one Delta commit that replaces exactly that date (``replaceWhere``): a
reader sees the whole previous date or the whole new one, other dates are untouched, and writing
the same rows again gives the same table. Delta keeps earlier versions (time travel) until VACUUM.

A publication spans several tables (a night's profiles, embeddings and scores). It ends with one
*manifest*, ``LAKE/_manifests/<sequence>.json``: every published table and the Delta version to
read, and every published plain file (each night's alert file, written once in a folder of its run's
own: ``argus.jobs.alert_blocks``). The manifest is a single small object written in one put (a
rename on a local disk), so it is the night's commit point: readers read the versions and files the
newest manifest names, and a run that crashes before its manifest leaves the previous night fully
visible. Older manifests are the previous nights: ``manifest_before`` / ``version=`` read them
(until VACUUM removes their files).

Manifests and rollbacks assume one writer at a time: every run that writes (the nightly chain and
the batch jobs, ingest, ``argus generate --out``, ``argus import --out``, ``argus forget``, a VACUUM that
deletes) holds the lake's writer lease,
``WriterLease`` (``LAKE/_lease/<generation>.json``), and a second writer is refused with the holder named.

Locations: a local folder (the default) or a URI Spark's Hadoop file systems know (``s3a://``,
``gs://``, ``hdfs://``, ``abfss://``); ``lake_location`` parses both, and keeps a URI a URI.
Readers outside Spark (pandas) read through ``deltalake`` (delta-rs), never by listing Parquet
files: a Delta table's folder also holds the files of replaced versions. That read side (locations,
manifests, ``read_pandas``) is ``argus.detectors.lake_tables``, which the detectors' event reader
uses; its names are importable from here too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

# The read side, which needs no Spark, lives with the detectors that read events through it;
# its names are this module's too, so the jobs and the CLI import the whole lake from here.
from argus.detectors.lake_tables import INGESTED_EVENTS as INGESTED_EVENTS
from argus.detectors.lake_tables import MANIFESTS as MANIFESTS
from argus.detectors.lake_tables import PARTITION as PARTITION
from argus.detectors.lake_tables import SUPPORTED_SCHEMES as SUPPORTED_SCHEMES
from argus.detectors.lake_tables import Lake as Lake
from argus.detectors.lake_tables import LakeError as LakeError
from argus.detectors.lake_tables import Manifest as Manifest
from argus.detectors.lake_tables import events_table as events_table
from argus.detectors.lake_tables import is_folder as is_folder
from argus.detectors.lake_tables import is_uri as is_uri
from argus.detectors.lake_tables import join as join
from argus.detectors.lake_tables import lake_filesystem as lake_filesystem
from argus.detectors.lake_tables import lake_location as lake_location
from argus.detectors.lake_tables import latest_manifest as latest_manifest
from argus.detectors.lake_tables import list_files as list_files
from argus.detectors.lake_tables import list_folders as list_folders
from argus.detectors.lake_tables import manifest_before as manifest_before
from argus.detectors.lake_tables import manifests as manifests
from argus.detectors.lake_tables import native_location as native_location
from argus.detectors.lake_tables import published_dates as published_dates
from argus.detectors.lake_tables import published_version as published_version
from argus.detectors.lake_tables import read_file as read_file
from argus.detectors.lake_tables import read_manifest as read_manifest
from argus.detectors.lake_tables import read_pandas as read_pandas
from argus.detectors.lake_tables import table_location as table_location
from argus.infra.procfs import is_running, process_stat

if TYPE_CHECKING:
    import pandas as pd
    from pyarrow.fs import FileInfo, FileSystem
    from pyspark.sql import DataFrame, SparkSession

# Delta's own default (delta.deletedFileRetentionDuration): a week of nights stays readable.
DEFAULT_RETAIN_HOURS = 168
DEAD_LETTER = "dead_letter"
ALERTS = "alerts"  # LAKE/alerts/detector=X/date=D/run=R/: each run's alert files (argus.jobs.alert_blocks)
LEASES = "_lease"  # LAKE/_lease/<generation>.json: who holds (or last held) the writer lease
# A holder refreshes its lease every LEASE_TTL_SECONDS / 5; one silent for the whole TTL is gone
# (a killed machine, a frozen process) and the next writer takes over.
LEASE_TTL_SECONDS = 600.0
log = logging.getLogger(__name__)


def job_uri_lake(value: str) -> Lake:
    """``--lake`` of a spark-submit job (an argparse type): a folder or a URI. The jobs keep their plain
    files (landed events, ingest's offsets, quality results, the model store) through the lake's file
    systems (``list_files``, ``read_file``, ``put_file``, ``argus.detectors.store``)."""
    import argparse

    try:
        return lake_location(value)
    except LakeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def logs_folder(lake: Lake) -> Path:
    """Where the CLI keeps Spark's output: ``LAKE/_logs``, or ``$ARGUS_HOME/logs`` beside a URI lake."""
    if is_uri(lake):
        from argus.infra.maven import argus_home

        return argus_home() / "logs"
    return Path(lake) / "_logs"


# --- writing and reading with Spark ---------------------------------------------------------


def write_date(spark: SparkSession, frame: DataFrame, lake: Lake, table: str, day: date) -> int:
    """Replace ``day`` of ``table`` with ``frame`` in one Delta commit; the table's new version.

    Other dates stay as they were; the table is created on its first write. New columns are added
    to the table's schema (a detector that gains a feature); rows of other dates read them as null.
    """
    from pyspark.sql import functions as F

    iso = day.isoformat()
    (
        frame.withColumn(PARTITION, F.lit(iso))
        .write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", f"{PARTITION} = '{iso}'")
        .option("mergeSchema", "true")
        .partitionBy(PARTITION)
        .save(table_location(lake, table))
    )
    version = latest_version(spark, lake, table)
    assert version is not None, f"{table} has no version right after a write"
    return version


def merge_new_rows(
    spark: SparkSession, frame: DataFrame, lake: Lake, table: str, keys: list[str], dates: list[str] | None = None
) -> tuple[int, int]:
    """Insert the rows of ``frame`` (which has the ``date`` column) whose ``keys`` ``table`` lacks, in one
    Delta commit; (the table's newest version, rows inserted). The table is created on its first write;
    when every key is there already nothing is committed and the version stays as it was.

    ``dates`` limits the search for existing keys to those dates' files (partition pruning); without it
    every date is searched. A stored key on any searched date matches, whatever the new row's date, so
    an event that re-arrives with its time moved (a client's retry past midnight) is not stored twice
    when the caller searches the dates around the new rows' (``argus.jobs.ingest`` does). New columns
    are added to the table's schema, as ``write_date`` does.
    """
    location = table_location(lake, table)
    before = latest_version(spark, lake, table)
    if before is None:
        frame.write.format("delta").mode("append").partitionBy(PARTITION).save(location)
    else:
        source = f"argus_merge_{abs(hash((location, id(frame))))}"
        frame.createOrReplaceTempView(source)
        matched = " AND ".join(f"t.`{key}` = s.`{key}`" for key in keys)
        if dates is not None:  # a condition on the target alone: Delta reads only those dates' files
            matched += f" AND t.`{PARTITION}` IN ({', '.join(_sql_string(d) for d in sorted(dates)) or 'NULL'})"
        try:
            spark.sql(
                f"MERGE WITH SCHEMA EVOLUTION INTO delta.`{location}` t USING {source} s ON {matched} "
                "WHEN NOT MATCHED THEN INSERT *"
            )
        finally:
            spark.catalog.dropTempView(source)
    row = spark.sql(f"DESCRIBE HISTORY delta.`{location}` LIMIT 1").select("version", "operationMetrics").first()
    assert row is not None, f"{table} has no version right after a write"
    if int(row["version"]) == before:  # every key was there: Delta commits nothing
        return before, 0
    metrics = row["operationMetrics"] or {}
    inserted = metrics.get("numTargetRowsInserted", metrics.get("numOutputRows", "0"))
    return int(row["version"]), int(inserted)


def convert_plain_parquet(spark: SparkSession, lake: Lake, table: str) -> bool:
    """Make a folder of plain, ``date``-partitioned Parquet files (an older lake's) a Delta table in
    place, its rows kept; True when it converted. A Delta table, or no folder, is left as it is."""
    location = table_location(lake, table)
    if is_uri(lake) or not any(Path(location).glob(f"{PARTITION}=*/*.parquet")):
        return False
    if _delta_table_exists(spark, location):
        return False
    spark.sql(f"CONVERT TO DELTA parquet.`{location}` PARTITIONED BY ({PARTITION} STRING)")
    return True


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def latest_version(spark: SparkSession, lake: Lake, table: str) -> int | None:
    """The table's newest Delta version; None when ``table`` is not a Delta table (yet)."""
    location = table_location(lake, table)
    if not _delta_table_exists(spark, location):
        return None
    row = spark.sql(f"DESCRIBE HISTORY delta.`{location}` LIMIT 1").select("version").first()
    return None if row is None else int(row["version"])


def restore(spark: SparkSession, lake: Lake, table: str, version: int) -> None:
    """Make ``version`` the table's content again, as a new commit (a failed run's writes undone)."""
    spark.sql(f"RESTORE TABLE delta.`{table_location(lake, table)}` TO VERSION AS OF {int(version)}")


def restores(spark: SparkSession, lake: Lake, table: str, version: int, target: int) -> bool:
    """Whether commit ``version`` of ``table`` is a RESTORE to version ``target``: the table then holds
    ``target``'s content already, and restoring it again would only add a commit."""
    from pyspark.sql import functions as F

    history = spark.sql(f"DESCRIBE HISTORY delta.`{table_location(lake, table)}`")
    row = history.where(F.col("version") == int(version)).select("operation", "operationParameters").first()
    if row is None or row["operation"] != "RESTORE":
        return False
    return str((row["operationParameters"] or {}).get("version")) == str(int(target))


def read_spark(
    spark: SparkSession, lake: Lake, table: str, day: date | None = None, version: int | None = None
) -> DataFrame | None:
    """``table`` (one date without its ``date`` column, or every date) at ``version``, else at the
    version the newest manifest publishes; None when it is not published or lacks ``day``."""
    from pyspark.sql import functions as F

    if version is None:
        version = published_version(lake, table)
    if version is None:
        return None
    frame = spark.read.format("delta").option("versionAsOf", version).load(table_location(lake, table))
    if day is None:
        return frame
    frame = frame.where(F.col(PARTITION) == day.isoformat()).drop(PARTITION)
    return None if frame.isEmpty() else frame


def _delta_table_exists(spark: SparkSession, location: str) -> bool:
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    assert jvm is not None
    return bool(jvm.io.delta.tables.DeltaTable.isDeltaTable(spark._jsparkSession, location))  # type: ignore[attr-defined]


# --- writing without Spark ------------------------------------------------------------------


def write_date_pandas(frame: pd.DataFrame, lake: Lake, table: str, day: date) -> int:
    """``write_date`` without Spark (delta-rs), for small tables built in pandas; the new version."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    iso = day.isoformat()
    location = native_location(table_location(lake, table))
    data = pa.Table.from_pandas(frame.assign(**{PARTITION: iso}), preserve_index=False)
    write_deltalake(location, data, mode="overwrite", partition_by=[PARTITION], predicate=f"{PARTITION} = '{iso}'")
    return int(DeltaTable(location).version())


# --- the manifest: one commit point for several tables --------------------------------------


def commit_manifest(lake: Lake, versions: dict[str, int], name: str, files: dict[str, str] | None = None) -> Manifest:
    """Publish ``versions`` (and the plain ``files``: key -> file relative to the lake) on top of the newest
    manifest, in one put: the publication's commit point.

    One publisher at a time (the nightly chain, or one job): two concurrent publishers could pick the
    same sequence, and the later put wins. The writer lease (``WriterLease``) ensures it; a run whose
    lease another writer took over meanwhile publishes nothing (``LeaseHeld``).
    """
    check_lease_kept(lake)
    previous = latest_manifest(lake)
    tables = {**(previous.tables if previous else {}), **versions}
    published_files = {**(previous.files if previous else {}), **(files or {})}
    sequence = previous.sequence + 1 if previous else 1
    committed = datetime.now(UTC).isoformat(timespec="seconds")
    manifest = Manifest(sequence, tables, name, sorted([*versions, *(files or {})]), committed, published_files)
    put_file(lake, f"{MANIFESTS}/{sequence:020d}.json", json.dumps(manifest.to_json(), indent=2).encode())
    return manifest


@dataclass(frozen=True)
class Vacuumed:
    """What one VACUUM removed (or, on a dry run, would remove): files and bytes per table."""

    files: dict[str, int]
    bytes: dict[str, int]

    def to_json(self) -> dict[str, object]:
        return {
            "files": self.files,
            "bytes": self.bytes,
            "total_files": sum(self.files.values()),
            "total_bytes": sum(self.bytes.values()),
        }


def vacuum(lake: Lake, retain_hours: int = DEFAULT_RETAIN_HOURS, dry_run: bool = True) -> Vacuumed:
    """Delete the files of every published table that no version of the last ``retain_hours`` needs
    (delta-rs VACUUM), and the alert run folders no manifest of that time names (``_vacuum_alerts``);
    what was deleted (to delete, with ``dry_run``). Older versions, and the nights of manifests that
    name them, are no longer readable afterwards. Deleting takes the lake's writer lease
    (``WriterLease``): a publication running meanwhile could need a file VACUUM picks."""
    newest = latest_manifest(lake)
    if newest is None:
        return Vacuumed({}, {})
    if dry_run:
        return _vacuum(lake, sorted(newest.tables), retain_hours, dry_run=True)
    with WriterLease(lake, "argus lake vacuum --no-dry-run"):
        return _vacuum(lake, sorted(newest.tables), retain_hours, dry_run=False)


def _vacuum(lake: Lake, names: list[str], retain_hours: int, dry_run: bool) -> Vacuumed:
    removed = _vacuum_tables(lake, names, retain_hours, dry_run)
    files, size = _vacuum_alerts(lake, retain_hours, dry_run)
    if files:
        removed.files[ALERTS], removed.bytes[ALERTS] = files, size
    return removed


def _vacuum_tables(lake: Lake, names: list[str], retain_hours: int, dry_run: bool) -> Vacuumed:
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    fs, _ = lake_filesystem(lake)
    files: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for table in names:
        location = native_location(table_location(lake, table))
        delta = DeltaTable(location)
        try:
            # Sized before they go: a deleted file has no size to ask for.
            doomed = delta.vacuum(retention_hours=retain_hours, dry_run=True, enforce_retention_duration=True)
            size = {name: _file_size(fs, lake, table, name) for name in doomed}
            if not dry_run:
                doomed = delta.vacuum(retention_hours=retain_hours, dry_run=False, enforce_retention_duration=True)
        except DeltaError as exc:  # a retention below the table's own (a week unless configured)
            raise LakeError(f"--retain-hours {retain_hours}: {exc}") from exc
        files[table] = len(doomed)
        sizes[table] = sum(size.get(name, 0) for name in doomed)
    return Vacuumed(files, sizes)


def _vacuum_alerts(lake: Lake, retain_hours: int, dry_run: bool) -> tuple[int, int]:
    """Delete the alert run folders (``alerts/detector=X/date=D/run=R/``, ``argus.jobs.alert_blocks``)
    that neither the newest manifest nor one committed in the last ``retain_hours`` names and that were
    written before then: a crashed run's, a replaced night's; (files, bytes) deleted."""
    from pyarrow.fs import FileSelector, FileType

    cutoff = time.time() - retain_hours * 3600
    history = manifests(lake)
    retained = [m for m in history if m.committed_at and datetime.fromisoformat(m.committed_at).timestamp() >= cutoff]
    named = {posixpath.dirname(f) for m in [*retained, *history[-1:]] for f in m.files.values()}
    fs, root = lake_filesystem(lake)
    runs: dict[str, list[FileInfo]] = {}
    for info in fs.get_file_info(FileSelector(f"{root}/{ALERTS}", recursive=True, allow_not_found=True)):
        parts = info.path[len(root) + 1 :].split("/")  # alerts, detector=X, date=D, run=R, file (or a killed
        if info.type == FileType.File and len(parts) >= 5 and parts[3].startswith("run="):  # write's _temporary/...)
            runs.setdefault("/".join(parts[:4]), []).append(info)
    doomed = [
        run
        for run, infos in runs.items()
        if run not in named and all(i.mtime is not None and i.mtime.timestamp() < cutoff for i in infos)
    ]
    if not dry_run:
        for run in doomed:
            fs.delete_dir(f"{root}/{run}")
    return sum(len(runs[r]) for r in doomed), sum(int(i.size or 0) for r in doomed for i in runs[r])


def _file_size(fs: FileSystem, lake: Lake, table: str, name: str) -> int:
    """The size of a table's data file, named as delta-rs names it (relative to the table, URL-quoted)."""
    from urllib.parse import unquote

    root = lake_filesystem(lake)[1]
    return int(fs.get_file_info(f"{root}/{table}/{unquote(name)}").size or 0)


# --- the writer lease: one writer at a time -----------------------------------------------


class LeaseHeld(LakeError):
    """Another writer holds the lake; the message names it and says what to do."""


@dataclass(frozen=True)
class LeaseHolder:
    """One taking of the writer lease, as recorded in ``LAKE/_lease/<generation>.json``."""

    generation: int
    command: str
    host: str
    pid: int
    since: str  # when it was taken, ISO 8601 UTC
    heartbeat: float  # seconds since the epoch of the holder's last refresh
    process_start: str = ""  # the pid's start time on its host: a reused pid is not the holder
    released: bool = False

    def describe(self) -> str:
        return f"`{self.command}` (host {self.host}, pid {self.pid}, since {self.since})"

    def gone_because(self, ttl_seconds: float, now: float | None = None) -> str | None:
        """Why the lease is free to take: released, its process gone, or expired; None while it is held."""
        if self.released:
            return "released"
        started = int(self.process_start) if self.process_start else None  # "" where it was unknown
        if self.host == socket.gethostname() and not is_running(self.pid, started):
            return "its process is gone"
        silent = (now if now is not None else time.time()) - self.heartbeat
        if silent > ttl_seconds:
            return f"no heartbeat for {silent:.0f} s (lease time {ttl_seconds:.0f} s)"
        return None


class WriterLease:
    """The lake's single-writer lease, held for one run: ``with WriterLease(lake, "argus batch nightly"):``.

    Every command that publishes or deletes (the nightly chain and the batch jobs, ingest, ``argus
    forget``, ``argus lake vacuum --no-dry-run``) writes under it, so two runs never interleave manifests
    and rollbacks. A second writer is refused at once (``LeaseHeld``, naming the holder). Taking it is
    an exclusive create of the next generation's file: on a local or mounted lake ``O_CREAT | O_EXCL``,
    which exactly one process wins; on object storage a check-then-put, which does not exclude two
    writers starting in the same instant (infra/spark/README.md says what to do there). A holder that
    died is taken over, with a log line: at once on its own host (its pid is gone), elsewhere when its
    heartbeat is older than ``ttl_seconds``. Released on exit, whether the run succeeded or failed.
    The same process taking it again (ingest inside the nightly chain) shares the lease it holds.
    """

    def __init__(self, lake: Lake, command: str, ttl_seconds: float = LEASE_TTL_SECONDS) -> None:
        self.lake = lake_location(lake)
        self.command = command
        self.ttl_seconds = ttl_seconds
        self.holder: LeaseHolder | None = None
        self._depth = 0
        self._outer: WriterLease | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> WriterLease:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> LeaseHolder:
        """Take the lease (or share this process's); the holder record. ``LeaseHeld`` when another has it."""
        key = str(self.lake)
        with _HELD_LOCK:
            outer = _HELD.get(key)
            if outer is self:
                self._depth += 1
                assert self.holder is not None
                return self.holder
            if outer is not None:
                outer._depth += 1
                self._outer = outer
                assert outer.holder is not None
                return outer.holder
            for _ in range(20):  # a lost race, or a record pruned while read: look again
                generations = _lease_generations(self.lake)
                newest = generations[-1] if generations else 0
                current = _read_holder(self.lake, newest) if newest else None
                if newest and current is None:
                    time.sleep(0.05)
                    continue
                why = None if current is None else current.gone_because(self.ttl_seconds)
                if current is not None and why is None:
                    raise LeaseHeld(_held_message(self.lake, current, self.ttl_seconds))
                mine = LeaseHolder(
                    newest + 1,
                    self.command,
                    socket.gethostname(),
                    os.getpid(),
                    datetime.now(UTC).isoformat(timespec="seconds"),
                    time.time(),
                    _own_start(),
                )
                if not _create_exclusive(self.lake, _lease_file(mine.generation), _lease_bytes(mine)):
                    continue
                if current is not None and not current.released:
                    log.warning("lake %s: took over the writer lease of %s: %s", self.lake, current.describe(), why)
                for old in generations:  # earlier takings; the newest file is the only one read
                    _delete_file(self.lake, _lease_file(old))
                self.holder, self._depth = mine, 1
                _HELD[key] = self
                self._start_heartbeat()
                return mine
        raise LeaseHeld(f"lake {self.lake}: could not take the writer lease (others kept taking it); run this again")

    def release(self) -> None:
        """Give the lease back (recorded as released); a lease taken over meanwhile is left to its new holder."""
        with _HELD_LOCK:
            if self._outer is not None:
                self._outer._depth -= 1
                self._outer = None
                return
            self._depth -= 1
            if self.holder is None or self._depth > 0:
                return
            _HELD.pop(str(self.lake), None)
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self._still_mine():
            assert self.holder is not None
            put_file(self.lake, _lease_file(self.holder.generation), _lease_bytes(replace(self.holder, released=True)))
        self.holder = None

    def _still_mine(self) -> bool:
        assert self.holder is not None
        generations = _lease_generations(self.lake)
        return bool(generations) and generations[-1] == self.holder.generation

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="argus-lake-lease", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_seconds / 5):
            holder = self.holder
            if holder is None:
                return
            if not self._still_mine():  # silent past the TTL (a long pause): another writer took over
                log.warning("lake %s: the writer lease of %s was taken over by another writer", self.lake, self.command)
                return
            self.holder = replace(holder, heartbeat=time.time())
            try:
                put_file(self.lake, _lease_file(holder.generation), _lease_bytes(self.holder))
            except OSError as exc:  # a passing storage error: the next beat tries again, well within the TTL
                log.warning("lake %s: could not refresh the writer lease: %s", self.lake, exc)


_HELD: dict[str, WriterLease] = {}  # the leases this process holds, by lake
_HELD_LOCK = threading.Lock()


def lease_holder(lake: Lake, ttl_seconds: float = LEASE_TTL_SECONDS) -> LeaseHolder | None:
    """Who holds the lake's writer lease now; None when it is free (never taken, released, or its holder gone)."""
    generations = _lease_generations(lake_location(lake))
    current = _read_holder(lake_location(lake), generations[-1]) if generations else None
    return current if current is not None and current.gone_because(ttl_seconds) is None else None


def lease_lost(lake: Lake) -> bool:
    """Whether this process took the lake's writer lease and another writer has taken it over since
    (this one was silent past the TTL): its run must then leave the lake to the new holder."""
    lease = _HELD.get(str(lake_location(lake)))
    return lease is not None and lease.holder is not None and not lease._still_mine()


def check_lease_kept(lake: Lake) -> None:
    """``LeaseHeld`` when this process's lease on ``lake`` was taken over (``lease_lost``)."""
    if lease_lost(lake):
        holder = lease_holder(lake)
        taker = holder.describe() if holder is not None else "another writer"
        raise LeaseHeld(f"lake {lake}: {taker} took the writer lease over while this run was silent; nothing published")


def check_no_writer(lake: Lake, ttl_seconds: float = LEASE_TTL_SECONDS) -> None:
    """``LeaseHeld`` when another writer holds the lake: a command checks before starting Spark for nothing."""
    if str(lake_location(lake)) in _HELD:  # this process holds it
        return
    holder = lease_holder(lake, ttl_seconds)
    if holder is not None:
        raise LeaseHeld(_held_message(lake_location(lake), holder, ttl_seconds))


def _held_message(lake: Lake, holder: LeaseHolder, ttl_seconds: float) -> str:
    return (
        f"lake {lake} is being written by {holder.describe()}: one writer at a time; run this again when it "
        f"has finished (a holder that died is taken over: at once on {holder.host}, elsewhere "
        f"{ttl_seconds / 60:.0f} minutes after its last heartbeat)"
    )


def _lease_file(generation: int) -> str:
    return f"{LEASES}/{generation:012d}.json"


def _lease_bytes(holder: LeaseHolder) -> bytes:
    return json.dumps(asdict(holder), indent=2).encode()


def _lease_generations(lake: Lake) -> list[int]:
    names = list_files(lake, LEASES, ".json")
    return sorted(int(n.removesuffix(".json")) for n in names if n.removesuffix(".json").isdigit())


def _read_holder(lake: Lake, generation: int) -> LeaseHolder | None:
    """The record of ``generation``; None when it is gone or not fully written yet."""
    data = read_file(lake, _lease_file(generation))
    try:
        return None if data is None else LeaseHolder(**json.loads(data))
    except (ValueError, TypeError):  # created, not written yet (a moment), or left empty by a crash
        return _unreadable(lake, generation)


def _unreadable(lake: Lake, generation: int) -> LeaseHolder | None:
    """A record that stays unreadable for a second was left half-written by a crash: free to take."""
    time.sleep(1.0)
    data = read_file(lake, _lease_file(generation))
    try:
        return None if data is None else LeaseHolder(**json.loads(data))
    except (ValueError, TypeError):
        return LeaseHolder(generation, "an unreadable lease", "", 0, "", 0.0, released=True)


def _create_exclusive(lake: Lake, relative: str, data: bytes) -> bool:
    """Write ``relative`` under the lake only when no file has that name; whether this call created it."""
    if not is_uri(lake):
        target = Path(lake) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        return True
    if read_file(lake, relative) is not None:  # object stores: check, then put (see the class's note)
        return False
    put_file(lake, relative, data)
    return True


def _delete_file(lake: Lake, relative: str) -> None:
    fs, root = lake_filesystem(lake)
    with contextlib.suppress(OSError):  # pruned by another writer already
        fs.delete_file(f"{root}/{relative}")


def _own_start() -> str:
    """This process's ``ProcessStat.started``, as the lease records it; "" where ``/proc`` is missing."""
    stat = process_stat(os.getpid())
    return "" if stat is None else str(stat.started)


def put_file(lake: Lake, relative: str, data: bytes) -> None:
    """The plain file ``relative`` under the lake written whole: a single put on object storage,
    write-then-rename on a local disk, so a reader sees the old file or the new one, never a part."""
    if not is_uri(lake):
        target = Path(lake) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(target)
        return
    from pyarrow.fs import LocalFileSystem

    fs, root = lake_filesystem(lake)
    if isinstance(fs, LocalFileSystem):  # a file:// URI; object stores have no folders to create
        fs.create_dir(f"{root}/{relative.rsplit('/', 1)[0]}", recursive=True)
    with fs.open_output_stream(f"{root}/{relative}") as stream:
        stream.write(data)
