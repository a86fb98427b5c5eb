"""The ground-truth file written beside a world's events: who is what, and since when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from argus.world.population import DAY
from argus.world.simulate import World

TRUTH_VERSION = 1


def _timestamps(world: World, seconds: np.ndarray) -> pa.Array:
    finite = np.isfinite(seconds)
    ms = np.where(finite, world.epoch_ms + np.floor(np.nan_to_num(seconds) * 1000), 0).astype(np.int64)
    return pa.array(ms, pa.int64(), mask=~finite).cast(pa.timestamp("ms", tz="UTC"))


def truth_table(world: World) -> pa.Table:
    """One row per account with every injected label."""
    pop = world.pop
    ring_ids = np.array([r.ring_id for r in pop.rings] + [None], dtype=object)
    patterns = np.array([r.pattern for r in pop.rings] + [None], dtype=object)
    raid_of = np.full(pop.n, None, dtype=object)
    for raid in pop.raids:
        raid_of[raid.members] = raid.raid_id
    user_ids = pop.user_id
    return pa.table(
        {
            "user_id": pa.array(user_ids.tolist(), pa.string()),
            "username": pa.array(pop.username.tolist(), pa.string()),
            "signup_ts": _timestamps(world, pop.signup_s),
            "is_troll": pa.array(pop.is_troll),
            "raid_id": pa.array(raid_of.tolist(), pa.string()),
            "banned_ts": _timestamps(world, pop.banned_s),
            "unbanned_ts": _timestamps(world, pop.unbanned_s),
            "is_evader": pa.array(pop.parent >= 0),
            "parent_user_id": pa.array([user_ids[p] if p >= 0 else None for p in pop.parent], pa.string()),
            "evaded_as": pa.array([user_ids[c] if c >= 0 else None for c in pop.child], pa.string()),
            "churn_ts": _timestamps(world, pop.churn_s),
            "fraud_ring": pa.array(ring_ids[pop.ring].tolist(), pa.string()),
            "fraud_pattern": pa.array(patterns[pop.ring].tolist(), pa.string()),
            "fraud_start_ts": _timestamps(world, pop.fraud_s),
        }
    )


def truth_summary(world: World) -> dict[str, Any]:
    pop, cfg = world.pop, world.cfg
    start = datetime(cfg.start.year, cfg.start.month, cfg.start.day, tzinfo=UTC)

    def at(seconds: float) -> str:
        return (start + timedelta(seconds=float(seconds))).isoformat().replace("+00:00", "Z")

    horizon = cfg.days * DAY
    return {
        "truth_version": TRUTH_VERSION,
        "world": cfg.to_json(),
        "accounts": int(pop.n),
        "counts": {
            "trolls": int(pop.is_troll.sum()),
            "banned": int((~np.isnan(pop.banned_s)).sum()),
            "evaders": int((pop.parent >= 0).sum()),
            "churners_in_world": int((pop.churn_s < horizon).sum()),
            "churners_after_world": int((pop.churn_s >= horizon).sum()),
            "fraud_ring_members": int((pop.ring >= 0).sum()),
        },
        "fraud_rings": [
            {
                "ring_id": r.ring_id,
                "pattern": r.pattern,
                "start": at(r.start_s),
                "members": pop.user_id[r.members].tolist(),
            }
            for r in pop.rings
        ],
        "raids": [
            {
                "raid_id": r.raid_id,
                "channel": world.chat.channel_names[r.channel].as_py(),
                "start": at(r.start_s),
                "members": pop.user_id[r.members].tolist(),
            }
            for r in pop.raids
        ],
    }
