"""``argus eval fraud``: fraud-ring scores, risky clusters and their rules against the truth file.

The detector's kind is payments: a user is of the kind with at least one payment attempt sent or
one account sending it money (received transfers; money-mule accounts may only receive).
``scored_share`` is over those users, ``quality.all_of_kind`` counts the unscored among them as
score 0, and the top-level ``auc``/``pr_auc``/``precision``/``recall`` are over every user of the
world (ring members who never paid count as misses), as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from argus.evals.common import best_single_feature_auc, binary_metrics, coverage, eval_config, eval_world, quality
from detectors.fraud import FraudDetector
from detectors.fraud_features import OUTCOME_COLUMNS
from world.config import WorldConfig


def run(
    world: Path | None = None, config: WorldConfig | None = None, profile: str = "realistic", **params: Any
) -> dict[str, Any]:
    """Fit on every user of the evaluation world (outcomes come from its events only) and score them.

    Positives are the truth's fraud-ring members; users the detector cannot score count as score 0.
    A ring is *found* when most of its members sit in one risky cluster; ``patterns`` names, per
    injected pattern, that cluster and its rule. ``config`` overrides ``profile``.
    """
    config = config if config is not None else eval_config(profile)
    ew = eval_world(world, config)
    detector = FraudDetector(**params)
    features = detector.features(ew.events)
    frame = detector.fit(features).score(features)
    scores = frame.set_index("user_id")
    ring = ew.truth["fraud_ring"].reindex(scores.index)
    pattern = ew.truth["fraud_pattern"].reindex(scores.index)
    y = ring.notna().to_numpy()
    scored = scores["score"].notna().to_numpy()
    of_kind = (features["payments"].fillna(0) + features["fan_in"].fillna(0)).to_numpy() > 0
    result: dict[str, Any] = {
        "detector": "fraud",
        "profile": config.profile if world is None else None,
        "world_path": str(ew.path),
        "kind": "users with a payment attempt sent or an account sending them money",
    }
    result.update(binary_metrics(y, scores["score"].to_numpy(), scores["flagged"].to_numpy()))
    result["quality_over"] = "every user of the world (unscored: score 0)"
    result.update(coverage(frame, of_kind))
    result["quality"] = quality(y, frame, of_kind, features=features)
    result["ring_members_unscored"] = int((y & ~scored).sum())
    result["ring_members_without_payments"] = int((y & ~of_kind).sum())
    # The bar: any one column of the features frame (expert, embedding, outcomes, data quality).
    result.update(best_single_feature_auc(features, y))
    if result["best_single_feature"]:
        result["best_single_feature_pr_auc"] = _single_feature_pr_auc(features[result["best_single_feature"]], y)
    outcomes_only = best_single_feature_auc(features[list(OUTCOME_COLUMNS)], y)
    result["best_outcome_auc"] = outcomes_only["best_single_feature_auc"]

    assigned = detector.assign(features[scored])
    cluster = assigned["cluster"].reindex(scores.index).fillna(-1).astype(int)
    risky = set(detector.risky_clusters())
    patterns: dict[str, Any] = {}
    found = 0
    rings = sorted(ring.dropna().unique())
    for ring_id in rings:
        members = ring == ring_id
        counts = cluster[members & cluster.isin(risky)].value_counts()
        best = int(counts.index[0]) if len(counts) else None
        hit = best is not None and counts.iloc[0] > members.sum() / 2
        found += int(hit)
        info = detector.explain(best) if best is not None else None
        member_scores = scores.loc[members, "score"].fillna(0.0)
        patterns[str(pattern[members].iloc[0]) + ":" + str(ring_id)] = {
            "members": int(members.sum()),
            "found": bool(hit),
            "flagged": int(scores.loc[members, "flagged"].sum()),
            "pr_auc": _ring_pr_auc(members.to_numpy(), y, scores["score"].to_numpy()),
            "median_score": round(float(member_scores.median()), 4),
            "cluster": best,
            "cluster_size": info["size"] if info else None,
            "in_cluster": int(counts.iloc[0]) if len(counts) else 0,
            "rules": [r["text"] for r in info["rules"]] if info else [],
        }
    result.update(
        {
            "rings_total": len(rings),
            "rings_found": found,
            "rules": int(detector.metrics["rules"]),
            "risky_clusters": len(risky),
            "flagged": int(scores["flagged"].sum()),
            "patterns": patterns,
            "fit": detector.metrics,
            "model_version": detector.model_version,
            "world_config": config.to_json() if world is None else None,
        }
    )
    jsonable: dict[str, Any] = _jsonable(result)
    return jsonable


def _single_feature_pr_auc(values: pd.Series, truth: np.ndarray) -> float:
    """PR-AUC of one feature used as the score, in whichever direction ranks positives higher."""
    filled = values.fillna(values.median()).to_numpy(dtype=float)
    flags = np.zeros(len(filled), dtype=bool)
    both = [binary_metrics(truth, v, flags)["pr_auc"] for v in (filled, -filled)]
    return float(max((v for v in both if v is not None), default=0.0))


def _ring_pr_auc(members: np.ndarray, positives: np.ndarray, score: np.ndarray) -> float | None:
    """PR-AUC of one ring against the users outside every ring (other rings' members left out)."""
    keep = members | ~positives
    value = binary_metrics(members[keep], score[keep], np.zeros(int(keep.sum()), dtype=bool))["pr_auc"]
    return None if value is None else float(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
