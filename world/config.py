"""Parameters of a synthetic world; the defaults are the evaluation world of later issues."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any


@dataclass(frozen=True)
class WorldConfig:
    users: int = 2_000
    days: int = 7
    seed: int = 7
    start: date = date(2026, 10, 1)
    events_per_user_day: float = 118.0  # ~100 events per user-day after churn, vacations and bans
    troll_fraction: float = 0.03
    ban_rate_trolls: float = 0.55  # share of trolls banned during the world
    ban_rate_others: float = 0.004  # bans for other violations, and mistakes
    unban_rate: float = 0.08  # share of bans lifted on appeal
    churn_fraction: float = 0.08
    vacation_fraction: float = 0.10
    fraud_rings: int | None = None  # None: one ring per 2,000 users, at least 3 (one per pattern)
    ring_size: tuple[int, int] = (5, 14)
    raid_groups: int | None = None  # None: one per 60 trolls, at least 1
    channels: int | None = None  # None: users // 400, at least 12
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.users < 50:
            raise ValueError("a world needs at least 50 users (--users)")
        if self.days < 1:
            raise ValueError("a world needs at least one day (--days)")
        if self.events_per_user_day <= 0:
            raise ValueError("--events-per-user-day must be positive")

    @property
    def channel_count(self) -> int:
        return self.channels or max(12, self.users // 400)

    @property
    def ring_count(self) -> int:
        return self.fraud_rings if self.fraud_rings is not None else max(3, self.users // 2_000)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["start"] = self.start.isoformat()
        out["ring_size"] = list(self.ring_size)
        return out
