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
from sklearn.metrics import average_precision_score, roc_auc_score

from argus.detectors.base import SCORED
from argus.detectors.btyd import fit_bgnbd, p_no_purchase
from argus.detectors.churn import (
    ACTIVITY_CHANNELS,
    CHANNELS,
    PRIOR_STATUS,
    ChurnDetector,
    activity_tensor,
    daily_activity,
    purchase_examples,
)
from argus.detectors.churn_purchase import RFM_FEATURES, History, detect_mode, summary_at, training_plan
from argus.detectors.events import Events
from argus.evals.common import EvalWorld, best_single_feature_auc, coverage, eval_config, eval_world, quality
from argus.progress import step
from argus.world.config import WorldConfig

EVAL_DAYS = 75
DENSE_EVENTS_PER_USER_DAY = 20.0
LOOKBACKS = (7, 14, 30)
HORIZONS = (7, 14, 21)
MAIN_LOOKBACK = 30  # the paper's window
RECENT_DAYS = 3  # "recently active": an event in the last 3 days, so not visibly gone yet
# The purchase-style evaluation: approved purchases only, a 5-week horizon after a cut-off 5 weeks
# before the world's last day, a 4-week lookback: 40 days of history, shorter than lookback +
# horizon, so the detector learns from the longest horizon that fits (as on a shop's 39 + 39 weeks).
PURCHASE_HORIZON_DAYS = 35
PURCHASE_LOOKBACK_DAYS = 28


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
            step(f"churn features, {lookback}-day lookback")
            features[lookback] = detector.features(ev.events)
        feats = features[lookback]
        step(f"fitting and scoring: {lookback}-day lookback, {horizon}-day horizon ({model})")
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
        recent = evidenced & (feats[_since(feats)].to_numpy() < RECENT_DAYS)
        out["auc_recently_active"] = _auc(away[recent], score[recent])
        out["_away"], out["_of_kind"], out["_evidenced"] = away, of_kind, evidenced
        out["banned_excluded"] = int((banned & (feats["days_with_events"].to_numpy() > 0)).sum())
        return out, detector

    # Both candidates on the same held-out users; the kept one is the better by validation AUC,
    # exactly what ChurnDetector(model="auto") picks, so this avoids fitting everything twice.
    mode, _ = detect_mode(daily[daily.index.get_level_values("day") <= days[cutoff]])
    # Purchase mode chooses among its trees, BG/NBD and their mean itself ("auto"; ``model`` names the choice).
    kinds = ("gbm", "sequence") if mode == "daily" else ("auto",)
    candidates = {kind: evaluate(MAIN_LOOKBACK, horizon_days, kind) for kind in kinds}
    validation = {
        kind: (result["validation_auc"] or {}).get(result["model"] if kind == "auto" else kind, 0.0)
        for kind, (result, _) in candidates.items()
    }
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
            "model": result["model"],
            "validation_auc_by_model": result["validation_auc"],
        }
        for kind, (result, _) in candidates.items()
    }
    feats = features[MAIN_LOOKBACK]
    away, of_kind, evidenced = main["_away"], main["_of_kind"], main["_evidenced"]
    single = best_single_feature_auc(feats.loc[of_kind], away[of_kind])
    single_evidenced = best_single_feature_auc(feats.loc[evidenced], away[evidenced])
    truth = main["_truth"]
    single_truth = {} if truth is None else best_single_feature_auc(feats.loc[of_kind], truth[of_kind])
    recent = evidenced & (feats[_since(feats)].to_numpy() < RECENT_DAYS)
    single_recent = best_single_feature_auc(feats.loc[recent], away[recent])
    main["quality"]["all_of_kind"].update(single)
    main["quality"]["evidenced"].update(single_evidenced)
    by_lookback: dict[str, dict[str, Any]] = {}
    for lookback in LOOKBACKS if mode == "daily" else (MAIN_LOOKBACK,):
        result = main if lookback == MAIN_LOOKBACK else evaluate(lookback, horizon_days, kept)[0]
        by_lookback[str(lookback)] = {b: result["quality"][b]["auc"] for b in ("all_of_kind", "evidenced")}
    by_horizon: dict[str, dict[str, Any]] = {}
    for horizon in HORIZONS:
        result = main if horizon == horizon_days else evaluate(MAIN_LOOKBACK, horizon, kept)[0]
        by_horizon[str(horizon)] = {b: result["quality"][b]["auc"] for b in ("all_of_kind", "evidenced")}
    days_since = feats[_since(feats)].to_numpy()
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
        **_bgnbd_alone(daily, feats.index, days[cutoff], horizon_days, away, of_kind),
        "mode": detector.metrics.get("mode"),
        "mode_why": detector.metrics.get("mode_why"),
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
        "purchase": purchase_eval(ev.events),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _since(features: pd.DataFrame) -> str:
    """Days since the last activity: the daily mode's column or the purchase mode's."""
    return "days_since_active" if "days_since_active" in features else "recency_days"


def purchases_only(events: Events) -> Events:
    """A shop's purchase log from a world: approved purchases, nothing else."""
    payment = events["payment"]
    if len(payment) and {"action", "status"} <= set(payment.columns):
        payment = payment[(payment["action"] == "purchase") & (payment["status"] == "approved")]
    return Events({"payment": payment.reset_index(drop=True)})


def purchase_eval(
    events: Events, horizon_days: int = PURCHASE_HORIZON_DAYS, lookback_days: int = PURCHASE_LOOKBACK_DAYS
) -> dict[str, Any]:
    """The purchase-style block: the detector in ``auto`` mode on approved purchases only (see the constants).

    Kind: customers with a purchase on or before ``as_of`` (no ban in force); label: no purchase in
    the horizon. Baselines: recency alone, a GBM on recency, frequency, monetary value and age
    trained at the detector's own cut-offs, and BG/NBD alone at the asked-for horizon.
    """
    log = purchases_only(events)
    daily = daily_activity(log)
    if not len(daily):
        return {"error": "no approved purchases"}
    last = pd.Timestamp(daily.index.get_level_values("day").max())
    as_of = last - pd.Timedelta(days=horizon_days)
    detector = ChurnDetector(as_of=as_of.date().isoformat(), horizon_days=horizon_days, lookback_days=lookback_days)
    feats = detector.features(log)
    scores = detector.fit(feats).score(feats)
    day = daily.index.get_level_values("day")
    later = daily.index.get_level_values("user_id")[(day > as_of) & (day <= as_of + pd.Timedelta(days=horizon_days))]
    away = ~feats.index.isin(pd.Index(later))
    of_kind = (feats["days_with_events"].to_numpy() > 0) & (feats["banned"].to_numpy() == 0)
    cov = coverage(scores, of_kind)
    out: dict[str, Any] = {
        "events": "approved purchases only",
        "mode": detector.metrics.get("mode"),
        "mode_why": detector.metrics.get("mode_why"),
        "as_of": as_of.date().isoformat(),
        "horizon_days": horizon_days,
        "lookback_days": lookback_days,
        "training_horizon_days": detector.metrics.get("training_horizon_days"),
        "horizon_note": detector.metrics.get("horizon_note"),
        "model": detector.metrics.get("model"),
        "validation_auc": detector.metrics.get("validation_auc"),
        "customers": int(of_kind.sum()),
        "churners": int(away[of_kind].sum()),
        "one_time_share": round(float((feats["active_days"].to_numpy()[of_kind] == 1).mean()), 4),
        "scored_share": cov["scored_share"],
        "status_counts": cov["status_counts"],
    }
    if detector.metrics.get("mode") != "purchase":
        return out
    score = np.nan_to_num(scores["score"].to_numpy(dtype=float), nan=0.0)
    q = quality(away, scores, of_kind)["all_of_kind"]
    out.update(auc=q["auc"], pr_auc=q["pr_auc"], precision=q["precision"], recall=q["recall"])
    out["auc"] = _auc(away[of_kind], score[of_kind])
    out["recency_auc"] = _auc(away[of_kind], feats["recency_days"].to_numpy()[of_kind])
    # RFM-GBM: the same cut-offs and labels as the detector, only recency, frequency, monetary value and age.
    history = History.from_features(feats)
    plan = training_plan(history, lookback_days, horizon_days)
    x, y, _ = purchase_examples(history, feats.index.astype(str).to_numpy(), plan, lookback_days)
    if 0 < y.sum() < y.size:
        from sklearn.ensemble import HistGradientBoostingClassifier

        rfm = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0)
        rfm.fit(x[list(RFM_FEATURES)].to_numpy(dtype=float), y)
        now, _, _, _ = summary_at(history, 0, lookback_days, plan.horizon)
        rfm_score = rfm.predict_proba(now[list(RFM_FEATURES)].to_numpy(dtype=float))[:, 1]
        out["rfm_gbm_auc"] = _auc(away[of_kind], rfm_score[of_kind])
    asked, _, _, params = summary_at(history, 0, lookback_days, horizon_days)
    out["bgnbd_auc"] = None if params is None else _auc(away[of_kind], asked["bgnbd_p_churn"].to_numpy()[of_kind])
    out["bgnbd_params"] = None if params is None else params.to_dict()
    single = best_single_feature_auc(feats.loc[of_kind].drop(columns=["days_with_events", "banned"]), away[of_kind])
    out.update(single)
    return out


def _bgnbd_alone(
    daily: pd.DataFrame, users: pd.Index, as_of: pd.Timestamp, horizon: int, away: np.ndarray, of_kind: np.ndarray
) -> dict[str, float | None]:
    """BG/NBD alone on days with activity up to ``as_of``: P(no activity in the horizon), as
    ``bgnbd_auc`` and ``bgnbd_pr_auc`` (the baseline the detector's own AUC and PR-AUC must beat)."""
    rows = daily[(daily.index.get_level_values("day") <= as_of) & (daily[list(ACTIVITY_CHANNELS)].sum(axis=1) > 0)]
    day = rows.index.get_level_values("day")
    frame = pd.DataFrame({"user": rows.index.get_level_values("user_id"), "day": (day - as_of).days})
    grouped = frame.groupby("user")["day"].agg(["count", "min", "max"]).reindex(users.astype(str))
    has = grouped["count"].notna().to_numpy()
    x = np.nan_to_num(grouped["count"].to_numpy(dtype=float) - 1)
    t_x = np.nan_to_num((grouped["max"] - grouped["min"]).to_numpy(dtype=float))
    age = np.nan_to_num(1 - grouped["min"].to_numpy(dtype=float), nan=1.0)
    try:
        params, _ = fit_bgnbd(x[has], t_x[has], age[has])
    except ValueError:
        return {"bgnbd_auc": None, "bgnbd_pr_auc": None}
    score = np.where(has, p_no_purchase(params, horizon, x, t_x, age), 1.0)
    truth, values = away[of_kind], score[of_kind]
    pr_auc = None if truth.all() or not truth.any() else round(float(average_precision_score(truth, values)), 4)
    return {"bgnbd_auc": _auc(truth, values), "bgnbd_pr_auc": pr_auc}


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
