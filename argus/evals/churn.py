"""Churn evaluation: fit on the past of a long synthetic world, score a later cut-off, compare with what happened.

A 7-day world cannot show a 14-day horizon, so the evaluation world is ``EVAL_WORLD``: the
default world run for 75 days at 20 events per user-day (the rest default, seed 7). The cut-off
``T`` leaves the longest horizon evaluated (21 days) inside the world. The detector sees only
events up to ``T``: it trains on earlier cut-offs whose horizon ends by ``T`` and scores the
window ending at ``T``; the labels come from the days after ``T``, which it never saw.

Labels, as the detector defines them: a user with activity in the lookback before ``T`` churns
when they have none in ``(T, T + horizon]``. Against the world's truth (``churn_ts`` by the end
of the horizon) the same scores give ``auc_truth``; vacations of 3-14 days and bans make the two
differ. Users the detector does not score (too little activity, banned, gone for the whole
lookback) are left out of both and counted in ``unscored``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from argus.evals.common import EvalWorld, best_single_feature_auc, binary_metrics, eval_world
from detectors.base import SCORED
from detectors.churn import (
    PRIOR_STATUS,
    ChurnDetector,
    activity_tensor,
    churn_labels,
    daily_activity,
)
from world.config import WorldConfig

EVAL_WORLD = WorldConfig(days=75, events_per_user_day=20.0)
LOOKBACKS = (7, 14, 30)
HORIZONS = (7, 14, 21)
MAIN_LOOKBACK = 30  # the paper's window
RECENT_DAYS = 3  # "recently active": an event in the last 3 days, so not visibly gone yet


def run(world: Path | None = None, horizon_days: int = 14) -> dict[str, Any]:
    """The JSON line of ``argus eval churn``: metrics at ``horizon_days`` and AUC by lookback and horizon."""
    started = time.perf_counter()
    ev = eval_world(world, EVAL_WORLD)
    daily = daily_activity(ev.events)
    if not len(daily):
        raise ValueError(f"{ev.path} has no events to evaluate")
    days = pd.date_range(daily.index.get_level_values("day").min(), daily.index.get_level_values("day").max())
    longest = max((*HORIZONS, horizon_days))
    cutoff = len(days) - 1 - longest
    if cutoff < MAIN_LOOKBACK + horizon_days:
        need = MAIN_LOOKBACK + horizon_days + longest + 1
        raise ValueError(f"{ev.path} spans {len(days)} days; the churn evaluation needs {need} (argus generate --days)")
    as_of = days[cutoff].date().isoformat()
    features: dict[int, pd.DataFrame] = {}

    def evaluate(lookback: int, horizon: int, model: str = "auto") -> tuple[dict[str, Any], ChurnDetector]:
        detector = ChurnDetector(as_of=as_of, horizon_days=horizon, lookback_days=lookback, model=model)
        if lookback not in features:
            features[lookback] = detector.features(ev.events)
        feats = features[lookback]
        scores = detector.fit(feats).score(feats)
        tensor = activity_tensor(daily, feats.index, days)
        _, churned = churn_labels(tensor, cutoff, lookback, horizon)
        scored = scores["status"].isin([SCORED, PRIOR_STATUS]).to_numpy()
        out: dict[str, Any] = binary_metrics(
            churned[scored], scores["score"].to_numpy()[scored], scores["flagged"][scored]
        )
        out["unscored"] = int((~scored).sum())
        out["status_counts"] = {str(k): int(v) for k, v in scores["status"].value_counts().items()}
        truth = _truth_labels(ev, feats.index, days[cutoff + horizon])
        out["auc_truth"] = None if truth is None else _auc(truth[scored], scores["score"].to_numpy()[scored])
        out["_truth"] = truth
        out["model"] = detector.metrics.get("model")
        out["validation_auc"] = detector.metrics.get("validation_auc")
        recent = scored & (feats["days_since_active"].to_numpy() < RECENT_DAYS)
        out["auc_recently_active"] = _auc(churned[recent], scores["score"].to_numpy()[recent])
        out["_churned"], out["_scored"] = churned, scored
        return out, detector

    # Both candidates on the same held-out users; the kept one is the better by validation AUC,
    # exactly what ChurnDetector(model="auto") picks, so this avoids fitting everything twice.
    candidates = {kind: evaluate(MAIN_LOOKBACK, horizon_days, kind) for kind in ("gbm", "sequence")}
    validation = {kind: (result["validation_auc"] or {}).get(kind, 0.0) for kind, (result, _) in candidates.items()}
    kept = max(validation, key=lambda k: (validation[k], k == "gbm"))
    main, detector = candidates[kept]
    comparison = {
        kind: {k: result[k] for k in ("auc", "pr_auc", "auc_truth", "auc_recently_active")}
        | {"validation_auc": validation[kind]}
        for kind, (result, _) in candidates.items()
    }
    feats = features[MAIN_LOOKBACK]
    churned, scored = main["_churned"], main["_scored"]
    single = best_single_feature_auc(feats.loc[scored], churned[scored])
    truth = main["_truth"]
    single_truth = {} if truth is None else best_single_feature_auc(feats.loc[scored], truth[scored])
    recent = scored & (feats["days_since_active"].to_numpy() < RECENT_DAYS)
    single_recent = best_single_feature_auc(feats.loc[recent], churned[recent])
    by_lookback = {}
    for lookback in LOOKBACKS:
        result = main if lookback == MAIN_LOOKBACK else evaluate(lookback, horizon_days, kept)[0]
        by_lookback[str(lookback)] = result["auc"]
    by_horizon = {}
    for horizon in HORIZONS:
        result = main if horizon == horizon_days else evaluate(MAIN_LOOKBACK, horizon, kept)[0]
        by_horizon[str(horizon)] = result["auc"]
    return {
        "detector": "churn",
        "auc": main["auc"],
        "pr_auc": main["pr_auc"],
        "precision": main["precision"],
        "recall": main["recall"],
        "best_single_feature_auc": single["best_single_feature_auc"],
        "best_single_feature": single["best_single_feature"],
        # The classic baseline: days since the last activity alone (the R of RFM).
        "recency_auc": _auc(churned[scored], feats["days_since_active"].to_numpy()[scored]),
        "auc_by_lookback": by_lookback,
        "auc_by_horizon": by_horizon,
        "auc_truth": main["auc_truth"],
        "truth_best_single_feature_auc": single_truth.get("best_single_feature_auc"),
        "truth_best_single_feature": single_truth.get("best_single_feature"),
        "recently_active": {
            "users": int(recent.sum()),
            "positives": int(churned[recent].sum()),
            "auc": main["auc_recently_active"],
            "best_single_feature_auc": single_recent["best_single_feature_auc"],
            "best_single_feature": single_recent["best_single_feature"],
        },
        "model_kept": kept,
        "comparison": comparison,
        "positives": main["positives"],
        "scored": main["scored"],
        "unscored": main["unscored"],
        "status_counts": main["status_counts"],
        "horizon_days": horizon_days,
        "lookback_days": MAIN_LOOKBACK,
        "as_of": as_of,
        "training": {k: detector.metrics.get(k) for k in ("examples", "positives", "cutoffs", "threshold")},
        "world": {"path": str(ev.path), **({} if world else EVAL_WORLD.to_json())},
        "seconds": round(time.perf_counter() - started, 1),
    }


def _truth_labels(ev: EvalWorld, users: pd.Index, horizon_end: pd.Timestamp) -> np.ndarray | None:
    """The world's own churners: ``churn_ts`` before the end of the horizon's last day."""
    if "churn_ts" not in ev.truth:
        return None
    churn_ts = pd.to_datetime(ev.truth["churn_ts"], utc=True).reindex(users.astype(str))
    return np.asarray((churn_ts < horizon_end + pd.Timedelta(days=1)).fillna(False).to_numpy(dtype=bool))


def _auc(truth: np.ndarray, score: np.ndarray) -> float | None:
    if truth.all() or not truth.any():
        return None
    return round(float(roc_auc_score(truth, np.nan_to_num(score, nan=0.0))), 4)
