"""Churn for purchase-style (non-contractual) data: days to months between a customer's events.

A shop never hears a customer leave; it only sees the purchases stop. Every customer with any
event on or before ``as_of`` is scored, and silence through the whole lookback is evidence of
risk, not a reason to refuse. Per customer and cut-off ``c`` (day 0 is ``as_of``, earlier days
negative) ``summary_at`` computes recency, frequency, monetary value (approved purchase amounts
where the data has them, events otherwise), age ``T``, inter-purchase gap statistics, the days
since the last purchase relative to the customer's own typical gap, counts in the lookback, and the
BG/NBD quantities of ``argus.detectors.btyd`` (P(alive), expected purchases and P(no purchase) in the
horizon) from a BG/NBD fitted on everybody's history up to ``c``.

``ChurnDetector`` (mode ``purchase``) trains gradient-boosted trees on these features at earlier
cut-offs whose horizon is observed, and keeps, by AUC on held-out customers at those cut-offs, the
mean of the trees' and BG/NBD's probabilities unless the trees or BG/NBD alone beat it by more than
the AUC's standard error (the two are often within noise of each other and swap places at
``as_of``; their mean is rarely worse than either).

**Horizon longer than the history allows.** A training cut-off needs the lookback and half the
history before it (so that the customers it learns from have ages like those scored at
``as_of``) and a whole horizon after it. When the history is too short for that,
``training_plan`` uses the longest horizon that fits and says so; the model then ranks customers
by the risk of no purchase within that shorter horizon (BG/NBD alone answers for the horizon asked).

The per-customer history travels inside the features frame as text columns (``HISTORY_COLUMNS``:
space-separated days before ``as_of`` with events, event counts, spend and ban changes), so the
same frame serves fitting at earlier cut-offs and scoring at ``as_of``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from argus.detectors.btyd import BGNBDParams, expected_purchases, fit_bgnbd, p_alive, p_no_purchase

ACTIVITY = ("chat", "click", "payment", "account")
HISTORY_COLUMNS = ("history_days", "history_events", "history_spend", "history_ban")
DAILY_ACTIVE_SHARE = 0.5  # the median user active on half their days or more: a dense, daily platform
RECENT_DAYS = 7
FIT: Literal["fit"] = "fit"  # summary_at: fit BG/NBD on the users summarised
MAX_CUTOFFS = 8  # training cut-offs, spread evenly between the earliest and the latest that fit
RFM_FEATURES = ("recency_days", "frequency", "monetary", "age_days")
PURCHASE_FEATURES = (
    "recency_days",
    "frequency",
    "active_days",
    "age_days",
    "events",
    "events_per_active_day",
    "monetary",
    "spend_total",
    "mean_gap",
    "median_gap",
    "max_gap",
    "last_gap",
    "gap_cv",
    "recency_over_gap",
    "recency_over_max_gap",
    "active_days_lookback",
    "events_lookback",
    "active_days_recent",
    "bgnbd_p_alive",
    "bgnbd_expected",
    "bgnbd_p_churn",
)


def detect_mode(daily: pd.DataFrame) -> tuple[str, str]:
    """``("purchase" | "daily", why)`` from ``daily_activity``: how many of their days users are active.

    Per user, the share of days with activity of their own from their first such day to the last
    day of the data; the daily mode needs a dense platform, where the median user is active on at
    least ``DAILY_ACTIVE_SHARE`` of their days. Anything sparser (most real platforms, every shop)
    is purchase-style: days to months between a user's events.
    """
    if not len(daily):
        return mode_of_share(None)
    active = daily[daily[list(ACTIVITY)].sum(axis=1) > 0]
    if not len(active):
        return mode_of_share(None)
    day = active.index.get_level_values("day")
    frame = pd.DataFrame({"user": active.index.get_level_values("user_id"), "day": day})
    grouped = frame.groupby("user")["day"].agg(["count", "min"])
    span = (day.max() - grouped["min"]).dt.days + 1
    return mode_of_share(float((grouped["count"] / span).median()))


def mode_of_share(share: float | None) -> tuple[str, str]:
    """``detect_mode``'s answer for the median user's active share (None: no activity at all)."""
    if share is None:
        return "purchase", "no activity to measure"
    kind = "daily" if share >= DAILY_ACTIVE_SHARE else "purchase"
    sign = ">=" if kind == "daily" else "<"
    return kind, f"median user active on {share:.3g} of their days ({sign} {DAILY_ACTIVE_SHARE:g})"


def median_share(active_days: np.ndarray, span_days: np.ndarray, users: np.ndarray) -> float | None:
    """The median of ``active_days / span_days`` over users given as counts of equal pairs (``users``
    with each pair): what ``detect_mode`` computes, from a table whose size is bounded by the days."""
    weights = np.asarray(users, dtype=np.int64)
    if not weights.sum():
        return None
    shares = np.asarray(active_days, dtype=np.int64) / np.asarray(span_days, dtype=np.int64)
    order = np.argsort(shares, kind="stable")
    shares, ends = shares[order], np.cumsum(weights[order])
    total = int(ends[-1])
    middle = [(total - 1) // 2, total // 2]  # the one or two middle users, as numpy's median takes them
    return float(np.mean(shares[np.searchsorted(ends, middle, side="right")]))


def encode_history(daily: pd.DataFrame, users: pd.Index, as_of: pd.Timestamp) -> pd.DataFrame:
    """``HISTORY_COLUMNS`` per user from ``daily_activity`` rows on or before ``as_of`` (see the module doc)."""
    rows = daily[daily.index.get_level_values("day") <= as_of]
    out = pd.DataFrame({c: "" for c in HISTORY_COLUMNS}, index=users)
    if not len(rows):
        return out
    before = (as_of - rows.index.get_level_values("day")).days.to_numpy()
    table = pd.DataFrame(
        {
            "user": rows.index.get_level_values("user_id"),
            "history_days": before.astype(str),
            "history_events": rows[list(ACTIVITY)].sum(axis=1).to_numpy().astype(int).astype(str),
            "history_spend": np.round(rows["spend"].to_numpy(dtype=float), 2).astype(str),
            "history_ban": rows["ban"].to_numpy().astype(int).astype(str),
        }
    )
    joined = table.groupby("user", sort=False)[list(HISTORY_COLUMNS)].agg(" ".join)
    return joined.reindex(users).fillna("")


@dataclass
class History:
    """The histories of ``HISTORY_COLUMNS`` as flat arrays, one row per user-day; day 0 is ``as_of``."""

    user: np.ndarray  # row -> user position
    day: np.ndarray  # <= 0
    events: np.ndarray
    spend: np.ndarray
    ban: np.ndarray
    users: int

    @classmethod
    def from_features(cls, features: pd.DataFrame) -> History:
        missing = [c for c in HISTORY_COLUMNS if c not in features.columns]
        if missing:
            raise ValueError(f"features lack {missing[0]!r}: build them with ChurnDetector(mode='purchase').features()")

        def flat(column: str, dtype: type) -> tuple[np.ndarray, np.ndarray]:
            parts = features[column].fillna("").astype(str).str.split()
            lengths = parts.map(len).to_numpy()
            values: np.ndarray = np.array([v for p in parts for v in p], dtype=float).astype(dtype)
            return values, lengths

        days, lengths = flat("history_days", int)
        user = np.repeat(np.arange(len(features)), lengths)
        events = flat("history_events", float)[0]
        spend = flat("history_spend", float)[0]
        ban = flat("history_ban", float)[0]
        return cls(user, -days, events, spend, ban, len(features))

    @property
    def first_day(self) -> int:
        return int(self.day.min()) if self.day.size else 0


def summary_at(
    history: History,
    cutoff: int,
    lookback: int,
    horizon: int,
    bgnbd: BGNBDParams | Literal["fit"] | None = FIT,
    has_spend: bool | None = None,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, BGNBDParams | None]:
    """``(features, has_history, banned, bgnbd)`` for every user at the end of day ``cutoff``.

    ``features`` has ``PURCHASE_FEATURES`` (NaN where undefined, e.g. gaps of a one-time customer;
    the BG/NBD columns are NaN when BG/NBD could not be fitted, see ``argus.detectors.btyd``).
    BG/NBD is fitted on these users unless ``bgnbd`` gives its parameters (None: none could be
    fitted); ``has_spend`` (whether anyone's history has spend, so monetary value is spend and not
    events) likewise defaults to these users'. Given both, each user's row depends on its own
    history alone, which is what lets the nightly job score customers in blocks.
    """
    n = history.users
    seen = history.day <= cutoff
    has_history = np.bincount(history.user[seen], minlength=n) > 0
    bans = np.bincount(history.user[seen], weights=history.ban[seen], minlength=n)
    banned = bans > 0
    active_row = seen & (history.events > 0)
    has_active = np.bincount(history.user[active_row], minlength=n) > 0
    # A user whose only events are about them (reports, bans) is dated by those events.
    used = active_row | (seen & ~has_active[history.user])
    u, d = history.user[used], history.day[used]
    ev, sp = history.events[used], history.spend[used]
    count = np.bincount(u, minlength=n).astype(float)
    first = np.full(n, cutoff, dtype=float)
    last = np.full(n, cutoff, dtype=float)
    np.minimum.at(first, u, d)
    last[:] = -np.inf
    np.maximum.at(last, u, d)
    last = np.where(np.isfinite(last), last, cutoff)
    events = np.bincount(u, weights=ev, minlength=n)
    spend = np.bincount(u, weights=sp, minlength=n)
    active_days = np.where(has_active, count, 0.0)
    x = np.clip(count - 1, 0, None)
    t_x = last - first
    age = cutoff + 1 - first
    recency = cutoff - last
    # Gaps between consecutive days with events (rows are sorted by user, then day descending).
    order = np.lexsort((d, u))
    su, sd = u[order], d[order]
    same = su[1:] == su[:-1]
    gaps = (sd[1:] - sd[:-1])[same].astype(float)
    gap_user = su[1:][same]
    gap_count = np.bincount(gap_user, minlength=n)
    safe = np.clip(gap_count, 1, None)
    mean_gap = np.where(gap_count > 0, np.bincount(gap_user, weights=gaps, minlength=n) / safe, np.nan)
    mean_sq = np.bincount(gap_user, weights=gaps**2, minlength=n) / safe
    std_gap = np.sqrt(np.clip(mean_sq - np.nan_to_num(mean_gap) ** 2, 0, None))
    max_gap = np.full(n, np.nan)
    if gaps.size:
        tmp = np.zeros(n)
        np.maximum.at(tmp, gap_user, gaps)
        max_gap = np.where(gap_count > 0, tmp, np.nan)
    median_gap = np.full(n, np.nan)
    last_gap = np.full(n, np.nan)
    if gaps.size:
        frame = pd.DataFrame({"u": gap_user, "g": gaps})
        grouped = frame.groupby("u")["g"]
        median_gap[grouped.median().index.to_numpy()] = grouped.median().to_numpy()
        last_gap[grouped.last().index.to_numpy()] = grouped.last().to_numpy()
    in_lookback = d > cutoff - lookback
    recent = d > cutoff - RECENT_DAYS
    if has_spend is None:
        has_spend = history_has_spend(history)
    monetary = (spend if has_spend else events) / np.clip(count, 1, None)
    feats: dict[str, np.ndarray] = {
        "recency_days": recency,
        "frequency": x,
        "active_days": active_days,
        "age_days": age,
        "events": events,
        "events_per_active_day": events / np.clip(count, 1, None),
        "monetary": monetary,
        "spend_total": spend,
        "mean_gap": mean_gap,
        "median_gap": median_gap,
        "max_gap": max_gap,
        "last_gap": last_gap,
        "gap_cv": np.where(gap_count > 1, std_gap / np.clip(np.nan_to_num(mean_gap), 1e-9, None), np.nan),
        "recency_over_gap": recency / np.where(gap_count > 0, np.clip(np.nan_to_num(mean_gap), 1, None), np.nan),
        "recency_over_max_gap": recency / np.where(gap_count > 0, np.clip(np.nan_to_num(max_gap), 1, None), np.nan),
        "active_days_lookback": np.bincount(u[in_lookback], minlength=n).astype(float),
        "events_lookback": np.bincount(u[in_lookback], weights=ev[in_lookback], minlength=n),
        "active_days_recent": np.bincount(u[recent], minlength=n).astype(float),
    }
    fit_on = has_history & ~banned
    params: BGNBDParams | None = None
    if bgnbd == FIT:
        try:
            params, _ = fit_bgnbd(x[fit_on], t_x[fit_on], age[fit_on])
        except ValueError:
            params = None
    else:
        params = bgnbd
    if params is None:
        for name in ("bgnbd_p_alive", "bgnbd_expected", "bgnbd_p_churn"):
            feats[name] = np.full(n, np.nan)
    else:
        feats["bgnbd_p_alive"] = p_alive(params, x, t_x, age)
        feats["bgnbd_expected"] = expected_purchases(params, horizon, x, t_x, age)
        feats["bgnbd_p_churn"] = p_no_purchase(params, horizon, x, t_x, age)
    out = pd.DataFrame(feats)
    for name in PURCHASE_FEATURES:
        out.loc[~has_history, name] = np.nan
    return out, has_history, banned, params


def history_has_spend(history: History) -> bool:
    return bool((history.spend > 0).any())


def bgnbd_inputs(history: History, cutoff: int = 0) -> pd.DataFrame:
    """``x, t_x, T`` of the customers BG/NBD is fitted on at ``cutoff`` (history, no ban in force), one
    row per customer: pooled by equal rows and summed over parts of the users they fit the same model."""
    summary, has_history, banned, _ = summary_at(history, cutoff, 1, 1, bgnbd=None, has_spend=False)
    fit_on = has_history & ~banned
    age = summary["age_days"].to_numpy(dtype=float)[fit_on]
    recency = summary["recency_days"].to_numpy(dtype=float)[fit_on]
    # t_x = last - first and T = cutoff + 1 - first, so t_x = T - 1 - recency (whole days: exact).
    return pd.DataFrame({"x": summary["frequency"].to_numpy(dtype=float)[fit_on], "t_x": age - 1 - recency, "t": age})


def churned_after(history: History, cutoff: int, horizon: int) -> np.ndarray:
    """Per user: no event of their own in days ``cutoff + 1 .. cutoff + horizon``."""
    window = (history.day > cutoff) & (history.day <= cutoff + horizon) & (history.events > 0)
    return np.asarray(np.bincount(history.user[window], minlength=history.users) == 0)


@dataclass(frozen=True)
class TrainingPlan:
    """Where ``fit`` learns: the horizon it can observe and the cut-offs (days, 0 = ``as_of``)."""

    horizon: int
    cutoffs: tuple[int, ...]
    history_days: int
    note: str  # "" when the asked-for horizon fits, else what was done instead


def training_plan(history: History, lookback: int, horizon: int) -> TrainingPlan:
    """The cut-offs with an observed ``horizon`` and enough history before them (see the module doc)."""
    span = -history.first_day + 1  # days of data up to and including as_of
    need = max(lookback, span // 2)
    fits = span - need
    used = min(horizon, fits)
    note = ""
    if used < horizon:
        used = max(1, used)
        note = (
            f"the {span}-day history is shorter than needed for a {horizon}-day horizon after a training cut-off"
            f" with {need} days of history before it; learned from the longest horizon that fits, {used} days"
        )
    latest = -used
    earliest = min(latest, history.first_day + need - 1)
    if latest - earliest < MAX_CUTOFFS:
        cutoffs = tuple(range(earliest, latest + 1))[-MAX_CUTOFFS:]
    else:
        cutoffs = tuple(sorted({round(float(c)) for c in np.linspace(earliest, latest, MAX_CUTOFFS)}))
    return TrainingPlan(used, cutoffs, span, note)
