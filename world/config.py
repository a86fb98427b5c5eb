"""Parameters of a synthetic world; the defaults are the evaluation world of later issues.

Two profiles share one generator:

- ``"realistic"`` (the default): heavy-tailed activity, lurkers, one-time buyers, shared homes,
  cafés and carrier NAT among normal users, harmless look-alikes of every bad actor, and late,
  partial, sometimes wrong labels. README.md "The realistic world" gives the sources.
- ``"dense"``: every user chats, clicks and pays every day, ~118 events per user-day; the world
  the detectors were first written against, kept byte-for-byte for the same seed.

Fields below the ``# realistic only`` comment shape only the realistic world. Fields that default to ``None``
take their profile's value (``PROFILE_DEFAULTS``) in ``__post_init__``.

=============================  ==========  ================================================
Field (realistic)              Default     Meaning
=============================  ==========  ================================================
events_per_user_day            4.0         mean events on a day a user is active (dense: 118)
activity_sigma                 1.4         log-sd of a user's events per active day
heavy_user_fraction            0.06        users who come back (almost) every day
visit_days_beta                (0.6, 3.6)  Beta of the other users' daily return probability
lurker_fraction                0.4         users who never chat (some more never chat by chance)
buyer_fraction                 0.4         users who may pay or transfer (~0.5 payments a week)
frequent_buyer_fraction        0.01        power buyers: 5-10 cards, many purchases, declines
fan_fraction                   0.03        loud harmless fans: caps, emotes, repeats, on topic
dormant_fraction               0.04        old accounts whose first activity is mid-world
newcomer_fraction              0.05        more honest accounts that sign up during the world
household_fraction             0.35        users in 2-5-person homes on one network
household_shared_device        0.3         share of homes that also share one device
cafe_fraction                  0.03        users of cafés/libraries (20-100 users each)
carrier_nat_fraction           0.2         users behind mobile carrier NAT (hundreds per IP)
ban_rate_trolls                0.2         share of trolls banned (dense: 0.55)
ban_rate_others                0.004       bans of other users: other violations, mistakes
troll_report_rate              0.08        user reports per troll-day (dense: 0.6)
troll_action_rate              0.015       moderator warnings/timeouts per troll-day (dense: 0.1)
false_action_rate              0.0015      moderator warnings/timeouts per normal user-day
chargeback_days                (10, 75)    days from a fraudulent purchase to its chargeback
fraud_label_share              0.15        share of ring members the risk team ever labels
fraud_label_days               (7, 45)     days from a member's fraud to its label
=============================  ==========  ================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

PROFILES = ("realistic", "dense")

# Values of the ``None`` fields per profile.
PROFILE_DEFAULTS: dict[str, dict[str, float]] = {
    # ~100 events per user-day after churn, vacations and bans
    "dense": {"events_per_user_day": 118.0, "ban_rate_trolls": 0.55, "ban_rate_others": 0.004},
    "realistic": {"events_per_user_day": 4.0, "ban_rate_trolls": 0.2, "ban_rate_others": 0.004},
}

# Fields the dense profile reads; the rest only shape the realistic world.
DENSE_FIELDS = (
    "users",
    "days",
    "seed",
    "start",
    "events_per_user_day",
    "troll_fraction",
    "ban_rate_trolls",
    "ban_rate_others",
    "unban_rate",
    "churn_fraction",
    "vacation_fraction",
    "fraud_rings",
    "ring_size",
    "raid_groups",
    "channels",
    "extra",
)


@dataclass(frozen=True)
class WorldConfig:
    users: int = 2_000
    days: int = 7
    seed: int = 7
    start: date = date(2026, 10, 1)
    profile: str = "realistic"
    events_per_user_day: float | None = None  # events on an active day; None: the profile's
    troll_fraction: float = 0.03
    ban_rate_trolls: float | None = None  # share of trolls banned during the world
    ban_rate_others: float | None = None  # bans for other violations, and mistakes
    unban_rate: float = 0.08  # share of bans lifted on appeal
    churn_fraction: float = 0.08
    vacation_fraction: float = 0.10
    fraud_rings: int | None = None  # None: one ring per 2,000 users, at least 3 (one per pattern)
    ring_size: tuple[int, int] = (5, 14)
    raid_groups: int | None = None  # None: one per 60 trolls, at least 1
    channels: int | None = None  # None: users // 400, at least 12
    # realistic only (see the table above)
    activity_sigma: float = 1.4
    heavy_user_fraction: float = 0.06
    visit_days_beta: tuple[float, float] = (0.6, 3.6)
    lurker_fraction: float = 0.4
    buyer_fraction: float = 0.4
    frequent_buyer_fraction: float = 0.01
    fan_fraction: float = 0.03
    dormant_fraction: float = 0.04
    newcomer_fraction: float = 0.05
    household_fraction: float = 0.35
    household_shared_device: float = 0.3
    cafe_fraction: float = 0.03
    carrier_nat_fraction: float = 0.2
    troll_report_rate: float = 0.08
    troll_action_rate: float = 0.015
    false_action_rate: float = 0.0015
    chargeback_days: tuple[float, float] = (10.0, 75.0)
    fraud_label_share: float = 0.15
    fraud_label_days: tuple[float, float] = (7.0, 45.0)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"--profile must be realistic or dense, not {self.profile!r}")
        for name, value in PROFILE_DEFAULTS[self.profile].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.users < 50:
            raise ValueError("a world needs at least 50 users (--users)")
        if self.days < 1:
            raise ValueError("a world needs at least one day (--days)")
        if self.rate <= 0:
            raise ValueError("--events-per-user-day must be positive")
        if self.household_fraction + self.cafe_fraction + self.carrier_nat_fraction > 1:
            raise ValueError("household, café and carrier NAT shares must add up to at most 1")

    @property
    def rate(self) -> float:
        """Mean events per user on a day the user is active (``events_per_user_day``, resolved)."""
        return float(self.events_per_user_day)  # type: ignore[arg-type]  # set in __post_init__

    @property
    def troll_ban_share(self) -> float:
        return float(self.ban_rate_trolls)  # type: ignore[arg-type]  # set in __post_init__

    @property
    def other_ban_share(self) -> float:
        return float(self.ban_rate_others)  # type: ignore[arg-type]  # set in __post_init__

    @property
    def channel_count(self) -> int:
        return self.channels or max(12, self.users // 400)

    @property
    def ring_count(self) -> int:
        return self.fraud_rings if self.fraud_rings is not None else max(3, self.users // 2_000)

    def to_json(self) -> dict[str, Any]:
        """The settings that shape this world: the profile and the fields it reads, resolved."""
        out = asdict(self)
        if self.profile == "dense":
            out = {name: out[name] for name in (*DENSE_FIELDS, "profile")}
        out["start"] = self.start.isoformat()
        for name, value in out.items():
            if isinstance(value, tuple):
                out[name] = list(value)
        return out

    def tag_json(self) -> dict[str, Any]:
        """``to_json`` as it was before profiles: dense worlds keep the event ids they always had."""
        out = self.to_json()
        if self.profile == "dense":
            del out["profile"]
        return out
