"""The nightly scoring job: the same detectors over a lake, published whole, reruns identical."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from argus.world.config import WorldConfig
from argus.world.simulate import World
from argus.world.sinks import write_world
from tests.spark_partitions import each_shuffle_partitioning

DAY = date(2026, 10, 3)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lake")
    write_world(
        World(WorldConfig(users=300, days=3, seed=13, events_per_user_day=25.0, troll_fraction=0.15, profile="dense")),
        root,
    )
    return root


def _published_scores(lake: Path) -> pd.DataFrame:
    from argus.jobs.lake import read_pandas

    scores = read_pandas(lake, "scores/detector=evaders", DAY)
    assert scores is not None
    return scores.sort_values("user_id", ignore_index=True)


def test_scores_from_events_and_reruns_are_identical(spark: object, lake: Path) -> None:
    from argus.jobs.alert_blocks import read_alerts
    from argus.jobs.score import run_score

    first = run_score(spark, lake, DAY, "evaders", days=3)  # type: ignore[arg-type]
    published = _published_scores(lake)
    assert len(published) == first["users"] > 250
    assert published["status"].str.len().gt(0).all()
    assert (Path(first["model"]) / "model.json").is_file()
    # The night's alerts, as `argus alerts publish` reads them: one line per flagged user.
    alerts = list(read_alerts(lake, [("evaders", DAY)]))
    assert len(alerts) == first["flagged"]
    again = run_score(spark, lake, DAY, "evaders", days=3)  # type: ignore[arg-type]
    assert again["model_version"] == first["model_version"]
    pd.testing.assert_frame_equal(_published_scores(lake), published)
    # A saved model scores without refitting.
    loaded = run_score(spark, lake, DAY, "evaders", days=3, model=Path(first["model"]))  # type: ignore[arg-type]
    assert loaded["model_version"] == first["model_version"]


def test_user_mistakes_are_value_errors(spark: object, lake: Path) -> None:
    from argus.jobs.score import run_score

    with pytest.raises(ValueError, match="unknown detector"):
        run_score(spark, lake, DAY, "gremlins")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="run `argus batch profile"):
        run_score(spark, lake, DAY, "trolls")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no model at"):
        run_score(spark, lake, DAY, "fraud", model=lake / "nowhere")  # type: ignore[arg-type]


def test_evaders_fit_sample_thins_new_accounts_on_the_executors(spark: object, lake: Path) -> None:
    from argus.detectors.evaders import EvaderDetector, sample_new_accounts
    from argus.jobs.feature_blocks import fit_sample, type_columns
    from argus.jobs.publish import Publication
    from argus.jobs.score import evader_fit_sample, feature_blocks, night_window

    window = night_window(spark, lake, DAY, 3)  # type: ignore[arg-type]
    columns = type_columns(spark, lake, DAY)  # type: ignore[arg-type]
    publication = Publication(lake, "fit-sample-test")
    blocks = feature_blocks(spark, lake, DAY, EvaderDetector(), publication, window, columns, 100)  # type: ignore[arg-type]
    whole = fit_sample(blocks, 10_000, whole_core=True)
    new = whole["created_ts"].notna() & whole["banned_ts"].isna()
    assert new.sum() >= 10
    pd.testing.assert_frame_equal(evader_fit_sample(blocks, 10_000), whole)  # within the bound: everyone
    sample = evader_fit_sample(blocks, 10_000, new_accounts=4)
    still_new = sample["created_ts"].notna() & sample["banned_ts"].isna()
    assert 0 < still_new.sum() < new.sum()
    pd.testing.assert_frame_equal(sample, sample_new_accounts(whole, 4))  # the executors' sample is the same


def test_the_troll_model_is_the_same_whatever_the_partitioning(spark: object, tmp_path: Path) -> None:
    """One night, profiled and fitted with its shuffles in 1 or in 7 partitions (as the cores of the master
    decide them), publishes one troll model: no float sum in its features depends on the partitioning."""
    from argus.jobs.profiles import run_profile
    from argus.jobs.score import score_night

    write_world(
        World(WorldConfig(users=300, days=3, seed=13, events_per_user_day=25.0, troll_fraction=0.15, profile="dense")),
        tmp_path,
    )
    versions = []
    for _ in each_shuffle_partitioning(spark):
        run_profile(spark, tmp_path, DAY, 3)  # type: ignore[arg-type]
        versions.append(score_night(spark, tmp_path, DAY, "trolls", days=3)["model_version"])  # type: ignore[arg-type]
    assert versions[0] == versions[1]
