"""Shape of a generated world, for checking a profile against its parameters.

``python -m argus.world.figures [realistic|dense] [users] [days]`` prints the figures of one world as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import pyarrow as pa

from argus.world.config import WorldConfig
from argus.world.simulate import World


def world_figures(world: World, tables: dict[str, pa.Table]) -> dict[str, Any]:
    """Activity, participation, sharing and label figures of ``world`` (``tables``: all its days)."""
    pop, cfg = world.pop, world.cfg
    n = pop.n
    index = {uid: i for i, uid in enumerate(pop.user_id)}

    def users(table: pa.Table) -> np.ndarray:
        return np.array([index[u] for u in table["user_id"].to_pylist()], dtype=np.int64)

    bulk = [t for name, t in tables.items() if name in ("chat", "click", "payment")]
    u = np.concatenate([users(t) for t in bulk])
    day = np.concatenate([t["ts"].cast(pa.int64()).to_numpy() // 86_400_000 for t in bulk])
    _, per_user_day = np.unique(u * 100_000 + day, return_counts=True)
    active = np.unique(u)
    chatters = np.unique(users(tables["chat"]))
    payments = tables["payment"]
    purchases = payments.filter(pa.compute.equal(payments["action"], "purchase"))
    _, per_payer = np.unique(users(purchases), return_counts=True)

    normal = ~pop.is_troll & (pop.ring < 0) & (pop.parent < 0) & (pop.child < 0)
    devices = pop.devices.ravel()
    _, device_at, device_users = np.unique(devices, return_inverse=True, return_counts=True)
    shares_device: np.ndarray = (device_users[device_at].reshape(pop.devices.shape) > 1).any(axis=1)
    _, network_at, network_users = np.unique(pop.network, return_inverse=True, return_counts=True)
    shares_network: np.ndarray = network_users[network_at] > 1

    moderation = tables["moderation"]
    by_moderator = moderation.filter(pa.compute.is_in(moderation["action"], pa.array(["warn", "timeout", "ban"])))
    actioned = np.zeros(n, dtype=bool)
    actioned[users(by_moderator)] = True
    total = int(sum(t.num_rows for t in tables.values()))
    return {
        "profile": cfg.profile,
        "users": cfg.users,
        "days": cfg.days,
        "events": total,
        "events_per_user_day": round(total / (cfg.users * cfg.days), 2),
        "active_user_days": int(per_user_day.size),
        "share_user_days_le3_events": round(float((per_user_day <= 3).mean()), 3),
        "active_users": int(active.size),
        "share_active_never_chat": round(1 - np.intersect1d(chatters, active).size / active.size, 3),
        "share_payers_paying_once": round(float((per_payer == 1).mean()), 3) if per_payer.size else None,
        "share_payers_paying_at_most_twice": round(float((per_payer <= 2).mean()), 3) if per_payer.size else None,
        "share_normal_sharing_device": round(float(shares_device[normal].mean()), 3),
        "share_normal_sharing_network": round(float(shares_network[normal].mean()), 3),
        "share_trolls_never_actioned": round(float(1 - actioned[pop.is_troll].mean()), 3),
        "normal_users_actioned": int((actioned & ~pop.is_troll).sum()),
    }


def main(argv: list[str]) -> None:
    profile = argv[0] if argv else "realistic"
    users = int(argv[1]) if len(argv) > 1 else 2_000
    days = int(argv[2]) if len(argv) > 2 else 7
    began = time.perf_counter()
    world = World(WorldConfig(users=users, days=days, profile=profile))
    by_day = [world.day(d) for d in range(days)]
    seconds = time.perf_counter() - began
    tables = {name: pa.concat_tables([d[name] for d in by_day]) for name in by_day[0]}
    print(json.dumps({**world_figures(world, tables), "generation_s": round(seconds, 2)}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
