"""A night's alerts built and written on the executors, block by block: the driver sees counts only.

A flagged user's alert needs their score row, their events (the evidence) and, for evaders and fraud,
features. ``alert_rows`` brings these together per feature block, the blocks the scores came from
(``jobs/feature_blocks.py``): the flagged score rows of a block, packed into one row, joined with the
block's features where the detector needs them and cogrouped with the events of the block's flagged
users. Each task then calls ``argus.detectors.alerts.alerts_from_scores`` on its block, the function
the pandas path (``argus detect``) calls on everybody at once; a user's evidence comes from their own
events (and for evaders their block's candidates), so the alerts, ids included, are the same.

What each block's task reads, per detector:

* ``trolls`` and ``churn``: each flagged user's latest ``EVIDENCE_LIMIT`` events and latest events
  of their own (not reports or bans about them); no more is ever cited.
* ``fraud``: the flagged users' events and feature rows (payments ranked, declines, transfers received).
* ``evaders``: block 0 (the core: new and banned accounts and their households) whole, since a new
  account's evidence names the banned account it matches, and the events of its flagged and banned
  accounts. Only the flagged accounts' candidate pairs are matched again
  (``EvaderDetector.match(features, children=...)``: the rows the score came from), not every new
  account's. Other blocks hold no new account, so nothing there is flagged.

``write_alerts`` has Spark write them, sorted by alert id, as one file (one ``argus.schemas.Alert`` per
line) in a folder of the run's own, ``LAKE/alerts/detector=X/date=D/run=R/``, through the lake's file
system (a folder or a URI); the run's publication publishes it: its manifest names the night's file
(``Manifest.files``), so a night is replaced whole when the manifest is written, and a run that fails
before leaves the previous file published. ``read_alerts`` is the one reader of alert files: it finds
each night's file through the newest manifest and streams it back one alert at a time, for producing
to Kafka (the nightly chain, ``argus batch score``, ``argus alerts publish``) and for the report.
A lake published before manifests named alert files kept each night in
``alerts/detector=X/date=D/alerts.jsonl``: ``alerts_file`` reads that when no manifest names the night.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import date
from typing import TYPE_CHECKING

import pandas as pd

from argus.detectors.alerts import EVIDENCE_LIMIT
from argus.jobs.lake import ALERTS, Lake, Manifest, join, lake_filesystem, latest_manifest, list_files, put_file

if TYPE_CHECKING:
    from pyspark import Broadcast
    from pyspark.sql import DataFrame

    from argus.detectors.base import Detector
    from argus.jobs.publish import Publication
    from argus.schemas.models import Alert

ALERT_SCHEMA = "alert_id string, alert string"
FLAGGED_SCHEMA = "block long, flagged_rows binary"
_SCORE_ROW = ["user_id", "score", "flagged", "status", "reasons_data"]
LEGACY_ALERTS_FILE = "alerts.jsonl"  # a night's file before manifests named them, in the night's folder


class AlertFileError(ValueError):
    """A night's alert file is missing or holds a line that is not an alert; the message names the file
    (and line) and what to run."""


def alerts_key(detector: str, day: date) -> str:
    """The night's name in the manifest (``Manifest.files``) and the folder of its runs' files."""
    return f"{ALERTS}/detector={detector}/date={day.isoformat()}"


def alerts_file(lake: Lake, detector: str, day: date, manifest: Manifest | None = None) -> str | None:
    """The night's published alert file, relative to the lake, as ``manifest`` (the newest by default)
    names it, else an older lake's ``alerts.jsonl``; None when the night was not scored."""
    from pyarrow.fs import FileType

    key = alerts_key(detector, day)
    manifest = manifest if manifest is not None else latest_manifest(lake)
    if manifest is not None and key in manifest.files:
        return manifest.files[key]
    fs, root = lake_filesystem(lake)
    legacy = f"{key}/{LEGACY_ALERTS_FILE}"
    return legacy if fs.get_file_info(f"{root}/{legacy}").type == FileType.File else None


def alert_rows(
    scores: DataFrame,
    blocks: DataFrame,
    detector: Detector,
    window: DataFrame | None,
    columns: dict[str, list[str]],
    start: pd.Timestamp,
    end: pd.Timestamp,
) -> DataFrame:
    """``ALERT_SCHEMA`` rows, one per flagged row of ``scores`` (``block`` and ``SCORE_SCHEMA`` columns), each
    alert built on the executors from its block's rows (see the module doc); not yet computed."""
    from argus.jobs.feature_blocks import pack
    from argus.jobs.score import detector_artefact

    spark = scores.sparkSession
    model = spark.sparkContext.broadcast(detector_artefact(detector))
    flagged = scores.where("flagged").select("block", *_SCORE_ROW)

    def pack_flagged(rows: pd.DataFrame) -> pd.DataFrame:
        packed = pack(rows.drop(columns="block").sort_values("user_id", ignore_index=True), int(rows["block"].iloc[0]))
        return pd.DataFrame({"block": [packed["block"]], "flagged_rows": [packed["frame"]]})

    per_block = flagged.groupBy("block").applyInPandas(pack_flagged, FLAGGED_SCHEMA)
    with_features = window is not None and detector.name in ("evaders", "fraud")
    if with_features:
        per_block = per_block.join(blocks.select("block", "frame"), "block")
    build = _block_alerts(model, columns, start, end, with_features)
    if window is None:
        return per_block.groupBy("block").applyInPandas(lambda rows: build(rows, None), ALERT_SCHEMA)
    wanted = flagged.select("user_id", "block")
    if detector.name == "evaders":  # a new account's evidence names its parent's ban: banned candidates' events too
        wanted = wanted.unionByName(_banned_of_core(blocks)).distinct()
    events = window.join(wanted, "user_id")
    if detector.name not in ("evaders", "fraud"):
        events = _latest_events(events, EVIDENCE_LIMIT)
    return (
        per_block.groupBy("block")
        .cogroup(events.groupBy("block"))
        .applyInPandas(lambda rows, event_rows: build(rows, event_rows), ALERT_SCHEMA)
    )


BlockAlerts = Callable[[pd.DataFrame, "pd.DataFrame | None"], pd.DataFrame]


def _block_alerts(
    model: Broadcast[bytes], columns: dict[str, list[str]], start: pd.Timestamp, end: pd.Timestamp, with_features: bool
) -> BlockAlerts:
    """What a task runs on one block: its packed flagged rows (and features) and its events -> alert rows."""
    restored: list[Detector] = []  # the broadcast model, unpickled once per task

    def build(rows: pd.DataFrame, event_rows: pd.DataFrame | None) -> pd.DataFrame:
        from argus.detectors.alerts import alerts_from_scores
        from argus.detectors.base import SCORE_COLUMNS, Reason
        from argus.jobs.feature_blocks import events_from_wide, unpack
        from argus.jobs.score import restore_detector

        if rows.empty:  # events of a block none of whose users is flagged (evaders' banned candidates)
            return pd.DataFrame({"alert_id": pd.Series(dtype=str), "alert": pd.Series(dtype=str)})
        if not restored:
            restored.append(restore_detector(model.value))
        detector = restored[0]
        flagged = unpack(rows["flagged_rows"].iloc[0])
        flagged["reasons"] = flagged["reasons_data"].map(lambda text: [Reason(**r) for r in json.loads(text)])
        flagged = flagged[SCORE_COLUMNS]
        features = unpack(rows["frame"].iloc[0]) if with_features else None
        if features is not None and detector.name == "fraud":  # the flagged users' rows, as their evidence reads them
            features = features[features.index.astype(str).isin(set(flagged["user_id"]))]
        events = None if event_rows is None else events_from_wide(event_rows, columns)
        alerts = alerts_from_scores(flagged, detector, start, end, events=events, features=features)
        return pd.DataFrame({"alert_id": [a.alert_id for a in alerts], "alert": [a.model_dump_json() for a in alerts]})

    return build


def _banned_of_core(blocks: DataFrame) -> DataFrame:
    """``user_id, block`` of the banned accounts in evaders' core (block 0), found on the executors."""
    from pyspark.sql import functions as F

    def banned(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from argus.jobs.feature_blocks import iterate_blocks

        for number, features in iterate_blocks(batches):
            ids = features.index[features["banned_ts"].notna()].astype(str) if "banned_ts" in features else []
            yield pd.DataFrame({"user_id": pd.Series(list(ids), dtype=str), "block": number})

    core = blocks.where(F.col("block") == 0).select("block", "frame")
    return core.mapInPandas(banned, "user_id string, block long")


def _latest_events(rows: DataFrame, latest: int) -> DataFrame:
    """Each user's ``latest`` newest events and ``latest`` newest events of their own (not reports or bans
    about them): all that a troll's or churner's alert may cite."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    action = F.col("action") if "action" in rows.columns else F.lit(None).cast("string")
    order = (F.col("ts").desc(), F.col("event_id").desc())
    own = (F.col("event_type") != "moderation") & ~F.coalesce(action.isin("ban", "unban"), F.lit(False))
    return (
        rows.withColumn("_own", own)
        .withColumn("_newest", F.row_number().over(Window.partitionBy("user_id").orderBy(*order)))
        .withColumn("_newest_own", F.row_number().over(Window.partitionBy("user_id", "_own").orderBy(*order)))
        .where((F.col("_newest") <= latest) | (F.col("_own") & (F.col("_newest_own") <= latest)))
        .drop("_own", "_newest", "_newest_own")
    )


def write_alerts(publication: Publication, lake: Lake, detector: str, day: date, alerts: DataFrame) -> str:
    """Write ``alerts`` (``ALERT_SCHEMA``) as the night's alert file, sorted by alert id, by Spark, in a new
    folder of ``publication``'s, which publishes it with the rest of its outputs; the file, relative to
    the lake. A night without alerts gets an empty file: published, unlike a night not scored."""
    key = alerts_key(detector, day)
    folder = publication.new_folder(key)
    # One sorted file, as readers expect: sorted on an executor (spilling to disk), never collected.
    ordered = alerts.repartition(1).sortWithinPartitions("alert_id").select("alert")
    ordered.write.mode("errorifexists").option("compression", "none").text(str(join(lake, *folder.split("/"))))
    written = [name for name in list_files(lake, folder) if name.startswith("part-")]
    if len(written) > 1:
        raise RuntimeError(f"expected one alerts file from Spark in {join(lake, folder)}, found {len(written)}")
    relative = f"{folder}/{written[0] if written else 'part-00000.txt'}"
    if not written:  # Spark may write no part at all for no rows
        put_file(lake, relative, b"")
    publication.file(key, relative)
    return relative


def read_alerts(lake: Lake, nights: Iterable[tuple[str, date]], manifest: Manifest | None = None) -> Iterator[Alert]:
    """The alerts of each (detector, night), night by night in file order, each line parsed once as it is
    read through the lake's file system: never a whole file in memory. The files are the ones
    ``manifest`` (the newest by default, read once) publishes, so a night being replaced is read whole,
    old or new. Every night must have been scored: a missing one raises ``AlertFileError`` here, before
    any is read. A line that is not an alert raises it, naming its file and line, when the iteration
    reaches it; the alerts before it have been yielded."""
    manifest = manifest if manifest is not None else latest_manifest(lake)
    files = []
    for detector, day in nights:
        relative = alerts_file(lake, detector, day, manifest)
        if relative is None:
            raise AlertFileError(
                f"no {detector} alerts for {day} in {lake}; score that night first "
                f"(`argus batch score --detector {detector} --date {day}` or `argus batch nightly --date {day}`)"
            )
        files.append(relative)
    return _stream_alerts(lake, files)


def _stream_alerts(lake: Lake, files: list[str]) -> Iterator[Alert]:
    from argus.schemas.models import Alert

    fs, root = lake_filesystem(lake)
    for relative in files:
        with fs.open_input_stream(f"{root}/{relative}") as stream:
            for number, line in enumerate(io.TextIOWrapper(stream, encoding="utf-8"), start=1):
                if not line.strip():
                    continue
                try:
                    alert = Alert.model_validate_json(line)
                except ValueError as exc:
                    where = f"{join(lake, *relative.split('/'))}:{number}"
                    raise AlertFileError(f"{where} is not an alert: {str(exc).splitlines()[0]}") from exc
                yield alert
