"""Nightly scoring: one detector over the lake, scores published, model kept, alerts produced.

Scoring runs on the executors; the driver's memory does not grow with the number of users:

* **Features** are built as blocks of users by ``jobs/feature_blocks.py``, each block by its own
  task from its users' rows: trolls' from the nightly profile (Spark's per-context channel norms),
  evaders' and churn's from the last ``--days`` days of events grouped by user hash, with what
  they need from everybody aggregated by Spark first; fraud's likewise, in passes that aggregate
  what relates accounts (payees, shared entities, norms; ``jobs/fraud_blocks.py``).
* **Fit**, without ``--model``: on a bounded sample, whole blocks in hash order up to ``fit_users``
  users (a seeded random sample of users) plus the block of users that score together (evaders'
  new and banned accounts), whose new accounts are thinned on the executors to at most about
  ``EVADER_FIT_NEW_ACCOUNTS`` by a seeded user hash (``evader_fit_sample``). Up to ``fit_users``
  users the sample is everyone, so the model is the one ``argus detect`` fits on the same data.
  Purchase-mode churn keeps its fitted BG/NBD in the model, so scoring reads each customer's own
  history only.
* **Score**: the fitted model goes to the executors as a broadcast variable, ``mapInPandas`` runs
  the detector's own ``score`` on one block at a time, and the executors write the scores. Evaders'
  core, whose accounts score together, goes to several tasks (at most one per task slot), each scoring
  a share of its accounts among the whole core (``evader_core_shares``) with the candidate pairs a first
  pass found for it (``core_pairs``), with the scores one task would give.
* **Alerts**: built on the executors too, block by block (``jobs/alert_blocks.py``): each task calls
  ``alerts_from_scores`` on its block's flagged users with their events (and features), and Spark
  writes the night's alert file. The driver collects counts and aggregates only.

Output: ``LAKE/scores/detector=X`` (a Delta table by date, sorted by user, the night replaced in one
commit), the model in ``LAKE/models/X/<model_version>/`` made current in the model store (``detectors/store.py``), the
alerts in a file of the run's own under ``LAKE/alerts/detector=X/date=D/`` that the lake's manifest
publishes and, with ``--bootstrap``, on ``alerts.<kind>`` (read back from that file a line at a time),
with ids that a rerun of the same night reproduces.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from argus.jobs.entry import run_job
from argus.jobs.feature_blocks import BLOCK_USERS
from argus.jobs.lake import Lake, job_uri_lake, join
from argus.jobs.publish import Publication

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from argus.detectors.base import Detector

# Users the model is fitted on at most (whole blocks, so up to one block more). Enough for every
# detector's norms and clusters to settle; fitting time, not memory, is what it bounds first.
FIT_USERS = 50_000
SCORE_SCHEMA = "user_id string, score double, flagged boolean, status string, reasons string, reasons_data string"
# What the scoring tasks emit: each user's block too, so that their alert is built with their block.
BLOCK_SCORE_SCHEMA = f"block long, {SCORE_SCHEMA}"


def run_score(
    spark: SparkSession,
    lake: Lake,
    day: date,
    detector_name: str,
    days: int = 30,
    model: Lake | None = None,
    bootstrap: str | None = None,
) -> dict[str, Any]:
    """Score one detector for one night and publish at once, its alerts to ``LAKE/alerts/detector=X/date=D/``
    as the nightly chain writes them (`argus alerts publish` produces them later); with ``bootstrap``, now."""
    publication = Publication(lake, f"scores-{detector_name}-{day.isoformat()}")
    result = score_night(spark, lake, day, detector_name, days, model, publication=publication)
    if bootstrap:
        from argus.infra.clients import publish_alerts
        from argus.jobs.alert_blocks import read_alerts

        published = read_alerts(lake, [(detector_name, day)])  # as the manifest just published it, a line at a time
        result["produced"] = publish_alerts(published, bootstrap, source=str(lake))
    return result


def score_night(
    spark: SparkSession,
    lake: Lake,
    day: date,
    detector_name: str,
    days: int = 30,
    model: Lake | None = None,
    publication: Publication | None = None,
    window: DataFrame | None = None,
    fit_users: int = FIT_USERS,
    block_users: int = BLOCK_USERS,
) -> dict[str, Any]:
    """Fit (or load the model saved in ``model``, a folder or a URI) and score one detector; scores, model
    and alerts go through ``publication``.

    ``window`` (from ``night_window``) spares the event-based detectors a read each. The result's
    ``alerts`` counts the alerts written to the night's alert file (``argus.jobs.alert_blocks.write_alerts``).
    """
    from pyspark import StorageLevel

    from argus.detectors.registry import DETECTORS, detector_class
    from argus.detectors.store import load_model
    from argus.jobs.alert_blocks import alert_rows, write_alerts
    from argus.jobs.feature_blocks import type_columns

    if detector_name not in DETECTORS:
        raise ValueError(f"unknown detector {detector_name!r}; known: {', '.join(sorted(DETECTORS))}")
    if fit_users < 1 or block_users < 1:
        raise ValueError("fit_users and block_users must be at least 1")
    publication = publication or Publication(lake, f"scores-{detector_name}-{day.isoformat()}")
    detector: Detector = load_model(detector_name, model) if model else detector_class(detector_name)()
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
        fitted_on = 0
        fit_new_accounts: int | None = None
        if model is None:
            from argus.jobs.feature_blocks import fit_sample

            if detector_name == "evaders":
                sample = evader_fit_sample(blocks, fit_users)
            else:
                sample = fit_sample(blocks, fit_users)
            detector.fit(sample)
            if detector_name == "trolls":  # the profile has no message columns: learn that part from the night's chat
                chat = night_chat(spark, lake, day)
                if chat is not None:
                    detector.fit_messages(chat)  # type: ignore[attr-defined]
            fitted_on = len(sample)
            if detector_name == "evaders":
                fit_new_accounts = int(sample["created_ts"].notna().sum())
            del sample
        scores = score_blocks(spark, blocks, detector, 2 * block_users).persist(StorageLevel.MEMORY_AND_DISK)
        target = _publish_scores(scores, lake, detector_name, day, publication)
        saved = publication.model(join(lake, "models"), detector)
        counts = scores.selectExpr(
            "count(*) AS users", "count(score) AS scored", "coalesce(sum(cast(flagged AS int)), 0) AS flagged"
        ).first()
        assert counts is not None
        start = pd.Timestamp(day - timedelta(days=days - 1), tz="UTC")
        end = pd.Timestamp(day + timedelta(days=1), tz="UTC")
        alerts = alert_rows(scores, blocks, detector, window, columns, start, end)
        write_alerts(publication, lake, detector_name, day, alerts)  # one alert per flagged user
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
        **({} if fit_new_accounts is None else {"fit_new_accounts": fit_new_accounts}),
        "path": str(target),
        "model": str(saved),
        "model_version": detector.model_version,
        "alerts": int(counts["flagged"]),
    }
    return result


# New accounts the evaders model is fitted on at most (or ``fit_users`` if fewer): each brings its
# ~60 candidate pairs (``MATCH_CANDIDATES`` + ``RETRIEVED``), so the fit's pairs stay under about a
# million, ample for a logistic regression on a dozen features, however many users sign up. The
# sample keeps every account the unsupervised fit learns from and weighs the others' pairs
# (``argus.detectors.evaders.sample_new_accounts``): on a 1,000,000-user night it flags as the
# whole population's fit does.
EVADER_FIT_NEW_ACCOUNTS = 20_000


def evader_fit_sample(blocks: DataFrame, fit_users: int, new_accounts: int = EVADER_FIT_NEW_ACCOUNTS) -> pd.DataFrame:
    """Evaders' fit sample: ``fit_sample`` with the core (block 0) whole, its new accounts thinned on the
    executors to at most about ``min(fit_users, new_accounts)`` by a seeded hash of the user id
    (``argus.detectors.evaders.sample_new_accounts``: banned accounts and everyone's fingerprints stay)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from argus.detectors.evaders import sample_new_accounts
    from argus.jobs.feature_blocks import BLOCK_SCHEMA, fit_sample, iterate_blocks, pack

    limit = min(fit_users, new_accounts)

    def thin(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for number, features in iterate_blocks(batches):
            yield pd.DataFrame([pack(sample_new_accounts(features, limit), number)])

    core = blocks.where(F.col("block") == 0).select("block", "frame").mapInPandas(thin, BLOCK_SCHEMA)
    rest = blocks.where(F.col("block") != 0).select("block", "users", "frame")
    sampled = core.unionByName(rest).persist(StorageLevel.MEMORY_AND_DISK)  # fit_sample reads it twice
    try:
        return fit_sample(sampled, fit_users, whole_core=True)
    finally:
        sampled.unpersist()


# Chat messages the troll model's message part is fitted on at most: whole channels, sampled by a
# hash of the channel beyond that (the context signals need each channel's whole conversation).
MESSAGE_FIT_MESSAGES = 200_000


def night_chat(spark: SparkSession, lake: Lake, day: date, limit: int = MESSAGE_FIT_MESSAGES) -> pd.DataFrame | None:
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


def night_window(spark: SparkSession, lake: Lake, day: date, days: int) -> DataFrame:
    """The lake's events of the ``days`` days up to ``day`` (all types, one wide Spark frame)."""
    from argus.jobs.feature_blocks import window_events

    since = (day - timedelta(days=days - 1)).isoformat()
    window = window_events(spark, lake, day, days)
    if window is None or window.isEmpty():
        raise ValueError(f"no events in {lake}/events between {since} and {day}")
    return window


def feature_blocks(
    spark: SparkSession,
    lake: Lake,
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


def score_blocks(
    spark: SparkSession, blocks: DataFrame, detector: Detector, core_share_users: int = 2 * BLOCK_USERS
) -> DataFrame:
    """``BLOCK_SCORE_SCHEMA`` rows from every block, scored on the executors by a broadcast copy of ``detector``;
    evaders' core by as many tasks as it has shares of about ``core_share_users`` accounts, at most one per task
    slot (``evader_core_shares``)."""
    from argus.detectors.base import reasons_text
    from argus.jobs.feature_blocks import evader_core_shares, iterate_shares, whole_shares

    model = spark.sparkContext.broadcast(detector_artefact(detector))
    shared, pairs = whole_shares(blocks), None
    if detector.name == "evaders":
        slots = max(1, spark.sparkContext.defaultParallelism)
        shared, shares = evader_core_shares(blocks, core_share_users, slots)
        if shares > 1:
            pairs = spark.sparkContext.broadcast(core_pairs(shared, detector))

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        scorer = restore_detector(model.value)
        for number, features, share, users in iterate_shares(batches):
            if users is None or pairs is None:
                scored = scorer.score(features)
            else:  # a share of evaders' core
                scored = score_share(scorer, features, users, pairs.value, share)
            yield pd.DataFrame(
                {
                    "block": number,
                    "user_id": scored["user_id"].astype(str),
                    "score": scored["score"].astype(float),
                    "flagged": scored["flagged"].astype(bool),
                    "status": scored["status"].astype(str),
                    "reasons": scored["reasons"].map(reasons_text),
                    "reasons_data": scored["reasons"].map(lambda rs: json.dumps([r.to_dict() for r in rs])),
                }
            )

    return shared.mapInPandas(score, BLOCK_SCORE_SCHEMA)


# Evaders' core's candidate pairs, found a share at a time (``core_pairs``), as row positions in the core's
# features (int32, 8 bytes a pair): each share's (children, parents), and the accounts of every share's pairs.
# Plain values: the driver's module may be ``__main__``, which the executors cannot unpickle a class from.
CorePairs = tuple[dict[int, tuple[np.ndarray, np.ndarray]], np.ndarray]


def core_pairs(shared: DataFrame, detector: Detector) -> CorePairs:
    """The candidate pairs of evaders' core (none when the core is one share), found once, a share at a time on
    the executors (``EvaderDetector.share_pairs``): each share's scoring task takes its own as they are, and the
    words of every share's pairs are weighed over the accounts of all, as when the core is scored whole.
    Bounded by the core's new accounts' pairs."""
    from pyspark.sql import functions as F

    from argus.detectors.evaders import EvaderDetector
    from argus.jobs.feature_blocks import iterate_shares

    finder = EvaderDetector(**detector.params)

    def pairs_of(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for _, features, share, users in iterate_shares(batches):
            if users is not None:
                found = finder.share_pairs(features, users)
                ids = features.index.astype(str)
                children, parents = (ids.get_indexer(found[side]).astype(np.int32) for side in ("child", "parent"))
                yield pd.DataFrame({"share": [share], "children": [children.tobytes()], "parents": [parents.tobytes()]})

    schema = "share int, children binary, parents binary"
    rows = shared.where(F.col("shares") > 1).mapInPandas(pairs_of, schema).collect()
    shares = {
        int(row["share"]): (np.frombuffer(row["children"], np.int32), np.frombuffer(row["parents"], np.int32))
        for row in rows
    }
    accounts = np.unique(np.concatenate([np.empty(0, np.int32), *(p for pair in shares.values() for p in pair)]))
    return shares, accounts


def score_share(
    detector: Detector, features: pd.DataFrame, users: pd.Index, pairs: CorePairs, share: int
) -> pd.DataFrame:
    """Share ``share`` of evaders' core (``evader_core_shares``): ``users`` scored among all of ``features``
    with the share's pairs as ``core_pairs`` found them, words weighed over the accounts of all its pairs."""
    from argus.detectors.evaders import EvaderDetector

    assert isinstance(detector, EvaderDetector), "only evaders' core is scored a share at a time"
    ids = features.index.astype(str)
    by_share, accounts = pairs
    children, parents = by_share[share]
    found = pd.DataFrame({"child": ids[children], "parent": ids[parents]})
    text_accounts = pd.Index(sorted(ids[accounts]))
    return detector.score_accounts(features, users=users, text_accounts=text_accounts, children_pairs=found)


def detector_artefact(detector: Detector) -> bytes:
    """What a copy of ``detector`` needs (as ``Detector.save`` keeps it), pickled once for the broadcast."""
    return pickle.dumps(
        (detector.name, detector.params, detector.state, detector.metrics, detector.fitted_at), protocol=5
    )


def restore_detector(blob: bytes) -> Detector:
    """The detector ``detector_artefact`` pickled (on an executor, from its broadcast)."""
    from argus.detectors.registry import detector_class

    name, params, state, metrics, fitted_at = pickle.loads(blob)
    detector = detector_class(name)(**params)
    detector.state, detector.metrics, detector.fitted_at = state, metrics, fitted_at
    return detector


def _portable(detector: Detector) -> Detector:
    return restore_detector(detector_artefact(detector))


def _publish_scores(scores: DataFrame, lake: Lake, detector_name: str, day: date, publication: Publication) -> str:
    """Written by the executors as one Delta commit replacing the night (``argus.jobs.lake``); the table."""
    table = f"scores/detector={detector_name}"
    publication.write(scores.sparkSession, scores.drop("block", "reasons_data").orderBy("user_id"), table, day)
    return table


def main(argv: list[str]) -> int:
    """spark-submit entry point: score.py --lake DIR|URI --date D --detector NAME [--days N] [--model DIR|URI]
    [--bootstrap]."""
    parser = argparse.ArgumentParser(prog="score.py", description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True, type=job_uri_lake)
    parser.add_argument("--date", required=True, type=date.fromisoformat)
    parser.add_argument("--detector", required=True)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--model")  # a saved model's folder or URI (argus.detectors.store.load_model)
    parser.add_argument("--bootstrap")
    return run_job(
        parser,
        argv,
        lambda spark, a: (run_score(spark, a.lake, a.date, a.detector, a.days, a.model, a.bootstrap), 0),
        lease="argus batch score",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
