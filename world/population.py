"""Who lives in the synthetic world: accounts, their habits, and the injected ground truth.

Everything here is planned once per seed, before any event exists: each account's habits
(rates, channels, merchants, writing style), and the roles that the truth file records
(trolls, banned accounts and their evading children, fraud rings, churners). Every role
has look-alikes among normal users (salty or shouty chatters, micro-spenders, people who
share a home network, vacations), so that no single feature separates a role from the rest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from argus.world import text
from argus.world.config import WorldConfig

DAY = 86_400.0
CURRENCIES = np.array(["USD", "EUR", "GBP", "BRL", "INR", "JPY", "CAD", "PLN"])
CURRENCY_WEIGHTS = np.array([0.45, 0.2, 0.1, 0.07, 0.06, 0.05, 0.04, 0.03])

# Chat behaviour: probabilities of a message's kind, given it is not on the window's goal.
# Columns: chatter, off-goal topic, provocation, link spam.
NORMAL_OFF_GOAL_MIX = np.array([0.6, 0.35, 0.04, 0.01])
SALTY_OFF_GOAL_MIX = np.array([0.45, 0.3, 0.22, 0.03])
PROMOTER_OFF_GOAL_MIX = np.array([0.5, 0.2, 0.02, 0.28])
TROLL_OFF_GOAL_MIX = np.array([0.25, 0.35, 0.28, 0.12])
FAN_OFF_GOAL_MIX = np.array([0.85, 0.15, 0.0, 0.0])  # loud but never hostile
FAN_EMOTES = np.array([text.PET_PHRASES.index(e) + 1 for e in ("pog", "kek", "lul", "kappa", "omegalul", "<3")])
MAX_CARDS = 10  # power buyers in the realistic world hold 5-10 instruments
GUMBEL_MAX_KEYS = 2**24  # rows x choices for exact Gumbel top-k: 128 MB of keys, about 50k users' merchants

FRAUD_PATTERNS = ("card_testing", "account_takeover", "money_mule")


def fingerprint(*parts: object) -> str:
    """A stable hashed fingerprint (device, network, instrument)."""
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).hexdigest()


@dataclass
class FraudRing:
    ring_id: str
    pattern: str
    members: np.ndarray  # account indices
    start_s: float  # seconds since the world's start
    devices: list[str]
    networks: list[str]
    instruments: list[str]
    merchants: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class RaidGroup:
    raid_id: str
    members: np.ndarray
    channel: int
    start_s: float


@dataclass
class Population:
    """Column arrays, one row per account (base users first, then evaders' new accounts)."""

    n: int
    user_id: np.ndarray
    username: np.ndarray
    signup_s: np.ndarray  # negative: the account predates the world
    until_s: np.ndarray  # inf unless banned (without appeal) or churned
    pause_start_s: np.ndarray  # vacation or ban-until-unban; nan if none
    pause_end_s: np.ndarray
    rate: np.ndarray  # events per active day
    visit_prob: np.ndarray  # chance of being active on a given day (1 in the dense world)
    extra_sessions: np.ndarray  # mean sessions on an active day, beyond the first
    type_share: np.ndarray  # (n, 3): chat, click, payment
    tz_hours: np.ndarray
    channels: np.ndarray  # (n, 3) favourite channels, most used first
    pages: np.ndarray  # (n, 4)
    merchants: np.ndarray  # (n, 5)
    friends: np.ndarray  # (n, 3) transfer counterparties
    currency: np.ndarray
    amount_mu: np.ndarray  # log of a typical purchase
    decline_rate: np.ndarray
    instruments: np.ndarray  # (n, 2), or (n, MAX_CARDS) in the realistic world
    card_count: np.ndarray  # how many of ``instruments`` the user pays with
    devices: np.ndarray  # (n, 2)
    network: np.ndarray
    on_goal: np.ndarray
    off_goal_mix: np.ndarray  # (n, 4) see NORMAL_OFF_GOAL_MIX
    repeat_prob: np.ndarray
    caps_prob: np.ndarray
    pet_prob: np.ndarray
    pets: np.ndarray  # (n, 2) indices into text.PET_PHRASES, plus one (0 = none)
    decline_to: np.ndarray  # churn-like decline that never ends in leaving (look-alike)
    # Ground truth
    is_troll: np.ndarray
    banned_s: np.ndarray  # nan if never banned
    unbanned_s: np.ndarray
    parent: np.ndarray  # for an evader's new account: the banned parent's index, else -1
    child: np.ndarray  # for a banned parent: its new account's index, else -1
    churn_s: np.ndarray  # nan if the user does not churn
    churn_len_s: np.ndarray
    ring: np.ndarray  # index into rings, -1 if none
    fraud_s: np.ndarray  # when the user's fraud begins, nan if none
    rings: list[FraudRing]
    raids: list[RaidGroup]
    merchant_kind: np.ndarray  # per merchant: "retail", "digital", "giftcard", "exchange"
    channel_count: int
    page_count: int


def _zipf_weights(count: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, count + 1) ** exponent
    return weights / weights.sum()


def _pick_sets(rng: np.random.Generator, n: int, k: int, weights: np.ndarray) -> np.ndarray:
    """``k`` distinct picks per row from a popularity distribution, most popular first by chance.

    Small worlds draw Gumbel keys for every (row, choice) pair and keep each row's top ``k``; that
    costs rows x choices in time and memory, and the choices grow with the users (a merchant per
    100, a channel per 400), so past ``GUMBEL_MAX_KEYS`` the same law is drawn in linear time by
    ``_sequential_picks``. Worlds under the limit keep the bytes they always had.
    """
    if n * weights.size <= GUMBEL_MAX_KEYS:
        keys = np.log(weights)[None, :] - np.log(-np.log(rng.random((n, weights.size))))
        return np.argsort(-keys, axis=1)[:, :k]
    return _sequential_picks(rng, n, k, weights)


def _sequential_picks(rng: np.random.Generator, n: int, k: int, weights: np.ndarray) -> np.ndarray:
    """Gumbel top-k's law without its matrix: pick ``j`` is drawn from ``weights`` and redrawn while it
    repeats an earlier pick of its row, i.e. from the weights left (sampling without replacement)."""
    k = min(k, weights.size)
    cumulative = np.cumsum(weights)
    picks = np.empty((n, k), dtype=np.intp)
    for j in range(k):
        todo = np.arange(n)
        while todo.size:
            drawn = np.searchsorted(cumulative, rng.random(todo.size) * cumulative[-1], side="right")
            drawn = np.minimum(drawn, weights.size - 1)  # a draw of exactly the total
            picks[todo, j] = drawn
            todo = todo[(picks[todo, :j] == drawn[:, None]).any(axis=1)]
    return picks


@dataclass
class Habits:
    """The per-user habit arrays that the realistic profile reshapes in place."""

    rate: np.ndarray
    type_share: np.ndarray
    on_goal: np.ndarray
    off_goal_mix: np.ndarray
    repeat_prob: np.ndarray
    caps_prob: np.ndarray
    pet_prob: np.ndarray
    pets: np.ndarray


def _set_type_share(h: Habits, who: np.ndarray, chat: np.ndarray, pay: np.ndarray) -> None:
    h.type_share[who] = np.stack([chat * (1 - pay), (1 - chat) * (1 - pay), pay], axis=1)


def _realistic_activity(
    cfg: WorldConfig, rng: np.random.Generator, h: Habits, is_troll: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Lognormal events per active day, a Beta return probability per day, lurkers; returns
    (visit probability, mean extra sessions on an active day)."""
    n = h.rate.size
    sigma = cfg.activity_sigma
    h.rate[:] = cfg.rate * rng.lognormal(-(sigma**2) / 2, sigma, n)  # mean = events_per_user_day
    visit_prob = rng.beta(*cfg.visit_days_beta, n)
    extra_sessions = rng.gamma(1.0, 0.4, n)
    heavy = rng.random(n) < cfg.heavy_user_fraction
    k = int(heavy.sum())
    visit_prob[heavy] = rng.uniform(0.85, 1.0, k)
    extra_sessions[heavy] = rng.gamma(2.0, 0.75, k)
    h.rate[heavy] *= 1.5
    chat = rng.beta(2.0, 2.5, n)
    chat[rng.random(n) < cfg.lurker_fraction] = 0.0
    chat[is_troll] = rng.beta(6.0, 2.0, int(is_troll.sum()))  # trolls come to talk, if not often
    _set_type_share(h, np.arange(n), chat, np.zeros(n))
    return visit_prob, extra_sessions


def _realistic_buyers(
    cfg: WorldConfig,
    rng: np.random.Generator,
    h: Habits,
    visit_prob: np.ndarray,
    decline_rate: np.ndarray,
    is_troll: np.ndarray,
) -> np.ndarray:
    """Most people never pay, most who do pay once or twice; a few power buyers pay often with
    5-10 cards and see some declines. Returns each user's card count."""
    n = h.rate.size
    chat = h.type_share[:, 0] / np.maximum(h.type_share[:, :2].sum(axis=1), 1e-12)
    expected_events = np.maximum(h.rate * visit_prob * cfg.days, 1.0)
    payments = np.where(rng.random(n) < cfg.buyer_fraction, rng.gamma(1.0, 0.5, n), 0.0) * min(cfg.days, 7) / 7
    pay = np.minimum(payments / expected_events, 0.6)
    card_count = np.full(n, 2)
    power = (rng.random(n) < cfg.frequent_buyer_fraction) & ~is_troll
    k = int(power.sum())
    visit_prob[power] = np.maximum(visit_prob[power], rng.uniform(0.5, 1.0, k))
    h.rate[power] = cfg.rate * rng.uniform(2.0, 6.0, k)
    pay[power] = rng.uniform(0.2, 0.45, k)
    card_count[power] = rng.integers(5, MAX_CARDS + 1, k)
    decline_rate[power] = rng.beta(2.0, 18.0, k)  # many cards, more of them expired or over limit
    _set_type_share(h, np.arange(n), chat, pay)
    return card_count


def _harmless_fans(
    cfg: WorldConfig,
    rng: np.random.Generator,
    h: Habits,
    visit_prob: np.ndarray,
    extra_sessions: np.ndarray,
    is_troll: np.ndarray,
) -> None:
    """Loud fans chat a lot, in caps, with emote floods and repeats, but on topic and never hostile."""
    n = h.rate.size
    fan = np.flatnonzero((rng.random(n) < cfg.fan_fraction) & ~is_troll)
    k = fan.size
    h.rate[fan] = cfg.rate * rng.uniform(3.0, 10.0, k)
    visit_prob[fan] = rng.uniform(0.5, 1.0, k)
    extra_sessions[fan] = rng.uniform(0.5, 2.0, k)
    _set_type_share(h, fan, rng.beta(8.0, 2.0, k), h.type_share[fan, 2])
    h.on_goal[fan] = rng.beta(12.0, 1.5, k)
    h.off_goal_mix[fan] = FAN_OFF_GOAL_MIX
    h.repeat_prob[fan] = rng.beta(5.0, 5.0, k)
    h.caps_prob[fan] = rng.beta(5.0, 4.0, k)
    h.pet_prob[fan] = rng.beta(6.0, 2.0, k)
    h.pets[fan] = FAN_EMOTES[rng.integers(0, FAN_EMOTES.size, (k, 2))]


def _dormant_and_new(
    cfg: WorldConfig,
    rng: np.random.Generator,
    signup_s: np.ndarray,
    pause_start: np.ndarray,
    pause_end: np.ndarray,
    visit_prob: np.ndarray,
    is_troll: np.ndarray,
) -> None:
    """Old accounts that come back after months away, and honest sign-ups during the world."""
    n, horizon = signup_s.size, cfg.days * DAY
    settled = np.isnan(pause_start) & ~is_troll & (signup_s < 0)
    dormant = settled & (rng.random(n) < cfg.dormant_fraction)
    k = int(dormant.sum())
    signup_s[dormant] = -rng.uniform(180, 1500, k) * DAY
    pause_start[dormant] = -rng.uniform(60, 365, k) * DAY  # last seen months before the world
    pause_end[dormant] = rng.uniform(0, horizon, k)
    new = settled & ~dormant & (rng.random(n) < cfg.newcomer_fraction)
    k = int(new.sum())
    signup_s[new] = rng.uniform(0, horizon, k)
    visit_prob[new] = rng.beta(0.8, 2.0, k)  # most new accounts do not come back often


def _shared_connections(
    cfg: WorldConfig, rng: np.random.Generator, devices: np.ndarray, friends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Networks and devices that normal users share: homes, cafés and libraries, carrier NAT.
    Returns (network per user, devices); housemates become each other's first transfer friend."""
    n = devices.shape[0]
    devices = devices.copy()
    shares = [cfg.household_fraction, cfg.cafe_fraction, cfg.carrier_nat_fraction]
    kind = rng.choice(4, n, p=[1 - sum(shares), *shares])  # 0 own line, 1 home, 2 café, 3 carrier NAT
    network = np.array([fingerprint(cfg.seed, "line", i) for i in range(n)], dtype=object)

    home_users = rng.permutation(np.flatnonzero(kind == 1))
    sizes = rng.integers(2, 6, home_users.size // 2 + 1)
    home = np.searchsorted(np.cumsum(sizes), np.arange(home_users.size), side="right")
    network[home_users] = [fingerprint(cfg.seed, "home", h) for h in home]
    shared = (rng.random(sizes.size) < cfg.household_shared_device)[home]
    devices[home_users[shared], 0] = [fingerprint(cfg.seed, "homedev", h) for h in home[shared]]
    pos = np.arange(home_users.size)
    after = np.minimum(pos + 1, max(home_users.size - 1, 0))
    same = (pos + 1 < home_users.size) & (home[after] == home)
    friends[home_users, 0] = home_users[np.where(same, after, np.searchsorted(home, home))]

    cafe_users = np.flatnonzero(kind == 2)
    venues = max(1, round(cafe_users.size / 50))
    venue = rng.integers(0, venues, cafe_users.size)
    seat = rng.integers(0, rng.integers(3, 9, venues)[venue])  # each venue has 3-8 shared machines
    network[cafe_users] = [fingerprint(cfg.seed, "cafe", v) for v in venue]
    own_device = rng.random(cafe_users.size) < 0.6  # the rest have no device of their own
    devices[cafe_users, np.where(own_device, 1, 0)] = [
        fingerprint(cfg.seed, "cafedev", v, s) for v, s in zip(venue, seat, strict=True)
    ]

    nat_users = np.flatnonzero(kind == 3)
    carrier = rng.choice(3, nat_users.size, p=[0.45, 0.35, 0.2])
    addresses = np.maximum(1, np.round(np.bincount(carrier, minlength=3) / 300)).astype(int)
    address = rng.integers(0, addresses[carrier])
    network[nat_users] = [fingerprint(cfg.seed, "nat", c, a) for c, a in zip(carrier, address, strict=True)]
    return network, devices


def build_population(cfg: WorldConfig, rng: np.random.Generator) -> Population:
    n_base = cfg.users
    horizon = cfg.days * DAY
    n_channels = cfg.channel_count
    n_pages = 300
    n_merchants = max(40, n_base // 100)

    merchant_kind = np.full(n_merchants, "retail", dtype=object)
    shuffled = rng.permutation(n_merchants)
    n_digital = max(4, n_merchants // 10)
    merchant_kind[shuffled[:n_digital]] = "digital"
    merchant_kind[shuffled[n_digital : n_digital + 3]] = "giftcard"
    merchant_kind[shuffled[n_digital + 3 : n_digital + 5]] = "exchange"

    # --- base users -------------------------------------------------------------------
    n = n_base
    is_troll = np.zeros(n, dtype=bool)
    troll_idx = rng.choice(n, size=max(1, round(cfg.troll_fraction * n)), replace=False)
    is_troll[troll_idx] = True

    rate = cfg.rate * rng.lognormal(-0.5, 1.0, n)  # mean = events_per_user_day
    type_share = rng.dirichlet([6.0, 5.0, 0.6], n)
    type_share[is_troll] = rng.dirichlet([12.0, 3.0, 0.3], int(is_troll.sum()))
    tz_hours = rng.choice(np.arange(-8, 10), size=n)
    channels = _pick_sets(rng, n, 3, _zipf_weights(n_channels, 0.9))
    pages = _pick_sets(rng, n, 4, _zipf_weights(n_pages, 1.0))
    retail = np.flatnonzero(merchant_kind == "retail")
    merchants = retail[_pick_sets(rng, n, 5, _zipf_weights(retail.size, 0.8))]
    # Look-alikes: some people buy gift cards, game credits or crypto as a habit.
    for kind, share in (("giftcard", 0.05), ("digital", 0.15), ("exchange", 0.02)):
        pool = np.flatnonzero(merchant_kind == kind)
        who = rng.random(n) < share
        merchants[who, 4] = rng.choice(pool, size=int(who.sum()))
    currency = rng.choice(CURRENCIES.size, size=n, p=CURRENCY_WEIGHTS)
    amount_mu = rng.normal(3.2, 0.7, n)
    micro_spenders = rng.random(n) < 0.03
    amount_mu[micro_spenders] = rng.normal(0.6, 0.3, int(micro_spenders.sum()))
    type_share[micro_spenders] = rng.dirichlet([3.0, 3.0, 3.0], int(micro_spenders.sum()))
    decline_rate = rng.beta(1.0, 40.0, n)
    decline_rate[rng.random(n) < 0.03] = rng.beta(4.0, 8.0, 1)[0]  # struggling cards

    household = rng.integers(0, max(1, int(n * 0.7)), n)  # ~1.4 users per home network
    network = np.array([fingerprint(cfg.seed, "net", h) for h in household], dtype=object)
    devices = np.array([[fingerprint(cfg.seed, "dev", i, k) for k in range(2)] for i in range(n)], dtype=object)
    instruments = np.array([[fingerprint(cfg.seed, "card", i, k) for k in range(2)] for i in range(n)], dtype=object)
    friends = rng.integers(0, n, (n, 3))
    same_home = np.flatnonzero(np.bincount(household)[household] > 1)
    # Housemates pay each other: point the first friend at someone on the same network.
    by_home: dict[int, list[int]] = {}
    for i in same_home:
        by_home.setdefault(int(household[i]), []).append(int(i))
    for members in by_home.values():
        for pos, i in enumerate(members):
            friends[i, 0] = members[(pos + 1) % len(members)]

    on_goal = rng.beta(9.0, 2.5, n)
    newcomers = rng.random(n) < 0.08
    on_goal[newcomers] = rng.beta(4.0, 4.0, int(newcomers.sum()))
    on_goal[is_troll] = rng.beta(3.0, 4.0, int(is_troll.sum()))
    off_goal_mix = np.tile(NORMAL_OFF_GOAL_MIX, (n, 1))
    off_goal_mix[rng.random(n) < 0.06] = SALTY_OFF_GOAL_MIX
    off_goal_mix[rng.random(n) < 0.01] = PROMOTER_OFF_GOAL_MIX
    off_goal_mix[is_troll] = TROLL_OFF_GOAL_MIX
    repeat_prob = rng.beta(1.2, 14.0, n)
    hype = rng.random(n) < 0.05
    repeat_prob[hype] = rng.beta(4.0, 6.0, int(hype.sum()))
    repeat_prob[is_troll] = rng.beta(3.0, 5.0, int(is_troll.sum()))
    caps_prob = rng.beta(1.0, 12.0, n)
    shouty = rng.random(n) < 0.08
    caps_prob[shouty] = rng.beta(5.0, 5.0, int(shouty.sum()))
    caps_prob[is_troll] = rng.beta(3.0, 4.0, int(is_troll.sum()))
    pet_prob = rng.beta(2.0, 5.0, n)
    pets = np.stack([rng.choice(len(text.PET_PHRASES), 2, replace=False) + 1 for _ in range(n)])

    signup_s = -rng.uniform(30, 900, n) * DAY
    newcomer_signups = rng.random(n) < 0.03
    signup_s[newcomer_signups] = rng.uniform(0, horizon, int(newcomer_signups.sum()))

    pause_start = np.full(n, np.nan)
    pause_end = np.full(n, np.nan)
    vacation = rng.random(n) < cfg.vacation_fraction
    pause_start[vacation] = rng.uniform(-5, cfg.days, int(vacation.sum())) * DAY
    pause_end[vacation] = pause_start[vacation] + rng.uniform(3, 14, int(vacation.sum())) * DAY

    decline_to = np.ones(n)
    decliners = rng.random(n) < 0.05
    decline_to[decliners] = rng.uniform(0.2, 0.5, int(decliners.sum()))

    realistic = cfg.profile == "realistic"
    visit_prob, extra_sessions, card_count = np.ones(n), np.zeros(n), np.full(n, 2)
    if realistic:
        habits = Habits(rate, type_share, on_goal, off_goal_mix, repeat_prob, caps_prob, pet_prob, pets)
        visit_prob, extra_sessions = _realistic_activity(cfg, rng, habits, is_troll)
        card_count = _realistic_buyers(cfg, rng, habits, visit_prob, decline_rate, is_troll)
        _harmless_fans(cfg, rng, habits, visit_prob, extra_sessions, is_troll)
        _dormant_and_new(cfg, rng, signup_s, pause_start, pause_end, visit_prob, is_troll)
        network, devices = _shared_connections(cfg, rng, devices, friends)
        # Room for MAX_CARDS cards; only power buyers' extra columns are ever used.
        instruments = instruments[:, np.arange(MAX_CARDS) % 2]
        for i in np.flatnonzero(card_count > 2):
            instruments[i, 2:] = [fingerprint(cfg.seed, "card", i, k) for k in range(2, MAX_CARDS)]

    # --- bans -------------------------------------------------------------------------
    banned_s = np.full(n, np.nan)
    ban_p = np.where(is_troll, cfg.troll_ban_share, cfg.other_ban_share)
    banned = (rng.random(n) < ban_p) & (signup_s < horizon * 0.5)
    lo = np.maximum(signup_s[banned], 0) + 0.5 * DAY
    banned_s[banned] = rng.uniform(np.minimum(lo, horizon * 0.8), horizon * 0.8)
    unbanned_s = np.full(n, np.nan)
    appeal = banned & (rng.random(n) < cfg.unban_rate)
    unbanned_s[appeal] = banned_s[appeal] + rng.uniform(0.5, 4, int(appeal.sum())) * DAY
    pause_start[appeal] = banned_s[appeal]
    pause_end[appeal] = unbanned_s[appeal]

    # --- churn ------------------------------------------------------------------------
    churn_s = np.full(n, np.nan)
    churn_len = np.full(n, np.nan)
    churners = (rng.random(n) < cfg.churn_fraction) & ~is_troll & ~banned
    churn_s[churners] = rng.uniform(min(7.0, cfg.days / 2), cfg.days + 14, int(churners.sum())) * DAY
    churn_len[churners] = rng.uniform(7, 28, int(churners.sum())) * DAY

    # --- evaders: banned accounts that come back under a new account --------------------
    # Who evades is predictable in part: engaged, chat-heavy accounts come back more often.
    final_bans = np.flatnonzero(banned & ~appeal)
    z_rate = (np.log(rate) - np.log(rate).mean()) / (np.log(rate).std() + 1e-9)
    logit = -0.9 + 0.9 * z_rate[final_bans] + 1.2 * (type_share[final_bans, 0] - 0.5) + 0.5 * is_troll[final_bans]
    evades = final_bans[rng.random(final_bans.size) < 1 / (1 + np.exp(-logit))]
    n_children = evades.size
    total = n + n_children
    child_idx = np.arange(n, total)

    def extend(values: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
        extra = values[evades] if fill is None else fill
        return np.concatenate([values, extra])

    parent = np.full(total, -1)
    parent[child_idx] = evades
    child = np.full(total, -1)
    child[evades] = child_idx

    child_signup = banned_s[evades] + rng.exponential(0.8, n_children) * DAY + 600
    usernames = [text.username(rng) for _ in range(n)]
    child_names = [
        text.evasion_username(rng, usernames[p]) if rng.random() < 0.8 else text.username(rng) for p in evades
    ]
    child_devices = np.array(
        [[fingerprint(cfg.seed, "dev", i, k) for k in range(2)] for i in child_idx], dtype=object
    ).reshape(n_children, 2)
    keep_device = rng.random(n_children) < 0.45
    child_devices[keep_device, 0] = devices[evades[keep_device], 0]
    child_network = np.array([fingerprint(cfg.seed, "net", "new", i) for i in child_idx], dtype=object)
    keep_network = rng.random(n_children) < 0.5
    child_network[keep_network] = network[evades[keep_network]]
    child_channels = channels[evades].copy()
    drift = rng.random(n_children) < 0.3  # some move one favourite channel
    child_channels[drift, 2] = rng.integers(0, n_channels, int(drift.sum()))

    child_rate = rate[evades] * rng.uniform(0.6, 1.3, n_children)
    child_visits = visit_prob[evades]
    if realistic:
        # A new account starts cautiously: fewer visits, shorter ones.
        child_visits = child_visits * rng.uniform(0.3, 1.0, n_children)
        child_rate = child_rate * rng.uniform(0.2, 0.8, n_children)

    pop = Population(
        n=total,
        user_id=np.array([f"u{i:07d}" for i in range(total)], dtype=object),
        username=np.array(usernames + child_names, dtype=object),
        signup_s=np.concatenate([signup_s, child_signup]),
        until_s=np.full(total, np.inf),
        pause_start_s=extend(pause_start, np.full(n_children, np.nan)),
        pause_end_s=extend(pause_end, np.full(n_children, np.nan)),
        rate=extend(rate, child_rate),
        visit_prob=extend(visit_prob, child_visits),
        extra_sessions=extend(extra_sessions),
        type_share=np.concatenate([type_share, type_share[evades]]),
        tz_hours=extend(tz_hours),
        channels=np.concatenate([channels, child_channels]),
        pages=np.concatenate([pages, pages[evades]]),
        merchants=np.concatenate([merchants, merchants[evades]]),
        friends=np.concatenate([friends, friends[evades]]),
        currency=extend(currency),
        amount_mu=extend(amount_mu),
        decline_rate=extend(decline_rate),
        instruments=np.concatenate(
            [
                instruments,
                np.array(
                    [[fingerprint(cfg.seed, "card", i, k) for k in range(instruments.shape[1])] for i in child_idx],
                    dtype=object,
                ).reshape(n_children, instruments.shape[1]),
            ]
        ),
        card_count=extend(card_count, np.full(n_children, 2)),
        devices=np.concatenate([devices, child_devices]),
        network=np.concatenate([network, child_network]),
        on_goal=extend(on_goal),
        off_goal_mix=np.concatenate([off_goal_mix, off_goal_mix[evades]]),
        repeat_prob=extend(repeat_prob),
        caps_prob=extend(caps_prob),
        pet_prob=extend(pet_prob),
        pets=np.concatenate([pets, pets[evades]]),
        decline_to=extend(decline_to, np.ones(n_children)),
        is_troll=extend(is_troll),
        banned_s=extend(banned_s, np.full(n_children, np.nan)),
        unbanned_s=extend(unbanned_s, np.full(n_children, np.nan)),
        parent=parent,
        child=child,
        churn_s=extend(churn_s, np.full(n_children, np.nan)),
        churn_len_s=extend(churn_len, np.full(n_children, np.nan)),
        ring=np.full(total, -1),
        fraud_s=np.full(total, np.nan),
        rings=[],
        raids=[],
        merchant_kind=merchant_kind,
        channel_count=n_channels,
        page_count=n_pages,
    )
    final = ~np.isnan(pop.banned_s) & np.isnan(pop.unbanned_s)
    pop.until_s[final] = pop.banned_s[final]
    churned = ~np.isnan(pop.churn_s)
    pop.until_s[churned] = np.minimum(pop.until_s[churned], pop.churn_s[churned])
    pop.rings = _plan_fraud_rings(cfg, rng, pop)
    pop.raids = _plan_raids(cfg, rng, pop)
    return pop


def _plan_fraud_rings(cfg: WorldConfig, rng: np.random.Generator, pop: Population) -> list[FraudRing]:
    """Rings take accounts that have no other role; patterns rotate so each one appears."""
    horizon = cfg.days * DAY
    free = np.flatnonzero(
        (pop.parent < 0)
        & (pop.child < 0)
        & ~pop.is_troll
        & np.isnan(pop.churn_s)
        & np.isnan(pop.banned_s)
        & np.isnan(pop.pause_start_s)
    )
    free = rng.permutation(free)
    rings = []
    taken = 0
    for r in range(cfg.ring_count):
        pattern = FRAUD_PATTERNS[r % len(FRAUD_PATTERNS)]
        size = int(rng.integers(cfg.ring_size[0], cfg.ring_size[1] + 1))
        if taken + size > free.size:
            break
        members = np.sort(free[taken : taken + size])
        taken += size
        start = rng.uniform(0.1, 0.85) * horizon
        ring = FraudRing(
            ring_id=f"ring-{r:03d}",
            pattern=pattern,
            members=members,
            start_s=start,
            devices=[fingerprint(cfg.seed, "ringdev", r, k) for k in range(2)],
            networks=[fingerprint(cfg.seed, "ringnet", r, k) for k in range(2)],
            instruments=[fingerprint(cfg.seed, "stolen", r, k) for k in range(int(rng.integers(12, 30)))],
            merchants=rng.choice(
                np.flatnonzero(
                    pop.merchant_kind
                    == {"card_testing": "digital", "account_takeover": "giftcard", "money_mule": "exchange"}[pattern]
                ),
                size=2,
            ),
        )
        pop.ring[members] = r
        if pattern == "card_testing":
            # Fresh accounts made for the attack, sharing the ring's devices and networks.
            pop.signup_s[members] = start - rng.uniform(0.2, 3.0, size) * DAY
            pop.rate[members] = rng.uniform(5, 25, size)
            pop.devices[members, 0] = rng.choice(ring.devices, size)
            pop.network[members] = rng.choice(ring.networks, size)
            pop.fraud_s[members] = start + rng.uniform(0, 0.5, size) * DAY
        elif pattern == "account_takeover":
            # Established accounts taken over one after another over about a day.
            pop.fraud_s[members] = start + rng.uniform(0, 1.0, size) * DAY
        else:
            # Mules: quiet accounts that pass money on; first layer receives, second cashes out.
            pop.rate[members] = rng.uniform(3, 12, size)
            pop.fraud_s[members] = start
            layer = np.zeros(size, dtype=int)
            layer[size // 2 :] = 1
            ring.extra["layer"] = layer
        rings.append(ring)
    return rings


def _plan_raids(cfg: WorldConfig, rng: np.random.Generator, pop: Population) -> list[RaidGroup]:
    """Groups of trolls that flood one channel together for a few minutes."""
    trolls = np.flatnonzero(pop.is_troll & (pop.parent < 0))
    count = cfg.raid_groups if cfg.raid_groups is not None else max(1, trolls.size // 60)
    raids = []
    for r in range(count):
        size = min(trolls.size, int(rng.integers(5, 12)))
        if size < 3:
            break
        members = np.sort(rng.choice(trolls, size=size, replace=False))
        raids.append(
            RaidGroup(
                raid_id=f"raid-{r:03d}",
                members=members,
                channel=int(rng.integers(0, pop.channel_count)),
                start_s=float(rng.uniform(0.05, 0.95) * cfg.days * DAY),
            )
        )
    return raids
