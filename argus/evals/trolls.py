"""``argus eval trolls``: context-mode troll scores, paper mode and raid groups against the truth file.

The detector's kind is chat: ``scored_share`` is over users with at least one chat message, and
``quality.all_of_kind`` counts chatters the detector does not score as score 0. The top-level
``auc``/``pr_auc``/``precision``/``recall`` are ``quality.all_of_kind``'s; the paper mode runs on
the evidenced users (the paper's population: users with enough inputs).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from argus.evals.common import QUALITY_KEYS, binary_metrics, coverage, eval_config, eval_world, quality
from detectors.base import SCORED
from detectors.trolls import PAPER_FEATURES, PAPER_THRESHOLD, TrollDetector, find_raids, paper_scores

RAID_WORLD_RAIDS = 10


def run(world: Path | None = None, method: str = "centroid", profile: str = "realistic") -> dict[str, Any]:
    """Fit on the evaluation world's users (unsupervised) and score them; truth is read only to measure."""
    config = eval_config(profile)
    ew = eval_world(world, config)
    detector = TrollDetector(method=method)
    features = detector.features(ew.events)
    scores = detector.fit(features).score(features)
    truth = ew.truth["is_troll"].reindex(scores["user_id"]).fillna(False).astype(bool).to_numpy()
    of_kind = features["chat_messages"].fillna(0).to_numpy() > 0
    blocks = quality(truth, scores, of_kind, features=features)
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
