"""Nightly scoring on the executors (feature blocks, broadcast model) gives the pandas path's scores."""

from __future__ import annotations

import pickle
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

from argus.detectors.alerts import alerts_from_scores
from argus.detectors.base import Detector, reasons_text
from argus.detectors.events import load_events
from argus.detectors.registry import detector_class
from argus.schemas.models import Alert
from argus.world.config import WorldConfig
from argus.world.simulate import World
from argus.world.sinks import write_world

if TYPE_CHECKING:
    from argus.jobs.publish import Publication

WORLD = WorldConfig(users=240, days=3, seed=11, events_per_user_day=20.0, troll_fraction=0.1, profile="dense")
BLOCK_USERS = 40  # several blocks per detector, so scoring really is split


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, spark: object) -> tuple[Path, date]:
    from argus.jobs.profiles import run_profile

    root = tmp_path_factory.mktemp("lake")
    write_world(World(WORLD), root)
    day = WORLD.start + timedelta(days=WORLD.days - 1)
    run_profile(spark, root, day, WORLD.days)  # type: ignore[arg-type]
    return root, day


def _score_night(
    spark: object, lake: tuple[Path, date], name: str, publication: Publication, **options: Any
) -> dict[str, Any]:
    """``score_night`` of the fixture's night over the whole world, in blocks of ``BLOCK_USERS``; ``options``
    are its other keywords (``window``, ``model``, ``fit_users``)."""
    from argus.jobs.score import score_night

    root, day = lake
    return score_night(
        spark,  # type: ignore[arg-type]
        root,
        day,
        name,
        WORLD.days,
        publication=publication,
        block_users=BLOCK_USERS,
        **options,
    )


def _published(lake: Path, table: str, day: date) -> pd.DataFrame:
    from argus.jobs.lake import read_pandas

    frame = read_pandas(lake, table, day)
    assert frame is not None, f"nothing published in {lake}/{table} for {day}"
    return frame


def _alerts(lake: Path, name: str, day: date) -> list[Alert]:
    """The night's alerts as the scoring job published them (and `argus alerts publish` reads them)."""
    from argus.jobs.alert_blocks import read_alerts

    alerts = list(read_alerts(lake, [(name, day)]))
    ids = [alert.alert_id for alert in alerts]
    assert ids == sorted(ids), "the file is sorted by alert id"
    return alerts


def _pandas_scores(name: str, lake: Path, day: date) -> tuple[pd.DataFrame, Detector]:
    """What `argus detect` computes: the detector's features, fit and score in one pandas process."""
    from argus.jobs.feature_blocks import profile_frame

    detector = detector_class(name)()
    if name == "trolls":
        features = profile_frame(_published(lake, "profiles", day))
    else:
        features = detector.features(load_events(lake))
    scores = detector.fit(features).score(features)
    if name == "trolls":  # as the nightly job does: the message part from the night's chat, whole channels
        chat = load_events(lake)["chat"]
        detector.fit_messages(chat[chat["ts"].dt.date == day])  # type: ignore[attr-defined]
    assert detector.state is not None
    return scores, detector


def _same(a: object, b: object) -> bool:
    """Equal by value, recursively (pickled bytes also depend on which equal objects are shared)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        x, y = np.asarray(a), np.asarray(b)
        if x.dtype.kind in "fc" and y.dtype.kind in "fc":
            return x.shape == y.shape and bool(np.array_equal(x, y, equal_nan=True))
        return x.shape == y.shape and bool((x == y).all())
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if hasattr(a, "__dict__") and not isinstance(a, type):  # fitted estimators and model dataclasses
        return _same(vars(a), vars(b))
    if a == b:
        return True
    return pickle.dumps(a) == pickle.dumps(b)  # objects without equality, such as a numpy Generator


@pytest.mark.parametrize("name", ["trolls", "evaders", "fraud", "churn"])
def test_batch_scores_equal_the_pandas_path(name: str, spark: object, lake: tuple[Path, date]) -> None:
    from argus.jobs.publish import Publication
    from argus.jobs.score import night_window

    root, day = lake
    days = WORLD.days  # the whole world: the pandas path reads every event too
    publication = Publication(root, f"parity-{name}")
    window = night_window(spark, root, day, days)  # type: ignore[arg-type]
    result = _score_night(spark, lake, name, publication, window=window)
    alerts = sorted(_alerts(root, name, day), key=lambda a: a.user_id)
    batch = _published(root, f"scores/detector={name}", day).set_index("user_id")
    expected, fitted = _pandas_scores(name, root, day)
    expected = expected.set_index("user_id")
    assert result["users"] == len(batch) == len(expected) > 2 * BLOCK_USERS
    assert batch.index.is_monotonic_increasing
    batch = batch.loc[expected.index]
    assert np.allclose(batch["score"], expected["score"].astype(float), equal_nan=True, atol=1e-9)
    assert (batch["flagged"] == expected["flagged"]).all()
    assert (batch["status"] == expected["status"]).all()
    assert (batch["reasons"] == expected["reasons"].map(reasons_text)).all()
    assert expected["score"].notna().sum() >= 5
    # The same model: fitted on the same features, so the same version too.
    assert _same(detector_class(name).load(Path(result["model"])).state, fitted.state)
    assert result["model_version"] == fitted.model_version
    events = load_events(root)
    features = None if name == "trolls" else fitted.features(events)
    start = pd.Timestamp(day - timedelta(days=days - 1), tz="UTC")
    pandas_alerts = alerts_from_scores(
        expected.reset_index(), fitted, start, start + pd.Timedelta(days=days), events=events, features=features
    )
    expected_alerts = sorted(pandas_alerts, key=lambda a: a.user_id)
    assert [(a.alert_id, a.score, a.severity, a.model_version) for a in alerts] == [
        (a.alert_id, a.score, a.severity, a.model_version) for a in expected_alerts
    ]
    if name != "fraud":  # fraud ranks a user's payments against everyone's: its evidence may order differently
        assert [a.evidence_event_ids for a in alerts] == [a.evidence_event_ids for a in expected_alerts]
    assert len(alerts) == result["flagged"] == int(expected["flagged"].sum())


@pytest.mark.parametrize(
    ("name", "params"), [("evaders", {}), ("churn", {}), ("churn", {"mode": "purchase"}), ("fraud", {})]
)
def test_event_features_are_built_in_blocks_equal_to_the_pandas_features(
    name: str, params: dict[str, str], spark: object, lake: tuple[Path, date]
) -> None:
    from argus.jobs.feature_blocks import concat_blocks, event_blocks, type_columns, unpack
    from argus.jobs.score import night_window

    root, day = lake
    window = night_window(spark, root, day, WORLD.days)  # type: ignore[arg-type]
    columns = type_columns(spark, root, day)  # type: ignore[arg-type]
    blocks = event_blocks(spark, window, columns, detector_class(name)(**params), BLOCK_USERS)  # type: ignore[arg-type]
    rows = blocks.orderBy("block").collect()
    expected = detector_class(name)(**params).features(load_events(root))
    assert sum(r["users"] for r in rows) == len(expected) > 4 * BLOCK_USERS
    # Every block but evaders' core (block 0: new and banned accounts and their households) is a
    # hash share of the users, built by its own task from its users' events.
    assert len(rows) >= 4 and max(r["users"] for r in rows if r["block"] > 0) < 2 * BLOCK_USERS
    assert (rows[0]["block"] == 0) == (name == "evaders")
    built = concat_blocks([unpack(r["frame"]) for r in rows])
    assert built.attrs == expected.attrs
    assert list(built.columns) == list(expected.columns) and list(built.index) == list(expected.index)
    for column in expected.columns:
        if expected[column].dtype == object:
            assert all(_same(a, b) for a, b in zip(built[column], expected[column], strict=True)), column
        elif isinstance(expected[column].dtype, pd.DatetimeTZDtype):  # ms from pyarrow, ns through Spark
            assert built[column].dt.as_unit("ns").equals(expected[column].dt.as_unit("ns")), column
        else:
            pd.testing.assert_series_equal(built[column], expected[column], check_exact=True)
    if params.get("mode") == "purchase":  # BG/NBD fitted on everyone, from counts pooled over the blocks
        assert expected["bgnbd_p_churn"].notna().sum() > len(expected) / 2


def test_evaders_core_is_scored_by_several_tasks_as_one_task_scores_it(spark: object, lake: tuple[Path, date]) -> None:
    """The core (block 0: every new and banned account and their households) is scored a share at a time,
    each share in a partition of its own (a task each), and the scores are those of the core scored whole."""
    from pyspark.sql import functions as F

    from argus.jobs.feature_blocks import concat_blocks, evader_core_shares, event_blocks, type_columns, unpack
    from argus.jobs.score import night_window, score_blocks

    root, day = lake
    window = night_window(spark, root, day, WORLD.days)  # type: ignore[arg-type]
    columns = type_columns(spark, root, day)  # type: ignore[arg-type]
    detector = detector_class("evaders")()
    blocks = event_blocks(spark, window, columns, detector, BLOCK_USERS).persist()  # type: ignore[arg-type]
    try:
        detector.fit(concat_blocks([unpack(r["frame"]) for r in blocks.collect()]))
        core_users = blocks.where("block = 0").first()["users"]
        share_users = core_users // 4  # this small world's core is a block; a share is a quarter of it
        shared, shares = evader_core_shares(blocks, share_users)
        core = shared.where("block = 0").select(F.spark_partition_id().alias("partition"), "share", "shares").collect()
        assert shares == -(-core_users // share_users) >= 4
        assert sorted(r["share"] for r in core) == list(range(shares))
        assert len({r["partition"] for r in core}) == shares  # one task per share
        assert evader_core_shares(blocks, share_users, max_shares=2)[1] == 2  # no more shares than task slots
        assert evader_core_shares(blocks, share_users, max_shares=1)[1] == 1
        by_share = score_blocks(spark, blocks, detector, share_users).toPandas()  # type: ignore[arg-type]
        whole = score_blocks(spark, blocks, detector, core_users).toPandas()  # type: ignore[arg-type]
    finally:
        blocks.unpersist()
    assert len(by_share) == len(whole) == by_share["user_id"].nunique()
    by_share, whole = (f.sort_values("user_id", ignore_index=True) for f in (by_share, whole))
    pd.testing.assert_frame_equal(by_share, whole)
    assert (whole["status"] == "scored").sum() >= 5


def test_the_fit_sample_is_bounded(spark: object, lake: tuple[Path, date]) -> None:
    from argus.detectors.trolls import TrollDetector
    from argus.jobs.publish import Publication

    root, _ = lake
    publication = Publication(root, "parity-sample")
    full = _score_night(spark, lake, "trolls", publication)
    sampled = _score_night(spark, lake, "trolls", publication, fit_users=60)
    fitted = TrollDetector.load(Path(sampled["model"])).metrics["users_fitted"]
    assert 0 < fitted < full["users"] / 2  # two or so blocks of the six
    assert sampled["model_version"] != full["model_version"]
    assert sampled["users"] == full["users"]  # every user is still scored


def test_fraud_scoring_brings_only_aggregates_to_the_driver(
    spark: object, lake: tuple[Path, date], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fraud features and scores are built and written by the executors: what the driver collects
    meanwhile is a few aggregate rows (currencies, hours, maxima), never a row per payment or user."""
    from argus.detectors.fraud import FraudDetector
    from argus.detectors.fraud_features import FX_PER_USD
    from argus.jobs.feature_blocks import event_blocks, type_columns
    from argus.jobs.score import night_window, score_blocks

    root, day = lake
    events = load_events(root)
    detector = FraudDetector()
    features = detector.features(events)
    detector.fit(features)
    window = night_window(spark, root, day, WORLD.days)  # type: ignore[arg-type]
    columns = type_columns(spark, root, day)  # type: ignore[arg-type]
    frame_class = type(window)  # the concrete DataFrame class (classic or connect)
    collected: list[tuple[str, list[str], int]] = []
    original_collect, original_to_pandas = frame_class.collect, frame_class.toPandas

    def collect(self: Any) -> Any:
        rows = original_collect(self)
        collected.append(("collect", list(self.columns), len(rows)))
        return rows

    def to_pandas(self: Any) -> Any:
        frame = original_to_pandas(self)
        collected.append(("toPandas", list(frame.columns), len(frame)))
        return frame

    monkeypatch.setattr(frame_class, "collect", collect)
    monkeypatch.setattr(frame_class, "toPandas", to_pandas)
    blocks = event_blocks(spark, window, columns, detector, BLOCK_USERS)  # type: ignore[arg-type]
    try:
        scores = score_blocks(spark, blocks, detector)  # type: ignore[arg-type]
        scores.write.mode("overwrite").parquet(str(tmp_path / "scores"))
    finally:
        blocks.unpersist()
    monkeypatch.undo()
    written = spark.read.parquet(str(tmp_path / "scores")).count()  # type: ignore[attr-defined]
    assert written == len(features)
    assert collected, "the feature build reads its population figures back"
    payments = len(events["payment"])
    bound = max(24, len(FX_PER_USD))  # hours of the day, currencies
    for how, names, size in collected:
        assert size <= bound < payments, (how, names, size)
        assert not {"user_id", "event_id", "frame"} & set(names), (how, names, size)


@pytest.mark.parametrize("name", ["trolls", "evaders", "fraud", "churn"])
def test_scoring_and_alerts_bring_only_counts_to_the_driver(
    name: str, spark: object, lake: tuple[Path, date], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring a night with a saved model: features, scores and alerts are built and written by the
    executors, and what the driver collects meanwhile is counts and aggregates (a few rows: days,
    hours, currencies), never a row per user, event or block; the alerts are the ones fitting gave."""
    from argus.detectors.fraud_features import FX_PER_USD
    from argus.jobs.publish import Publication
    from argus.jobs.score import night_window

    root, day = lake
    publication = Publication(root, f"driver-{name}")
    window = night_window(spark, root, day, WORLD.days)  # type: ignore[arg-type]
    fitted = _score_night(spark, lake, name, publication, window=window)
    fitted_alerts = _alerts(root, name, day)
    frame_class = type(window)  # the concrete DataFrame class (classic or connect)
    collected: list[tuple[str, list[str], int]] = []

    def spy(how: str) -> Any:
        original = getattr(frame_class, how)

        def collect(self: Any, *args: Any, **kwargs: Any) -> Any:
            got = original(self, *args, **kwargs)
            rows = got if how != "toLocalIterator" else list(got)
            collected.append((how, list(self.columns), len(rows)))
            return rows if how != "toLocalIterator" else iter(rows)

        return collect

    for how in ("collect", "toPandas", "toArrow", "toLocalIterator"):
        monkeypatch.setattr(frame_class, how, spy(how))
    scored = _score_night(spark, lake, name, publication, window=window, model=Path(fitted["model"]))
    monkeypatch.undo()
    assert scored["users"] == fitted["users"] and scored["alerts"] == scored["flagged"] == len(fitted_alerts)
    # This small world's three days hold no ban evasion and no churn: their alert paths are empty here.
    assert len(fitted_alerts) > 0 or name in ("evaders", "churn")
    bound = max(24, len(FX_PER_USD))  # hours of the day, currencies
    assert scored["users"] > 4 * bound
    for how, names, size in collected:
        assert size <= bound, (how, names, size)
        assert not {"user_id", "event_id", "frame", "flagged_rows", "alert"} & set(names), (how, names, size)
    alerts = _alerts(root, name, day)
    key = [(a.alert_id, a.user_id, a.score, a.severity, a.evidence_event_ids) for a in fitted_alerts]
    assert [(a.alert_id, a.user_id, a.score, a.severity, a.evidence_event_ids) for a in alerts] == key
    assert all(a.evidence_event_ids for a in alerts), "every alert cites events"
