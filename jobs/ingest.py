"""Nightly ingest: Kafka event topics -> validated Delta tables of events + a dead-letter table.

Run with spark-submit (``argus batch ingest`` builds the command) or call ``run_ingest`` with a
session. Each run reads the offset range from where the previous run ended to the topics'
current ends and records that range in ``LAKE/_offsets/<run_id>.json``; ``--rerun RUN_ID`` reads
exactly the same range again. Records are validated with ``argus.schemas.validate`` (the same code
as the streaming path); rejects, and repeated ``event_id``s within a run, are dead letters with
the reason and the original bytes.

Tables (``argus.jobs.lake``): ``LAKE/ingested/event_type=T`` (partitioned by the events' date) and
``LAKE/dead_letter`` (by the run's date). Ingest merges: an event whose ``event_id`` is stored on a
date the run's events fall on or within ``REARRIVAL_DAYS`` (one) of one (``rearrival_dates``), or a
dead letter whose topic, partition and offset are, is not written again, so a rerun, or a run that
overlaps one that crashed before logging its offsets, neither duplicates nor loses rows. Every table
a run changed is published by one manifest; a run that fails before it leaves the lake as it was.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pandas as pd
import pyarrow as pa

from argus.jobs.entry import run_job
from argus.jobs.lake import (
    DEAD_LETTER,
    Lake,
    convert_plain_parquet,
    events_table,
    is_uri,
    job_uri_lake,
    join,
    list_files,
    put_file,
    read_file,
)
from argus.jobs.publish import Publication
from argus.schemas.arrow import ARROW_SCHEMAS, wide_event_schema
from argus.schemas.bounds import EventTimeBounds, current_bounds
from argus.schemas.models import EventBase
from argus.schemas.privacy import ERASURE_LOG, ErasedSubjects, Pseudonymizer, current_privacy, erased_subjects
from argus.schemas.validate import DUPLICATE_EVENT_ID, Rejection, validate

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

ERASED_SUBJECT = "erased_subject"
OFFSETS = "_offsets"  # LAKE/_offsets/<run_id>.json: each completed run's offset range
# An event id is stored once: a new event is checked against the ids stored on its own date and on the
# days either side (a retried send whose event time moved by the retry delay). A wider window costs a
# read of more dates' event ids on every run; the full history would cost a read of every id stored.
REARRIVAL_DAYS = 1
_META = pa.schema(
    [
        ("date", pa.string()),
        ("_ok", pa.bool_()),
        ("_topic", pa.string()),
        ("_partition", pa.int32()),
        ("_offset", pa.int64()),
        ("_reason_code", pa.string()),
        ("_reason", pa.string()),
        ("_original_b64", pa.string()),
    ]
)
_WIDE = wide_event_schema()
_VALIDATED = pa.schema(list(_WIDE) + list(_META))
DEAD_LETTER_COLUMNS = [
    "original_b64",
    "source_topic",
    "source_partition",
    "source_offset",
    "reason_code",
    "reason",
    "rejected_at",
]


@dataclass
class IngestResult:
    run_id: str
    start: dict[str, dict[str, int]]  # topic -> partition -> offset
    end: dict[str, dict[str, int]]
    valid: int
    rejected: int
    started_at: str  # also the dead letters' rejected_at, kept by reruns so they write the same bytes
    finished_at: str
    erased: int = 0  # records of users erased by `argus forget`, read again and kept nowhere
    stored: int = 0  # valid events the lake did not hold yet (0 when a rerun finds them all there)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_id_for(start: dict[str, dict[str, int]], end: dict[str, dict[str, int]]) -> str:
    """A run's id is a function of its offset range: the same range always writes the same files."""
    key = json.dumps({"start": start, "end": end}, sort_keys=True).encode()
    return hashlib.sha256(key).hexdigest()[:16]


def validate_partition(
    batches: Iterator[pd.DataFrame],
    bounds: EventTimeBounds | None = None,
    privacy: Pseudonymizer | None = None,
    erased: ErasedSubjects | None = None,
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: raw Kafka records -> wide event columns plus validation metadata.

    ``bounds``, ``privacy`` (the fields stored salted-hashed) and ``erased`` (users ``argus forget``
    erased, whose records a replay must not bring back: marked ``erased_subject`` and kept nowhere)
    are resolved on the driver, so executors without the driver's files or environment agree.
    """
    bounds = bounds or current_bounds()
    privacy = privacy or current_privacy()
    erased = erased or ErasedSubjects()
    for batch in batches:
        rows = []
        for topic, partition, offset, value in zip(
            batch["topic"], batch["partition"], batch["offset"], batch["value"], strict=True
        ):
            raw = bytes(value) if value is not None else b""
            result = validate(raw, bounds=bounds)
            meta = {
                "_topic": topic,
                "_partition": int(partition),
                "_offset": int(offset),
                "_original_b64": base64.b64encode(raw).decode("ascii"),  # kept for in-run duplicates
            }
            if erased and _of_erased_subject(result, erased):
                row = {**meta, "_ok": False, "_reason_code": ERASED_SUBJECT, "_original_b64": ""}
            elif isinstance(result, EventBase):
                row = privacy.row(result.model_dump())
                erased.row(row)  # references to erased users become their pseudonym
                row["date"] = result.ts.date().isoformat()
                row.update(meta, _ok=True)
            else:
                row = {**meta, "_ok": False, "_reason_code": result.reason_code, "_reason": result.reason}
            rows.append(row)
        yield pa.Table.from_pylist(rows, schema=_VALIDATED).to_pandas()


def _of_erased_subject(result: EventBase | Rejection, erased: ErasedSubjects) -> bool:
    if isinstance(result, EventBase):
        return erased.is_erased(result.user_id)
    try:
        record = orjson.loads(result.raw)  # a rejected record that still names its subject
    except orjson.JSONDecodeError:
        return False
    return isinstance(record, dict) and erased.is_erased(record.get("user_id"))


def kafka_end_offsets(bootstrap: str, topics: list[str]) -> dict[str, dict[str, int]]:
    from kafka import TopicPartition

    from argus.infra.clients import consumer

    client = consumer(bootstrap=bootstrap)
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(client.partitions_for_topic(t) or [])]
        missing = [t for t in topics if not any(tp.topic == t for tp in partitions)]
        if missing:
            raise ValueError(f"topics {missing} do not exist on {bootstrap}; create them with `argus kafka up`")
        ends = client.end_offsets(partitions)
    finally:
        client.close()
    out: dict[str, dict[str, int]] = {}
    for tp, offset in ends.items():
        out.setdefault(tp.topic, {})[str(tp.partition)] = int(offset)
    return out


def previous_end(lake: Lake, topics: list[str]) -> dict[str, dict[str, int]]:
    """Where the last completed run ended, per topic partition (-2 = earliest)."""
    ends: dict[str, dict[str, int]] = {t: {} for t in topics}
    for run in ingest_runs(lake):
        for topic, parts in run["end"].items():
            if topic in ends:
                for part, offset in parts.items():
                    ends[topic][part] = max(ends[topic].get(part, -2), offset)
    return ends


def ingest_runs(lake: Lake) -> list[dict[str, Any]]:
    """Every completed run's offsets log (``IngestResult.to_json``), in the order they finished."""
    logged = [logged_run(lake, name.removesuffix(".json")) for name in list_files(lake, OFFSETS, ".json")]
    return sorted((run for run in logged if run is not None), key=lambda run: str(run["finished_at"]))


def logged_run(lake: Lake, run_id: str) -> dict[str, Any] | None:
    """The offsets log ``LAKE/_offsets/<run_id>.json`` of a completed run; None when there is none."""
    data = read_file(lake, f"{OFFSETS}/{run_id}.json")
    return None if data is None else dict(json.loads(data))


def run_ingest(
    spark: SparkSession,
    bootstrap: str,
    lake: Lake,
    topics: list[str],
    rerun: str | None = None,
) -> IngestResult:
    """Read the topics' new records (or ``rerun``'s range again) into the lake; the run's offsets log.

    ``lake`` is a folder or a URI (``s3a://``, ``gs://``, ``hdfs://``): its tables and offsets logs
    are written through the lake's file systems."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    from argus.infra.clients import spark_kafka_options

    lake = lake if is_uri(lake) else Path(lake)  # a URI as given (``--lake`` parses it: job_uri_lake)
    if rerun:
        logged = logged_run(lake, rerun)
        if logged is None:
            raise ValueError(f"no ingest run {rerun} in {join(lake, OFFSETS)}; `argus batch runs` lists them")
        start, end, started_at = logged["start"], logged["end"], datetime.fromisoformat(logged["started_at"])
    else:
        end = kafka_end_offsets(bootstrap, topics)
        before = previous_end(lake, topics)
        start = {t: {p: before.get(t, {}).get(p, -2) for p in parts} for t, parts in end.items()}
        started_at = datetime.now(UTC).replace(microsecond=0)
    run_id = run_id_for(start, end)

    raw = (
        spark.read.format("kafka")
        .options(**spark_kafka_options(bootstrap))  # bootstrap plus TLS/SASL from the shared settings
        .option("subscribe", ",".join(sorted(end)))
        .option("startingOffsets", json.dumps(start))
        .option("endingOffsets", json.dumps(end))
        .option("failOnDataLoss", "true")
        .load()
        .select("topic", "partition", "offset", "value")
    )
    validated = raw.mapInPandas(
        functools.partial(
            validate_partition, bounds=current_bounds(), privacy=current_privacy(), erased=_erased_subjects(lake)
        ),
        schema=from_arrow_schema(_VALIDATED),
    )
    # A repeated event_id within the run: the first (by topic, partition, offset) wins.
    first = Window.partitionBy("event_id").orderBy("_topic", "_partition", "_offset")
    validated = validated.withColumn(
        "_copy", F.when(F.col("_ok"), F.row_number().over(first)).otherwise(F.lit(1))
    ).cache()
    duplicate = F.col("_ok") & (F.col("_copy") > 1)
    erased = F.coalesce(F.col("_reason_code") == ERASED_SUBJECT, F.lit(False))
    good = validated.where(F.col("_ok") & ~duplicate)
    rejected = validated.where((~F.col("_ok") | duplicate) & ~erased).select(
        F.col("_original_b64").alias("original_b64"),
        F.col("_topic").alias("source_topic"),
        F.col("_partition").alias("source_partition"),
        F.col("_offset").alias("source_offset"),
        F.when(duplicate, F.lit(DUPLICATE_EVENT_ID)).otherwise(F.col("_reason_code")).alias("reason_code"),
        F.when(duplicate, F.concat(F.lit("event_id "), F.col("event_id"), F.lit(" repeated in this run")))
        .otherwise(F.col("_reason"))
        .alias("reason"),
        F.lit(started_at).cast("timestamp").alias("rejected_at"),
    )
    valid_count, rejected_count, erased_count = good.count(), rejected.count(), validated.where(erased).count()
    publication = Publication(lake, f"ingest-{run_id}", deferred=True)
    try:
        stored = _merge_events(spark, publication, good)
        converted = convert_plain_parquet(spark, lake, DEAD_LETTER)  # a lake from before dead letters were Delta
        if rejected_count or converted:
            letters = rejected.withColumn("date", F.lit(started_at.date().isoformat())).coalesce(1)
            publication.merge(spark, letters, DEAD_LETTER, ["source_topic", "source_partition", "source_offset"])
        publication.commit()  # the run's commit point: every table's new version, or none
    except BaseException:
        publication.discard()
        raise
    finally:
        validated.unpersist()
    if rerun and not is_uri(lake):  # plain files are landed on local lakes only
        _drop_plain_files(Path(lake), run_id)
    result = IngestResult(
        run_id,
        start,
        end,
        valid_count,
        rejected_count,
        started_at.isoformat(),
        datetime.now(UTC).isoformat(),
        erased_count,
        stored,
    )
    put_file(lake, f"{OFFSETS}/{run_id}.json", json.dumps(result.to_json(), indent=2, sort_keys=True).encode())
    return result


def _erased_subjects(lake: Lake) -> ErasedSubjects:
    """The users ``argus forget`` erased from ``lake``, whose records a replay must not bring back.
    ``argus forget`` keeps its log on local lakes; one found on an object-store lake is not ignored."""
    if not is_uri(lake):
        return erased_subjects(Path(lake))
    if read_file(lake, ERASURE_LOG.as_posix()) is not None:
        raise ValueError(
            f"--lake {lake}: it holds an erasure log ({ERASURE_LOG.as_posix()}) that ingest reads from local "
            "lakes only; ingest into a mounted copy of the lake so erased users stay erased"
        )
    return ErasedSubjects()


def _merge_events(spark: SparkSession, publication: Publication, good: DataFrame) -> int:
    """Each event type's valid rows into its Delta table, keyed on ``event_id``; the rows inserted."""
    from pyspark.sql import functions as F

    dates: dict[str, list[str]] = {}
    for row in good.groupBy("event_type", "date").count().collect():
        dates.setdefault(row["event_type"], []).append(row["date"])
    stored = 0
    # Each event type keeps its own columns (as `argus generate --out` writes them).
    for event_type, schema in ARROW_SCHEMAS.items():
        if event_type not in dates:
            continue
        rows = good.where(F.col("event_type") == event_type).select(*schema.names, "date")
        rows = rows.repartition("date").sortWithinPartitions("ts", "event_id")
        searched = rearrival_dates(dates[event_type])
        stored += publication.merge(spark, rows, events_table(event_type), ["event_id"], searched)
    return stored


def rearrival_dates(dates: list[str]) -> list[str]:
    """The dates whose stored event ids a batch with events on ``dates`` is checked against: those dates
    and ``REARRIVAL_DAYS`` either side, so an event re-sent with its time moved past midnight is found."""
    days = {
        date.fromisoformat(d) + timedelta(days=shift)
        for d in dates
        for shift in range(-REARRIVAL_DAYS, 1 + REARRIVAL_DAYS)
    }
    return sorted(d.isoformat() for d in days)


def _drop_plain_files(lake: Path, run_id: str) -> None:
    """A run's Parquet files from before ingest wrote Delta tables: its rerun has merged their rows."""
    for old in (lake / "events").glob(f"event_type=*/date=*/part-{run_id}-*.parquet"):
        old.unlink()


def main(argv: list[str]) -> int:
    """spark-submit entry point: ingest.py --bootstrap HOST:PORT --lake DIR [--topics a,b] [--rerun ID]."""
    from argus.infra.topics import EVENT_TOPICS

    parser = argparse.ArgumentParser(prog="ingest.py", description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--lake", required=True, type=job_uri_lake)
    parser.add_argument("--topics", default=",".join(EVENT_TOPICS))
    parser.add_argument("--rerun")
    return run_job(
        parser,
        argv,
        lambda spark, a: (run_ingest(spark, a.bootstrap, a.lake, a.topics.split(","), a.rerun).to_json(), 0),
        lease="argus batch ingest",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
