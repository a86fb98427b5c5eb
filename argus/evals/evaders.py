"""``argus eval evaders``: the paper's three tasks on the evaluation world, out of sample by child.

Pair probabilities come from 5-fold cross-validation grouped by child account (a child's pairs
are never scored by a model that saw it), so every figure is out of sample.

The detector's kind is new accounts (a sign-up in the events): the top-level detection figures are
over all of them (an account with no candidate parent scores 0). ``scored_share``,
``status_counts`` and ``quality`` describe the detector as `argus detect evaders` runs it, without
labels (``unsupervised`` repeats ``quality.all_of_kind``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import GroupKFold, StratifiedKFold

from argus.detectors.evaders import (
    MATCH_CANDIDATES,
    PAIR_FEATURES,
    EvaderDetector,
    ban_propensity_features,
    fit_pair_model,
)
from argus.detectors.events import Events
from argus.evals.common import QUALITY_KEYS, binary_metrics, coverage, eval_config, eval_world, quality
from argus.progress import step

EARLY_ACTIONS = 3  # the paper's early detection: a child's first three actions


def run(world: Path | None = None, profile: str = "realistic") -> dict[str, Any]:
    config = eval_config(profile)
    ew = eval_world(world, config)
    parent_of = ew.truth["parent_user_id"].dropna().astype(str)
    detector = EvaderDetector()
    step(f"account profiles of {len(ew.events.user_ids):,} users")
    profiles = detector.features(ew.events)
    step("detection on full histories")
    full = _detection(detector, profiles, parent_of)
    step("early detection (first actions)")
    early = _detection(detector, detector.features(first_actions(ew.events, EARLY_ACTIONS)), parent_of)
    # Sparse real accounts: a new account seen only through its sign-up and one action.
    first = _detection(detector, detector.features(first_actions(ew.events, 1)), parent_of)
    result: dict[str, Any] = {
        "detector": "evaders",
        "profile": config.profile if world is None else None,
        "world_path": str(ew.path),
        "kind": "new accounts (a sign-up in the events)",
    }
    result.update(full["metrics"])
    result["quality_over"] = "all new accounts, pair scores out of sample (no candidate parent: score 0)"
    result["early_auc"] = early["metrics"]["auc"]
    result["early_pr_auc"] = early["metrics"]["pr_auc"]
    result["mrr"] = full["mrr"]
    result["early_mrr"] = early["mrr"]
    result["first_action_auc"] = first["metrics"]["auc"]
    result["first_action_mrr"] = first["mrr"]
    step("predicting bans")
    result["predict_auc"] = _predict_auc(ew.events, profiles, ew.truth)
    result["best_single_feature_auc"], result["best_single_feature"] = full["best_single"]
    result["best_single_feature_pr_auc"] = full["best_single_pr_auc"]  # the best-AUC feature's PR-AUC
    # Without labels (what `argus detect evaders` does with no model): distant supervision.
    unsupervised = EvaderDetector().fit(profiles).score(profiles)
    of_kind = profiles["created_ts"].notna().to_numpy()
    is_child = unsupervised["user_id"].isin(parent_of.index).to_numpy()
    result.update(coverage(unsupervised, of_kind))
    result["quality"] = quality(is_child, unsupervised, of_kind)
    result["unsupervised"] = {k: result["quality"]["all_of_kind"][k] for k in QUALITY_KEYS}
    result["children"] = len(parent_of)
    result["new_accounts"] = int(of_kind.sum())
    result["banned_accounts"] = int(profiles["banned_ts"].notna().sum())
    return result


def first_actions(events: Events, count: int) -> Events:
    """New accounts keep their sign-up and their first ``count`` other events; everyone else keeps all."""
    signups = events["account"]
    new = set(signups.loc[signups["action"] == "signup", "user_id"])
    frames = {}
    stamped = []
    for event_type, frame in events.frames.items():
        part = frame[frame["user_id"].isin(new)][["event_id", "user_id", "ts"]].copy()
        part["event_type"] = event_type
        part["signup"] = (frame.loc[part.index, "action"] == "signup") if event_type == "account" else False
        stamped.append(part)
    own = pd.concat(stamped).sort_values(["ts", "event_id"])
    rank = own[~own["signup"]].groupby("user_id").cumcount()
    keep = set(own.loc[own["signup"], "event_id"]) | set(own.loc[rank.index[rank < count], "event_id"])
    for event_type, frame in events.frames.items():
        mine = frame["user_id"].isin(new)
        frames[event_type] = frame[~mine | frame["event_id"].isin(keep)]
    return Events(frames, events.rejected)


def _detection(detector: EvaderDetector, profiles: pd.DataFrame, parent_of: pd.Series) -> dict[str, Any]:
    pairs, x = detector.pairs(profiles)
    y = np.array([parent_of.get(c) == p for c, p in zip(pairs["child"], pairs["parent"], strict=True)])
    probability = np.zeros(len(pairs))
    # Five folds where there are five children with candidates (a sparse world may have fewer).
    splits = min(5, int(pairs["child"].nunique()))
    folds = GroupKFold(n_splits=splits).split(x, y, groups=pairs["child"]) if splits >= 2 else []
    for train, test in folds:
        if y[train].sum() < 2 or (~y[train]).sum() < 2:
            continue
        model = fit_pair_model(x.iloc[train][PAIR_FEATURES], y[train])
        probability[test] = model.predict_proba(x.iloc[test][PAIR_FEATURES].to_numpy())[:, 1]
    pairs = pairs.assign(probability=probability, truth=y)
    new_accounts = profiles.index[profiles["created_ts"].notna()].astype(str)
    best = pairs.groupby("child")["probability"].max().reindex(new_accounts).fillna(0.0)
    is_child = np.array([u in parent_of.index for u in new_accounts])
    metrics = binary_metrics(is_child, best.to_numpy(), best.to_numpy() >= detector.params["threshold"])

    # Matching: the true parent's rank among the 50 accounts banned closest before the child's creation
    # (0 when it is not among them), over the children that appear in the events.
    reciprocal = []
    for child in parent_of.index.intersection(new_accounts):
        mine = pairs[pairs["child"] == child]
        closest = mine.merge(profiles[["banned_ts"]], left_on="parent", right_index=True)
        closest = closest.nlargest(MATCH_CANDIDATES, "banned_ts")
        if not closest["truth"].any():
            reciprocal.append(0.0)
            continue
        rank = (closest["probability"] > closest.loc[closest["truth"], "probability"].iloc[0]).sum() + 1
        reciprocal.append(1.0 / rank)
    single, single_pr = {}, {}
    if 0 < is_child.sum() < len(is_child):
        for feature in PAIR_FEATURES:
            sign = -1.0 if feature == "hours_after_ban_log" else 1.0
            per_account = (sign * x[feature]).groupby(pairs["child"]).max().reindex(new_accounts).fillna(-np.inf)
            values = np.nan_to_num(per_account.to_numpy(), neginf=-1e9)
            single[feature] = roc_auc_score(is_child, values)
            single_pr[feature] = average_precision_score(is_child, values)
    best_feature = max(single, key=lambda k: single[k]) if single else ""
    return {
        "metrics": metrics,
        "mrr": round(float(np.mean(reciprocal)), 4) if reciprocal else None,
        "best_single": (round(single[best_feature], 4) if single else None, best_feature),
        "best_single_pr_auc": round(single_pr[best_feature], 4) if single else None,
    }


def _predict_auc(events: Events, profiles: pd.DataFrame, truth: pd.DataFrame) -> float | None:
    """Task (a): from a banned account's behaviour before its ban, will it come back? (5-fold CV AUC)"""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = ban_propensity_features(events, profiles)
    y = truth["evaded_as"].reindex(features.index).notna().to_numpy()
    if y.sum() < 5 or (~y).sum() < 5:
        return None
    score = np.zeros(len(y))
    for train, test in StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(features, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
        model.fit(features.iloc[train].to_numpy(), y[train])
        score[test] = model.predict_proba(features.iloc[test].to_numpy())[:, 1]
    return round(float(roc_auc_score(y, score)), 4)
