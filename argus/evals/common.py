"""What every evaluation shares: the seeded evaluation world, its events and truth, and the metrics.

Every evaluation reports, next to its quality figures, how many users it could judge:
``coverage`` gives ``scored_share`` (users scored / users with at least one event of the
detector's kind) and ``status_counts`` (statuses grouped by their text before ``:``), and
``quality`` gives the figures three ways, under keys that say so: ``all_of_kind`` (every user with
an event of the kind; unscored users count as score 0, not flagged), ``scored`` (users with a
score) and ``evidenced`` (users with the evidence the model is fitted on, status ``scored``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from argus.detectors.base import status_counts
from argus.detectors.events import Events, load_events
from argus.infra.broker import argus_home
from argus.progress import step
from argus.world.config import WorldConfig
from argus.world.simulate import World

# The realistic evaluation world is larger than `argus generate`'s default: at 2,000 users and
# 7 days only about 1,000 accounts act and a few dozen trolls chat, too few for stable figures.
# The dense profile keeps the world the earlier README figures were measured on (2,000 x 7).
REALISTIC_EVAL_SIZE: dict[str, Any] = {"users": 10_000, "days": 14}
QUALITY_KEYS = ("auc", "pr_auc", "precision", "recall")


def eval_config(profile: str = "realistic", **overrides: Any) -> WorldConfig:
    """The evaluation world on ``profile`` (realistic or dense), seed 7, with ``overrides``."""
    size = REALISTIC_EVAL_SIZE if profile == "realistic" else {}
    return WorldConfig(profile=profile, **{**size, **overrides})


DEFAULT_EVAL_WORLD = eval_config()


@dataclass
class EvalWorld:
    path: Path
    events: Events
    truth: pd.DataFrame  # truth/users.parquet, indexed by user_id
    summary: dict[str, object]  # truth/truth.json


def eval_world(world: Path | None = None, config: WorldConfig = DEFAULT_EVAL_WORLD) -> EvalWorld:
    """``world`` if given (a folder written by ``argus generate``), else the seeded world for ``config``.

    A generated world is cached under ARGUS_HOME/eval-worlds/ by its configuration, so repeated
    evaluations read the same files instead of generating again.
    """
    if world is None:
        from argus.world.generate import World, write_world

        key = json.dumps(config.to_json(), sort_keys=True)
        import hashlib

        world = argus_home() / "eval-worlds" / hashlib.sha256(key.encode()).hexdigest()[:12]
        if not (world / "manifest.json").is_file():
            step(f"generating the evaluation world ({config.users:,} users x {config.days} days; once, then cached)")
            write_world(World(config), world)
    world = Path(world)
    truth_path = world / "truth" / "users.parquet"
    if not truth_path.is_file():
        raise FileNotFoundError(f"{world} has no truth/users.parquet; evaluate a world written by `argus generate`")
    truth = pd.read_parquet(truth_path).set_index("user_id").sort_index()
    summary = json.loads((world / "truth" / "truth.json").read_text())
    step(f"reading {world}")
    return EvalWorld(world, load_events(world), truth, summary)


def world_events(world: World) -> Events:
    """A generated world's events, every day, as the detectors read them (no files in between)."""
    import pyarrow as pa

    tables: dict[str, list[pa.Table]] = {}
    for _, day in world.days():
        for event_type, table in day.items():
            tables.setdefault(event_type, []).append(table)
    return Events.from_tables({t: pa.concat_tables(parts) for t, parts in tables.items()})


def binary_metrics(truth: np.ndarray, score: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    """AUC and PR-AUC of ``score``; precision and recall of ``flagged`` (the operating threshold).

    NaN scores count as 0. AUC and PR-AUC are None when ``truth`` holds one class only (or nothing).
    """
    truth = np.asarray(truth, dtype=bool)
    score = np.nan_to_num(np.asarray(score, dtype=float), nan=0.0)
    flagged = np.asarray(flagged, dtype=bool)
    hits = int((flagged & truth).sum())
    both = 0 < int(truth.sum()) < len(truth)
    return {
        "auc": round(float(roc_auc_score(truth, score)), 4) if both else None,
        "pr_auc": round(float(average_precision_score(truth, score)), 4) if both else None,
        "precision": round(hits / max(1, int(flagged.sum())), 4),
        "recall": round(hits / max(1, int(truth.sum())), 4),
        "positives": int(truth.sum()),
        "scored": len(truth),
    }


def best_single_feature_auc(features: pd.DataFrame, truth: np.ndarray) -> dict[str, object]:
    """The best AUC any one numeric feature reaches alone (either direction): the bar to beat.

    Columns that are all NaN or constant are skipped; NaN counts as the column's median. With one
    class in ``truth`` (or no usable column) the AUC is None and the feature "".
    """
    truth = np.asarray(truth, dtype=bool)
    best_name, best, best_pr = "", 0.5, float(np.mean(truth)) if len(truth) else 0.0
    if not 0 < int(truth.sum()) < len(truth):
        return {"best_single_feature_auc": None, "best_single_feature": "", "best_single_feature_pr_auc": None}
    for name in features.select_dtypes(include=[np.number]).columns:
        values = features[name].to_numpy(dtype=float)
        finite = np.isfinite(values)
        if not finite.any():
            continue
        values = np.where(finite, values, np.median(values[finite]))
        if np.ptp(values) == 0:
            continue
        auc = roc_auc_score(truth, values)
        if max(auc, 1 - auc) > best:
            oriented = values if auc >= 0.5 else -values
            best_name, best = str(name), float(max(auc, 1 - auc))
            best_pr = float(average_precision_score(truth, oriented))
    return {
        "best_single_feature_auc": round(best, 4),
        "best_single_feature": best_name,
        "best_single_feature_pr_auc": round(best_pr, 4),
    }


# --- coverage -------------------------------------------------------------------------------------


def coverage(scores: pd.DataFrame, of_kind: np.ndarray) -> dict[str, Any]:
    """``scored_share`` (users scored / users with an event of the kind) and the kind's ``status_counts``.

    ``scores``: a detector's score frame; ``of_kind``: per row, whether the user has at least one
    event of the detector's kind. ``status_counts`` covers those users; the rest are counted in
    ``users_not_of_kind``.
    """
    of_kind = np.asarray(of_kind, dtype=bool)
    scored = scores["score"].notna().to_numpy() & of_kind
    users = int(of_kind.sum())
    return {
        "users_of_kind": users,
        "users_not_of_kind": int((~of_kind).sum()),
        "scored_users": int(scored.sum()),
        "scored_share": round(int(scored.sum()) / users, 4) if users else None,
        "status_counts": status_counts(scores["status"].to_numpy()[of_kind]),
    }


def quality(
    truth: np.ndarray,
    scores: pd.DataFrame,
    of_kind: np.ndarray,
    evidenced: np.ndarray | None = None,
    features: pd.DataFrame | None = None,
) -> dict[str, dict[str, Any]]:
    """The quality figures over ``all_of_kind`` (unscored: score 0, not flagged), ``scored`` and ``evidenced``.

    ``truth``, ``of_kind`` and ``evidenced`` are per row of ``scores``; ``evidenced`` defaults to
    status ``scored``. With ``features`` (rows aligned) each block also names its best single feature.
    """
    truth = np.asarray(truth, dtype=bool)
    of_kind = np.asarray(of_kind, dtype=bool)
    has_score = scores["score"].notna().to_numpy()
    if evidenced is None:
        evidenced = (scores["status"] == "scored").to_numpy()
    score = np.nan_to_num(scores["score"].to_numpy(dtype=float), nan=0.0)
    flagged = scores["flagged"].to_numpy(dtype=bool) & has_score
    blocks: dict[str, dict[str, Any]] = {}
    for name, rows in (
        ("all_of_kind", of_kind),
        ("scored", of_kind & has_score),
        ("evidenced", of_kind & np.asarray(evidenced, dtype=bool)),
    ):
        metrics = binary_metrics(truth[rows], score[rows], flagged[rows])
        block: dict[str, Any] = {k: metrics[k] for k in QUALITY_KEYS}
        block.update(users=int(rows.sum()), positives=metrics["positives"])
        if features is not None:
            block.update(best_single_feature_auc(features.iloc[np.flatnonzero(rows)], truth[rows]))
        blocks[name] = block
    return blocks


def text_report(result: dict[str, Any]) -> list[str]:
    """An evaluation's JSON as a few readable lines: coverage, status counts, quality per population."""
    lines = [f"{result.get('detector')} on the {result.get('profile', '?')} world ({result.get('world_path', '')})"]
    if result.get("scored_share") is not None:
        lines.append(
            f"scored {result.get('scored_users')} of {result.get('users_of_kind')} users of its kind"
            f" (scored_share {result['scored_share']:.3f})"
        )
    lines.append("status counts (users of its kind):")
    for status, count in (result.get("status_counts") or {}).items():
        lines.append(f"  {count:>8,}  {status}")
    for block, figures in (result.get("quality") or {}).items():
        shown = ", ".join(f"{k} {_fmt(figures.get(k))}" for k in (*QUALITY_KEYS, "positives", "users"))
        best = figures.get("best_single_feature")
        if best:
            shown += f"; best single feature {best} AUC {_fmt(figures.get('best_single_feature_auc'))}"
        lines.append(f"{block}: {shown}")
    return lines


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
