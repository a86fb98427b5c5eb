"""``argus eval trolls``: context-mode troll scores, paper mode and raid groups against the truth file.

The detector's kind is chat: ``scored_share`` is over users with at least one chat message, and
``quality.all_of_kind`` counts chatters the detector does not score as score 0. The top-level
``auc``/``pr_auc``/``precision``/``recall`` are ``quality.all_of_kind``'s; the paper mode runs on
the evidenced users (the paper's population: users with enough inputs).

Message mode adds: ``few_messages`` (users with at most ``FEW_MESSAGES`` chat messages: AUC,
PR-AUC, precision and recall at the detector's flag, and the best precision at recall >= 0.6),
``messages`` (per message, against "the sender is a troll": a noisy target, since most of a
troll's messages are ordinary) and ``window_ranking``, which imitates a moderator's queue: for
every 2-minute window of a channel holding at least one troll message, the window's senders are
ranked and each troll's reciprocal rank among the window's non-trolls is averaged (MRR), with the
mean within-window AUC, by the user's score over the whole period, by a score from the window's
messages alone, by the mean offensive-language probability of the user's messages in the window
(an off-the-shelf classifier's baseline) and at random. The best single feature leaves out the
message-score aggregates (``msg_violations``, ``msg_max_score``), which are the detector's own;
the moderation counts (``mod_reporters``, ``mod_sanctions``, ``mod_sanction_severity``) are in it.
When the detector learns its three-view model (content, reports, sanction severity),
``content_only`` gives the same figures from the content score alone: what a feed without
moderation events gets.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from argus.detectors.base import SCORED
from argus.detectors.chat_messages import rate_posterior
from argus.detectors.trolls import (
    MESSAGE_MODEL_ATTR,
    PAPER_FEATURES,
    PAPER_THRESHOLD,
    USER_VIEWS,
    TrollDetector,
    find_raids,
    paper_scores,
)
from argus.evals.common import QUALITY_KEYS, binary_metrics, coverage, eval_config, eval_world, quality
from argus.progress import step

RAID_WORLD_RAIDS = 10
FEW_MESSAGES = 3
RANKING_WINDOW_S = 120


def run(world: Path | None = None, method: str = "centroid", profile: str = "realistic") -> dict[str, Any]:
    """Fit on the evaluation world's users (unsupervised) and score them; truth is read only to measure."""
    config = eval_config(profile)
    ew = eval_world(world, config)
    detector = TrollDetector(method=method)
    step(f"troll features of {len(ew.events.user_ids):,} users")
    features = detector.features(ew.events)
    step("fitting and scoring")
    scores = detector.fit(features).score(features)
    step("measuring against the truth")
    truth = ew.truth["is_troll"].reindex(scores["user_id"]).fillna(False).astype(bool).to_numpy()
    of_kind = features["chat_messages"].fillna(0).to_numpy() > 0
    baseline = features.drop(columns=["msg_violations", "msg_max_score"], errors="ignore")
    blocks = quality(truth, scores, of_kind, features=baseline)
    result: dict[str, Any] = {
        "detector": "trolls",
        "method": method,
        "profile": config.profile if world is None else None,
        "world_path": str(ew.path),
        "kind": "users with at least one chat message",
    }
    result.update({k: blocks["all_of_kind"][k] for k in QUALITY_KEYS})
    result["quality_over"] = "all_of_kind"
    result.update(coverage(scores, of_kind))
    result["quality"] = blocks
    for key in ("best_single_feature_auc", "best_single_feature", "best_single_feature_pr_auc"):
        result[key] = blocks["all_of_kind"].get(key)
    result["trolls_unscored"] = int((truth & of_kind & scores["score"].isna().to_numpy()).sum())
    result["trolls_without_chat"] = int((truth & ~of_kind).sum())

    messages = features["chat_messages"].fillna(0).to_numpy()
    result["few_messages"] = _few_messages(truth, scores, of_kind & (messages <= FEW_MESSAGES))
    if detector.state is not None and USER_VIEWS in detector.state:
        # What the same detector gives from the chat alone, as on a feed without moderation events.
        content = detector.content_scores(features)
        alone = quality(truth, content, of_kind)["all_of_kind"]
        result["content_only"] = {
            **{k: alone[k] for k in QUALITY_KEYS},
            "few_messages": _few_messages(truth, content, of_kind & (messages <= FEW_MESSAGES)),
        }
    result["user_views"] = detector.metrics.get("user_views")
    if detector.state is not None and MESSAGE_MODEL_ATTR in detector.state:
        result.update(_message_blocks(detector, ew.events["chat"], ew.truth["is_troll"], scores))

    evidenced = (scores["status"] == SCORED).to_numpy()
    paper = features.loc[evidenced, PAPER_FEATURES].to_numpy(dtype=float)
    for variant in ("centroid", "knn"):
        if len(paper) < 2 or np.isnan(paper).any():
            result[f"paper_{variant}"] = None
            continue
        values = paper_scores(paper, variant)
        metrics = binary_metrics(truth[evidenced], values, values > PAPER_THRESHOLD)
        result[f"paper_{variant}"] = {k: metrics[k] for k in QUALITY_KEYS}
    result.update(_raid_metrics(ew.events["chat"], ew.summary))
    if world is None:
        # The default world plans one raid; a sibling world with ten measures raids properly.
        raid_world = eval_world(None, replace(config, raid_groups=RAID_WORLD_RAIDS))
        result["raid_world"] = {
            "raid_groups": RAID_WORLD_RAIDS,
            **_raid_metrics(raid_world.events["chat"], raid_world.summary),
        }
    return result


def _few_messages(truth: np.ndarray, scores: pd.DataFrame, rows: np.ndarray) -> dict[str, Any]:
    """Quality over users with few messages, with the best precision at recall >= 0.6."""
    from sklearn.metrics import precision_recall_curve

    score = np.nan_to_num(scores["score"].to_numpy(dtype=float), nan=0.0)[rows]
    flagged = scores["flagged"].to_numpy(dtype=bool)[rows]
    metrics = binary_metrics(truth[rows], score, flagged)
    block: dict[str, Any] = {"max_messages": FEW_MESSAGES, "users": int(rows.sum()), "positives": metrics["positives"]}
    block.update({k: metrics[k] for k in QUALITY_KEYS})
    if 0 < metrics["positives"] < len(score):
        precision, recall, _ = precision_recall_curve(truth[rows], score)
        block["precision_at_recall_0_6"] = round(float(precision[recall >= 0.6].max()), 4)
    return block


def _message_blocks(
    detector: TrollDetector, chat: pd.DataFrame, is_troll: pd.Series, scores: pd.DataFrame
) -> dict[str, Any]:
    """Per-message quality and the window-ranking figure (module doc)."""
    from sklearn.metrics import roc_auc_score

    state = detector.require_fitted()
    chat = chat.reset_index(drop=True)
    signals = detector.message_signals(chat)
    p = state[MESSAGE_MODEL_ATTR].score(signals)
    sender_troll = chat["user_id"].map(is_troll).fillna(False).astype(bool).to_numpy()
    metrics = binary_metrics(sender_troll, p, p > 0.5)
    messages = {"messages": len(chat), **{k: metrics[k] for k in QUALITY_KEYS}, "positives": metrics["positives"]}

    slot = chat["ts"].dt.as_unit("s").astype("int64") // RANKING_WINDOW_S
    frame = pd.DataFrame(
        {"w": chat["context"].astype(str) + ":" + slot.astype(str), "u": chat["user_id"], "p": p}
    ).assign(tox=signals["toxicity"].to_numpy(), troll=sender_troll)
    per_user = frame.groupby(["w", "u"]).agg(
        k=("p", "sum"), n=("p", "size"), tox=("tox", "mean"), troll=("troll", "max")
    )
    per_user = per_user[per_user.groupby(level="w")["troll"].transform("any")].reset_index()
    interval = detector.params.get("interval", 0.8)
    per_user["window_only"] = rate_posterior(per_user["k"], per_user["n"], state["rate_prior"], interval)[0]
    per_user["period"] = per_user["u"].map(scores.set_index("user_id")["score"]).fillna(0.0)
    per_user["offensive_language_mean"] = per_user["tox"]
    ranking: dict[str, Any] = {
        "window_s": RANKING_WINDOW_S,
        "windows": int(per_user["w"].nunique()),
        "mean_users_per_window": round(float(per_user.groupby("w").size().mean()), 2) if len(per_user) else None,
        "targets": int(per_user["troll"].sum()),
    }
    for name in ("period", "window_only", "offensive_language_mean", "random"):
        rr, aucs = [], []
        for _, window in per_user.groupby("w"):
            troll = window["troll"].to_numpy(dtype=bool)
            others = window.loc[~troll]
            values = window[name].to_numpy(dtype=float) if name != "random" else np.zeros(len(window))
            for value in values[troll]:
                higher = float((others[name] > value).sum()) if name != "random" else 0.0
                ties = float((others[name] == value).sum()) if name != "random" else float(len(others))
                rr.append(np.mean(1.0 / (1.0 + higher + np.arange(int(ties) + 1))))
            if troll.any() and (~troll).any():
                aucs.append(roc_auc_score(troll, values) if name != "random" else 0.5)
        ranking[name] = {
            "mrr": round(float(np.mean(rr)), 4) if rr else None,
            "auc": round(float(np.mean(aucs)), 4) if aucs else None,
            "windows_with_both": len(aucs),
        }
    return {"messages_block": messages, "window_ranking": ranking}


def _raid_metrics(chat: pd.DataFrame, summary: dict[str, Any]) -> dict[str, Any]:
    """A raid is found when one reported group holds most of its members; a group is right when it is
    mostly members of one raid. Members are the planned raiders who posted in the raid's channel in
    its ten minutes (banned or absent ones cannot be seen)."""
    raids = find_raids(chat)
    truth_raids = []
    for raid in summary.get("raids", []):
        start = pd.Timestamp(raid["start"])
        posted = chat[
            (chat["context"] == raid["channel"])
            & chat["ts"].between(start, start + pd.Timedelta(minutes=10))
            & chat["user_id"].isin(raid["members"])
        ]
        truth_raids.append(set(posted["user_id"]))
    truth_raids = [t for t in truth_raids if len(t) >= 2]
    found = sum(any(len(t & set(g.members)) > len(t) / 2 for g in raids) for t in truth_raids)
    correct = sum(any(len(t & set(g.members)) > len(g.members) / 2 for t in truth_raids) for g in raids)
    recall = [max((len(t & set(g.members)) / len(t) for g in raids), default=0.0) for t in truth_raids]
    return {
        "raids_total": len(truth_raids),
        "raids_found": int(found),
        "raid_groups_reported": len(raids),
        "raid_group_precision": round(correct / len(raids), 4) if raids else None,
        "raid_member_recall": round(float(np.mean(recall)), 4) if recall else None,
    }
