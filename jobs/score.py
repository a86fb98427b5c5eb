"""Nightly scoring: one detector over the lake, scores published, model kept, alerts produced.

Scoring runs on the executors; the driver's memory does not grow with the number of users:

* **Features** are built as blocks of users by ``jobs/feature_blocks.py``, each block by its own
  task from its users' rows: trolls' from the nightly profile (Spark's per-context channel norms),
  evaders' and churn's from the last ``--days`` days of events grouped by user hash, with what
  they need from everybody aggregated by Spark first; fraud's likewise, in passes that aggregate
  what relates accounts (payees, shared entities, norms; ``jobs/fraud_blocks.py``).
* **Fit**, without ``--model``: on a bounded sample, whole blocks in hash order up to ``fit_users``
  users (a seeded random sample of users) plus the block of users that score together (evaders'
  new and banned accounts). Up to ``fit_users`` users the sample is everyone, so the model is the
  one ``argus detect`` fits on the same data. Purchase-mode churn keeps its fitted BG/NBD in the
  model, so scoring reads each customer's own history only.
* **Score**: the fitted model goes to the executors as a broadcast variable, ``mapInPandas`` runs
  the detector's own ``score`` on one block at a time, and the executors write the scores. The
  driver collects only the flagged users' rows (and their events), to build their alerts.

Output: ``LAKE/scores/detector=X/date=D/part-*.parquet`` (sorted by user, swapped in whole), the model
in ``LAKE/models/X/<model_version>/`` made current in the model store (``detectors/store.py``) and,
with ``--bootstrap``, alerts on ``alerts.<kind>`` with ids that a rerun of the same night reproduces.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from argus.detectors.alerts import EVIDENCE_LIMIT
from argus.jobs.entry import run_job
from argus.jobs.feature_blocks import BLOCK_USERS
from argus.jobs.lake import job_lake
from argus.jobs.publish import Publication

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from argus.detectors.base import Detector
    from argus.detectors.events import Events
    from argus.schemas.models import Alert

# Users the model is fitted on at most (whole blocks, so up to one block more). Enough for every
# detector's norms and clusters to settle; fitting time, not memory, is what it bounds first.
FIT_USERS = 50_000
SCORE_SCHEMA = "user_id string, score double, flagged boolean, status string, reasons string, reasons_data string"


def run_score(
    spark: SparkSession,
    lake: Path,
    day: date,
    detector_name: str,
    days: int = 30,
    model: Path | None = None,
    bootstrap: str | None = None,
) -> dict[str, Any]:
    """Score one detector for one night and publish at once, its alerts to ``LAKE/alerts/detector=X/date=D/``
    as the nightly chain writes them (`argus alerts publish` produces them later); with ``bootstrap``, now."""
    from argus.jobs.nightly import stage_alerts

    publication = Publication(lake, f"scores-{detector_name}-{day.isoformat()}")
    result, alerts = score_night(spark, lake, day, detector_name, days, model, publication=publication)
    stage_alerts(publication, lake, detector_name, day, alerts)
    if bootstrap:
        from argus.infra.clients import publish_alerts

        result["alerts"] = publish_alerts(alerts, bootstrap)
    return result


def score_night(
    spark: SparkSession,
    lake: Path,
    day: date,
    detector_name: str,
    days: int = 30,
    model: Path | None = None,
    publication: Publication | None = None,
    window: DataFrame | None = None,
    fit_users: int = FIT_USERS,
    block_users: int = BLOCK_USERS,
) -> tuple[dict[str, Any], list[Alert]]:
    """Fit (or load) and score one detector; scores and model go through ``publication``.

    ``window`` (from ``night_window``) spares the event-based detectors a read each.
    """
    from pyspark import StorageLevel

    from argus.detectors.registry import DETECTORS, detector_class
    from argus.jobs.feature_blocks import type_columns

    if detector_name not in DETECTORS:
        raise ValueError(f"unknown detector {detector_name!r}; known: {', '.join(sorted(DETECTORS))}")
    if fit_users < 1 or block_users < 1:
        raise ValueError("fit_users and block_users must be at least 1")
    publication = publication or Publication(lake, f"scores-{detector_name}-{day.isoformat()}")
    cls = detector_class(detector_name)
    detector: Detector = cls.load(model) if model else cls()
    if model is not None and detector_name == "churn":
        from argus.detectors.churn import ChurnDetector

        assert isinstance(detector, ChurnDetector)
        detector = detector.at(day.isoformat())  # what was learnt, scored as of this night
    if detector_name != "trolls" and window is None:
        window = night_window(spark, lake, day, days)
    columns = type_columns(spark, lake, day)
    blocks = feature_blocks(spark, lake, day, detector, publication, window, columns, block_users)
    blocks = blocks.persist(StorageLevel.MEMORY_AND_DISK)
    scores: DataFrame | None = None
    try:
        sample: pd.DataFrame | None = None
        fitted_on = 0
        if model is None:
            from argus.jobs.feature_blocks import fit_sample

            sample = fit_sample(blocks, fit_users, whole_core=detector_name == "evaders")
            detector.fit(sample)
            if detector_name == "trolls":  # the profile has no message columns: learn that part from the night's chat
                chat = night_chat(spark, lake, day)
                if chat is not None:
                    detector.fit_messages(chat)  # type: ignore[attr-defined]
            fitted_on = len(sample)
            if detector_name != "evaders":
                sample = None  # only the evaders' alerts read it again
        scores = score_blocks(spark, blocks, detector).persist(StorageLevel.MEMORY_AND_DISK)
        target = _publish_scores(scores, lake, detector_name, day, publication)
        saved = publication.model(lake / "models", detector)
        counts = scores.selectExpr(
            "count(*) AS users", "count(score) AS scored", "coalesce(sum(cast(flagged AS int)), 0) AS flagged"
        ).first()
        assert counts is not None
        start = pd.Timestamp(day - timedelta(days=days - 1), tz="UTC")
        end = pd.Timestamp(day + timedelta(days=1), tz="UTC")
        alerts = _night_alerts(spark, scores, blocks, detector, window, columns, start, end, sample)
    finally:
        if scores is not None:
            scores.unpersist()
        blocks.unpersist()
    result: dict[str, Any] = {
        "detector": detector_name,
        "date": day.isoformat(),
        "users": int(counts["users"]),
        "scored": int(counts["scored"]),
        "flagged": int(counts["flagged"]),
        "fit_users": fitted_on,
        "path": str(target),
        "model": str(saved),
        "model_version": detector.model_version,
    }
    return result, alerts


# Chat messages the troll model's message part is fitted on at most: whole channels, sampled by a
# hash of the channel beyond that (the context signals need each channel's whole conversation).
MESSAGE_FIT_MESSAGES = 200_000


def night_chat(spark: SparkSession, lake: Path, day: date, limit: int = MESSAGE_FIT_MESSAGES) -> pd.DataFrame | None:
    """The chat messages of ``day`` (whole channels, at most about ``limit``) as a pandas frame, or None."""
    from pyspark.sql import functions as F

    from argus.jobs.profiles import read_events

    chat = read_events(spark, lake, "chat", day)
    if chat is None:
        return None
    chat = chat.where(F.col("date") == day.isoformat()).drop("date")
    total = chat.count()
    if not total:
        return None
    if total > limit:
        buckets = 1000
        chat = chat.where(F.abs(F.hash("context")) % buckets < max(1, buckets * limit // total))
    return chat.toPandas()


def night_window(spark: SparkSession, lake: Path, day: date, days: int) -> DataFrame:
    """The lake's events of the ``days`` days up to ``day`` (all types, one wide Spark frame)."""
    from argus.jobs.feature_blocks import window_events

    since = (day - timedelta(days=days - 1)).isoformat()
    window = window_events(spark, lake, day, days)
    if window is None or window.isEmpty():
        raise ValueError(f"no events in {lake}/events between {since} and {day}")
    return window


def feature_blocks(
    spark: SparkSession,
    lake: Path,
    day: date,
    detector: Detector,
    publication: Publication,
    window: DataFrame | None,
    columns: dict[str, list[str]],
    block_users: int = BLOCK_USERS,
) -> DataFrame:
    """The detector's features as blocks of users (``jobs/feature_blocks.py``), not yet computed."""
    from argus.jobs.feature_blocks import event_blocks, profile_blocks

    if detector.name == "trolls":
        profiles = publication.read(spark, "profiles", day)
        if profiles is None:
            raise ValueError(f"no profiles for {day} in {lake}: run `argus batch profile --date {day}` first")
        return profile_blocks(profiles, block_users)
    assert window is not None
    builder = _portable(detector)  # shipped to the executors without anything fit() may attach later
    return event_blocks(spark, window, columns, builder, block_users)


def score_blocks(spark: SparkSession, blocks: DataFrame, detector: Detector) -> DataFrame:
    """``SCORE_SCHEMA`` rows from every block, scored on the executors by a broadcast copy of ``detector``."""
    from argus.detectors.base import reasons_text
    from argus.jobs.feature_blocks import iterate_blocks

    model = spark.sparkContext.broadcast(_artefact(detector))

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        scorer = _restore(model.value)
        for _, features in iterate_blocks(batches):
            scored = scorer.score(features)
            yield pd.DataFrame(
                {
                    "user_id": scored["user_id"].astype(str),
                    "score": scored["score"].astype(float),
                    "flagged": scored["flagged"].astype(bool),
                    "status": scored["status"].astype(str),
                    "reasons": scored["reasons"].map(reasons_text),
                    "reasons_data": scored["reasons"].map(lambda rs: json.dumps([r.to_dict() for r in rs])),
                }
            )

    return blocks.mapInPandas(score, SCORE_SCHEMA)


def _artefact(detector: Detector) -> bytes:
    """What a copy of ``detector`` needs (as ``Detector.save`` keeps it), pickled once for the broadcast."""
    return pickle.dumps(
        (detector.name, detector.params, detector.state, detector.metrics, detector.fitted_at), protocol=5
    )


def _restore(blob: bytes) -> Detector:
    from argus.detectors.registry import detector_class

    name, params, state, metrics, fitted_at = pickle.loads(blob)
    detector = detector_class(name)(**params)
    detector.state, detector.metrics, detector.fitted_at = state, metrics, fitted_at
    return detector


def _portable(detector: Detector) -> Detector:
    return _restore(_artefact(detector))


def _night_alerts(
    spark: SparkSession,
    scores: DataFrame,
    blocks: DataFrame,
    detector: Detector,
    window: DataFrame | None,
    columns: dict[str, list[str]],
    start: pd.Timestamp,
    end: pd.Timestamp,
    sample: pd.DataFrame | None,
) -> list[Alert]:
    """Alerts of the flagged users: only their score rows, events and features come to the driver."""
    from argus.detectors.alerts import alerts_from_scores
    from argus.detectors.base import SCORE_COLUMNS, Reason

    flagged: pd.DataFrame = scores.where("flagged").orderBy("user_id").toPandas()
    if flagged.empty:
        return []
    flagged["reasons"] = flagged["reasons_data"].map(lambda text: [Reason(**r) for r in json.loads(text)])
    flagged = flagged[SCORE_COLUMNS].reset_index(drop=True)
    users = list(flagged["user_id"])
    if window is None:
        return alerts_from_scores(flagged, detector, start, end, events=None, features=None)
    if detector.name not in ("evaders", "fraud"):
        # Evidence is the users' latest events (churn: their own first): no more than that is read.
        events = _events_of(spark, window, columns, users, latest=EVIDENCE_LIMIT)
        return alerts_from_scores(flagged, detector, start, end, events=events, features=None)
    features = _features_of(blocks, detector, users, sample)
    if detector.name == "evaders":
        # A new account's evidence names its parent's ban: the banned candidates' events are read too.
        users = sorted(set(users) | set(features.index[features["banned_ts"].notna()].astype(str)))
    events = _events_of(spark, window, columns, users)
    return alerts_from_scores(flagged, detector, start, end, events=events, features=features)


def _events_of(
    spark: SparkSession, window: DataFrame, columns: dict[str, list[str]], users: list[str], latest: int | None = None
) -> Events:
    """The window's events of ``users`` (the flagged ones), as the detectors read events; with ``latest``,
    only each user's ``latest`` newest events and newest events of their own (not reports or bans about them)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from argus.jobs.feature_blocks import events_from_wide

    wanted = spark.createDataFrame(pd.DataFrame({"user_id": users}), "user_id string")
    rows = window.join(F.broadcast(wanted), "user_id")
    if latest is not None:
        action = F.col("action") if "action" in rows.columns else F.lit(None).cast("string")
        order = (F.col("ts").desc(), F.col("event_id").desc())
        rows = (
            rows.withColumn(
                "_own", (F.col("event_type") != "moderation") & ~F.coalesce(action.isin("ban", "unban"), F.lit(False))
            )
            .withColumn("_newest", F.row_number().over(Window.partitionBy("user_id").orderBy(*order)))
            .withColumn("_newest_own", F.row_number().over(Window.partitionBy("user_id", "_own").orderBy(*order)))
            .where((F.col("_newest") <= latest) | (F.col("_own") & (F.col("_newest_own") <= latest)))
            .drop("_own", "_newest", "_newest_own")
        )
    return events_from_wide(rows.toPandas(), columns)


def _features_of(blocks: DataFrame, detector: Detector, users: list[str], sample: pd.DataFrame | None) -> pd.DataFrame:
    """Features for the flagged users' evidence: evaders' core block whole (matching needs every
    candidate), for the others just the flagged users' rows."""
    from pyspark.sql import functions as F

    from argus.jobs.feature_blocks import concat_blocks, pack, unpack

    if detector.name == "evaders":
        if sample is not None and len(sample):
            return sample
        rows = blocks.where(F.col("block") == 0).select("frame").collect()
        return concat_blocks([unpack(r["frame"]) for r in rows]) if rows else pd.DataFrame()
    wanted = set(users)

    def only_flagged(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from argus.jobs.feature_blocks import iterate_blocks

        for number, features in iterate_blocks(batches):
            mine = features[features.index.astype(str).isin(wanted)]
            if len(mine):
                yield pd.DataFrame([pack(mine, number)])

    from argus.jobs.feature_blocks import BLOCK_SCHEMA

    rows = blocks.mapInPandas(only_flagged, BLOCK_SCHEMA).orderBy("block").select("frame").collect()
    return concat_blocks([unpack(r["frame"]) for r in rows])


def _publish_scores(scores: DataFrame, lake: Path, detector_name: str, day: date, publication: Publication) -> str:
    """Written by the executors as one Delta commit replacing the night (``argus.jobs.lake``); the table."""
    table = f"scores/detector={detector_name}"
    publication.write(scores.sparkSession, scores.drop("reasons_data").orderBy("user_id"), table, day)
    return table


def main(argv: list[str]) -> int:
    """spark-submit entry point: score.py --lake DIR --date D --detector NAME [--days N] [--model DIR] [--bootstrap]."""
    parser = argparse.ArgumentParser(prog="score.py", description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True, type=job_lake)
    parser.add_argument("--date", required=True, type=date.fromisoformat)
    parser.add_argument("--detector", required=True)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--bootstrap")
    return run_job(
        parser,
        argv,
        lambda spark, a: (run_score(spark, a.lake, a.date, a.detector, a.days, a.model, a.bootstrap), 0),
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
