"""``argus eval trolls``: context-mode troll scores, paper mode and raid groups against the truth file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from argus.evals.common import DEFAULT_EVAL_WORLD, best_single_feature_auc, binary_metrics, eval_world
from detectors.trolls import PAPER_FEATURES, PAPER_THRESHOLD, TrollDetector, find_raids, paper_scores

RAID_WORLD_RAIDS = 10


def run(world: Path | None = None, method: str = "centroid") -> dict[str, Any]:
    """Fit on the evaluation world's users (unsupervised) and score them; truth is read only to measure."""
    ew = eval_world(world)
    detector = TrollDetector(method=method)
    features = detector.features(ew.events)
    scores = detector.fit(features).score(features).set_index("user_id")
    scored = scores["score"].notna()
    truth = ew.truth["is_troll"].reindex(scores.index).fillna(False).astype(bool)
    y = truth[scored].to_numpy()
    result: dict[str, Any] = {"detector": "trolls", "method": method, "world": str(ew.path)}
    result.update(binary_metrics(y, scores.loc[scored, "score"].to_numpy(), scores.loc[scored, "flagged"].to_numpy()))
    result["trolls_unscored"] = int(truth[~scored].sum())
    result.update(best_single_feature_auc(features.loc[scored[scored].index], y))

    paper = features.loc[scored[scored].index, PAPER_FEATURES].to_numpy(dtype=float)
    for variant in ("centroid", "knn"):
        values = paper_scores(paper, variant)
        metrics = binary_metrics(y, values, values > PAPER_THRESHOLD)
        result[f"paper_{variant}"] = {k: metrics[k] for k in ("auc", "pr_auc", "precision", "recall")}
    result.update(_raid_metrics(ew.events["chat"], ew.summary))
    if world is None:
        # The default world plans one raid; a sibling world with ten measures raids properly.
        raid_world = eval_world(None, replace(DEFAULT_EVAL_WORLD, raid_groups=RAID_WORLD_RAIDS))
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
