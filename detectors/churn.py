"""Churn risk: will a user who was active in the lookback window show no activity within the horizon?

After Bhattacharjee, Thukral & Patil, *Early Churn Prediction from Large Scale User-Product
Interaction Time Series* (ICMLA 2023): churn is multivariate time-series classification over
each user's daily activity. The paper labels a user as churned after a run of inactive days, feeds
30 days of daily activity to the models and compares gradient-boosted trees on aggregated windows
with sequence models (CNN, Transformer). Here the same comparison runs with numpy and
scikit-learn only: a ``HistGradientBoostingClassifier`` on window aggregates against a small
neural network (``MLPClassifier``) over the raw daily series, and ``fit`` keeps whichever scores
the higher AUC on held-out users.

**Label.** For a cut-off at the end of day ``T``, a user with at least one activity event (chat,
click, payment, or an account action of their own; not a report or ban about them) in the
``lookback_days`` up to ``T`` *churns* when they have none in days ``T+1 .. T+horizon_days``.

**Training without labels.** ``features`` keeps each user's daily series (``history_days`` of it,
columns ``<channel>_lag<k>``, ``k`` days before ``as_of``). ``fit`` slides a cut-off ``c`` over
that history: wherever the whole horizon after ``c`` lies inside the data, every user active in
the window before ``c`` is one training example, labelled by what the series shows after ``c``.
``score`` then classifies the window ending at ``as_of``, whose horizon is the unknown future.
When the history is too short for any observed horizon (or shows too few churners and stayers
to learn from), ``fit`` falls back to an activity-rate prior, ``P(no active day in h days) =
(1 - p)^h`` with ``p`` the user's smoothed share of active days; such rows say so in ``status``.

**Evidence.** The models are fitted on users with at least ``min_active_days`` active days in
the lookback (status ``scored``). Every user with an event on or before ``as_of`` gets a score:
one with fewer active days is scored by the same model (``low evidence: 1 active day in the
30-day lookback (the model is fit on users with >= 2)``); one silent through the whole lookback
but with earlier events (``days_with_events``, counted over all the data, not only the kept
history) gets the share of such users who stayed silent through the horizon, measured on the
training cut-offs with one success and one failure added (status ``silent: ...``); silence is risk,
not a reason to refuse.

**Bad input.** Days on which the whole data set has (almost) no events are outages, not a week
of everybody churning: they are skipped and the skip is listed in each user's reasons. Users with
no events on or before ``as_of``, a ban in force, or broken (NaN) features get no score and a
status that says why.

Cost: one pass over the events, then ``O(users x cut-offs x lookback)`` numpy work; fitting the
two models on up to ``MAX_EXAMPLES`` examples takes seconds to a minute on one core.

>>> import pandas as pd
>>> from argus.detectors.events import Events
>>> chat = pd.DataFrame({"event_id": ["a", "b", "c"], "user_id": ["u1", "u1", "u2"],
...     "ts": pd.to_datetime(["2026-10-01 10:00", "2026-10-03 09:00", "2026-10-03 12:00"], utc=True)})
>>> daily_activity(Events({"chat": chat}))["chat"].tolist()
[1.0, 1.0, 1.0]
"""

from __future__ import annotations

import pickle
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from argus.detectors.base import LOW_EVIDENCE, SCORED, Detector, Reason, norm_reasons, score_frame
from argus.detectors.btyd import BGNBDParams, fit_bgnbd
from argus.detectors.churn_purchase import (
    HISTORY_COLUMNS,
    PURCHASE_FEATURES,
    History,
    bgnbd_inputs,
    churned_after,
    detect_mode,
    encode_history,
    history_has_spend,
    summary_at,
    training_plan,
)
from argus.detectors.events import Events

# Daily channels, in tensor order. The first four are the user's own actions ("activity").
CHANNELS = ("chat", "click", "payment", "account", "moderation", "spend", "sessions", "ban")
ACTIVITY_CHANNELS = ("chat", "click", "payment", "account")
NOT_USER_ACTIONS = frozenset(["ban", "unban"])  # account events the platform does to a user

PAPER_LOOKBACK_DAYS = 30  # the paper trains on 30 days of daily time-series features
DEFAULT_HORIZON_DAYS = 14  # two weeks: long enough to tell leaving from a quiet week
DEFAULT_HISTORY_DAYS = 90  # a 30-day lookback, a 14-day horizon and ~23 full-window training cut-offs
MIN_ACTIVE_DAYS = 2  # a rate or trend needs two active days; one event is no history
MIN_CLASS_EXAMPLES = 20  # fewer churners (or stayers) than this: too few to learn from, use the prior
MAX_EXAMPLES = 30_000  # training examples kept (a seeded sample beyond that), to bound fit time
CUTOFF_STRIDE_DAYS = 2  # training cut-offs every other day: neighbouring days' windows are near copies
VALIDATION_SHARE = 4  # one user in 4 (by a hash of user_id) validates the model choice
# A day is an outage when the whole data set has under 5% of a median day's events; only judged
# when a median day has at least 100 events (smaller files cannot tell an outage from a quiet day).
OUTAGE_SHARE = 0.05
OUTAGE_MIN_MEDIAN_EVENTS = 100
SEED = 0
# A fixed number of epochs rather than MLPClassifier's early stopping, which watches accuracy: with
# a few percent churners, accuracy stops improving at "nobody churns" and training ends there.
SEQUENCE_EPOCHS = 20  # measured on the evaluation world: 40 epochs gave the same held-out AUC

PRIOR_STATUS = "scored (activity-rate prior: no observed horizon to learn from)"
MODELS = ("auto", "gbm", "sequence")
MODES = ("auto", "daily", "purchase")
DAYS_PER_UNIT = {"d": 1.0, "w": 7.0, "m": 365.25 / 12}  # a month is a twelfth of a year (3m = 91 days)

REASON_LABELS = {
    "days_since_active": "days since last activity",
    "active_share_7": "share of active days, last 7 days",
    "events_per_day_7": "events per day, last 7 days",
    "activity_ratio_7": "events per day, last 7 days vs before",
    "sessions_per_day_7": "sessions per day, last 7 days",
    "moderation_window": "reports and sanctions in the lookback",
}
PURCHASE_PRIOR_STATUS = "scored (purchase-rate prior: too few churners, stayers or repeat customers to learn from)"
PURCHASE_REASON_LABELS = {
    "recency_days": "days since the last purchase or activity",
    "recency_over_gap": "days since the last one vs the customer's mean gap",
    "bgnbd_p_alive": "BG/NBD probability the customer is still active",
    "active_days_lookback": "days with events in the lookback",
    "frequency": "repeat days with events",
}
PURCHASE_REASON_DIRECTIONS = {
    "recency_days": 1.0,
    "recency_over_gap": 1.0,
    "bgnbd_p_alive": -1.0,
    "active_days_lookback": -1.0,
    "frequency": -1.0,
}
# +1: higher is riskier, -1: lower is riskier.
REASON_DIRECTIONS = {
    "days_since_active": 1.0,
    "active_share_7": -1.0,
    "events_per_day_7": -1.0,
    "activity_ratio_7": -1.0,
    "sessions_per_day_7": -1.0,
    "moderation_window": 1.0,
}


def parse_duration(value: str | int, option: str = "--horizon") -> int:
    """Days in ``value``: a number of days (``14``, ``14d``), weeks (``26w``) or months (``3m``, 30.44 days each).

    Raises ``ValueError`` naming ``option`` for anything else or for less than one day.

    >>> [parse_duration(v) for v in ("14", "14d", "26w", "3m")]
    [14, 14, 182, 91]
    """
    text = str(value).strip().lower()
    unit = text[-1:] if text[-1:] in DAYS_PER_UNIT else "d"
    number = text[:-1] if text[-1:] in DAYS_PER_UNIT else text
    try:
        amount = float(number)
    except ValueError:
        amount = float("nan")
    days = round(amount * DAYS_PER_UNIT[unit]) if np.isfinite(amount) else 0
    if not np.isfinite(amount) or days < 1:
        raise ValueError(f"{option} {value!r}: expected a duration of at least one day such as 14d, 26w or 3m")
    return int(days)


def daily_activity(events: Events) -> pd.DataFrame:
    """Per user and UTC day: events per type, approved purchase spend, distinct sessions and bans.

    Indexed by ``(user_id, day)`` (day: midnight UTC), columns ``CHANNELS``, only user-days with at
    least one event. ``account`` counts the user's own account actions (not bans or unbans, which
    the platform does: ``ban`` is +1 per ban and -1 per unban, so its running sum says whether a ban
    is in force); ``spend`` sums the amounts of approved purchases in their own currencies (no
    conversion); ``sessions`` counts distinct ``session_id`` over all event types.
    """
    parts: list[pd.DataFrame] = []
    sessions: list[pd.DataFrame] = []
    for event_type in ("chat", "click", "payment", "account", "moderation"):
        frame = events[event_type]
        if not len(frame):
            continue
        day = pd.to_datetime(frame["ts"], utc=True).dt.floor("D")
        part = pd.DataFrame({"user_id": frame["user_id"].astype(str).to_numpy(), "day": day.to_numpy()})
        zeros = np.zeros(len(frame))
        for channel in CHANNELS:
            part[channel] = zeros
        if event_type == "account" and "action" in frame:
            action = frame["action"]
            part["account"] = (~action.isin(NOT_USER_ACTIONS)).to_numpy(dtype=float)
            part["ban"] = (action == "ban").to_numpy(dtype=float) - (action == "unban").to_numpy(dtype=float)
        else:
            part[event_type] = 1.0
        if event_type == "payment" and {"action", "status", "amount"} <= set(frame.columns):
            purchase = (frame["action"] == "purchase") & (frame["status"] == "approved")
            part["spend"] = np.where(purchase, frame["amount"].astype(float).fillna(0.0), 0.0)
        parts.append(part)
        if "session_id" in frame:
            has = frame["session_id"].notna().to_numpy()
            sessions.append(part.loc[has, ["user_id", "day"]].assign(session_id=frame["session_id"].to_numpy()[has]))
    if not parts:
        empty = pd.MultiIndex.from_arrays([pd.Index([], dtype=object), pd.DatetimeIndex([], tz="UTC")])
        return pd.DataFrame(columns=list(CHANNELS), index=empty.set_names(["user_id", "day"]), dtype=float)
    daily = pd.concat(parts, ignore_index=True).groupby(["user_id", "day"], sort=True)[list(CHANNELS)].sum()
    if sessions:
        distinct = pd.concat(sessions, ignore_index=True).groupby(["user_id", "day"])["session_id"].nunique()
        daily["sessions"] = distinct.reindex(daily.index).fillna(0).astype(float)
    return daily


def activity_tensor(daily: pd.DataFrame, users: pd.Index, days: pd.DatetimeIndex) -> np.ndarray:
    """``daily`` as a dense ``(users, days, channels)`` array; user-days not in ``daily`` are 0."""
    out = np.zeros((len(users), len(days), len(CHANNELS)))
    if not len(daily) or not len(users) or not len(days):
        return out
    u = users.get_indexer(daily.index.get_level_values("user_id"))
    d = days.get_indexer(daily.index.get_level_values("day"))
    keep = (u >= 0) & (d >= 0)
    out[u[keep], d[keep]] = daily.to_numpy(dtype=float)[keep]
    return out


def outage_days(totals: np.ndarray) -> np.ndarray:
    """Mask of days whose event total is under ``OUTAGE_SHARE`` of the median day (see the module doc)."""
    totals = np.asarray(totals, dtype=float)
    if not totals.size:
        return np.zeros(0, dtype=bool)
    median = float(np.median(totals))
    if median < OUTAGE_MIN_MEDIAN_EVENTS:
        return np.zeros(totals.size, dtype=bool)
    return totals < OUTAGE_SHARE * median


def churn_labels(
    tensor: np.ndarray, cutoff: int, lookback_days: int, horizon_days: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(eligible, churned)`` per user for a cut-off at the end of day index ``cutoff``.

    Eligible: some activity in the ``lookback_days`` up to ``cutoff``; churned: no activity in the
    ``horizon_days`` after it. Raises ``ValueError`` when the horizon runs past the series.
    """
    if cutoff + horizon_days >= tensor.shape[1]:
        raise ValueError(
            f"the {horizon_days}-day horizon after day {cutoff} runs past the {tensor.shape[1]}-day series"
        )
    activity = _activity(tensor)
    eligible = activity[:, max(0, cutoff - lookback_days + 1) : cutoff + 1].sum(axis=1) > 0
    churned = activity[:, cutoff + 1 : cutoff + 1 + horizon_days].sum(axis=1) == 0
    return eligible, eligible & churned


def _activity(tensor: np.ndarray) -> np.ndarray:
    return np.asarray(tensor[:, :, [CHANNELS.index(c) for c in ACTIVITY_CHANNELS]].sum(axis=2))


@dataclass
class Windows:
    """Model inputs for the windows ending at one cut-off: aggregates and the raw series."""

    aggregates: pd.DataFrame  # one row per user, AGGREGATE_NAMES
    series: np.ndarray  # (users, lookback x (series channels + 2)): log counts, relative activity, observed mask
    active_days: np.ndarray  # active days in the window
    banned: np.ndarray  # a ban in force at the cut-off


SERIES_CHANNELS = ("chat", "click", "payment", "account", "moderation", "spend", "sessions")


def window_inputs(tensor: np.ndarray, cutoff: int, lookback_days: int) -> Windows:
    """Aggregates and the flattened daily series of the ``lookback_days`` ending at day ``cutoff``.

    Days before the series starts are padded with zeros and marked unobserved (a mask row in the
    series; ``observed_days`` among the aggregates), so early cut-offs and short histories still
    give comparable rows. Rates are per day since the user's first active day in the window.
    """
    n, lb = tensor.shape[0], lookback_days
    start = cutoff - lb + 1
    window = np.zeros((n, lb, len(CHANNELS)))
    observed = np.zeros(lb, dtype=bool)
    lo = max(0, start)
    window[:, lo - start :, :] = tensor[:, lo : cutoff + 1, :]
    observed[lo - start :] = True
    activity = _activity(window)
    active = activity > 0
    active_days = active.sum(axis=1)
    any_active = active_days > 0
    idx = np.arange(lb)
    last = np.where(any_active, np.max(np.where(active, idx, -1), axis=1), -1)
    first = np.where(any_active, np.min(np.where(active, idx, lb), axis=1), lb)
    days_since_active = np.where(any_active, lb - 1 - last, lb).astype(float)
    tenure = np.where(any_active, lb - first, 0).astype(float)  # days from first active day to the cut-off
    since_first = idx[None, :] >= first[:, None]

    def rate(values: np.ndarray, days: int) -> np.ndarray:
        recent = values[:, lb - days :]
        span = np.clip(np.minimum(tenure, days), 1, None)
        return np.asarray(recent.sum(axis=1) / span)

    def before(values: np.ndarray, days: int) -> np.ndarray:
        mask = since_first[:, : lb - days]
        span = mask.sum(axis=1)
        total = (values[:, : lb - days] * mask).sum(axis=1)
        return np.where(span > 0, total / np.clip(span, 1, None), np.nan)

    agg: dict[str, np.ndarray] = {
        "days_since_active": days_since_active,
        "tenure_days": tenure,
        "observed_days": np.full(n, float(observed.sum())),
        "active_days": active_days.astype(float),
        "active_share_7": rate(active.astype(float), min(7, lb)),
        "active_share_window": active_days / np.clip(tenure, 1, None),
    }
    short = min(7, lb)
    for label, days in (("1", 1), ("3", min(3, lb)), ("7", short), ("window", lb)):
        agg[f"events_per_day_{label}"] = rate(activity, days)
    prev = before(activity, short) if lb > short else np.full(n, np.nan)
    # Ratios of daily rates with 0.1 events/day added to both sides, so quiet users do not divide by 0;
    # with no days before the last 7 (a short history), 1.0: no evidence of a change either way.
    agg["activity_ratio_7"] = np.where(
        np.isnan(prev), 1.0, (agg["events_per_day_7"] + 0.1) / (np.nan_to_num(prev) + 0.1)
    )
    agg["activity_ratio_3"] = (rate(activity, min(3, lb)) + 0.1) / (agg["events_per_day_window"] + 0.1)
    log_activity = np.log1p(activity)
    agg["activity_slope"] = _slope(log_activity, since_first)
    gaps = _gap_stats(active, first, last)
    agg["max_gap"], agg["mean_gap"] = gaps
    agg["recency_over_gap"] = days_since_active / (agg["max_gap"] + 1.0)
    for channel in ("chat", "click", "payment", "spend", "sessions"):
        values = window[:, :, CHANNELS.index(channel)]
        agg[f"{channel}_per_day_7"] = rate(values, short)
        agg[f"{channel}_per_day_window"] = rate(values, lb)
    agg["moderation_window"] = window[:, :, CHANNELS.index("moderation")].sum(axis=1)
    bans = tensor[:, : cutoff + 1, CHANNELS.index("ban")].sum(axis=1) if cutoff >= 0 else np.zeros(n)
    aggregates = pd.DataFrame(agg)

    series_idx = [CHANNELS.index(c) for c in SERIES_CHANNELS]
    level = np.log1p(window[:, :, series_idx])
    relative = activity / (np.clip(activity.sum(axis=1, keepdims=True), 1, None) / np.clip(tenure, 1, None)[:, None])
    series = np.concatenate(
        [
            level.transpose(0, 2, 1).reshape(n, lb * len(series_idx)),
            np.log1p(relative),
            np.broadcast_to(observed, (n, lb)),
        ],
        axis=1,
    )
    return Windows(aggregates, series, active_days, bans > 0)


def _slope(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Least-squares slope per row over the masked days (0 with fewer than two days)."""
    x = np.arange(values.shape[1], dtype=float)[None, :]
    w = mask.astype(float)
    count = w.sum(axis=1)
    safe = np.clip(count, 1, None)
    mx = (w * x).sum(axis=1) / safe
    my = (w * values).sum(axis=1) / safe
    cov = (w * (x - mx[:, None]) * (values - my[:, None])).sum(axis=1)
    var = (w * (x - mx[:, None]) ** 2).sum(axis=1)
    return np.where((count >= 2) & (var > 0), cov / np.where(var > 0, var, 1.0), 0.0)


def _gap_stats(active: np.ndarray, first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longest and mean run of inactive days between a user's first and last active day."""
    n, lb = active.shape
    longest = np.zeros(n)
    run = np.zeros(n)
    idx = np.arange(lb)
    inside = (idx[None, :] > first[:, None]) & (idx[None, :] < last[:, None])
    for day in range(lb):
        gap_day = inside[:, day] & ~active[:, day]
        run = np.where(gap_day, run + 1, 0.0)
        longest = np.maximum(longest, run)
    count = active.sum(axis=1)
    span = np.clip(last - first + 1, 0, None)
    mean = np.where(count >= 2, (span - count) / np.clip(count - 1, 1, None), 0.0)
    return longest, mean


AGGREGATE_NAMES: tuple[str, ...] = tuple(window_inputs(np.zeros((1, 2, len(CHANNELS))), 1, 8).aggregates.columns)


def _user_fold(user_ids: np.ndarray) -> np.ndarray:
    """A stable fold per user (crc32 of the id), so the same users validate in every run."""
    return np.array([zlib.crc32(str(u).encode()) % VALIDATION_SHARE for u in user_ids])


@dataclass(frozen=True)
class ChurnPopulation:
    """What a user's churn features need from everybody's activity, small whatever the number of users.

    Given one, ``ChurnDetector.features_from_daily`` builds any set of users' features from their own
    daily rows alone (so the nightly job builds them in blocks of users) and equal to ``features``.
    """

    mode: str
    mode_why: str
    as_of: pd.Timestamp | None  # the last day of data used; None when there is no activity at all
    history: pd.DatetimeIndex  # daily mode: the series' days, oldest first, outage days left out
    skipped: tuple[pd.Timestamp, ...] = ()  # daily mode: outage days left out of the lookback
    bgnbd: BGNBDParams | None = None  # purchase mode: BG/NBD fitted on everybody's history at as_of
    has_spend: bool = False  # purchase mode: monetary value is spend (else events)


def activity_totals(daily: pd.DataFrame) -> pd.Series:
    """Every user's own actions per day of ``daily`` (days with only moderation events count 0)."""
    day_of = daily.index.get_level_values("day")
    return daily[list(ACTIVITY_CHANNELS)].sum(axis=1).groupby(day_of).sum()


class ChurnDetector(Detector):
    """Churn risk within ``horizon_days`` of ``as_of`` from each user's daily activity (see the module doc).

    Parameters: ``as_of`` (ISO date; the last day of data used, default the last event day),
    ``horizon_days`` (default 14), ``lookback_days`` (default 30, the paper's window),
    ``history_days`` (daily series kept for training, default 90), ``model`` ("auto": the better
    of "gbm" and "sequence" on held-out users), ``min_active_days`` (default 2), ``mode``
    ("daily": the daily-activity series above; "purchase": the non-contractual mode of
    ``argus.detectors.churn_purchase``; "auto": chosen from the data by ``detect_mode``).
    """

    name = "churn"
    alert_kind = "churn"

    def __init__(
        self,
        as_of: str | None = None,
        horizon_days: int = DEFAULT_HORIZON_DAYS,
        lookback_days: int = PAPER_LOOKBACK_DAYS,
        history_days: int = DEFAULT_HISTORY_DAYS,
        model: str = "auto",
        min_active_days: int = MIN_ACTIVE_DAYS,
        mode: str = "auto",
    ) -> None:
        if as_of is not None:
            as_of = pd.Timestamp(as_of).date().isoformat()  # raises ValueError on a non-date
        for label, value in (("horizon_days", horizon_days), ("lookback_days", lookback_days)):
            if int(value) < 1:
                raise ValueError(f"{label} must be at least 1 day (got {value})")
        if model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)} (got {model!r})")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)} (got {mode!r})")
        super().__init__(
            as_of=as_of,
            horizon_days=int(horizon_days),
            lookback_days=int(lookback_days),
            history_days=max(int(history_days), int(lookback_days)),
            model=model,
            min_active_days=max(1, int(min_active_days)),
            mode=mode,
        )

    def at(self, as_of: str | None) -> ChurnDetector:
        """This detector, with what it learned, scoring at another ``as_of`` (same horizon and lookback).

        For ``argus detect churn --model PATH --as-of DATE``: the loaded model answers for the
        horizon it was fitted for; refit to change the horizon.
        """
        other = type(self)(**{**self.params, "as_of": as_of})
        other.state, other.metrics, other.fitted_at = self.state, self.metrics, self.fitted_at
        return other

    # --- features -------------------------------------------------------------------------
    def features(self, events: Events) -> pd.DataFrame:
        """Per user: aggregates of the lookback window ending at ``as_of`` and the daily series.

        Events after ``as_of`` are ignored. Outage days (see ``outage_days``) are left out of the
        series; ``outage_days_skipped`` counts those in the lookback.
        """
        daily = daily_activity(events)
        return self.features_from_daily(daily, events.user_ids.astype(str), self.population(daily))

    def features_from_daily(self, daily: pd.DataFrame, users: pd.Index, population: ChurnPopulation) -> pd.DataFrame:
        """``features`` of ``users`` from their ``daily_activity`` rows and the ``population``'s figures."""
        users = pd.Index(users, name="user_id").astype(str)
        if population.mode == "purchase":
            return self._purchase_features(daily, users, population)
        history = population.history
        tensor = activity_tensor(daily, users, history)
        lookback = int(self.params["lookback_days"])
        windows = window_inputs(tensor, len(history) - 1, lookback)
        out = windows.aggregates.copy()
        out.index = pd.Index(users, name="user_id")
        out["banned"] = windows.banned.astype(float)
        out["outage_days_skipped"] = float(len(population.skipped))
        out["days_with_events"] = _days_with_events(daily, population.as_of, out.index)
        lags = {
            f"{channel}_lag{lag:03d}": tensor[:, len(history) - 1 - lag, c]
            for c, channel in enumerate(CHANNELS)
            for lag in range(len(history))
        }
        out = pd.concat([out, pd.DataFrame(lags, index=out.index)], axis=1)
        out.attrs["as_of"] = (
            population.as_of.date().isoformat() if population.as_of is not None else self.params["as_of"]
        )
        out.attrs["outage_days"] = [d.date().isoformat() for d in population.skipped]
        out.attrs["mode"], out.attrs["mode_why"] = population.mode, population.mode_why
        return out.sort_index()

    def population(self, daily: pd.DataFrame) -> ChurnPopulation:
        """The ``ChurnPopulation`` of every user in ``daily`` (``daily_activity``)."""
        mode, why = self._mode(daily)
        if not len(daily):
            return ChurnPopulation(mode, why, None, pd.DatetimeIndex([], tz="UTC"))
        as_of = self._as_of(daily)
        if mode == "purchase":
            users = pd.Index(daily.index.get_level_values("user_id").unique())
            history = History.from_features(encode_history(daily, users, as_of))
            return self.purchase_population(why, as_of, bgnbd_inputs(history), history_has_spend(history))
        return self.daily_population(why, as_of, activity_totals(daily))

    def daily_population(self, why: str, as_of: pd.Timestamp, totals: pd.Series) -> ChurnPopulation:
        """Daily mode, from ``activity_totals`` (per day, over every user) and the last day ``as_of``."""
        history, skipped = self._history_days(totals, as_of)
        return ChurnPopulation("daily", why, as_of, history, tuple(skipped))

    def purchase_population(
        self, why: str, as_of: pd.Timestamp, inputs: pd.DataFrame, has_spend: bool
    ) -> ChurnPopulation:
        """Purchase mode, from ``bgnbd_inputs`` (rows ``x, t_x, t``, with ``users`` counting equal rows
        when pooled) over every user's history, and whether any history has spend."""
        weights = inputs["users"].to_numpy(dtype=float) if "users" in inputs else None
        try:
            params, _ = fit_bgnbd(inputs["x"], inputs["t_x"], inputs["t"], weights=weights)
        except ValueError:
            params = None
        return ChurnPopulation("purchase", why, as_of, pd.DatetimeIndex([], tz="UTC"), (), params, bool(has_spend))

    def fixed_mode(self) -> tuple[str, str] | None:
        """The mode when the data does not choose it: a fitted model's, else the ``mode`` parameter."""
        if self.state is not None and "mode" in self.state:
            return str(self.state["mode"]), "the fitted model's mode"
        if self.params.get("mode", "auto") != "auto":
            return str(self.params["mode"]), "set by the mode parameter"
        return None

    def _mode(self, daily: pd.DataFrame) -> tuple[str, str]:
        """The mode: a fitted model's, else the ``mode`` parameter, else ``detect_mode`` on the data."""
        fixed = self.fixed_mode()
        if fixed is not None:
            return fixed
        if len(daily) and self.params["as_of"] is not None:
            daily = daily[daily.index.get_level_values("day") <= self._as_of(daily)]
        return detect_mode(daily)

    def _purchase_features(self, daily: pd.DataFrame, users: pd.Index, population: ChurnPopulation) -> pd.DataFrame:
        """Purchase mode: the customer summary at ``as_of`` (``PURCHASE_FEATURES``) and the history as text."""
        index = pd.Index(users, name="user_id")
        why = population.mode_why
        if population.as_of is None:
            out = pd.DataFrame({c: "" for c in HISTORY_COLUMNS}, index=index)
            for name in PURCHASE_FEATURES:
                out[name] = np.nan
            out["days_with_events"], out["banned"] = 0.0, 0.0
            out.attrs.update(as_of=self.params["as_of"], mode="purchase", mode_why=why)
            return out.sort_index()
        as_of = population.as_of
        text = encode_history(daily, index, as_of)
        history = History.from_features(text)
        summary, has_history, banned, _ = summary_at(
            history,
            0,
            int(self.params["lookback_days"]),
            int(self.params["horizon_days"]),
            bgnbd=population.bgnbd,
            has_spend=population.has_spend,
        )
        summary.index = index
        out = pd.concat([summary, text], axis=1)
        out["days_with_events"] = _days_with_events(daily, as_of, index)
        out["banned"] = (banned & has_history).astype(float)
        out.attrs.update(as_of=as_of.date().isoformat(), mode="purchase", mode_why=why)
        return out.sort_index()

    def _as_of(self, daily: pd.DataFrame) -> pd.Timestamp:
        if self.params["as_of"] is not None:
            return pd.Timestamp(self.params["as_of"], tz="UTC")
        return pd.Timestamp(daily.index.get_level_values("day").max())

    def _history_days(self, totals: pd.Series, as_of: pd.Timestamp) -> tuple[pd.DatetimeIndex, list[pd.Timestamp]]:
        """The days of the series (oldest first, outages left out) and the outage days left out."""
        if not len(totals):
            return pd.DatetimeIndex([], tz="UTC"), []
        first = pd.Timestamp(totals.index.min())
        if as_of < first:
            return pd.DatetimeIndex([], tz="UTC"), []
        span = pd.date_range(first, as_of, freq="D")
        totals = totals.reindex(span, fill_value=0.0)
        outage = outage_days(totals.to_numpy())
        kept = span[~outage]
        keep_days = int(self.params["history_days"])
        lookback_start = span[-min(len(span), int(self.params["lookback_days"]))]
        skipped = [d for d in span[outage] if d >= lookback_start]
        return pd.DatetimeIndex(kept[-keep_days:]), skipped

    # --- fit ------------------------------------------------------------------------------
    def fit(self, features: pd.DataFrame, labels: pd.Series | None = None) -> Self:
        """Learn from cut-offs inside the series (labels derived, see the module doc) or from ``labels``.

        ``labels`` (bool, indexed by user_id): churn within the horizon after ``as_of``; then the
        windows ending at ``as_of`` are the training examples. Features built in purchase mode
        (``HISTORY_COLUMNS``) fit the purchase mode; the mode is kept in the state and ``metrics``.
        """
        if all(c in features.columns for c in HISTORY_COLUMNS):
            return self._fit_purchase(features, labels)
        self._fit_daily(features, labels)
        assert self.state is not None
        self.state["mode"] = "daily"
        self.metrics.update(mode="daily", mode_why=features.attrs.get("mode_why", ""))
        return self

    def _fit_daily(self, features: pd.DataFrame, labels: pd.Series | None) -> Self:
        tensor, valid = _tensor(features)
        users = features.index.astype(str).to_numpy()[valid]
        tensor = tensor[valid]
        lookback, horizon = int(self.params["lookback_days"]), int(self.params["horizon_days"])
        agg, seq, y, who, cutoffs = self._examples(tensor, users, labels)
        positives, negatives = int(y.sum()), int((~y).sum())
        metrics: dict[str, Any] = {
            "examples": int(y.size),
            "positives": positives,
            "cutoffs": cutoffs,
            "horizon_days": horizon,
            "lookback_days": lookback,
            "series_days": int(tensor.shape[1]),
        }
        if min(positives, negatives) < MIN_CLASS_EXAMPLES:
            metrics["model"] = "prior"
            metrics["why"] = (
                f"{positives} churners and {negatives} stayers with an observed {horizon}-day horizon in "
                f"{tensor.shape[1]} days of data (need {MIN_CLASS_EXAMPLES} of each)"
            )
            silent = self._silent_rate(tensor, users, labels, metrics)
            return self._fitted(
                {"estimator": None, "threshold": 0.5, "silent_churn": silent, **self._reason_norms(agg)}, metrics
            )

        choice = str(self.params["model"])
        fold = _user_fold(who)
        held_out = fold == 0
        threshold = 0.5
        if held_out.any() and (~held_out).any() and 0 < y[held_out].sum() < held_out.sum():
            validation: dict[str, float] = {}
            predictions: dict[str, np.ndarray] = {}
            for kind in ("gbm", "sequence") if choice == "auto" else (choice,):
                model = _fit(kind, _inputs(kind, agg, seq)[~held_out], y[~held_out])
                predictions[kind] = model.predict_proba(_inputs(kind, agg, seq)[held_out])[:, 1]
                validation[kind] = round(float(roc_auc_score(y[held_out], predictions[kind])), 4)
            if choice == "auto":
                choice = max(validation, key=lambda k: (validation[k], k == "gbm"))
            threshold = _f1_threshold(y[held_out], predictions[choice])
            metrics["validation_auc"] = validation
        elif choice == "auto":
            choice = "gbm"
        final = _fit(choice, _inputs(choice, agg, seq), y)
        metrics.update({"model": choice, "threshold": threshold})
        # The estimator is kept as pickled bytes: model_version hashes a pickle of (params, state), and
        # a pickle of a live sklearn estimator changes across a save/load round trip (object identities
        # inside it do), bytes do not. For the same reason no state string doubles as a parameter.
        silent = self._silent_rate(tensor, users, labels, metrics)
        state = {
            "estimator": pickle.dumps(final, protocol=5),
            "threshold": threshold,
            "silent_churn": silent,
            **self._reason_norms(agg),
        }
        return self._fitted(state, metrics)

    def _silent_rate(
        self, tensor: np.ndarray, users: np.ndarray, labels: pd.Series | None, metrics: dict[str, Any]
    ) -> float:
        """Share of users silent through a lookback (active before it, not banned) who stay silent through
        the horizon, over the training cut-offs (or, with ``labels``, at ``as_of``), with +1/+2 smoothing."""
        lookback, horizon = int(self.params["lookback_days"]), int(self.params["horizon_days"])
        days = tensor.shape[1]
        activity = _activity(tensor)
        bans = np.cumsum(tensor[:, :, CHANNELS.index("ban")], axis=1) > 0
        stayed = total = 0
        if labels is not None:
            cutoffs = [days - 1] if days > lookback else []
        else:
            cutoffs = list(range(days - 1 - horizon, lookback - 1, -CUTOFF_STRIDE_DAYS))
        for cutoff in cutoffs:
            start = cutoff - lookback + 1
            silent = (activity[:, :start].sum(axis=1) > 0) & (activity[:, start : cutoff + 1].sum(axis=1) == 0)
            silent &= ~bans[:, cutoff]
            if labels is not None:
                silent &= pd.Series(users).isin(labels.index).to_numpy()
                away = labels.reindex(users).fillna(False).to_numpy(dtype=bool)
            else:
                away = activity[:, cutoff + 1 : cutoff + 1 + horizon].sum(axis=1) == 0
            total += int(silent.sum())
            stayed += int((silent & away).sum())
        metrics["silent_examples"], metrics["silent_stayed"] = total, stayed
        return (stayed + 1.0) / (total + 2.0)

    def _examples(
        self, tensor: np.ndarray, users: np.ndarray, labels: pd.Series | None
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray, int]:
        """Training rows: (aggregates, series, churned, user id, number of cut-offs used)."""
        lookback, horizon = int(self.params["lookback_days"]), int(self.params["horizon_days"])
        min_active = int(self.params["min_active_days"])
        days = tensor.shape[1]
        aggs: list[pd.DataFrame] = []
        seqs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        who: list[np.ndarray] = []
        if labels is not None:
            plan = [days - 1] if days else []
        else:
            # Every other day from the latest cut-off with an observed horizon back to one with a week of
            # history; on short data back to day 1 (two days of history), so that a few cut-offs remain.
            latest = days - 1 - horizon
            earliest = max(1, min(min(lookback, 7) - 1, latest - 2 * CUTOFF_STRIDE_DAYS))
            plan = list(range(latest, earliest - 1, -CUTOFF_STRIDE_DAYS))[::-1]
        for cutoff in plan:
            windows = window_inputs(tensor, cutoff, lookback)
            keep = (windows.active_days >= min_active) & ~windows.banned
            if labels is not None:
                known = pd.Series(users).isin(labels.index).to_numpy()
                keep &= known
                y = labels.reindex(users).fillna(False).to_numpy(dtype=bool)
            else:
                _, y = churn_labels(tensor, cutoff, lookback, horizon)
            aggs.append(windows.aggregates[keep])
            seqs.append(windows.series[keep])
            ys.append(y[keep])
            who.append(users[keep])
        if not aggs:
            return pd.DataFrame(columns=list(AGGREGATE_NAMES)), np.zeros((0, 0)), np.zeros(0, bool), users[:0], 0
        agg = pd.concat(aggs, ignore_index=True)
        seq, y_all, who_all = np.concatenate(seqs), np.concatenate(ys), np.concatenate(who)
        if y_all.size > MAX_EXAMPLES:
            pick = np.sort(np.random.default_rng(SEED).choice(y_all.size, MAX_EXAMPLES, replace=False))
            agg, seq, y_all, who_all = agg.iloc[pick].reset_index(drop=True), seq[pick], y_all[pick], who_all[pick]
        return agg, seq, y_all, who_all, len(plan)

    @staticmethod
    def _reason_norms(agg: pd.DataFrame, labels: Iterable[str] = REASON_LABELS) -> dict[str, Any]:
        """Median and spread of the reason features over the training rows: the norm users are held to."""
        norms, scales = {}, {}
        for name in labels:
            values = agg[name].to_numpy(dtype=float) if name in agg and len(agg) else np.zeros(0)
            values = values[np.isfinite(values)]
            if not values.size:
                norms[name], scales[name] = 0.0, 1.0
                continue
            q25, q50, q75 = np.percentile(values, [25, 50, 75])
            norms[name] = float(q50)
            scales[name] = float(max(q75 - q25, 0.1 * abs(q50), 1e-3))
        return {"norms": norms, "scales": scales}

    def _fit_purchase(self, features: pd.DataFrame, labels: pd.Series | None) -> Self:
        """Purchase mode: GBM on customer summaries at earlier cut-offs, BG/NBD alone, or their mean (see below)."""
        lookback, horizon = int(self.params["lookback_days"]), int(self.params["horizon_days"])
        history = History.from_features(features)
        users = features.index.astype(str).to_numpy()
        plan = training_plan(history, lookback, horizon)
        if labels is not None:
            plan = type(plan)(horizon, (0,), plan.history_days, "")
        metrics: dict[str, Any] = {
            "mode": "purchase",
            "mode_why": features.attrs.get("mode_why", ""),
            "horizon_days": horizon,
            "training_horizon_days": plan.horizon,
            "lookback_days": lookback,
            "history_days": plan.history_days,
            "cutoffs": len(plan.cutoffs),
        }
        if plan.note:
            metrics["horizon_note"] = plan.note
        x, y, who = purchase_examples(history, users, plan, lookback, labels)
        positives, negatives = int(y.sum()), int((~y).sum())
        metrics.update(examples=int(y.size), positives=positives)
        state: dict[str, Any] = {"mode": "purchase", "estimator": None, "model": "bgnbd", "threshold": 0.5}
        state["train_horizon"] = plan.horizon
        # BG/NBD as of the last day, kept so that scoring reads each customer's own history only.
        population = self.purchase_population("", pd.Timestamp(0), bgnbd_inputs(history), history_has_spend(history))
        state["bgnbd"] = asdict(population.bgnbd) if population.bgnbd is not None else None
        state["has_spend"] = population.has_spend
        state.update(self._reason_norms(x, PURCHASE_REASON_LABELS))
        if min(positives, negatives) < MIN_CLASS_EXAMPLES:
            metrics["model"] = "bgnbd"
            metrics["why"] = (
                f"{positives} churners and {negatives} stayers with an observed {plan.horizon}-day horizon"
                f" (need {MIN_CLASS_EXAMPLES} of each to train trees)"
            )
            return self._fitted(state, metrics)
        held_out = _user_fold(who) == 0
        inputs = x[list(PURCHASE_FEATURES)].to_numpy(dtype=float)
        # A column NaN throughout (BG/NBD unfitted, or a <= 1 for expected purchases) cannot be binned.
        inputs[:, ~np.isfinite(inputs).any(axis=0)] = 0.0
        baseline = x["bgnbd_p_churn"].to_numpy(dtype=float)
        choice, threshold = "gbm", 0.5
        if held_out.any() and (~held_out).any() and 0 < y[held_out].sum() < held_out.sum():
            model = _fit("purchase", inputs[~held_out], y[~held_out])
            predictions = {"gbm": model.predict_proba(inputs[held_out])[:, 1]}
            validation = {"gbm": round(float(roc_auc_score(y[held_out], predictions["gbm"])), 4)}
            if np.isfinite(baseline[held_out]).all():
                predictions["bgnbd"] = baseline[held_out]
                predictions["blend"] = (predictions["gbm"] + baseline[held_out]) / 2
                for kind in ("bgnbd", "blend"):
                    validation[kind] = round(float(roc_auc_score(y[held_out], predictions[kind])), 4)
            choice = _purchase_choice(validation, y[held_out])
            threshold = _f1_threshold(y[held_out], predictions[choice])
            metrics["validation_auc"] = validation
        if choice in ("gbm", "blend"):
            state["estimator"] = pickle.dumps(_fit("purchase", inputs, y), protocol=5)
        state.update(model=choice, threshold=threshold)
        metrics.update(model=choice, threshold=threshold)
        return self._fitted(state, metrics)

    def _score_purchase(self, features: pd.DataFrame, state: dict[str, Any]) -> pd.DataFrame:
        """Purchase mode: every customer with an event on or before ``as_of`` gets a score and a status."""
        n = len(features)
        if not n:
            return score_frame(features.index, np.zeros(0), np.zeros(0, bool), np.zeros(0, dtype=object), [])
        history = History.from_features(features)
        lookback, train_horizon = int(self.params["lookback_days"]), int(state["train_horizon"])
        if "bgnbd" in state:  # the fitted BG/NBD; models saved before it was kept refit on the users given
            fitted = BGNBDParams(**state["bgnbd"]) if state["bgnbd"] is not None else None
            summary, has_history, banned, params = summary_at(
                history, 0, lookback, train_horizon, bgnbd=fitted, has_spend=bool(state["has_spend"])
            )
        else:
            summary, has_history, banned, params = summary_at(history, 0, lookback, train_horizon)
        valid = features["days_with_events"].notna().to_numpy() if "days_with_events" in features else np.ones(n, bool)
        status = np.full(n, SCORED, dtype=object)
        scores = np.full(n, np.nan)
        min_active = int(self.params["min_active_days"])
        active = summary["active_days"].to_numpy(dtype=float)
        recency = summary["recency_days"].to_numpy(dtype=float)
        for i in np.flatnonzero(has_history & (active < min_active)):
            if active[i] >= 1:
                days = int(active[i])
                status[i] = (
                    f"{LOW_EVIDENCE}: {days} day{'s' if days != 1 else ''} with events, the last"
                    f" {int(recency[i])} days before as_of (the trees are fit on all customers; ≥ {min_active}"
                    " days give a gap to compare with)"
                )
            else:
                status[i] = f"{LOW_EVIDENCE}: no activity of their own, only reports or bans about them"
        status[~has_history] = "no events on or before as_of"
        status[has_history & banned] = "banned (not a churn candidate)"
        status[~valid] = "invalid features: NaN in the customer summary"
        modelled = has_history & ~banned & valid
        if modelled.any():
            if state["model"] in ("gbm", "blend") and state["estimator"] is not None:
                inputs = summary[list(PURCHASE_FEATURES)].to_numpy(dtype=float)
                scores[modelled] = self._estimator(state["estimator"]).predict_proba(inputs[modelled])[:, 1]
                if state["model"] == "blend" and params is not None:
                    scores[modelled] = (scores[modelled] + summary["bgnbd_p_churn"].to_numpy(dtype=float)[modelled]) / 2
            elif params is not None:
                scores[modelled] = summary["bgnbd_p_churn"].to_numpy(dtype=float)[modelled]
            else:
                rate = (summary["active_days"] + 0.5) / (summary["age_days"] + 1.0)
                scores[modelled] = np.exp(-rate.to_numpy(dtype=float) * train_horizon)[modelled]
                status[modelled & (status == SCORED)] = PURCHASE_PRIOR_STATUS
        flagged = np.nan_to_num(scores, nan=0.0) >= float(state["threshold"])
        names = list(PURCHASE_REASON_LABELS)
        norms = pd.Series(state["norms"])[names]
        deviation = (
            (summary[names] - norms) / pd.Series(state["scales"])[names] * pd.Series(PURCHASE_REASON_DIRECTIONS)[names]
        )
        reasons = norm_reasons(summary[names], norms, deviation, PURCHASE_REASON_LABELS)
        reasons = [r if np.isfinite(v) else [] for r, v in zip(reasons, scores, strict=True)]
        return score_frame(features.index, scores, flagged, status, reasons)

    def run_summary(self) -> dict[str, Any]:
        """What ``argus detect churn`` adds to its summary: the mode, why, and any horizon fallback."""
        out: dict[str, Any] = {
            "mode": self.metrics.get("mode") or (self.state or {}).get("mode", "daily"),
            "mode_why": self.metrics.get("mode_why", ""),
            "model": self.metrics.get("model"),
            "horizon_days": int(self.params["horizon_days"]),
            "lookback_days": int(self.params["lookback_days"]),
        }
        if "training_horizon_days" in self.metrics:
            out["training_horizon_days"] = self.metrics["training_horizon_days"]
        if self.metrics.get("horizon_note"):
            out["horizon_note"] = self.metrics["horizon_note"]
        return out

    # --- score ----------------------------------------------------------------------------
    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        """Churn probability within the horizon for each user; NaN with a status when not scorable."""
        state = self.require_fitted()
        if state.get("mode") == "purchase":
            return self._score_purchase(features, state)
        lookback, horizon = int(self.params["lookback_days"]), int(self.params["horizon_days"])
        tensor, valid = _tensor(features)
        n = len(features)
        status = np.full(n, SCORED, dtype=object)
        scores = np.full(n, np.nan)
        if not n:
            return score_frame(features.index, scores, np.zeros(0, bool), status, [])
        if tensor.shape[1] == 0:
            status[:] = "no events on or before as_of"
            return score_frame(features.index, scores, np.zeros(n, bool), status, [[] for _ in range(n)])
        windows = window_inputs(np.nan_to_num(tensor), tensor.shape[1] - 1, lookback)
        # Any event on or before as_of, over all the data (the series keeps only the last history_days).
        series_events = np.nan_to_num(tensor)[:, :, : CHANNELS.index("moderation") + 1].sum(axis=(1, 2)) > 0
        if "days_with_events" in features:
            has_events = series_events | (np.nan_to_num(features["days_with_events"].to_numpy(dtype=float)) > 0)
        else:
            has_events = series_events
        min_active = int(self.params["min_active_days"])
        active_days = windows.active_days
        status[~has_events] = "no events on or before as_of"
        silent = has_events & (active_days == 0)
        status[silent] = (
            f"silent: no activity in the {lookback}-day lookback; scored as the share of such users who stayed away"
        )
        few = (active_days > 0) & (active_days < min_active)
        for i in np.flatnonzero(few):
            days = int(active_days[i])
            status[i] = (
                f"{LOW_EVIDENCE}: {days} active day{'s' if days != 1 else ''} in the {lookback}-day lookback"
                f" (the model is fit on users with ≥ {min_active})"
            )
        status[windows.banned & has_events] = "banned (not a churn candidate)"
        status[~valid] = "invalid features: NaN in the daily series"
        modelled = (status == SCORED) | (few & valid & ~windows.banned)
        if modelled.any():
            if state["estimator"] is None:
                scores[modelled] = _prior(windows.aggregates[modelled], horizon)
                status[modelled & (status == SCORED)] = PRIOR_STATUS
            else:
                estimator = self._estimator(state["estimator"])
                kind = "gbm" if isinstance(estimator, HistGradientBoostingClassifier) else "sequence"
                inputs = _inputs(kind, windows.aggregates, windows.series)
                scores[modelled] = estimator.predict_proba(inputs[modelled])[:, 1]
        quiet = silent & valid & ~windows.banned
        scores[quiet] = float(state.get("silent_churn", 0.5))
        flagged = np.nan_to_num(scores, nan=0.0) >= float(state["threshold"])
        reasons = self._reasons(windows.aggregates, state, features)
        reasons = [r if np.isfinite(v) else [] for r, v in zip(reasons, scores, strict=True)]
        return score_frame(features.index, scores, flagged, status, reasons)

    def _estimator(self, blob: bytes) -> Any:
        """The fitted estimator from the state's bytes, unpickled once per detector."""
        cached = getattr(self, "_estimator_cache", None)
        if cached is None or cached[0] is not blob:
            cached = (blob, pickle.loads(blob))
            self._estimator_cache = cached
        return cached[1]

    @staticmethod
    def _reasons(agg: pd.DataFrame, state: dict[str, Any], features: pd.DataFrame) -> list[list[Reason]]:
        names = list(REASON_LABELS)
        norms = pd.Series(state["norms"])[names]
        scales = pd.Series(state["scales"])[names]
        directions = pd.Series(REASON_DIRECTIONS)[names]
        values = agg[names].astype(float)
        deviation = (values - norms) / scales * directions
        out = norm_reasons(values, norms, deviation, REASON_LABELS)
        skipped = (
            features["outage_days_skipped"] if "outage_days_skipped" in features else pd.Series(0.0, features.index)
        )
        for row, gap in zip(out, np.nan_to_num(skipped.to_numpy(dtype=float)), strict=True):
            if gap > 0:
                text = f"{int(gap)} outage day(s) without data skipped in the lookback"
                row.append(Reason("outage_days_skipped", float(gap), 0.0, text))
        return out


def purchase_examples(
    history: History, users: np.ndarray, plan: Any, lookback: int, labels: pd.Series | None = None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Purchase-mode training rows over ``plan.cutoffs``: (customer summaries, churned, user id).

    Every customer with an event on or before the cut-off and no ban in force is a row; with
    ``labels`` the rows are the customers in ``labels`` at ``as_of``.
    """
    xs: list[pd.DataFrame] = []
    ys: list[np.ndarray] = []
    who: list[np.ndarray] = []
    for cutoff in plan.cutoffs:
        summary, has_history, banned, _ = summary_at(history, cutoff, lookback, plan.horizon)
        keep = has_history & ~banned
        if labels is not None:
            keep &= pd.Series(users).isin(labels.index).to_numpy()
            y = labels.reindex(users).fillna(False).to_numpy(dtype=bool)
        else:
            y = churned_after(history, cutoff, plan.horizon)
        xs.append(summary[keep])
        ys.append(y[keep])
        who.append(users[keep])
    if not xs:
        return pd.DataFrame(columns=list(PURCHASE_FEATURES)), np.zeros(0, bool), users[:0]
    x, y_all, who_all = pd.concat(xs, ignore_index=True), np.concatenate(ys), np.concatenate(who)
    if y_all.size > MAX_EXAMPLES:
        pick = np.sort(np.random.default_rng(SEED).choice(y_all.size, MAX_EXAMPLES, replace=False))
        x, y_all, who_all = x.iloc[pick].reset_index(drop=True), y_all[pick], who_all[pick]
    return x, y_all, who_all


def _days_with_events(daily: pd.DataFrame, as_of: pd.Timestamp | None, users: pd.Index) -> np.ndarray:
    """Per user, the days with any event (own, moderation or ban) on or before ``as_of``, over all of ``daily``."""
    if as_of is None or not len(daily):
        return np.zeros(len(users))
    before = daily[daily.index.get_level_values("day") <= as_of]
    counts = before.groupby(level="user_id").size()
    return np.asarray(counts.reindex(users.astype(str)).fillna(0).to_numpy(dtype=float))


def _tensor(features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The ``(users, days, channels)`` series from the lag columns (oldest day first) and a row-validity mask."""
    lag_columns = [c for c in features.columns if isinstance(c, str) and c.startswith(f"{CHANNELS[0]}_lag")]
    days = len(lag_columns)
    columns = [f"{channel}_lag{lag:03d}" for channel in CHANNELS for lag in range(days - 1, -1, -1)]
    missing = [c for c in (*columns, "outage_days_skipped") if c not in features.columns]
    if missing:
        raise ValueError(f"features lack {missing[0]!r}: build them with ChurnDetector.features()")
    values = features[columns].to_numpy(dtype=float).reshape(len(features), len(CHANNELS), days).transpose(0, 2, 1)
    valid = np.isfinite(values).all(axis=(1, 2))
    return np.asarray(values), valid


def _inputs(kind: str, agg: pd.DataFrame, seq: np.ndarray) -> np.ndarray:
    if kind == "gbm":
        return np.asarray(agg[list(AGGREGATE_NAMES)].to_numpy(dtype=float))
    return np.asarray(seq, dtype=float)


def _new_model(kind: str) -> HistGradientBoostingClassifier | Pipeline:
    """The two candidates: boosted trees on aggregates, and a small MLP over the daily series."""
    trees: dict[str, Any] = {"max_leaf_nodes": 15, "min_samples_leaf": 40, "l2_regularization": 1.0}
    if kind == "purchase":  # the purchase mode's trees: ~20 features, fewer and coarser steps
        return HistGradientBoostingClassifier(max_iter=150, learning_rate=0.08, random_state=SEED, **trees)
    if kind == "gbm":
        return HistGradientBoostingClassifier(
            max_iter=300,
            learning_rate=0.05,
            early_stopping=True,
            validation_fraction=0.15,
            n_iter_no_change=20,
            random_state=SEED,
            **trees,
        )
    return make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=(64, 16),
            alpha=1e-3,
            batch_size=256,
            learning_rate_init=1e-3,
            max_iter=SEQUENCE_EPOCHS,
            random_state=SEED,
        ),
    )


def _fit(kind: str, x: np.ndarray, y: np.ndarray) -> HistGradientBoostingClassifier | Pipeline:
    with warnings.catch_warnings():
        # SEQUENCE_EPOCHS is a budget, not a convergence criterion.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _new_model(kind).fit(x, y)


def _purchase_choice(validation: dict[str, float], y: np.ndarray) -> str:
    """The purchase model to keep: the blend of the trees and BG/NBD unless one of them beats it on
    the held-out customers by more than the AUC's standard error (Hanley and McNeil, 1982).

    Trees and BG/NBD are often within noise of each other on held-out cut-offs and swap places at
    ``as_of``; their mean is rarely worse than either and never by much, so it wins near-ties."""
    if "blend" not in validation:
        return max(validation, key=lambda k: (validation[k], k == "gbm"))
    best = max(("gbm", "bgnbd"), key=lambda k: (validation[k], k == "gbm"))
    if validation[best] - validation["blend"] > _auc_standard_error(validation["blend"], y):
        return best
    return "blend"


def _auc_standard_error(auc: float, y: np.ndarray) -> float:
    """Hanley and McNeil's standard error of an AUC with ``y``'s positives and negatives."""
    positives, negatives = max(int(y.sum()), 1), max(int((~y.astype(bool)).sum()), 1)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (
        positives * negatives
    )
    return float(np.sqrt(max(variance, 0.0)))


def _f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability threshold with the best F1 on held-out rows (the operating point for ``flagged``)."""
    order = np.argsort(-p, kind="stable")
    hits = np.cumsum(y[order])
    k = np.arange(1, p.size + 1)
    f1 = 2 * hits / (k + max(1, int(y.sum())))
    best = int(np.argmax(f1))
    return round(float(p[order][best]), 6)


def _prior(agg: pd.DataFrame, horizon_days: int) -> np.ndarray:
    """``(1 - p)^h``: no active day in ``h`` days if each day is active with the user's smoothed share ``p``."""
    days = np.clip(np.minimum(agg["tenure_days"].to_numpy(dtype=float), 7), 1, None)
    active = agg["active_share_7"].to_numpy(dtype=float) * days
    share = (active + 0.5) / (days + 1.0)
    return np.asarray((1.0 - share) ** horizon_days)
