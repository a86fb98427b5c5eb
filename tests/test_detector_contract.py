"""Contract tests: every registered detector honours the Detector interface the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from argus.detectors.base import SCORE_COLUMNS, Detector, ModelError
from argus.detectors.events import Events
from argus.detectors.registry import DETECTORS, detector_class


@pytest.fixture(scope="module", params=sorted(DETECTORS))
def fitted(request: pytest.FixtureRequest, small_world_events: Events) -> tuple[Detector, pd.DataFrame]:
    detector = detector_class(request.param)()
    features = detector.features(small_world_events)
    return detector.fit(features), features


def _check_frame(scores: pd.DataFrame, users: pd.Index) -> None:
    assert list(scores.columns) == SCORE_COLUMNS
    assert list(scores["user_id"]) == [str(u) for u in users]
    finite = scores["score"].dropna()
    assert ((finite >= 0) & (finite <= 1)).all()
    assert not scores.loc[scores["score"].isna(), "flagged"].any()
    assert scores["status"].map(lambda s: isinstance(s, str) and s != "").all()


def test_features_are_per_user_and_sorted(fitted: tuple[Detector, pd.DataFrame]) -> None:
    _, features = fitted
    assert features.index.name == "user_id"
    assert features.index.is_unique and features.index.is_monotonic_increasing
    assert len(features) > 50


def test_scores_every_user_and_some_users_are_scored(fitted: tuple[Detector, pd.DataFrame]) -> None:
    detector, features = fitted
    scores = detector.score(features)
    _check_frame(scores, features.index)
    assert scores["score"].notna().sum() >= 10


def test_fit_and_score_are_deterministic(fitted: tuple[Detector, pd.DataFrame]) -> None:
    detector, features = fitted
    again = type(detector)(**detector.params).fit(features.copy())
    assert again.model_version == detector.model_version
    pd.testing.assert_frame_equal(again.score(features), detector.score(features))


def test_save_load_round_trip(fitted: tuple[Detector, pd.DataFrame], tmp_path: Path) -> None:
    detector, features = fitted
    loaded = type(detector).load(detector.save(tmp_path / "model"))
    assert loaded.model_version == detector.model_version
    assert loaded.params == detector.params
    pd.testing.assert_frame_equal(loaded.score(features), detector.score(features))


def test_load_refuses_another_detectors_model(fitted: tuple[Detector, pd.DataFrame], tmp_path: Path) -> None:
    detector, _ = fitted
    path = detector.save(tmp_path / "model")
    other = next(name for name in DETECTORS if name != detector.name)
    with pytest.raises(ModelError, match=f"holds a '{detector.name}' model"):
        detector_class(other).load(path)
    with pytest.raises(ModelError, match="no model at"):
        type(detector).load(tmp_path / "nowhere")


def test_empty_input(fitted: tuple[Detector, pd.DataFrame]) -> None:
    detector, _ = fitted
    empty = detector.features(Events())
    assert len(empty) == 0
    _check_frame(detector.score(empty), empty.index)


def test_single_user(fitted: tuple[Detector, pd.DataFrame]) -> None:
    detector, features = fitted
    one = features.iloc[[len(features) // 2]]
    _check_frame(detector.score(one), one.index)


def test_nan_features_give_no_score_or_a_finite_one(fitted: tuple[Detector, pd.DataFrame]) -> None:
    detector, features = fitted
    broken = features.copy()
    numeric = broken.select_dtypes(include=[np.number]).columns
    broken.loc[broken.index[:3], numeric] = np.nan
    scores = detector.score(broken)
    _check_frame(scores, broken.index)
    head = scores.iloc[:3]
    assert (head["score"].isna() | np.isfinite(head["score"])).all()
    assert (head.loc[head["score"].isna(), "status"] != "scored").all()


def test_score_before_fit_is_a_clear_error(fitted: tuple[Detector, pd.DataFrame]) -> None:
    detector, features = fitted
    with pytest.raises(ModelError, match="not fitted"):
        type(detector)(**detector.params).score(features)


def test_model_store_publishes_and_live_models_reload(small_world_events: Events, tmp_path: Path) -> None:
    from argus.detectors.store import LiveModel, ModelStore
    from argus.detectors.trolls import TrollDetector

    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelError, match="no trolls model published"):
        store.load("trolls")
    features = TrollDetector().features(small_world_events)
    first = TrollDetector().fit(features)
    store.publish(first)
    live = LiveModel(store, "trolls")
    assert live.get().model_version == first.model_version
    assert live.get() is live.get()  # no reload while CURRENT is unchanged
    second = TrollDetector(cap=3.0).fit(features)
    store.publish(second)
    assert live.get().model_version == second.model_version != first.model_version
    assert store.versions("trolls") == sorted([first.model_version, second.model_version])
    store.publish(first)  # rolling back is publishing the old version again
    assert live.get().model_version == first.model_version


def test_live_model_loads_once_a_model_saved_under_an_older_version_name(
    small_world_events: Events, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from argus.detectors.store import LiveModel, ModelStore
    from argus.detectors.trolls import TrollDetector

    store = ModelStore(tmp_path / "models")
    model = TrollDetector().fit(TrollDetector().features(small_world_events))
    folder = store.publish(model)
    older_name = "older-hash-scheme"  # the name a model kept from before a change to the version hash
    folder.rename(folder.with_name(older_name))
    store.make_current("trolls", older_name)
    loads = []
    original_load = store.load
    monkeypatch.setattr(store, "load", lambda *args: loads.append(args) or original_load(*args))
    live = LiveModel(store, "trolls")
    assert live.get() is live.get()
    assert len(loads) == 1 and live.version == older_name


def test_bench_detect_reports_each_stage() -> None:
    from argus.bench import bench_detect

    result = bench_detect(users=120, days=1, detectors=["trolls", "fraud"])
    assert result["users"] == 120 and result["events"] > 1000
    for name in ("trolls", "fraud"):
        assert set(result[name]) == {"features_s", "fit_s", "score_s", "scored_users"}
        assert result[name]["scored_users"] > 0
    assert "evaders" not in result and result["peak_rss_mb"] > 0
