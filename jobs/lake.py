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
read. The manifest is a single small object written in one put (a rename on a local disk), so it is
the night's commit point: readers read the versions the newest manifest names, and a run that
crashes before its manifest leaves the previous night fully visible. Older manifests are the
previous nights: ``manifest_before`` / ``version=`` read them (until VACUUM removes their files).

Locations: a local folder (the default) or a URI Spark's Hadoop file systems know (``s3a://``,
``gs://``, ``hdfs://``, ``abfss://``); ``lake_location`` parses both, and keeps a URI a URI.
Readers outside Spark (pandas) read through ``deltalake`` (delta-rs), never by listing Parquet
files: a Delta table's folder also holds the files of replaced versions. That read side (locations,
manifests, ``read_pandas``) is ``argus.detectors.lake_tables``, which the detectors' event reader
uses; its names are importable from here too.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime
from pathlib import Path
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
from argus.detectors.lake_tables import is_uri as is_uri
from argus.detectors.lake_tables import join as join
from argus.detectors.lake_tables import lake_filesystem as lake_filesystem
from argus.detectors.lake_tables import lake_location as lake_location
from argus.detectors.lake_tables import latest_manifest as latest_manifest
from argus.detectors.lake_tables import list_files as list_files
from argus.detectors.lake_tables import manifest_before as manifest_before
from argus.detectors.lake_tables import manifests as manifests
from argus.detectors.lake_tables import native_location as native_location
from argus.detectors.lake_tables import published_dates as published_dates
from argus.detectors.lake_tables import published_version as published_version
from argus.detectors.lake_tables import read_file as read_file
from argus.detectors.lake_tables import read_manifest as read_manifest
from argus.detectors.lake_tables import read_pandas as read_pandas
from argus.detectors.lake_tables import table_location as table_location

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

# Delta's own default (delta.deletedFileRetentionDuration): a week of nights stays readable.
DEFAULT_RETAIN_HOURS = 168
DEAD_LETTER = "dead_letter"


def local_root(lake: Lake, what: str) -> Path:
    """The lake as a local folder, for outputs that are plain files; a clear error for a URI lake."""
    if is_uri(lake):
        raise LakeError(f"--lake {lake}: {what} needs a local (or mounted) lake folder")
    return Path(lake)


def job_lake(value: str) -> Path:
    """``--lake`` of a spark-submit job (an argparse type). The jobs also keep plain files in the lake
    (events landed by import and generate, the model store, quality results, ingest offsets, alert
    files), which they read and write as local files, so a job's lake is a local or mounted folder."""
    import argparse

    try:
        return local_root(lake_location(value), "the batch jobs' plain files (events, models, alerts)")
    except LakeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def job_uri_lake(value: str) -> Lake:
    """``--lake`` of a job that keeps its plain files (ingest's offsets, quality results) through the
    lake's file system (``put_file``, ``read_file``): a folder or a URI (an argparse type)."""
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


def commit_manifest(lake: Lake, versions: dict[str, int], name: str) -> Manifest:
    """Publish ``versions`` on top of the newest manifest, in one put: the publication's commit point.

    One publisher at a time (the nightly chain, or one job): two concurrent publishers could pick the
    same sequence, and the later put wins.
    """
    previous = latest_manifest(lake)
    tables = {**(previous.tables if previous else {}), **versions}
    sequence = previous.sequence + 1 if previous else 1
    committed = datetime.now(UTC).isoformat(timespec="seconds")
    manifest = Manifest(sequence, tables, name, sorted(versions), committed)
    put_file(lake, f"{MANIFESTS}/{sequence:020d}.json", json.dumps(manifest.to_json(), indent=2).encode())
    return manifest


def vacuum(lake: Lake, retain_hours: int = DEFAULT_RETAIN_HOURS, dry_run: bool = True) -> dict[str, int]:
    """Delete the files of every published table that no version of the last ``retain_hours`` needs
    (delta-rs VACUUM); files per table (to delete, with ``dry_run``). Older versions, and the nights
    of manifests that name them, are no longer readable afterwards."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    newest = latest_manifest(lake)
    removed: dict[str, int] = {}
    for table in sorted(newest.tables if newest else {}):
        delta = DeltaTable(native_location(table_location(lake, table)))
        try:
            files = delta.vacuum(retention_hours=retain_hours, dry_run=dry_run, enforce_retention_duration=True)
        except DeltaError as exc:  # a retention below the table's own (a week unless configured)
            raise LakeError(f"--retain-hours {retain_hours}: {exc}") from exc
        removed[table] = len(files)
    return removed


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
