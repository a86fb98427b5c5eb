"""Nightly scoring: one detector over the lake, scores published, model kept, alerts produced.

Features: the troll detector reads the nightly profile (its chat columns are the detector's
features, computed by Spark at scale); the other detectors read the last ``--days`` days of
events with Spark and build their features in pandas on the driver (one row per user in
memory). Without ``--model`` the detector is fitted on the same data, as `argus detect` does.

Output: ``LAKE/scores/detector=X/date=D/part-00000.parquet`` (swapped in whole), the model in
``LAKE/models/X/<model_version>/`` made current in the model store (``detectors/store.py``) and,
with ``--bootstrap``, alerts on ``alerts.<kind>`` with ids that a rerun of the same night reproduces.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from jobs.entry import run_job
from jobs.publish import Publication

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from detectors.base import Detector
    from detectors.events import Events
    from schemas.models import Alert


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
    from jobs.nightly import stage_alerts

    publication = Publication(lake, f"scores-{detector_name}-{day.isoformat()}")
    result, alerts = score_night(spark, lake, day, detector_name, days, model, publication=publication)
    stage_alerts(publication, lake, detector_name, day, alerts)
    if bootstrap:
        from infra.clients import publish_alerts

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
    events: Events | None = None,
) -> tuple[dict[str, Any], list[Alert]]:
    """Fit (or load) and score one detector; scores and model go through ``publication``.

    ``events`` (from ``night_events``) spares the event-based detectors a read each.
    """
    from detectors.alerts import alerts_from_scores
    from detectors.registry import DETECTORS, detector_class

    if detector_name not in DETECTORS:
        raise ValueError(f"unknown detector {detector_name!r}; known: {', '.join(sorted(DETECTORS))}")
    publication = publication or Publication(lake, f"scores-{detector_name}-{day.isoformat()}")
    cls = detector_class(detector_name)
    detector: Detector = cls.load(model) if model else cls()
    if model is not None and detector_name == "churn":
        from detectors.churn import ChurnDetector

        assert isinstance(detector, ChurnDetector)
        detector = detector.at(day.isoformat())  # what was learnt, scored as of this night
    if detector_name == "trolls":
        features = _profile_features(spark, publication.readable(lake / "profiles" / f"date={day.isoformat()}"), day)
    else:
        events = events if events is not None else night_events(spark, lake, day, days)
        features = detector.features(events)
    if model is None:
        detector.fit(features)
    scores = detector.score(features)
    target = _publish_scores(scores, lake, detector_name, day, publication)
    saved = publication.model(lake / "models", detector)
    start = pd.Timestamp(day - timedelta(days=days - 1), tz="UTC")
    end = pd.Timestamp(day + timedelta(days=1), tz="UTC")
    # Evidence: the items behind the score where the features came from the events, else the latest events.
    item_features = None if detector_name == "trolls" else features
    alerts = alerts_from_scores(scores, detector, start, end, events=events, features=item_features)
    result: dict[str, Any] = {
        "detector": detector_name,
        "date": day.isoformat(),
        "users": len(scores),
        "scored": int(scores["score"].notna().sum()),
        "flagged": int(scores["flagged"].sum()),
        "path": str(target),
        "model": str(saved),
        "model_version": detector.model_version,
    }
    return result, alerts


def _profile_features(spark: SparkSession, path: Path, day: date) -> pd.DataFrame:
    from detectors.chat_features import FEATURE_COLUMNS

    if not path.exists():
        raise ValueError(f"no profiles at {path}: run `argus batch profile --date {day}` first")
    columns = [c for c in FEATURE_COLUMNS if c != "chat_windows"]
    profile: pd.DataFrame = spark.read.parquet(str(path)).select("user_id", *columns).toPandas()
    frame = profile.set_index("user_id").sort_index().astype(float)
    frame["chat_messages"] = frame["chat_messages"].fillna(0.0)
    frame["chat_anarchy_mode_share"] = frame["chat_anarchy_mode_share"].fillna(0.0)
    return frame


def night_events(spark: SparkSession, lake: Path, day: date, days: int) -> Events:
    """The lake's events of the ``days`` days up to ``day``, as the detectors read them."""
    from pyspark.sql import functions as F

    from detectors.events import Events
    from jobs.profiles import EVENT_TYPES, read_events

    since = (day - timedelta(days=days - 1)).isoformat()
    frames = {}
    for event_type in EVENT_TYPES:
        events = read_events(spark, lake, event_type, day)
        if events is not None:
            frames[event_type] = events.where(F.col("date") >= since).drop("date").toPandas()
    if not any(len(f) for f in frames.values()):
        raise ValueError(f"no events in {lake}/events between {since} and {day}")
    return Events.from_frames(frames)


def _publish_scores(scores: pd.DataFrame, lake: Path, detector_name: str, day: date, publication: Publication) -> Path:
    """Written to a staging folder, then swapped in whole: readers never see half a night."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from detectors.base import reasons_text

    table = scores.assign(reasons=scores["reasons"].map(reasons_text))
    target = lake / "scores" / f"detector={detector_name}" / f"date={day.isoformat()}"
    staging = publication.stage(target)
    staging.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), staging / "part-00000.parquet")
    publication.staged(target)
    return target


def main(argv: list[str]) -> int:
    """spark-submit entry point: score.py --lake DIR --date D --detector NAME [--days N] [--model DIR] [--bootstrap]."""
    parser = argparse.ArgumentParser(prog="score.py", description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True, type=Path)
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
