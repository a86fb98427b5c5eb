"""Fraud features per user: expert payment features and a time-aware behaviour-sequence embedding.

The representation of *Explainable Deep Behavioral Sequence Clustering for Transaction Fraud
Detection*, computed from events with pandas (the nightly job and the stream share it):

1. **Expert features** (``expert_features``): velocity (most payment attempts in one hour),
   amount patterns (share of tiny purchases against the currency's norm, median and largest
   amounts in USD), new instruments, accounts sharing an instrument / device / network,
   counterparty fan-in and fan-out, pass-through of received money, decline bursts (most declines
   in ten minutes), spend right after a login from a new device, and the payment sequence folded
   by merchant (*Financial Risk Assessment via Long-term Payment Behavior Sequence Folding*: runs
   of payments at one merchant less than an hour apart become one fold with its count, total and
   declines). Per payment instrument, the number of accounts using it; each user gets the worst of
   its instruments (``instrument_accounts``), and likewise for devices and networks.
2. **Time-aware sequence embedding** (``sequence_embedding``). ``jobs/embed.py`` (Spark) tokenises
   each user's payments and account events, puts time-gap tokens between them and trains
   Word2Vec. Here the same tokens and gap buckets feed 1- to 3-grams weighted by the paper's time
   decay ``exp(-age / 7 days)``, log-damped, L2-normalised and projected to ``EMBED_DIM``
   dimensions by a seeded Gaussian random projection. The projection needs no fitting, so the
   features stay stateless and the nightly job and the stream compute the same vector for the
   same events. Chat and clicks are left out: their volume would drown the payment sequence;
   chargebacks too: they are outcomes.

Bad input is never guessed at: negative, missing or absurd amounts (above ``MAX_AMOUNT_USD``) and
currencies outside ``FX_PER_USD`` are left out of the amount features and counted
(``invalid_amounts``, ``unknown_currency``).
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from argus.detectors.events import Events

# Approximate units of each currency per US dollar (2025 averages). Amount features only need the
# order of magnitude; a currency missing here is reported, never converted by guess.
FX_PER_USD: dict[str, float] = {
    "USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 150.0, "CNY": 7.2, "INR": 83.0, "BRL": 5.0, "CAD": 1.36,
    "AUD": 1.52, "CHF": 0.88, "SEK": 10.5, "NOK": 10.6, "DKK": 6.9, "PLN": 4.0, "CZK": 23.0, "HUF": 360.0,
    "MXN": 17.5, "KRW": 1350.0, "SGD": 1.35, "HKD": 7.8, "NZD": 1.65, "ZAR": 18.5, "TRY": 32.0, "ILS": 3.7,
    "AED": 3.67, "SAR": 3.75, "THB": 36.0, "IDR": 15800.0, "PHP": 56.0, "MYR": 4.7, "ARS": 900.0,
    "CLP": 930.0, "COP": 4000.0, "RON": 4.6,
}  # fmt: skip
MAX_AMOUNT_USD = 1_000_000.0  # one consumer payment above this is a data error, not behaviour
TINY_RATIO = 0.2  # "tiny": below a fifth of the currency's median purchase (card tests probe with ~$1)
BURST_WINDOW_S = 600  # decline bursts: declines within ten minutes
VELOCITY_WINDOW_S = 3_600  # velocity: attempts within one hour
FOLD_GAP_S = 3_600  # payment folding: same merchant, less than an hour apart
NEW_DEVICE_SPEND_S = 3 * 3_600  # spend within three hours of a login from a new device
NEW_INSTRUMENT_S = 3_600  # a payment within an hour of the instrument's first use by the user
MIN_CURRENCY_NORM = 30  # purchases needed before a currency's own median is trusted
# jobs/embed.py's gap buckets and time decay (tau = 7 days, the paper's attention horizon).
GAP_EDGES_S = (60, 600, 3_600, 6 * 3_600, 86_400)
TAU_DAYS = 7.0
EMBED_DIM = 16
_HASH_BUCKETS = 1 << 14
# Names of the tables derived once per Events (``Events.derived``).
_PAYMENT_TABLE, _LOGIN_TABLE = "fraud.payment_table", "fraud.login_table"

# Expert features: name -> wording for reasons and rules.
EXPERT_FEATURES: dict[str, str] = {
    "payments": "payment attempts",
    "events_per_day": "events per active day",
    "new_account": "account created in the window",
    "velocity_1h": "most payment attempts in one hour",
    "tiny_share": "share of tiny purchases",
    "amount_median_usd": "median amount (USD)",
    "amount_max_usd": "largest amount (USD)",
    "decline_rate": "decline rate",
    "decline_burst": "most declines in ten minutes",
    "instruments": "payment instruments",
    "new_instrument_share": "share of payments on a just-added instrument",
    "instrument_accounts": "other accounts on one of its instruments",
    "device_accounts": "other accounts on one of its devices",
    "network_accounts": "other accounts on one of its networks",
    "fan_in": "accounts sending it money",
    "fan_out": "accounts it sends money to",
    "payee_fan_in": "largest fan-in among its payees",
    "inflow_usd": "money received (USD)",
    "pass_through": "share of received money sent on within a day",
    "new_device_spend_usd": "spent within 3h of a new-device login (USD)",
    "merchants": "merchants",
    "fold_max_len": "longest run at one merchant",
    "fold_max_usd": "largest run total at one merchant (USD)",
    "fold_max_declines": "most declines in one merchant run",
}
# Heavy-tailed counts and amounts are compared on log1p before scaling.
LOG_FEATURES = frozenset(
    {
        "payments", "events_per_day", "velocity_1h", "amount_median_usd", "amount_max_usd", "decline_burst",
        "instruments", "instrument_accounts", "device_accounts", "network_accounts", "fan_in", "fan_out",
        "payee_fan_in", "inflow_usd", "new_device_spend_usd", "merchants", "fold_max_len", "fold_max_usd",
        "fold_max_declines",
    }
)  # fmt: skip
# How much a user does (not how): context for the clustering, weighted down by ``volume_weight``.
VOLUME_FEATURES = ("payments", "events_per_day", "merchants", "instruments", "amount_median_usd")
OUTCOME_COLUMNS = ("chargebacks", "fraud_labels")
QUALITY_COLUMNS = ("usable_payments", "invalid_amounts", "unknown_currency")
EMBED_COLUMNS = tuple(f"seq_{i:02d}" for i in range(EMBED_DIM))
FEATURE_COLUMNS = (*EXPERT_FEATURES, *EMBED_COLUMNS, *OUTCOME_COLUMNS, *QUALITY_COLUMNS)


# Per-account figures that relate an account to everybody else (``FraudPopulation.per_user``).
SHARED_COLUMNS = ("instrument_accounts", "device_accounts", "network_accounts", "payee_fan_in", "device_hopping")


@dataclass
class FraudPopulation:
    """What one block of accounts' fraud features need from everybody, computed elsewhere.

    The pandas path computes all of it from its own events; ``jobs/fraud_blocks.py`` computes it with
    Spark aggregations and hands each block only the keys its accounts touch. Given these, every
    feature of an account is a function of its own events and the payments it received.
    """

    currency_norm: pd.Series  # currency -> the norm tiny purchases are measured against
    hour_share: pd.Series  # hour of day -> share of all payment attempts
    embed_end: float | None  # end of the last day with a sequence token (the embedding's time decay)
    context_median: pd.Series  # merchant (context) -> median attempt in USD
    payee_median: pd.Series  # payee -> median approved transfer received, USD
    payee_fan_in: pd.Series  # payee -> accounts sending it money
    instrument_accounts: pd.Series  # instrument -> accounts attempting payments with it
    per_user: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(SHARED_COLUMNS)))


# --- expert features ------------------------------------------------------------------------
def payment_table(events: Events) -> pd.DataFrame:
    """Payments with ``t`` (unix seconds), ``amount_usd`` (NaN when unusable) and its ``problem``."""
    return events.derived(_PAYMENT_TABLE, ("payment",), lambda: _payment_table(events["payment"]))


def share_tables(part: Events, whole: Events, accounts: pd.Index) -> None:
    """Give ``part`` (``whole``'s events of ``accounts`` and the payments they received, in ``whole``'s
    order) its payment and login tables cut from ``whole``'s: the same rows in the same order as
    building them again, without parsing and sorting them again."""
    pay = payment_table(whole)
    payee = pay["counterparty"]
    mine = pay["user_id"].isin(accounts) | (payee.notna() & payee.astype(str).isin(accounts))
    part.derived(_PAYMENT_TABLE, ("payment",), lambda: pay[mine.to_numpy()].reset_index(drop=True))
    logins = _account_table(whole)
    part.derived(_LOGIN_TABLE, ("account",), lambda: logins[logins["user_id"].isin(accounts).to_numpy()])


def _payment_table(pay: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "event_id": pay["event_id"].astype(str),
            "user_id": pay["user_id"].astype(str),
            "t": _seconds(pay["ts"]),
            "action": pay["action"].astype(str),
            "status": pay["status"].astype(str),
            "merchant": pay["context"].astype(str),
            "instrument": pay["instrument_id"].astype(str),
            "counterparty": pay["counterparty_id"],
            "currency": pay["currency"].astype(str),
        }
    )
    amount = pd.to_numeric(pay["amount"], errors="coerce").to_numpy(dtype=float)
    rate = pay["currency"].map(FX_PER_USD).to_numpy(dtype=float)
    usd = amount / rate
    bad_amount = ~np.isfinite(amount) | (amount < 0) | (usd > MAX_AMOUNT_USD)
    unknown = ~np.isfinite(rate)
    out["amount"] = np.where(bad_amount | unknown, np.nan, amount)
    out["amount_usd"] = np.where(bad_amount | unknown, np.nan, usd)
    out["problem"] = np.where(bad_amount, "invalid amount", np.where(unknown, "unknown currency", ""))
    return out.sort_values(["user_id", "t", "event_id"], kind="stable").reset_index(drop=True)


def expert_features(events: Events, population: FraudPopulation | None = None) -> pd.DataFrame:
    """The expert features, outcomes and data-quality counts per user (index ``user_id``, sorted).

    With ``population``, what relates a user to everybody (currency norms, accounts sharing its
    instruments, devices and networks, its payees' fan-in) is read from it, so ``events`` need only
    hold the users' own events and the payments they received."""
    pay = payment_table(events)
    attempts = pay[pay["action"].isin(["purchase", "transfer"])]
    approved = attempts[attempts["status"] == "approved"]
    # Accounts that only receive money (a mule seen through its payers) are users of the kind too.
    payees = approved.loc[approved["action"] == "transfer", "counterparty"].dropna().astype(str)
    users = pd.Index(sorted(set(events.user_ids) | set(payees)), name="user_id")
    # Columns gathered and one frame built at the end: set one at a time they cost more than a few users' features.
    columns: dict[str, pd.Series] = {}
    declined = attempts[attempts["status"] == "declined"]
    purchases = attempts[attempts["action"] == "purchase"]
    by_user = attempts.groupby("user_id")

    columns["payments"] = by_user.size()
    columns["events_per_day"] = _events_per_day(events)
    signups = events["account"]
    new_accounts = signups.loc[signups["action"] == "signup", "user_id"].astype(str).unique()
    columns["new_account"] = pd.Series(1.0, index=pd.Index(new_accounts))
    columns["velocity_1h"] = _max_in_window(attempts, VELOCITY_WINDOW_S)

    # Amounts against the currency's own median purchase (real prices differ by country, not only by rate).
    norm = _currency_norms(purchases) if population is None else population.currency_norm
    ratio = purchases["amount"] / purchases["currency"].map(norm)
    usable = purchases[ratio.notna()]
    columns["tiny_share"] = (ratio[ratio.notna()] < TINY_RATIO).groupby(usable["user_id"]).mean()
    columns["amount_median_usd"] = by_user["amount_usd"].median()
    columns["amount_max_usd"] = by_user["amount_usd"].max()

    columns["decline_rate"] = (attempts["status"] == "declined").groupby(attempts["user_id"]).mean()
    columns["decline_burst"] = decline_bursts(declined)

    columns["instruments"] = by_user["instrument"].nunique()
    first_use = attempts.groupby(["user_id", "instrument"])["t"].transform("min")
    just_added = (attempts["t"] - first_use) < NEW_INSTRUMENT_S
    columns["new_instrument_share"] = just_added.groupby(attempts["user_id"]).mean()
    # Per instrument, then the worst of the user's instruments (a declines-per-card feature was tried
    # and made the clustering worse: one account's own card declines say the same as decline_rate).
    logins = _account_table(events)
    if population is None:
        cards = instrument_features(attempts)
        user_cards = attempts[["user_id", "instrument"]].drop_duplicates()
        columns["instrument_accounts"] = (
            (user_cards["instrument"].map(cards["accounts"]) - 1).groupby(user_cards["user_id"]).max()
        )
        columns["device_accounts"] = shared_accounts(logins, "device")
        columns["network_accounts"] = shared_accounts(logins, "network")
    else:
        for column in ("instrument_accounts", "device_accounts", "network_accounts"):
            columns[column] = population.per_user[column]

    transfers = approved[(approved["action"] == "transfer") & approved["counterparty"].notna()]
    transfers = transfers.assign(counterparty=transfers["counterparty"].astype(str))
    transfers = transfers[transfers["counterparty"] != transfers["user_id"]]
    fan_in = transfers.groupby("counterparty")["user_id"].nunique()
    columns["fan_in"] = fan_in
    columns["fan_out"] = transfers.groupby("user_id")["counterparty"].nunique()
    if population is None:
        columns["payee_fan_in"] = transfers["counterparty"].map(fan_in).groupby(transfers["user_id"]).max()
    else:
        columns["payee_fan_in"] = population.per_user["payee_fan_in"]
    columns["inflow_usd"] = transfers.groupby("counterparty")["amount_usd"].sum()
    columns["pass_through"] = _pass_through(transfers, approved)
    columns["new_device_spend_usd"] = _new_device_spend(logins, approved)

    columns["merchants"] = purchases.groupby("user_id")["merchant"].nunique()
    folds = _merchant_folds(purchases)
    longest = folds.groupby("user_id")[["n", "usd", "declines"]].max()
    columns["fold_max_len"] = longest["n"]
    columns["fold_max_usd"] = longest["usd"]
    columns["fold_max_declines"] = longest["declines"]

    columns["chargebacks"] = pay[pay["action"] == "chargeback"].groupby("user_id").size()
    columns["fraud_labels"] = fraud_labels(events)
    columns["usable_payments"] = attempts["amount_usd"].notna().groupby(attempts["user_id"]).sum()
    columns["invalid_amounts"] = (pay["problem"] == "invalid amount").groupby(pay["user_id"]).sum()
    columns["unknown_currency"] = (pay["problem"] == "unknown currency").groupby(pay["user_id"]).sum()

    frame = pd.DataFrame(columns, index=users).reindex(columns=[*EXPERT_FEATURES, *OUTCOME_COLUMNS, *QUALITY_COLUMNS])
    # Absent counts are zero; rates and amounts of a user without payments stay NaN (nothing to measure).
    measured = ["tiny_share", "amount_median_usd", "amount_max_usd", "decline_rate", "new_instrument_share"]
    values = frame.to_numpy(dtype=float, copy=True)  # one array: column-wise pandas fills cost more than the features
    counted = np.array([c not in measured for c in frame.columns])
    values[:, counted] = np.where(np.isnan(values[:, counted]), 0.0, values[:, counted])
    return pd.DataFrame(values, index=pd.Index(frame.index, name="user_id"), columns=frame.columns)


def decline_bursts(declined: pd.DataFrame) -> pd.Series:
    """Per user, the most declines within ``BURST_WINDOW_S`` (``declined``: declined attempts, sorted)."""
    return _max_in_window(declined, BURST_WINDOW_S)


def fraud_labels(events: Events) -> pd.Series:
    """Per user, the risk team's ``fraud``/``chargeback`` labels on it (moderation events)."""
    mod = events["moderation"]
    if not len(mod):
        return pd.Series(dtype=float)
    bad = mod[mod["label"].isin(["fraud", "chargeback"])]
    return bad.groupby(bad["user_id"].astype(str)).size()


def instrument_features(attempts: pd.DataFrame) -> pd.DataFrame:
    """Per payment instrument (index ``instrument``): accounts using it, attempts, declines, decline rate.

    ``attempts``: purchase and transfer rows of ``payment_table``. A card tried by several accounts
    and declined again and again is a stolen card being tested, whoever holds it tonight.
    """
    if attempts.empty:
        return pd.DataFrame(columns=["accounts", "attempts", "declines", "decline_rate"])
    declined = (attempts["status"] == "declined").astype(float)
    grouped = attempts.assign(declined=declined).groupby("instrument")
    out = pd.DataFrame(
        {"accounts": grouped["user_id"].nunique(), "attempts": grouped.size(), "declines": grouped["declined"].sum()}
    )
    out["decline_rate"] = out["declines"] / out["attempts"]
    return out


def _seconds(ts: pd.Series) -> np.ndarray:
    if len(ts) == 0:
        return np.zeros(0)
    nanos = _utc_nanos(ts)
    if nanos is not None:  # what total_seconds divides, without parsing again
        return np.asarray(nanos / 1_000_000_000, dtype=float)
    seconds = (pd.to_datetime(ts, utc=True) - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return np.asarray(seconds, dtype=float)


def _utc_nanos(ts: pd.Series) -> np.ndarray | None:
    """Nanoseconds since the epoch of times already parsed as UTC nanoseconds without a gap, else None."""
    dtype = ts.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) and dtype.unit == "ns" and str(dtype.tz) == "UTC":
        nanos = np.asarray(ts.array.asi8, dtype=np.int64)
        if not (nanos == pd.NaT.value).any():
            return nanos
    return None


def _nanos(ts: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch as UTC (NaT as its integer), parsing only what is not parsed yet."""
    nanos = _utc_nanos(ts)
    if nanos is None:
        nanos = np.asarray(pd.to_datetime(ts, utc=True).astype("datetime64[ns, UTC]").array.asi8, dtype=np.int64)
    return nanos


def _events_per_day(events: Events) -> pd.Series:
    """Per user, its events of every type over its distinct UTC days (integer days: no datetime grouping)."""
    parts = [f for f in events.frames.values() if len(f)]
    if not parts:
        return pd.Series(dtype=float)
    users = np.concatenate([f["user_id"].astype(str).to_numpy(dtype=object) for f in parts])
    stamps = np.concatenate([_nanos(f["ts"]) for f in parts])
    timed = stamps != pd.NaT.value  # a missing time counts as an event, not as a day
    days = stamps[timed] // (86_400 * 10**9)
    codes, uniques = pd.factorize(users, sort=True)
    span = int(days.max() - days.min()) + 1 if len(days) else 1
    dated = codes[timed].astype(np.int64)
    user_days = np.unique(dated * span + (days - (days.min() if len(days) else 0))) // span
    counts = np.bincount(codes, minlength=len(uniques)) / np.bincount(user_days, minlength=len(uniques))
    return pd.Series(counts, index=pd.Index(uniques, name="user_id"))


def _max_in_window(rows: pd.DataFrame, window_s: float) -> pd.Series:
    """Per user, the most rows inside any window of ``window_s`` seconds (rows sorted by user, t)."""
    if rows.empty:
        return pd.Series(dtype=float)
    key = timeline_keys(rows["user_id"].to_numpy(dtype=object), rows["t"].to_numpy(), window_s)
    order = np.argsort(key, kind="stable")
    key = key[order]
    inside = np.arange(key.size) - np.searchsorted(key, key - to_ms(window_s), side="left") + 1
    return pd.Series(inside, index=rows["user_id"].to_numpy()[order]).groupby(level=0).max()


def to_ms(seconds: np.ndarray | float) -> np.ndarray:
    """Seconds as whole milliseconds (int64), rounded the same way whatever else is in the frame."""
    return np.asarray(np.round(np.asarray(seconds, dtype=float) * 1000.0), dtype=np.int64)


def timeline_keys(groups: np.ndarray, t: np.ndarray, reach_s: float) -> np.ndarray:
    """Exact int64 keys putting each group's times on its own stretch of one line, in milliseconds.

    Within a group a key difference is the time difference; groups lie more than ``reach_s`` apart, so
    a sorted search of ``key +- window`` (window <= reach) never crosses into another group. Integers
    keep it exact for any number of groups (float keys lose the seconds past about a million users),
    so a block of users gets the same counts as the whole population."""
    codes = pd.factorize(np.asarray(groups, dtype=object))[0].astype(np.int64)
    t_ms = to_ms(t)
    if not len(t_ms):
        return t_ms
    base = int(t_ms.min())
    stride = int(t_ms.max()) - base + int(to_ms(abs(reach_s))) + 1
    if int(codes.max()) + 1 > (2**62) // stride:
        raise ValueError(f"{int(codes.max()) + 1} accounts over {stride / 86_400_000:.0f} days overflow 64-bit keys")
    return np.asarray(codes * stride + (t_ms - base), dtype=np.int64)


def _currency_norms(purchases: pd.DataFrame) -> pd.Series:
    """Median purchase per currency; a currency with few purchases falls back to the USD norm at its rate."""
    valid = purchases.dropna(subset=["amount"])
    medians = valid.groupby("currency")["amount"].median()
    counts = valid.groupby("currency").size()
    usd_norm = float(valid["amount_usd"].median()) if len(valid) else np.nan
    return currency_norms(medians, counts, usd_norm)


def currency_norms(medians: pd.Series, counts: pd.Series, usd_norm: float) -> pd.Series:
    """Per currency its median purchase ``medians`` when it has ``MIN_CURRENCY_NORM`` purchases
    (``counts``), else the median USD purchase ``usd_norm`` at the currency's rate."""
    fallback = pd.Series({c: usd_norm * FX_PER_USD[c] for c in medians.index}, dtype=float)
    return medians.where(counts.reindex(medians.index) >= MIN_CURRENCY_NORM, fallback)


def shared_accounts(rows: pd.DataFrame, key: str) -> pd.Series:
    """Per user, the most *other* accounts seen on one of its ``key`` values (instrument, device, network)."""
    rows = rows.dropna(subset=[key])
    if rows.empty:
        return pd.Series(dtype=float)
    pairs = rows[["user_id", key]].drop_duplicates()
    accounts = pairs.groupby(key)["user_id"].transform("size") - 1
    return accounts.groupby(pairs["user_id"]).max()


def _account_table(events: Events) -> pd.DataFrame:
    return events.derived(_LOGIN_TABLE, ("account",), lambda: _login_table(events["account"]))


def _login_table(acct: pd.DataFrame) -> pd.DataFrame:
    """Signups and logins: ``user_id``, ``t`` (unix seconds), ``device``, ``network``, by user and time."""
    acct = acct[acct["action"].isin(["signup", "login"])]
    return pd.DataFrame(
        {
            "user_id": acct["user_id"].astype(str),
            "t": _seconds(acct["ts"]),
            "device": acct["device_fp"],
            "network": acct["network_fp"],
        }
    ).sort_values(["user_id", "t"], kind="stable")


def _pass_through(transfers: pd.DataFrame, approved: pd.DataFrame) -> pd.Series:
    """Share of money received by transfer that the user spends or sends on within a day."""
    if transfers.empty:
        return pd.Series(dtype=float)
    inbound = transfers[["counterparty", "t", "amount_usd"]].rename(columns={"counterparty": "user_id"})
    inbound = inbound.sort_values("t", kind="stable")
    out = approved[["user_id", "t", "amount_usd"]].sort_values("t", kind="stable")
    t_in = asof_times(out["user_id"], out["t"], inbound["user_id"], inbound["t"])
    forwarded = out[(out["t"].to_numpy() - t_in) <= 86_400].groupby("user_id")["amount_usd"].sum()
    received = inbound.groupby("user_id")["amount_usd"].sum()
    return (forwarded.reindex(received.index).fillna(0.0) / received.where(received > 0)).clip(upper=1.0)


def _new_device_spend(logins: pd.DataFrame, approved: pd.DataFrame) -> pd.Series:
    """USD spent within three hours of a login from a device the account had not used before in the window."""
    logins = logins.dropna(subset=["device"])
    if logins.empty or approved.empty:
        return pd.Series(dtype=float)
    first = logins.groupby(["user_id", "device"])["t"].transform("min")
    earliest = logins.groupby("user_id")["t"].transform("min")
    new = logins[(logins["t"] == first) & (logins["t"] > earliest)][["user_id", "t"]].drop_duplicates()
    if new.empty:
        return pd.Series(dtype=float)
    spent = approved[["user_id", "t", "amount_usd"]].sort_values("t", kind="stable")
    t_login = asof_times(spent["user_id"], spent["t"], new["user_id"], new["t"])
    return spent[(spent["t"].to_numpy() - t_login) <= NEW_DEVICE_SPEND_S].groupby("user_id")["amount_usd"].sum()


def asof_times(
    left_key: pd.Series, left_t: pd.Series, right_key: pd.Series, right_t: pd.Series, forward: bool = False
) -> np.ndarray:
    """Per left row, the time of the right row with the same key that ``pd.merge_asof(by=key, on=t)`` matches:
    the last at or before it, or with ``forward`` the first strictly after it; NaN where there is none.

    Keys and times become exact integer ranks, so one sorted search finds every match (``merge_asof``'s
    setup costs more than the search on the stream's few hundred rows)."""
    out = np.full(len(left_t), np.nan)
    if not len(left_t) or not len(right_t):
        return out
    codes = pd.factorize(np.r_[np.asarray(left_key, dtype=object), np.asarray(right_key, dtype=object)])[0]
    times = np.r_[np.asarray(left_t, dtype=float), np.asarray(right_t, dtype=float)]
    ranks = np.unique(times, return_inverse=True)[1].reshape(-1)
    stride = len(times) + 1
    keys = codes.astype(np.int64) * stride + ranks.astype(np.int64)
    left, right = keys[: len(left_t)], keys[len(left_t) :]
    order = np.argsort(right, kind="stable")
    ordered = right[order]
    found = np.searchsorted(ordered, left, side="right") - (0 if forward else 1)
    inside = (found >= 0) & (found < len(ordered))
    at = np.where(inside, found, 0)
    match = inside & (ordered[at] // stride == left // stride)
    out[match] = times[len(left_t) :][order[at[match]]]
    return out


def _merchant_folds(purchases: pd.DataFrame) -> pd.DataFrame:
    """The payment sequence folded by merchant: runs at one merchant with gaps under an hour."""
    if purchases.empty:
        return pd.DataFrame(columns=["user_id", "n", "usd", "declines"])
    rows = purchases.sort_values(["user_id", "merchant", "t"], kind="stable")
    same = (rows["user_id"] == rows["user_id"].shift()) & (rows["merchant"] == rows["merchant"].shift())
    new_fold = ~(same & ((rows["t"] - rows["t"].shift()) < FOLD_GAP_S))
    rows = rows.assign(
        fold=new_fold.cumsum().to_numpy(),
        usd=rows["amount_usd"].where(rows["status"] == "approved", 0.0).fillna(0.0),
        declines=(rows["status"] == "declined").astype(float),
    )
    folds = rows.groupby("fold")
    out = folds[["usd", "declines"]].sum()
    starts = np.flatnonzero(new_fold.to_numpy())  # folds are runs of rows: a fold's user is its first row's
    out.insert(0, "user_id", rows["user_id"].to_numpy()[starts])
    out.insert(1, "n", folds.size())
    return out


def fraud_population(events: Events, pay: pd.DataFrame | None = None) -> FraudPopulation:
    """What relates accounts to everybody, from all of ``events``, as the features compute it without one.

    Given it, ``FraudDetector.features_for`` builds a few accounts' features from their neighbourhood
    alone. ``pay``: ``payment_table(events)`` when the caller has it. Costs one pass of grouped
    aggregations over the payments and logins (no per-account Python)."""
    pay = payment_table(events) if pay is None else pay
    attempts = pay[pay["action"].isin(["purchase", "transfer"])]
    purchases = attempts[attempts["action"] == "purchase"]
    hour = ((attempts["t"] // 3_600) % 24).astype(int)
    # The payment rows' payee (``payment_features``): a transfer's counterparty, never the sender itself.
    payee = attempts["counterparty"].where(attempts["action"] == "transfer").fillna("").astype(str)
    payee = payee.where(payee != attempts["user_id"], "")
    to_payee = attempts.assign(payee=payee)
    received = to_payee[(payee != "") & (attempts["status"] == "approved")]
    payee_fan_in = received.groupby("payee")["user_id"].nunique()
    instrument_accounts = attempts.groupby("instrument")["user_id"].nunique()
    # ``expert_features``' own reading of the same transfers (a counterparty kept as given, not blanked).
    approved = attempts[attempts["status"] == "approved"]
    transfers = approved[(approved["action"] == "transfer") & approved["counterparty"].notna()]
    transfers = transfers.assign(counterparty=transfers["counterparty"].astype(str))
    transfers = transfers[transfers["counterparty"] != transfers["user_id"]]
    fan_in = transfers.groupby("counterparty")["user_id"].nunique()
    user_cards = attempts[["user_id", "instrument"]].drop_duplicates()
    logins = _account_table(events)
    from argus.detectors.fraud_payments import _device_hopping  # fraud_payments builds on this module

    per_user = pd.DataFrame(
        {
            "instrument_accounts": (user_cards["instrument"].map(instrument_accounts) - 1)
            .groupby(user_cards["user_id"])
            .max(),
            "device_accounts": shared_accounts(logins, "device"),
            "network_accounts": shared_accounts(logins, "network"),
            "payee_fan_in": transfers["counterparty"].map(fan_in).groupby(transfers["user_id"]).max(),
            "device_hopping": _device_hopping(logins),
        },
        columns=list(SHARED_COLUMNS),
    )
    token_ends = [pay.loc[pay["action"] != "chargeback", "t"], pd.Series(_seconds(events["account"]["ts"]))]
    last = max((float(t.max()) for t in token_ends if len(t)), default=None)
    return FraudPopulation(
        currency_norm=_currency_norms(purchases),
        hour_share=hour.value_counts(normalize=True),
        embed_end=None if last is None else embedding_end(last),
        context_median=attempts.groupby("merchant")["amount_usd"].median(),
        payee_median=received.groupby("payee")["amount_usd"].median(),
        payee_fan_in=payee_fan_in,
        instrument_accounts=instrument_accounts,
        per_user=per_user,
    )


class RollingPopulation:
    """``fraud_population`` kept up to date as events enter and leave a window, without a pass over the window.

    The stream scores a few accounts at every interval boundary against everybody in the lookback; what
    relates them to everybody is counts and sorted values per entity (accounts per instrument, device,
    network and payee, attempts per hour, amounts per merchant, payee and currency), each updated by the
    rows that entered or left the window (``add``, ``remove``: the rows exactly as ``Events`` holds them).
    ``population(accounts)`` then equals ``fraud_population`` over the window's events for those accounts'
    ``per_user`` rows and for every per-entity figure, bit for bit: medians are read from the same sorted
    values (the mean of the two middle ones for an even count, as pandas computes them), shares are the
    same integer divisions. An update costs Python work per row, a population per entity and account asked.
    """

    def __init__(self) -> None:
        self._hours: dict[int, int] = {}  # hour of day -> payment attempts
        self._context_rows: dict[str, int] = {}  # merchant -> attempts (its median is NaN without an amount)
        self._context_usd: dict[str, list[float]] = {}  # merchant -> attempts' USD amounts, sorted
        self._payee_senders: dict[str, dict[str, int]] = {}  # payee -> sender -> approved transfers
        self._payee_usd: dict[str, list[float]] = {}  # payee -> approved transfers' USD amounts, sorted
        self._instrument_users: dict[str, dict[str, int]] = {}  # instrument -> account -> attempts
        self._user_instruments: dict[str, dict[str, int]] = {}  # account -> instrument -> attempts
        # ``expert_features``' reading of transfers: the counterparty kept as given (an empty one counts).
        self._counterparty_senders: dict[str, dict[str, int]] = {}
        self._sender_counterparties: dict[str, dict[str, int]] = {}
        self._currency_amounts: dict[str, list[float]] = {}  # currency -> purchases' amounts, sorted
        self._purchase_usd: list[float] = []  # purchases' USD amounts, sorted
        self._token_times: list[float] = []  # payments but chargebacks, and account events: the embedding's end
        self._entity_users: dict[str, dict[object, dict[str, int]]] = {"device": {}, "network": {}}
        self._user_entities: dict[str, dict[str, dict[object, int]]] = {"device": {}, "network": {}}
        self._device_times: dict[tuple[str, object], list[float]] = {}  # (account, device) -> login times, sorted
        self._login_times: dict[str, list[float]] = {}  # account -> its logins' times (with a device), sorted

    def add(self, events: Events) -> None:
        """Count the payments and account events of ``events`` in."""
        self._update(events, 1)

    def remove(self, events: Events) -> None:
        """Count them out again (rows ``add`` counted in, as they were)."""
        self._update(events, -1)

    def _update(self, events: Events, sign: int) -> None:
        if len(events.frames.get("account", ())):
            self._update_accounts(events, sign)
        if not len(events.frames.get("payment", ())):
            return
        pay = payment_table(events)
        attempts = pay[pay["action"].isin(["purchase", "transfer"])]
        # The same expressions as ``fraud_population``, on the rows that changed.
        hour = ((attempts["t"] // 3_600) % 24).astype(int)
        payee = attempts["counterparty"].where(attempts["action"] == "transfer").fillna("").astype(str)
        payee = payee.where(payee != attempts["user_id"], "")
        approved = (attempts["status"] == "approved").to_numpy()
        counterparty = attempts["counterparty"]
        transfer = approved & (attempts["action"] == "transfer").to_numpy() & counterparty.notna().to_numpy()
        purchase = (attempts["action"] == "purchase").to_numpy() & attempts["amount"].notna().to_numpy()
        columns = zip(
            attempts["user_id"].tolist(), hour.tolist(), attempts["merchant"].tolist(),
            attempts["amount_usd"].tolist(), attempts["amount"].tolist(), attempts["instrument"].tolist(),
            attempts["currency"].tolist(), payee.tolist(), approved.tolist(), transfer.tolist(),
            counterparty.tolist(), purchase.tolist(), strict=True,
        )  # fmt: skip
        for user, h, merchant, usd, amount, instrument, currency, to, ok, sent, cp, bought in columns:
            _count(self._hours, h, sign)
            _count(self._context_rows, merchant, sign)
            if usd == usd:  # not NaN: medians skip missing amounts
                _place(self._context_usd, merchant, usd, sign)
            _pair(self._instrument_users, self._user_instruments, instrument, user, sign)
            if to and ok:
                _count(self._payee_senders.setdefault(to, {}), user, sign)
                if not self._payee_senders[to]:
                    del self._payee_senders[to]
                if usd == usd:
                    _place(self._payee_usd, to, usd, sign)
            if sent and str(cp) != user:
                _pair(self._counterparty_senders, self._sender_counterparties, str(cp), user, sign)
            if bought:
                _place(self._currency_amounts, currency, amount, sign)
                _insort(self._purchase_usd, usd, sign)
        for t in pay.loc[pay["action"] != "chargeback", "t"].tolist():
            _insort(self._token_times, t, sign)

    def _update_accounts(self, events: Events, sign: int) -> None:
        for t in _seconds(events["account"]["ts"]).tolist():
            _insort(self._token_times, t, sign)
        logins = _account_table(events)
        for key in ("device", "network"):
            known = logins[logins[key].notna().to_numpy()]
            for user, value in zip(known["user_id"].tolist(), known[key].tolist(), strict=True):
                _pair(self._entity_users[key], self._user_entities[key], value, user, sign)
        known = logins[logins["device"].notna().to_numpy()]
        times = zip(known["user_id"].tolist(), known["device"].tolist(), known["t"].tolist(), strict=True)
        for user, device, t in times:
            _place(self._device_times, (user, device), t, sign)
            _place(self._login_times, user, t, sign)

    def population(self, accounts: Iterable[str]) -> FraudPopulation:
        """``fraud_population`` of the window's events, with ``per_user`` rows for ``accounts``."""
        accounts = [str(user) for user in accounts]
        medians = pd.Series({c: _median(v) for c, v in sorted(self._currency_amounts.items())}, dtype=float)
        counts = pd.Series({c: len(v) for c, v in self._currency_amounts.items()}, dtype=np.int64)
        attempts = sum(self._hours.values())
        context = {m: _median(self._context_usd.get(m, [])) for m in self._context_rows}
        payees = {p: _median(self._payee_usd.get(p, [])) for p in self._payee_senders}
        last = self._token_times[-1] if self._token_times else None
        shared = [self._shared(user) for user in accounts]
        per_user = pd.DataFrame(shared, index=pd.Index(accounts), columns=list(SHARED_COLUMNS), dtype=float)
        return FraudPopulation(
            currency_norm=currency_norms(medians, counts, _median(self._purchase_usd)),
            hour_share=pd.Series({h: n / attempts for h, n in self._hours.items()}, dtype=float),
            embed_end=None if last is None else embedding_end(last),
            context_median=pd.Series(context, dtype=float),
            payee_median=pd.Series(payees, dtype=float),
            payee_fan_in=pd.Series({p: len(s) for p, s in self._payee_senders.items()}, dtype=np.int64),
            instrument_accounts=pd.Series({i: len(u) for i, u in self._instrument_users.items()}, dtype=np.int64),
            per_user=per_user,
        )

    def _shared(self, user: str) -> list[float]:
        """One account's ``SHARED_COLUMNS`` (NaN where ``fraud_population`` has no row for it)."""
        nan = float("nan")
        instruments = self._user_instruments.get(user, {})
        cards = max((len(self._instrument_users[i]) - 1 for i in instruments), default=nan)
        shared = [
            max((len(self._entity_users[key][v]) - 1 for v in self._user_entities[key].get(user, {})), default=nan)
            for key in ("device", "network")
        ]
        payees = self._sender_counterparties.get(user, {})
        fan_in = max((len(self._counterparty_senders[c]) for c in payees), default=nan)
        hops = [self._new_to(device) for device in self._new_devices(user)]
        return [float(cards), *map(float, shared), float(fan_in), float(max(hops, default=nan))]

    def _new_devices(self, user: str) -> list[object]:
        """The devices ``user`` first used after its first login in the window (``_new_device_logins``)."""
        times = self._login_times.get(user)
        if not times:
            return []
        devices = self._user_entities["device"].get(user, {})
        return [d for d in devices if self._device_times[(user, d)][0] > times[0]]

    def _new_to(self, device: object) -> int:
        """How many accounts ``device`` is new to."""
        return sum(1 for user in self._entity_users["device"][device] if device in self._new_devices(user))


def _count(counts: dict[Any, int], key: Any, sign: int) -> None:
    n = counts.get(key, 0) + sign
    if n:
        counts[key] = n
    else:
        del counts[key]


def _pair(forward: dict[Any, dict[Any, int]], backward: dict[Any, dict[Any, int]], a: Any, b: Any, sign: int) -> None:
    """Count the pair (a, b) in both directions, dropping what reaches zero."""
    for outer, inner, key in ((forward, a, b), (backward, b, a)):
        counts = outer.setdefault(inner, {})
        _count(counts, key, sign)
        if not counts:
            del outer[inner]


def _insort(values: list[float], value: float, sign: int) -> None:
    if sign > 0:
        bisect.insort(values, value)
    else:
        del values[bisect.bisect_left(values, value)]


def _place(lists: dict[Any, list[float]], key: Any, value: float, sign: int) -> None:
    values = lists.setdefault(key, [])
    _insort(values, value, sign)
    if not values:
        del lists[key]


def _median(values: list[float]) -> float:
    """The median of sorted values as pandas computes it: the middle one, or the mean of the two middle ones."""
    n = len(values)
    if not n:
        return float("nan")
    return values[n // 2] if n % 2 else (values[n // 2] + values[n // 2 - 1]) / 2


# --- time-aware sequence embedding ---------------------------------------------------------------
_PAY_SIZES = ("small", "mid", "large")
_TOKENS: tuple[str, ...] = (
    *(
        f"pay:{a}:{s}:{z}"
        for a in ("purchase", "transfer", "refund", "other")
        for s in ("approved", "declined")
        for z in _PAY_SIZES
    ),
    *(f"acct:{a}" for a in ("signup", "login", "rename", "ban", "unban", "other")),
    "gap:<1m", "gap:1-10m", "gap:10m-1h", "gap:1-6h", "gap:6-24h", "gap:>1d",
)  # fmt: skip
_TOKEN_ID = {token: i for i, token in enumerate(_TOKENS)}
_GAP_BASE = _TOKEN_ID["gap:<1m"]


@lru_cache(maxsize=4)
def _projection(seed: int, dim: int) -> np.ndarray:
    """Seeded Gaussian random projection of the hashed n-gram space (Johnson-Lindenstrauss)."""
    return np.random.default_rng(seed).normal(0.0, 1.0 / np.sqrt(dim), (_HASH_BUCKETS, dim))


def sequence_tokens(events: Events) -> pd.DataFrame:
    """(user_id, t, token id) for payments (chargebacks excluded: they are outcomes) and account events."""
    pay = payment_table(events)
    pay = pay[pay["action"] != "chargeback"]
    action = pay["action"].where(pay["action"].isin(["purchase", "transfer", "refund"]), "other")
    status = pay["status"].where(pay["status"] == "declined", "approved")
    # jobs/embed.py's size buckets (<= 5, <= 100, more), in USD; unusable amounts count as "mid".
    usd = pay["amount_usd"].fillna(50.0).to_numpy()
    size = np.where(usd <= 5, "small", np.where(usd <= 100, "mid", "large"))
    pay_tokens = ("pay:" + action + ":" + status + ":" + size).map(_TOKEN_ID)
    acct = events["account"]
    known = ("signup", "login", "rename", "ban", "unban")
    acct_tokens = ("acct:" + acct["action"].astype(str).where(acct["action"].isin(known), "other")).map(_TOKEN_ID)
    rows = pd.concat(
        [
            pd.DataFrame({"user_id": pay["user_id"], "t": pay["t"], "token": pay_tokens.to_numpy()}),
            pd.DataFrame({"user_id": acct["user_id"].astype(str), "t": _seconds(acct["ts"]), "token": acct_tokens}),
        ],
        ignore_index=True,
    )
    return rows.sort_values(["user_id", "t", "token"], kind="stable").reset_index(drop=True)


def embedding_end(last_t: float) -> float:
    """The end of the day of the last token (unix seconds): where the embedding's ages count from."""
    return float(np.ceil(last_t / 86_400 + 1e-9) * 86_400)


def sequence_embedding(events: Events, seed: int = 7, dim: int = EMBED_DIM, end: float | None = None) -> pd.DataFrame:
    """Time-decayed 1-3-gram profile of each user's event sequence with gap tokens, randomly projected.

    Ages count back from ``end`` (default: the end of the last day with a token in ``events``)."""
    tokens = sequence_tokens(events)
    users = events.user_ids
    out = pd.DataFrame(0.0, index=users, columns=list(EMBED_COLUMNS[:dim]))
    if tokens.empty:
        return out
    # Interleave gap tokens: event, gap, event, gap, ... per user (as jobs/embed.py does).
    user = tokens["user_id"].to_numpy()
    t = tokens["t"].to_numpy()
    tok = tokens["token"].to_numpy(dtype=np.int64)
    same_user = np.r_[False, user[1:] == user[:-1]]
    buckets = np.searchsorted(np.asarray(GAP_EDGES_S), np.r_[0.0, np.diff(t)], side="right")
    gap = np.asarray(buckets, dtype=np.int64) + _GAP_BASE
    seq_user = np.concatenate([user[same_user], user])
    seq_t = np.concatenate([t[same_user], t])
    seq_tok = np.concatenate([gap[same_user], tok])
    # A gap sorts just before the event it precedes: order by user, time, then gap first.
    order = np.lexsort((np.r_[np.zeros(same_user.sum()), np.ones(len(tok))], seq_t, seq_user))
    seq_user, seq_t, seq_tok = seq_user[order], seq_t[order], seq_tok[order]
    # Ages count back from the end of the last day seen (jobs/embed.py: the profile date's end).
    end = embedding_end(float(t.max())) if end is None else end
    weight = np.exp(-(end - seq_t) / 86_400 / TAU_DAYS)
    vocab = len(_TOKENS)
    grams = [seq_tok]
    for n in (2, 3):
        if len(seq_tok) < n:  # a night with fewer events than the n-gram: no n-grams
            grams.append(np.full(len(seq_tok), -1, dtype=np.int64))
            continue
        same = np.ones(len(seq_tok) - n + 1, dtype=bool)
        for k in range(1, n):
            same &= seq_user[k : len(seq_user) - n + 1 + k] == seq_user[: len(seq_user) - n + 1]
        gram = np.zeros(len(seq_tok) - n + 1, dtype=np.int64)
        for k in range(n):
            gram = gram * vocab + seq_tok[k : len(seq_tok) - n + 1 + k]
        full = np.full(len(seq_tok), -1, dtype=np.int64)
        full[n - 1 :] = np.where(same, gram + vocab ** (n - 1) * 1_000, -1)  # offset keeps n-gram orders apart
        grams.append(full)
    codes, uniques = pd.factorize(seq_user)
    rows = np.concatenate([codes] * 3)
    gram_ids = np.concatenate(grams)
    weights = np.concatenate([weight] * 3)
    keep = gram_ids >= 0
    distinct, gram_of = np.unique(gram_ids[keep], return_inverse=True)
    bucket = np.array([zlib.crc32(g.to_bytes(8, "little")) for g in distinct.tolist()], dtype=np.int64)
    cols = (bucket % _HASH_BUCKETS)[gram_of.reshape(-1)]  # each distinct n-gram hashed once
    counts = pd.DataFrame({"r": rows[keep], "c": cols, "w": weights[keep]}).groupby(["r", "c"])["w"].sum()
    r = counts.index.get_level_values(0).to_numpy()
    c = counts.index.get_level_values(1).to_numpy()
    v = np.log1p(counts.to_numpy())
    norms = np.sqrt(np.bincount(r, weights=v**2, minlength=len(uniques)))
    v = v / norms[r]
    proj = _projection(seed, dim)
    dense = np.zeros((len(uniques), dim))
    np.add.at(dense, r, v[:, None] * proj[c])
    out.loc[pd.Index(uniques)] = dense
    return out
