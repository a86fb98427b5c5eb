"""Nightly scoring on the executors (feature blocks, broadcast model) gives the pandas path's scores."""

from __future__ import annotations

import pickle
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from argus.detectors.alerts import alerts_from_scores
from argus.detectors.base import Detector, reasons_text
from argus.detectors.events import load_events
from argus.detectors.registry import detector_class
from argus.world.config import WorldConfig
from argus.world.simulate import World
from argus.world.sinks import write_world

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


def _pandas_scores(name: str, lake: Path, day: date) -> tuple[pd.DataFrame, Detector]:
    """What `argus detect` computes: the detector's features, fit and score in one pandas process."""
    from argus.jobs.feature_blocks import profile_frame

    detector = detector_class(name)()
    if name == "trolls":
        features = profile_frame(pd.read_parquet(lake / "profiles" / f"date={day}"))
    else:
        features = detector.features(load_events(lake))
    scores = detector.fit(features).score(features)
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
    from argus.jobs.score import night_window, score_night

    root, day = lake
    days = WORLD.days  # the whole world: the pandas path reads every event too
    publication = Publication(root, f"parity-{name}")
    window = night_window(spark, root, day, days)  # type: ignore[arg-type]
    result, alerts = score_night(
        spark,  # type: ignore[arg-type]
        root,
        day,
        name,
        days,
        publication=publication,
        window=window,
        block_users=BLOCK_USERS,
    )
    batch = pd.read_parquet(root / "scores" / f"detector={name}" / f"date={day}").set_index("user_id")
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
    # The same model: fitted on the same features.
    assert _same(detector_class(name).load(Path(result["model"])).state, fitted.state)
    if name != "fraud":  # fraud ranks a user's payments against everyone's: its evidence may order differently
        events = load_events(root)
        features = None if name == "trolls" else fitted.features(events)
        start = pd.Timestamp(day - timedelta(days=days - 1), tz="UTC")
        pandas_alerts = alerts_from_scores(
            expected.reset_index(), fitted, start, start + pd.Timedelta(days=days), events=events, features=features
        )
        assert [(a.alert_id, a.score, a.evidence_event_ids) for a in alerts] == [
            (a.alert_id, a.score, a.evidence_event_ids) for a in sorted(pandas_alerts, key=lambda a: a.user_id)
        ]
    assert len(alerts) == result["flagged"] == int(expected["flagged"].sum())


def test_the_fit_sample_is_bounded(spark: object, lake: tuple[Path, date]) -> None:
    from argus.detectors.trolls import TrollDetector
    from argus.jobs.publish import Publication
    from argus.jobs.score import score_night

    root, day = lake
    publication = Publication(root, "parity-sample")
    full, _ = score_night(spark, root, day, "trolls", WORLD.days, publication=publication, block_users=BLOCK_USERS)  # type: ignore[arg-type]
    sampled, _ = score_night(
        spark,  # type: ignore[arg-type]
        root,
        day,
        "trolls",
        WORLD.days,
        publication=publication,
        fit_users=60,
        block_users=BLOCK_USERS,
    )
    fitted = TrollDetector.load(Path(sampled["model"])).metrics["users_fitted"]
    assert 0 < fitted < full["users"] / 2  # two or so blocks of the six
    assert sampled["model_version"] != full["model_version"]
    assert sampled["users"] == full["users"]  # every user is still scored
