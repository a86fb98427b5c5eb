"""``argus eval fraud``: fraud-ring scores, risky clusters and their rules against the truth file.

The detector's kind is payments: a user is of the kind with at least one payment attempt sent or
one account sending it money (received transfers; money-mule accounts may only receive).
``scored_share`` is over those users, ``quality.all_of_kind`` counts the unscored among them as
score 0, and the top-level ``auc``/``pr_auc``/``precision``/``recall`` are over every user of the
world (ring members who never paid count as misses), as before.

Beside them: ``unreported`` (ring members *without* a known outcome against everyone outside the
rings: how far the known outcomes generalise), ``single_payment`` (users with exactly one payment
attempt), ``per_payment`` (payment scores from ``score_items`` against the truth's payments: those
sent by ring members from an hour before their fraud began) and ``evidence_components`` (each
part of the payment evidence alone). The bar, ``best_single_feature``, is over the per-user input
features (expert features, embedding, outcomes, data quality); the evidence components are
derived from several of them and are reported on their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from argus.detectors.fraud import FraudDetector, _outcomes
from argus.detectors.fraud_features import FEATURE_COLUMNS, OUTCOME_COLUMNS
from argus.detectors.fraud_payments import ACCOUNT_EVIDENCE
from argus.evals.common import best_single_feature_auc, binary_metrics, coverage, eval_config, eval_world, quality
from argus.progress import step
from argus.world.config import WorldConfig


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
    step(f"fraud features of {len(ew.events.user_ids):,} users")
    features = detector.features(ew.events)
    step("clustering, fitting and scoring")
    frame = detector.fit(features).score(features)
    step("measuring against the truth")
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
    inputs = features[list(FEATURE_COLUMNS)]
    result["quality"] = quality(y, frame, of_kind, features=inputs)
    result["ring_members_unscored"] = int((y & ~scored).sum())
    result["ring_members_without_payments"] = int((y & ~of_kind).sum())
    # The bar: any one input column of the features frame (expert, embedding, outcomes, data quality).
    result.update(best_single_feature_auc(inputs, y))
    if result["best_single_feature"]:
        result["best_single_feature_pr_auc"] = _single_feature_pr_auc(features[result["best_single_feature"]], y)
    known = _outcomes(features, None).any(axis=1).to_numpy()
    result["unreported"] = _block(y & ~known, scores, of_kind & ~(y & known), inputs)
    result["unreported"]["known_outcome_members"] = int((y & known).sum())
    one = of_kind & (features["payments"].fillna(0).to_numpy() == 1)
    result["single_payment"] = _block(y, scores, one, inputs)
    result["single_payment"]["scored_share"] = round(float(scored[one].mean()), 4) if one.any() else None
    result["evidence_components"] = {
        c: _single_block(features[c].to_numpy(dtype=float), y, of_kind) for c in ACCOUNT_EVIDENCE
    }
    result["per_payment"] = _per_payment(detector, ew, features)
    outcomes_only = best_single_feature_auc(features[list(OUTCOME_COLUMNS)], y)
    result["best_outcome_auc"] = outcomes_only["best_single_feature_auc"]

    assigned = detector.assign(features[scored])
    cluster = assigned["cluster"].reindex(scores.index).fillna(-1).astype(int)
    risky = set(detector.risky_clusters())
    patterns: dict[str, Any] = {}
    found = 0
    flagged_rings = 0  # most members flagged, by a risky cluster or by the evidence around their payments
    rings = sorted(ring.dropna().unique())
    for ring_id in rings:
        members = ring == ring_id
        counts = cluster[members & cluster.isin(risky)].value_counts()
        best = int(counts.index[0]) if len(counts) else None
        hit = best is not None and counts.iloc[0] > members.sum() / 2
        found += int(hit)
        flagged_rings += int(scores.loc[members, "flagged"].sum() > members.sum() / 2)
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
            "rings_flagged": flagged_rings,
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


def _block(truth: np.ndarray, scores: pd.DataFrame, rows: np.ndarray, inputs: pd.DataFrame) -> dict[str, Any]:
    """AUC, PR-AUC, precision and recall over ``rows``, with the best single input feature there."""
    metrics = binary_metrics(truth[rows], scores["score"].to_numpy()[rows], scores["flagged"].to_numpy()[rows])
    block: dict[str, Any] = {k: metrics[k] for k in ("auc", "pr_auc", "precision", "recall")}
    block.update(
        users=int(rows.sum()), positives=int(truth[rows].sum()), flagged=int(scores["flagged"].to_numpy()[rows].sum())
    )
    if 0 < block["positives"] < block["users"]:
        block.update(best_single_feature_auc(inputs.iloc[np.flatnonzero(rows)], truth[rows]))
    return block


def _single_block(values: np.ndarray, truth: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    metrics = binary_metrics(truth[rows], values[rows], np.zeros(int(rows.sum()), dtype=bool))
    return {"auc": metrics["auc"], "pr_auc": metrics["pr_auc"]}


def _per_payment(detector: FraudDetector, ew: Any, features: pd.DataFrame) -> dict[str, Any]:
    """Payment scores against the truth's payments: sent by a ring member at most an hour before its
    fraud began (mule crews log in up to an hour early) or later."""
    items = detector.score_items(ew.events, features)
    start = pd.to_datetime(ew.truth["fraud_start_ts"], utc=True)
    begins = items["user_id"].map(start)
    ts = pd.to_datetime(items["ts"], utc=True)
    truth = (begins.notna() & (ts >= begins - pd.Timedelta(hours=1))).to_numpy()
    metrics = binary_metrics(truth, items["score"].to_numpy(), items["flagged"].to_numpy())
    block: dict[str, Any] = {k: metrics[k] for k in ("auc", "pr_auc", "precision", "recall")}
    block.update(
        payments=len(items),
        fraud_payments=int(truth.sum()),
        scored_share=round(float(items["score"].notna().mean()), 4) if len(items) else None,
        flagged=int(items["flagged"].sum()),
    )
    return block


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
