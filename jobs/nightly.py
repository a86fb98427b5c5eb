"""The nightly chain in one Spark application: ingest -> quality gate -> profiles -> embeddings ->
each detector fitted (or loaded) and scored -> alerts.

``argus batch nightly`` launches this entry point with one spark-submit, so every step of every
date shares one JVM and one SparkSession (a JVM per step cost more than the work on small lakes).
Backfills (``--from D1 --to D2``) run the dates one after another in the same session; ingest,
when asked for, runs once before the first date (it reads whatever the topics hold).

Each date is all or nothing: its profiles, embeddings and scores get new Delta versions as the
steps finish and its alert files are written to folders of the run's own; one manifest publishes
them together at the end (``argus.jobs.lake``), and only then do its models become ``CURRENT`` in
the model store (``LAKE/models``, which the streaming pipeline reloads from) and its alerts go to
Kafka, read back from the published files a line at a time. A crash or a failed check anywhere
before that leaves the previous outputs and models in place. A failing quality gate stops the
chain at that date (exit 1).

Alerts: ``LAKE/alerts/detector=X/date=D/run=R/part-*`` (one ``argus.schemas.Alert`` per line, sorted by
``alert_id``, built and written by the executors: ``jobs/alert_blocks.py``) and, with ``--alerts``, the
``alerts.<kind>`` topics keyed by ``alert_id``. Alert ids depend only on the detector, the user and
the night's window, so rerunning a date reproduces them.

Output: one JSON line per finished step on stdout (``{"step": ..., "date": ..., ...}``), for the
CLI's progress display, and a last line summing up the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from argus.jobs.entry import run_job
from argus.jobs.lake import Lake, is_uri, job_uri_lake, join
from argus.jobs.publish import Publication

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from argus.detectors.store import ModelStore

DETECTOR_ORDER = ("trolls", "evaders", "fraud", "churn")
Report = Callable[[dict[str, Any]], None]


def print_step(step: dict[str, Any]) -> None:
    print(json.dumps(step, default=str), flush=True)


def night_dates(first: date, last: date) -> list[date]:
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}; give the earlier date first")
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def run_nightly(
    spark: SparkSession,
    lake: Lake,
    dates: list[date],
    detectors: list[str],
    *,
    ingest_bootstrap: str | None = None,
    alerts_bootstrap: str | None = None,
    fit: bool = True,
    feature_days: int = 30,
    days: int = 30,
    dim: int = 32,
    word2vec_partitions: int = 1,
    report: Report = print_step,
) -> tuple[dict[str, Any], int]:
    """Run the chain for ``dates`` in order; (summary, exit code: 0, or 1 when a quality gate failed)."""
    from argus.detectors.registry import DETECTORS

    unknown = [name for name in detectors if name not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector {unknown[0]!r}; choose from {', '.join(DETECTOR_ORDER)}")
    lake = lake if is_uri(lake) else Path(lake)  # a URI as given (``--lake`` parses it: job_uri_lake)
    started = time.monotonic()
    spark.sparkContext.setLogLevel("WARN")  # the chain's own steps are the progress; Spark's INFO is noise
    application = spark.sparkContext.applicationId
    summary: dict[str, Any] = {"step": "done", "lake": str(lake), "dates": [], "alerts": 0, "application": application}
    if ingest_bootstrap:
        from argus.infra.topics import EVENT_TOPICS
        from argus.jobs.ingest import run_ingest

        ingested = run_ingest(spark, ingest_bootstrap, lake, list(EVENT_TOPICS))
        report({"step": "ingest", "run_id": ingested.run_id, "valid": ingested.valid, "rejected": ingested.rejected})
    for day in dates:
        night = run_night(
            spark,
            lake,
            day,
            detectors,
            fit=fit,
            feature_days=feature_days,
            days=days,
            dim=dim,
            word2vec_partitions=word2vec_partitions,
            report=report,
        )
        if night is None:
            summary.update(failed=day.isoformat(), seconds=round(time.monotonic() - started, 1))
            return summary, 1
        if alerts_bootstrap:
            from argus.infra.clients import publish_alerts
            from argus.jobs.alert_blocks import read_alerts

            nights = [(name, day) for name in detectors]
            produced = publish_alerts(read_alerts(lake, nights), alerts_bootstrap, source=str(lake))
            report({"step": "alerts", "date": day.isoformat(), "produced": produced})
        summary["dates"].append(day.isoformat())
        summary["alerts"] += night
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary, 0


def run_night(
    spark: SparkSession,
    lake: Lake,
    day: date,
    detectors: list[str],
    *,
    fit: bool = True,
    feature_days: int = 30,
    days: int = 30,
    dim: int = 32,
    word2vec_partitions: int = 1,
    report: Report = print_step,
) -> int | None:
    """One date of the chain, published all at once at its end; its alert count, or None when the gate failed."""
    from pyspark import StorageLevel

    from argus.detectors.store import ModelStore
    from argus.jobs.embed import run_embed
    from argus.jobs.profiles import run_profile
    from argus.jobs.quality import run_quality
    from argus.jobs.score import night_window, score_night

    when = day.isoformat()
    gate = run_quality(spark, lake, day)
    report({"step": "quality", "date": when, "passed": gate.passed, "rows": gate.rows, "summary": gate.summary()})
    if not gate.passed:
        return None
    publication = Publication(lake, f"nightly-{when}", deferred=True)
    window = None
    try:
        report({"step": "profiles", **run_profile(spark, lake, day, feature_days, publication=publication)})
        embedded = run_embed(
            spark, lake, day, days, dim, publication=publication, word2vec_partitions=word2vec_partitions
        )
        report({"step": "embeddings", **embedded})
        # The look-back's events, read once for every detector and kept on the executors, never the driver.
        window = night_window(spark, lake, day, days).persist(StorageLevel.MEMORY_AND_DISK) if detectors else None
        store = ModelStore(join(lake, "models"))
        alerts = 0
        for name in detectors:
            model = None if fit else _current_model(store, name)
            scored = score_night(spark, lake, day, name, days, model, publication=publication, window=window)
            report({"step": "score", **scored})
            alerts += scored["alerts"]
        tables, files = publication.commit()
    except BaseException:
        publication.discard()
        raise
    finally:
        if window is not None:
            window.unpersist()
    report({"step": "publish", "date": when, "tables": len(tables), "files": len(files), "models": detectors})
    return alerts


def _current_model(store: ModelStore, name: str) -> Lake:
    """Where the store's current ``name`` model is saved: a folder, or a URI in a URI lake's store."""
    version = store.current_version(name)
    if version is None:
        raise ValueError(f"no {name} model in {store.root} to load; run the chain once with fitting (without --no-fit)")
    return join(store.root, name, version)


def main(argv: list[str]) -> int:
    """spark-submit entry point: nightly.py --lake DIR|URI (--date D | --from D1 --to D2) [--detectors a,b]
    [--ingest] [--alerts] [--bootstrap HOST:PORT] [--no-fit] [--feature-days N] [--days N] [--dim N]
    [--word2vec-partitions N]."""
    parser = argparse.ArgumentParser(prog="nightly.py", description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True, type=job_uri_lake)
    parser.add_argument("--date", type=date.fromisoformat)
    parser.add_argument("--from", dest="first", type=date.fromisoformat)
    parser.add_argument("--to", dest="last", type=date.fromisoformat)
    parser.add_argument("--detectors", default=",".join(DETECTOR_ORDER))
    parser.add_argument("--ingest", action="store_true")
    parser.add_argument("--alerts", action="store_true")
    parser.add_argument("--bootstrap")
    parser.add_argument("--no-fit", dest="fit", action="store_false")
    parser.add_argument("--feature-days", type=int, default=30)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--word2vec-partitions", type=int, default=1)

    def chain(spark: SparkSession, a: argparse.Namespace) -> tuple[dict[str, Any], int]:
        if a.date is not None:
            dates = [a.date]
        elif a.first is not None and a.last is not None:
            dates = night_dates(a.first, a.last)
        else:
            raise ValueError("give --date D, or --from D1 --to D2 for a backfill")
        if (a.ingest or a.alerts) and not a.bootstrap:
            raise ValueError("--ingest and --alerts need --bootstrap HOST:PORT")
        if a.word2vec_partitions < 1:  # checked before any step runs, not when the embed step is reached
            raise ValueError(f"--word2vec-partitions {a.word2vec_partitions}: give 1 or more (1 trains on one core)")
        return run_nightly(
            spark,
            a.lake,
            dates,
            [d for d in a.detectors.split(",") if d],
            ingest_bootstrap=a.bootstrap if a.ingest else None,
            alerts_bootstrap=a.bootstrap if a.alerts else None,
            fit=a.fit,
            feature_days=a.feature_days,
            days=a.days,
            dim=a.dim,
            word2vec_partitions=a.word2vec_partitions,
        )

    return run_job(parser, argv, chain, lease="argus batch nightly")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
