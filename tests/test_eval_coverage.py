"""The coverage and quality figures every evaluation prints, by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from argus.detectors.base import status_counts
from argus.evals.common import best_single_feature_auc, coverage, eval_config, quality


def _scores() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "d", "e"],
            "score": [0.9, 0.2, 0.6, np.nan, np.nan],
            "flagged": [True, False, True, False, False],
            "status": [
                "scored",
                "low evidence: 1 chat message (norms are fit on users with ≥ 20)",
                "low evidence: 3 chat messages (norms are fit on users with ≥ 20)",
                "missing features: chat_burstiness",
                "no chat messages",
            ],
        }
    )


def test_status_counts_group_by_the_text_before_the_colon() -> None:
    assert status_counts(_scores()["status"]) == {
        "low evidence": 2,
        "missing features": 1,
        "no chat messages": 1,
        "scored": 1,
    }


def test_coverage_counts_only_users_of_the_kind() -> None:
    of_kind = np.array([True, True, True, True, False])
    assert coverage(_scores(), of_kind) == {
        "users_of_kind": 4,
        "users_not_of_kind": 1,
        "scored_users": 3,
        "scored_share": 0.75,
        "status_counts": {"low evidence": 2, "missing features": 1, "scored": 1},
    }


def test_quality_over_all_of_the_kind_counts_the_unscored_as_zero() -> None:
    truth = np.array([True, False, False, True, False])
    of_kind = np.array([True, True, True, True, False])
    blocks = quality(truth, _scores(), of_kind)
    # all of the kind: a (0.9, +), b (0.2), c (0.6), d (unscored: 0, +). Pairs (+, -): a beats both,
    # d beats neither: AUC 2 / 4. Flagged a and c: precision 1/2, recall 1/2.
    assert blocks["all_of_kind"] == {
        "auc": 0.5,
        "pr_auc": 0.75,  # average precision: a at rank 1 (precision 1), d at rank 4 (2/4)
        "precision": 0.5,
        "recall": 0.5,
        "users": 4,
        "positives": 2,
    }
    assert blocks["scored"]["users"] == 3 and blocks["scored"]["auc"] == 1.0 and blocks["scored"]["recall"] == 1.0
    # One user with status "scored", one class: no AUC, not a crash.
    assert blocks["evidenced"]["users"] == 1 and blocks["evidenced"]["auc"] is None


def test_best_single_feature_skips_constant_and_empty_columns() -> None:
    features = pd.DataFrame({"flat": [1.0, 1.0, 1.0, 1.0], "empty": [np.nan] * 4, "good": [0.0, 1.0, 2.0, 3.0]})
    assert best_single_feature_auc(features, np.array([False, False, True, True]))["best_single_feature"] == "good"
    assert best_single_feature_auc(features, np.array([True] * 4))["best_single_feature_auc"] is None
    assert best_single_feature_auc(features.iloc[:0], np.zeros(0, dtype=bool))["best_single_feature"] == ""


def test_eval_config_picks_the_profile() -> None:
    assert eval_config("dense").profile == "dense" and eval_config().profile == "realistic"
    with pytest.raises(ValueError, match="--profile must be realistic or dense"):
        eval_config("sparse")
