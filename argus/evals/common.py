"""What every evaluation shares: the seeded evaluation world, its events and truth, and the metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from detectors.events import Events, load_events
from infra.broker import argus_home
from world.config import WorldConfig
from world.simulate import World

# The default synthetic world (WorldConfig's defaults, seed 7): the one the README's figures use.
DEFAULT_EVAL_WORLD = WorldConfig()


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
        from world.generate import World, write_world

        key = json.dumps(config.to_json(), sort_keys=True)
        import hashlib

        world = argus_home() / "eval-worlds" / hashlib.sha256(key.encode()).hexdigest()[:12]
        if not (world / "manifest.json").is_file():
            write_world(World(config), world)
    world = Path(world)
    truth_path = world / "truth" / "users.parquet"
    if not truth_path.is_file():
        raise FileNotFoundError(f"{world} has no truth/users.parquet; evaluate a world written by `argus generate`")
    truth = pd.read_parquet(truth_path).set_index("user_id").sort_index()
    summary = json.loads((world / "truth" / "truth.json").read_text())
    return EvalWorld(world, load_events(world), truth, summary)


def world_events(world: World) -> Events:
    """A generated world's events, every day, as the detectors read them (no files in between)."""
    import pyarrow as pa

    tables: dict[str, list[pa.Table]] = {}
    for _, day in world.days():
        for event_type, table in day.items():
            tables.setdefault(event_type, []).append(table)
    return Events.from_tables({t: pa.concat_tables(parts) for t, parts in tables.items()})


def binary_metrics(truth: np.ndarray, score: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    """AUC and PR-AUC of ``score``; precision and recall of ``flagged`` (the operating threshold)."""
    truth = np.asarray(truth, dtype=bool)
    score = np.nan_to_num(np.asarray(score, dtype=float), nan=0.0)
    flagged = np.asarray(flagged, dtype=bool)
    hits = int((flagged & truth).sum())
    return {
        "auc": round(float(roc_auc_score(truth, score)), 4),
        "pr_auc": round(float(average_precision_score(truth, score)), 4),
        "precision": round(hits / max(1, int(flagged.sum())), 4),
        "recall": round(hits / max(1, int(truth.sum())), 4),
        "positives": int(truth.sum()),
        "scored": len(truth),
    }


def best_single_feature_auc(features: pd.DataFrame, truth: np.ndarray) -> dict[str, object]:
    """The best AUC any one numeric feature reaches alone (either direction): the bar to beat."""
    best_name, best, best_pr = "", 0.5, float(np.mean(truth))
    for name in features.select_dtypes(include=[np.number]).columns:
        values = features[name].to_numpy(dtype=float)
        if np.all(np.isnan(values)) or np.nanstd(values) == 0:
            continue
        values = np.nan_to_num(values, nan=np.nanmedian(values))
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
