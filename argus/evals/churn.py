"""Churn evaluation: fit on the past of a long synthetic world, score a later cut-off, compare with what happened.

A 7-day world cannot show a 14-day horizon, so the evaluation world is ``churn_world(profile)``:
the default world run for ``EVAL_DAYS`` (75) days (dense: at ``DENSE_EVENTS_PER_USER_DAY`` (20)
events per user-day; realistic: at the profile's own rate; the rest default, seed 7). The cut-off
``T`` leaves the longest horizon evaluated (21 days) inside the world. The detector sees only
events up to ``T``: it trains on earlier cut-offs whose horizon ends by ``T`` and scores the
window ending at ``T``; the labels come from the days after ``T``, which it never saw.

The detector's kind is any event on or before ``T``; users with a ban in force at ``T`` are left out
(the detector does not score them: their absence is the ban, not churn) and counted in
``banned_excluded``. Label: a user of the kind churns when they
have no activity of their own in ``(T, T + horizon]``; for a user active in the lookback that is
the detector's own label. ``quality.all_of_kind`` (the top-level ``auc``...) covers every user of
the kind, unscored ones (banned, broken data) as score 0; ``quality.evidenced`` the users with
``min_active_days`` in the lookback (status ``scored``), the population the earlier figures were
measured on. Against the world's truth (``churn_ts`` by the end of the horizon) the same scores
give ``auc_truth``; vacations of 3-14 days and bans make the two differ.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from argus.evals.common import EvalWorld, best_single_feature_auc, coverage, eval_config, eval_world, quality
from detectors.base import SCORED
from detectors.churn import (
    ACTIVITY_CHANNELS,
    CHANNELS,
    PRIOR_STATUS,
    ChurnDetector,
    activity_tensor,
    daily_activity,
)
from world.config import WorldConfig

EVAL_DAYS = 75
DENSE_EVENTS_PER_USER_DAY = 20.0
LOOKBACKS = (7, 14, 30)
HORIZONS = (7, 14, 21)
MAIN_LOOKBACK = 30  # the paper's window
RECENT_DAYS = 3  # "recently active": an event in the last 3 days, so not visibly gone yet


def churn_world(profile: str = "realistic") -> WorldConfig:
    """The churn evaluation world: 75 days; dense at 20 events per user-day, realistic at its own rate and size."""
    if profile == "dense":
        return WorldConfig(days=EVAL_DAYS, events_per_user_day=DENSE_EVENTS_PER_USER_DAY, profile="dense")
    return eval_config(profile, days=EVAL_DAYS)


EVAL_WORLD = churn_world()


def run(world: Path | None = None, horizon_days: int = 14, profile: str = "realistic") -> dict[str, Any]:
    """The JSON line of ``argus eval churn``: metrics at ``horizon_days`` and AUC by lookback and horizon."""
    started = time.perf_counter()
    config = churn_world(profile)
    ev = eval_world(world, config)
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
    activity_idx = [CHANNELS.index(c) for c in ACTIVITY_CHANNELS]

    def evaluate(lookback: int, horizon: int, model: str = "auto") -> tuple[dict[str, Any], ChurnDetector]:
        detector = ChurnDetector(as_of=as_of, horizon_days=horizon, lookback_days=lookback, model=model)
        if lookback not in features:
            features[lookback] = detector.features(ev.events)
        feats = features[lookback]
        scores = detector.fit(feats).score(feats)
        activity = activity_tensor(daily, feats.index, days)[:, :, activity_idx].sum(axis=2)
        away = activity[:, cutoff + 1 : cutoff + 1 + horizon].sum(axis=1) == 0
        # A ban in force removes a user; their silence afterwards is not churn, so they are left out.
        banned = feats["banned"].to_numpy() > 0
        of_kind = (feats["days_with_events"].to_numpy() > 0) & ~banned
        evidenced = scores["status"].isin([SCORED, PRIOR_STATUS]).to_numpy()
        out: dict[str, Any] = {"quality": quality(away, scores, of_kind, evidenced), **coverage(scores, of_kind)}
        score = np.nan_to_num(scores["score"].to_numpy(dtype=float), nan=0.0)
        truth = _truth_labels(ev, feats.index, days[cutoff + horizon])
        out["auc_truth"] = None if truth is None else _auc(truth[of_kind], score[of_kind])
        out["auc_truth_evidenced"] = None if truth is None else _auc(truth[evidenced], score[evidenced])
        out["_truth"] = truth
        out["model"] = detector.metrics.get("model")
        out["validation_auc"] = detector.metrics.get("validation_auc")
        recent = evidenced & (feats["days_since_active"].to_numpy() < RECENT_DAYS)
        out["auc_recently_active"] = _auc(away[recent], score[recent])
        out["_away"], out["_of_kind"], out["_evidenced"] = away, of_kind, evidenced
        out["banned_excluded"] = int((banned & (feats["days_with_events"].to_numpy() > 0)).sum())
        return out, detector

    # Both candidates on the same held-out users; the kept one is the better by validation AUC,
    # exactly what ChurnDetector(model="auto") picks, so this avoids fitting everything twice.
    candidates = {kind: evaluate(MAIN_LOOKBACK, horizon_days, kind) for kind in ("gbm", "sequence")}
    validation = {kind: (result["validation_auc"] or {}).get(kind, 0.0) for kind, (result, _) in candidates.items()}
    kept = max(validation, key=lambda k: (validation[k], k == "gbm"))
    main, detector = candidates[kept]
    comparison = {
        kind: {
            "auc": result["quality"]["all_of_kind"]["auc"],
            "pr_auc": result["quality"]["all_of_kind"]["pr_auc"],
            "auc_evidenced": result["quality"]["evidenced"]["auc"],
            "auc_truth": result["auc_truth"],
            "auc_recently_active": result["auc_recently_active"],
            "validation_auc": validation[kind],
        }
        for kind, (result, _) in candidates.items()
    }
    feats = features[MAIN_LOOKBACK]
    away, of_kind, evidenced = main["_away"], main["_of_kind"], main["_evidenced"]
    single = best_single_feature_auc(feats.loc[of_kind], away[of_kind])
    single_evidenced = best_single_feature_auc(feats.loc[evidenced], away[evidenced])
    truth = main["_truth"]
    single_truth = {} if truth is None else best_single_feature_auc(feats.loc[of_kind], truth[of_kind])
    recent = evidenced & (feats["days_since_active"].to_numpy() < RECENT_DAYS)
    single_recent = best_single_feature_auc(feats.loc[recent], away[recent])
    main["quality"]["all_of_kind"].update(single)
    main["quality"]["evidenced"].update(single_evidenced)
    by_lookback: dict[str, dict[str, Any]] = {}
    for lookback in LOOKBACKS:
        result = main if lookback == MAIN_LOOKBACK else evaluate(lookback, horizon_days, kept)[0]
        by_lookback[str(lookback)] = {b: result["quality"][b]["auc"] for b in ("all_of_kind", "evidenced")}
    by_horizon: dict[str, dict[str, Any]] = {}
    for horizon in HORIZONS:
        result = main if horizon == horizon_days else evaluate(MAIN_LOOKBACK, horizon, kept)[0]
        by_horizon[str(horizon)] = {b: result["quality"][b]["auc"] for b in ("all_of_kind", "evidenced")}
    days_since = feats["days_since_active"].to_numpy()
    headline = main["quality"]["all_of_kind"]
    return {
        "detector": "churn",
        "profile": config.profile if world is None else None,
        "world_path": str(ev.path),
        "kind": "users with any event on or before as_of and no ban in force",
        "banned_excluded": main["banned_excluded"],
        "auc": headline["auc"],
        "pr_auc": headline["pr_auc"],
        "precision": headline["precision"],
        "recall": headline["recall"],
        "quality_over": "all_of_kind",
        "scored_share": main["scored_share"],
        "users_of_kind": main["users_of_kind"],
        "scored_users": main["scored_users"],
        "users_not_of_kind": main["users_not_of_kind"],
        "status_counts": main["status_counts"],
        "quality": main["quality"],
        "best_single_feature_auc": single["best_single_feature_auc"],
        "best_single_feature": single["best_single_feature"],
        # The classic baseline: days since the last activity alone (the R of RFM).
        "recency_auc": _auc(away[of_kind], days_since[of_kind]),
        "recency_auc_evidenced": _auc(away[evidenced], days_since[evidenced]),
        "auc_by_lookback": by_lookback,
        "auc_by_horizon": by_horizon,
        "auc_truth": main["auc_truth"],
        "auc_truth_evidenced": main["auc_truth_evidenced"],
        "truth_best_single_feature_auc": single_truth.get("best_single_feature_auc"),
        "truth_best_single_feature": single_truth.get("best_single_feature"),
        "recently_active": {
            "users": int(recent.sum()),
            "positives": int(away[recent].sum()),
            "auc": main["auc_recently_active"],
            "best_single_feature_auc": single_recent["best_single_feature_auc"],
            "best_single_feature": single_recent["best_single_feature"],
        },
        "model_kept": kept,
        "comparison": comparison,
        "horizon_days": horizon_days,
        "lookback_days": MAIN_LOOKBACK,
        "as_of": as_of,
        "training": {
            k: detector.metrics.get(k)
            for k in ("examples", "positives", "cutoffs", "threshold", "silent_examples", "silent_stayed")
        },
        "world": {"path": str(ev.path), **({} if world else config.to_json())},
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
