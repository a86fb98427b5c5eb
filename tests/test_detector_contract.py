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


def test_live_model_hashes_each_loaded_model_once(
    small_world_events: Events, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from argus.detectors.store import LiveModel, ModelStore
    from argus.detectors.trolls import TrollDetector

    store = ModelStore(tmp_path / "models")
    features = TrollDetector().features(small_world_events)
    first, second = TrollDetector().fit(features), TrollDetector(cap=3.0).fit(features)
    first_version, second_version = first.model_version, second.model_version
    store.publish(first)
    store.save(second)  # hashes it: before counting
    hashed: list[str] = []
    model_version = TrollDetector.model_version
    monkeypatch.setattr(
        TrollDetector, "model_version", property(lambda self: hashed.append(self.name) or model_version.fget(self))
    )
    live = LiveModel(store, "trolls")
    assert live.model_version() == live.model_version() == first_version
    live.get()  # the same model: its hash is kept
    assert live.model_version() == first_version and len(hashed) == 1
    store.make_current("trolls", second_version)
    live.get()  # a new model: hashed again, once
    assert live.model_version() == live.model_version() == second_version and len(hashed) == 2


def test_a_uri_model_store_publishes_loads_and_live_models_reload(small_world_events: Events, tmp_path: Path) -> None:
    from argus.detectors.store import LiveModel, ModelStore
    from argus.detectors.trolls import TrollDetector

    store = ModelStore(f"file://{tmp_path}/models")  # a URI: the object-store code paths (pyarrow's file systems)
    assert store.root == f"file://{tmp_path}/models" and store.versions("trolls") == []
    with pytest.raises(ModelError, match="no trolls model published"):
        store.load("trolls")
    features = TrollDetector().features(small_world_events)
    first, second = TrollDetector().fit(features), TrollDetector(cap=3.0).fit(features)
    assert store.publish(first) == f"file://{tmp_path}/models/trolls/{first.model_version}"
    live = LiveModel(store, "trolls")
    assert live.get().model_version == first.model_version
    assert live.get() is live.get()  # no reload while CURRENT is unchanged
    pd.testing.assert_frame_equal(live.get().score(features), first.score(features))
    store.publish(second)
    assert live.get().model_version == second.model_version != first.model_version
    assert store.versions("trolls") == sorted([first.model_version, second.model_version])
    # The same layout as a local store: a folder and its file:// URI are one store.
    local = ModelStore(tmp_path / "models")
    assert local.current_version("trolls") == second.model_version
    assert local.versions("trolls") == store.versions("trolls")
    assert (tmp_path / "models" / "trolls" / "CURRENT").read_text() == second.model_version + "\n"
    local.publish(first)  # rolled back through the folder, seen through the URI
    assert live.get().model_version == first.model_version
    with pytest.raises(ModelError, match="no trolls model trolls-missing in file://"):
        store.make_current("trolls", "trolls-missing")


def test_a_failed_publication_on_a_uri_store_leaves_the_current_model(
    small_world_events: Events, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from argus.detectors.store import ARTEFACT_MARKER, LiveModel, ModelStore
    from argus.detectors.trolls import TrollDetector

    store = ModelStore(f"file://{tmp_path}/models")
    features = TrollDetector().features(small_world_events)
    first, second = TrollDetector().fit(features), TrollDetector(cap=3.0).fit(features)
    store.publish(first)
    live = LiveModel(store, "trolls")
    assert live.get().model_version == first.model_version
    written: list[str] = []
    put = store._put

    def crash_at_the_marker(relative: str, data: bytes) -> None:
        written.append(relative)
        if relative.endswith(ARTEFACT_MARKER):
            raise OSError("connection reset")  # the process dies with the state written, the marker not
        put(relative, data)

    monkeypatch.setattr(store, "_put", crash_at_the_marker)
    with pytest.raises(OSError, match="connection reset"):
        store.publish(second)
    assert written == [f"trolls/{second.model_version}/state.pkl", f"trolls/{second.model_version}/{ARTEFACT_MARKER}"]
    assert store.current_version("trolls") == first.model_version
    assert store.versions("trolls") == [first.model_version]  # the half-written version is no version
    assert live.get().model_version == first.model_version
    with pytest.raises(ModelError, match="save it before making it current"):
        store.make_current("trolls", second.model_version)
    monkeypatch.undo()
    store.publish(second)  # the retry writes the artefact whole
    assert live.get().model_version == second.model_version


def test_a_reader_of_a_uri_store_never_sees_a_partial_model(small_world_events: Events, tmp_path: Path) -> None:
    import threading

    from argus.detectors.store import LiveModel, ModelStore
    from argus.detectors.trolls import TrollDetector

    root = f"file://{tmp_path}/models"
    features = TrollDetector().features(small_world_events)
    models = [TrollDetector(cap=2.0 + n / 4).fit(features) for n in range(8)]
    versions = [m.model_version for m in models]
    assert len(set(versions)) == len(models)
    ModelStore(root).publish(models[0])
    done = threading.Event()
    seen: list[str] = []
    failures: list[BaseException] = []

    def read() -> None:
        live = LiveModel(ModelStore(root), "trolls")
        while True:
            finished = done.is_set()  # one more read after the last publication
            try:
                detector = live.get()
                assert detector.model_version == live.version  # the whole artefact named by CURRENT
                seen.append(live.version)
            except BaseException as exc:  # kept for the test to report, not lost with the thread
                failures.append(exc)
                return
            if finished:
                return

    reader = threading.Thread(target=read)
    reader.start()
    publisher = ModelStore(root)
    for model in models[1:] * 3:  # new versions, then republishing old ones (a rollback writes no artefact)
        publisher.publish(model)
    done.set()
    reader.join(timeout=300)
    assert not reader.is_alive() and not failures, failures
    assert set(seen) <= set(versions) and seen[-1] == versions[-1]


def test_a_model_store_with_an_unknown_scheme_names_the_option(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from argus.cli import app
    from argus.detectors.store import ModelStore, store_location

    with pytest.raises(ModelError, match=r"--model-store ftp://host/models: unknown scheme ftp://"):
        ModelStore("ftp://host/models")
    with pytest.raises(ModelError, match="name a bucket or host and a folder"):
        store_location("s3a://")
    assert store_location("s3a://bucket/models/") == "s3a://bucket/models"
    assert store_location(str(tmp_path / "models")) == tmp_path / "models"
    result = CliRunner().invoke(app, ["stream", "run", "--bounded", "--model-store", "ftp://host/models"])
    said = " ".join(result.output.replace("│", " ").split())  # the error panel wraps its line
    assert result.exit_code == 2 and "Invalid value for '--model-store'" in said
    assert "unknown scheme ftp://; use a folder or one of file://" in said


def test_bench_detect_reports_each_stage() -> None:
    from argus.bench import bench_detect

    result = bench_detect(users=120, days=1, detectors=["trolls", "fraud"])
    assert result["users"] == 120 and result["events"] > 1000
    for name in ("trolls", "fraud"):
        assert set(result[name]) == {"features_s", "fit_s", "score_s", "scored_users"}
        assert result[name]["scored_users"] > 0
    assert "evaders" not in result and result["peak_rss_mb"] > 0
