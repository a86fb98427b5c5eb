"""Fraud evidence per payment: the entities around each payment, unlabelled patterns, known outcomes.

Most payers pay once in a given week, so a payment is scored with what surrounds it rather than
with its sender's history:

1. **Features** (``payment_features``), one row per payment attempt (purchase or transfer), none of
   them fitted: the amount against the sender's, the payee's and the context's (merchant or
   ``p2p``) median; type, decline and hour of day (how rare the hour is among all payments); the
   payee's fan-in, how fast it pays out after this payment and how much of what it receives it
   forwards within a day; whether the sender is a new payer of this payee; money the sender received
   in the day before (forwarding); accounts on the sender's instrument, device and network; a
   first-seen device logged in within three hours before; the sender's attempts and declines
   around the payment.
2. **Unlabelled patterns** (``pattern_scores``), readable and fixed, for the money flows that carry
   no outcome for weeks: a *mule* receives from several accounts and forwards almost the same
   amount within hours (``mule``: ``(1 - exp(-matched / 3)) * matched share * sqrt(1 - 1/senders)``,
   ``matched`` the received transfers followed by such a forward; the share keeps out cash agents
   and exchanges, which receive from many and pay out a little of it); a *takeover* spends at least
   twice the merchant's median within three hours of logging in from a device that is new to
   several accounts at once (``takeover``; ordinary spending after a café's or a library's shared
   machine is not a takeover).
3. **Known outcomes through shared entities** (``propagated_evidence``): a payee, instrument,
   device or network is evidence against an account in proportion to how specific it is, the
   share of the *other* accounts on it with a known outcome, ``bad / (others + 2)`` (two imagined
   unlabelled accounts of prior: one known-bad neighbour of one is 1/3, not certainty). A carrier
   NAT address shared by hundreds of normal users with one known-bad account gives under 1 %.
4. **Positive-unlabelled model** (``fit_pu``/``predict_pu``): gradient boosting on the payment
   features with the payments of known-bad accounts as positives and everything else unlabelled
   (taken as negative), calibrated by the label frequency ``c`` (Elkan & Noto, *Learning Classifiers
   from Only Positive and Unlabeled Data*, KDD 2008: ``p(y|x) = p(s|x) / c``, ``c`` the mean
   out-of-fold ``p(s|x)`` over the labelled positives). Shallow trees with large leaves
   (``PU_MIN_LEAF``) cannot memorise one unlabelled payment, so an unreported fraud that resembles
   the reported ones keeps a high score although it was a "negative" in the fit.

Costs: vectorised pandas over payments and logins, O(n log n); the PU fit is three cross-fitted
models plus the final one. Fails on fraud that resembles neither the known outcomes nor a pattern,
and on money flows whose accounts share nothing specific.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from argus.detectors.events import Events
from argus.detectors.fraud_features import (
    NEW_DEVICE_SPEND_S,
    FraudPopulation,
    _account_table,
    asof_times,
    payment_table,
    shared_accounts,
    timeline_keys,
    to_ms,
)

# Payment features: name -> wording for reasons.
PAYMENT_FEATURES: dict[str, str] = {
    "log_amount_usd": "amount (log USD)",
    "amount_vs_sender": "amount against the sender's median (log ratio)",
    "amount_vs_context": "amount against the merchant's median (log ratio)",
    "amount_vs_payee": "amount against what the payee usually receives (log ratio)",
    "is_transfer": "a transfer to another account",
    "declined": "declined",
    "hour_rarity": "rarity of the hour of day",
    "payee_fan_in": "accounts sending the payee money",
    "payee_forward_share": "share of the payee's inflow forwarded within a day",
    "payee_pays_out_h": "hours until the payee pays out (log)",
    "new_payee": "first payment to this payee",
    "sender_inflow_ratio": "money received in the day before, against the amount",
    "instrument_accounts": "other accounts on the instrument",
    "device_accounts": "other accounts on the sender's devices",
    "network_accounts": "other accounts on the sender's networks",
    "new_device_login": "a new device logged in within 3h before",
    "attempts_1h": "sender's attempts within an hour",
    "declines_10m": "sender's declines within ten minutes",
}
# Per-account evidence that needs no fitting (``account_evidence``): name -> wording for reasons.
ACCOUNT_EVIDENCE: dict[str, str] = {
    "mule_pattern": "receives from several accounts and forwards almost the same amounts within hours",
    "takeover_pattern": "spends big right after a login from a device new to several accounts",
    "pays_mule": "pays an account with the mule pattern",
    "crew_share": "suspicious patterns among the other accounts on its device, network or instrument",
    "known_nearby": "known fraud outcomes among the accounts sharing its payee, instrument, device or network",
}
DAY_S = 86_400
NO_PAYOUT_H = 7 * 24  # a payee that never pays out within the window counts as a week
FORWARD_RATIO = (0.8, 1.0)  # a forward passes on 80-100 % of what came in (fees and a cut kept)
FORWARD_WINDOW_S = 12 * 3_600
MULE_SCALE = 3.0  # matched forwards: three make the mule pattern 0.63, ten 0.96
PROPAGATION_PRIOR = 2.0  # two imagined unlabelled neighbours on every entity
PU_MIN_LEAF = 20  # no tree leaf smaller than this: single unlabelled payments cannot be memorised
PU_FOLDS = 3
TAKEOVER_AMOUNT = float(np.log(2.0))  # a takeover spends at least twice the merchant's median


def payment_features(events: Events, population: FraudPopulation | None = None) -> pd.DataFrame:
    """One row per payment attempt: ids, ``payee``, ``t``, ``context`` and the ``PAYMENT_FEATURES``.

    With ``population`` the norms and the accounts on each entity are read from it (see
    ``FraudPopulation``): a sender's rows are then right given its own events and the payments it
    received; the payee's forward share and pay-out delay are right for payees with all their own
    payments and received transfers in ``events``."""
    pay = payment_table(events)
    rows = pay[pay["action"].isin(["purchase", "transfer"])].copy()
    columns = ["event_id", "user_id", "payee", "t", "context", *PAYMENT_FEATURES]
    if rows.empty:
        return pd.DataFrame(columns=columns).astype({c: float for c in PAYMENT_FEATURES})
    rows["payee"] = rows["counterparty"].where(rows["action"] == "transfer").fillna("").astype(str)
    rows.loc[rows["payee"] == rows["user_id"], "payee"] = ""
    rows["context"] = rows["merchant"]
    # Feature columns gathered and one frame built at the end: set one at a time they cost more than a few
    # accounts' features.
    feature: dict[str, pd.Series | np.ndarray] = {}
    usd = rows["amount_usd"]
    log_usd = np.log1p(usd)
    feature["log_amount_usd"] = log_usd
    feature["amount_vs_sender"] = log_usd - rows.groupby("user_id")["amount_usd"].transform("median").pipe(np.log1p)
    if population is None:
        context_median = rows.groupby("context")["amount_usd"].transform("median")
    else:
        context_median = rows["context"].map(population.context_median).astype(float)
    feature["amount_vs_context"] = log_usd - context_median.pipe(np.log1p)
    is_transfer = rows["payee"] != ""
    feature["is_transfer"] = is_transfer.astype(float)
    feature["declined"] = (rows["status"] == "declined").astype(float)
    hour = ((rows["t"] // 3_600) % 24).astype(int)
    share = hour.map(hour.value_counts(normalize=True) if population is None else population.hour_share)
    feature["hour_rarity"] = -np.log(share * 24)

    transfers = rows[is_transfer & (rows["status"] == "approved")]
    if population is None:
        received_median = transfers.groupby("payee")["amount_usd"].median()
        fan_in = transfers.groupby("payee")["user_id"].nunique()
    else:
        received_median, fan_in = population.payee_median, population.payee_fan_in
    payee_median = rows["payee"].map(received_median).astype(float)
    feature["amount_vs_payee"] = np.where(is_transfer, log_usd - np.log1p(payee_median), 0.0)
    feature["payee_fan_in"] = rows["payee"].map(fan_in).fillna(0.0).where(is_transfer, 0.0)
    forwarded = forward_shares(transfers, rows[rows["status"] == "approved"])
    feature["payee_forward_share"] = rows["payee"].map(forwarded).fillna(0.0).where(is_transfer, 0.0)
    feature["payee_pays_out_h"] = _payout_delay_h(rows, is_transfer)
    pair_first = rows.groupby(["user_id", "payee"])["t"].transform("min")
    feature["new_payee"] = (is_transfer & (rows["t"] <= pair_first)).astype(float)
    feature["sender_inflow_ratio"] = _inflow_before(rows, transfers) / (usd.fillna(0.0) + 1.0)

    logins = _account_table(events)
    if population is None:
        instrument_accounts = rows.groupby("instrument")["user_id"].transform("nunique") - 1
        device, network = shared_accounts(logins, "device"), shared_accounts(logins, "network")
    else:
        instrument_accounts = rows["instrument"].map(population.instrument_accounts) - 1
        device, network = population.per_user["device_accounts"], population.per_user["network_accounts"]
    feature["instrument_accounts"] = instrument_accounts.astype(float)
    feature["device_accounts"] = rows["user_id"].map(device).fillna(0.0)
    feature["network_accounts"] = rows["user_id"].map(network).fillna(0.0)
    feature["new_device_login"] = _after_new_device(rows, logins)
    feature["attempts_1h"] = _around(rows, np.ones(len(rows), dtype=bool), 3_600)
    feature["declines_10m"] = _around(rows, (rows["status"] == "declined").to_numpy(), 600)
    out = {column: rows[column].to_numpy() for column in columns[:5]}
    return pd.DataFrame(out | {name: np.asarray(feature[name], dtype=float) for name in PAYMENT_FEATURES})


def forward_shares(transfers: pd.DataFrame, approved: pd.DataFrame) -> pd.Series:
    """Per payee, the share of the transfers it received that it forwards: an outgoing payment within
    ``FORWARD_WINDOW_S`` for 80-100 % of the amount (a mule passes money on, less its cut)."""
    matched = matched_forwards(transfers, approved)
    received = transfers.groupby("payee").size()
    return (matched.reindex(received.index).fillna(0.0) / received).clip(upper=1.0)


def matched_forwards(transfers: pd.DataFrame, approved: pd.DataFrame) -> pd.Series:
    """Per account, how many transfers it received were followed by a forward of almost the same amount."""
    if transfers.empty or approved.empty:
        return pd.Series(dtype=float)
    payee = transfers["payee"].to_numpy(dtype=object)
    usd_in = transfers["amount_usd"].to_numpy(dtype=float)
    i, j = window_pairs(
        payee, transfers["t"].to_numpy(), approved["user_id"].to_numpy(dtype=object), approved["t"].to_numpy(),
        0.0, FORWARD_WINDOW_S,
    )  # fmt: skip
    ratio = approved["amount_usd"].to_numpy(dtype=float)[j] / usd_in[i]
    ok = (ratio >= FORWARD_RATIO[0]) & (ratio <= FORWARD_RATIO[1])
    forwarded = np.unique(i[ok])
    return pd.Series(1.0, index=payee[forwarded]).groupby(level=0).sum()


def window_pairs(
    left_key: np.ndarray, left_t: np.ndarray, right_key: np.ndarray, right_t: np.ndarray, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) with the same key and ``left_t[i] + lo < right_t[j] <= left_t[i] + hi``.

    Sorted search per key, so the work is the number of pairs inside the window, not the product of
    a busy account's inflows and outflows (a cash agent with thousands of each)."""
    empty = np.zeros(0, dtype=np.int64)
    if len(left_key) == 0 or len(right_key) == 0:
        return empty, empty
    keys = timeline_keys(
        np.r_[np.asarray(left_key, dtype=object), np.asarray(right_key, dtype=object)],
        np.r_[np.asarray(left_t, dtype=float), np.asarray(right_t, dtype=float)],
        max(abs(lo), abs(hi)),
    )
    left, right = keys[: len(left_key)], keys[len(left_key) :]
    order = np.argsort(right, kind="stable")
    ordered = right[order]
    start = np.searchsorted(ordered, left + to_ms(lo), side="right")
    stop = np.searchsorted(ordered, left + to_ms(hi), side="right")
    counts = stop - start
    i = np.repeat(np.arange(len(left)), counts)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    j = order[np.repeat(start, counts) + offsets]
    return i.astype(np.int64), j.astype(np.int64)


def pattern_scores(rows: pd.DataFrame, events: Events, population: FraudPopulation | None = None) -> pd.DataFrame:
    """Per account (index ``user_id``): the unlabelled ``mule`` and ``takeover`` patterns, 0..1.

    With ``population`` the accounts sharing each new device come from it; an account's patterns
    then need its own rows and logins and the transfers it received."""
    approved = rows[rows["declined"] == 0]
    transfers = approved[approved["payee"] != ""]
    senders = transfers.groupby("payee")["user_id"].nunique()
    amounts = rows.assign(amount_usd=np.expm1(rows["log_amount_usd"]))
    matched = matched_forwards(
        amounts[(amounts["payee"] != "") & (amounts["declined"] == 0)], amounts[amounts["declined"] == 0]
    )
    accounts = pd.Index(sorted(set(rows["user_id"]) | set(transfers["payee"])))
    matched = matched.reindex(accounts).fillna(0.0)
    received = transfers.groupby("payee").size().reindex(accounts).fillna(0.0)
    share = (matched / received.where(received > 0)).fillna(0.0).clip(upper=1.0)
    breadth = 1.0 - 1.0 / senders.reindex(accounts).fillna(1.0).clip(lower=1.0)
    # A hub (cash agent, exchange, merchant) receives from many and pays out too, but forwards only
    # a small share of what it receives at the same amount: the share keeps it out of the pattern.
    mule = (1.0 - np.exp(-matched / MULE_SCALE)) * share * np.sqrt(breadth)
    # Takeover: unusual spend right after a login from a device that several accounts first used in the window.
    hopping = _device_hopping(_account_table(events)) if population is None else population.per_user["device_hopping"]
    spend = rows[
        (rows["new_device_login"] > 0) & (rows["declined"] == 0) & (rows["amount_vs_context"] > TAKEOVER_AMOUNT)
    ]
    spend_hop = spend.assign(hop=spend["user_id"].map(hopping).fillna(0.0))
    hop = spend_hop.groupby("user_id")["hop"].max().reindex(accounts).fillna(0.0)
    takeover = 1.0 - 1.0 / (1.0 + hop.clip(lower=0.0))
    takeover = takeover.where(hop >= 2, 0.0)
    return pd.DataFrame({"mule": mule, "takeover": takeover}, index=accounts)


def propagated_evidence(links: pd.DataFrame, suspicion: pd.Series) -> pd.Series:
    """Per account: over its entities, the largest ``sum of the other accounts' suspicion / (others + prior)``.

    ``links``: (entity, user_id) rows from ``entity_links``; ``suspicion``: 0..1 per account (1 for a
    known outcome). A payee P paid by one known-bad account and by this one gives 1/4 (the others
    are P and the known-bad payer); a network shared by 300 accounts, one of them known-bad, 1/301.
    """
    if links.empty:
        return pd.Series(dtype=float)
    own = links["user_id"].map(suspicion).fillna(0.0).astype(float)
    by_entity = own.groupby(links["entity"])  # ``entity_totals``, each entity's figures on its rows
    n = by_entity.transform("size")
    others = by_entity.transform("sum") - own
    share = (others / (n - 1 + PROPAGATION_PRIOR)).clip(lower=0.0)
    return share.groupby(links["user_id"]).max()


def entity_totals(links: pd.DataFrame, values: pd.Series) -> pd.DataFrame:
    """Per entity (index): ``n`` accounts on it and ``s`` the sum of their ``values`` (0 where absent), summed
    in ``links`` order (accounts by id within an entity, as ``entity_links`` gives them)."""
    own = links["user_id"].map(values).fillna(0.0).astype(float)
    by_entity = own.groupby(links["entity"])
    return pd.DataFrame({"n": by_entity.size(), "s": by_entity.sum()})


def account_evidence(
    rows: pd.DataFrame, events: Events, known: pd.Series, population: FraudPopulation | None = None
) -> pd.DataFrame:
    """Per account, evidence that needs no fitting: ``mule_pattern``, ``takeover_pattern``, ``pays_mule``
    (the strongest mule pattern among the accounts it paid), ``crew_share`` (those patterns among the
    other accounts on its own device, network or instrument) and ``known_nearby`` (known outcomes on
    any entity it shares, payees included).

    With ``population`` (see ``pattern_scores``) an account's evidence is right when ``events`` hold its
    ``feature_reach``; the evidence of the other accounts in them is then incomplete."""
    patterns = pattern_scores(rows, events, population)
    links = entity_links(rows, events)
    accounts = pd.Index(sorted(set(patterns.index) | set(links["user_id"]) | set(known.index)))
    patterns = patterns.reindex(accounts).fillna(0.0)
    sent = rows[(rows["payee"] != "") & (rows["declined"] == 0)]
    pays_mule = sent["payee"].map(patterns["mule"]).fillna(0.0).groupby(sent["user_id"]).max()
    pays_mule = pays_mule.reindex(accounts).fillna(0.0)
    known = known.reindex(accounts).astype(float).fillna(0.0)
    # Pattern evidence spreads only through the account's own identity (device, network, instrument):
    # through a payee it would mark every honest payer of a mule.
    suspicion = pd.concat([known, patterns["mule"], patterns["takeover"], pays_mule], axis=1).max(axis=1)
    identity = links[~links["entity"].str.startswith("payee:")]
    return pd.DataFrame(
        {
            "mule_pattern": patterns["mule"],
            "takeover_pattern": patterns["takeover"],
            "pays_mule": pays_mule,
            "crew_share": propagated_evidence(identity, suspicion).reindex(accounts).fillna(0.0),
            "known_nearby": propagated_evidence(links, known).reindex(accounts).fillna(0.0),
        },
        index=accounts,
    )


def entity_links(rows: pd.DataFrame, events: Events) -> pd.DataFrame:
    """(entity, user_id), one row per account on an entity: ``payee:P`` holds P and everyone paying P."""
    parts = [
        pd.DataFrame(
            {
                "entity": "payee:" + rows.loc[rows["payee"] != "", "payee"],
                "user_id": rows.loc[rows["payee"] != "", "user_id"],
            }
        ),
        pd.DataFrame(
            {
                "entity": "payee:" + rows.loc[rows["payee"] != "", "payee"],
                "user_id": rows.loc[rows["payee"] != "", "payee"],
            }
        ),
    ]
    pay = payment_table(events)
    pay = pay[pay["action"].isin(["purchase", "transfer"])]
    parts.append(pd.DataFrame({"entity": "instrument:" + pay["instrument"], "user_id": pay["user_id"]}))
    logins = _account_table(events)
    for key in ("device", "network"):
        known = logins.dropna(subset=[key])
        parts.append(pd.DataFrame({"entity": f"{key}:" + known[key].astype(str), "user_id": known["user_id"]}))
    return pd.concat(parts, ignore_index=True).drop_duplicates().reset_index(drop=True)


def feature_reach(pay: pd.DataFrame, logins: pd.DataFrame, users: pd.Index) -> pd.Index:
    """The accounts whose own events and received payments the fraud features of ``users`` read, given
    a ``FraudPopulation`` (``pay``: ``payment_table``, ``logins``: its signups and logins).

    A user's payment rows are its payments and the transfers it received, each needing its sender's and
    its payee's events (payers and payees). ``crew_share`` reads the suspicion of every account on the
    user's instruments, devices and networks (its crew), and an account's suspicion includes the mule
    pattern of the accounts it pays: three hops, user -> crew -> their payees. ``known_nearby`` reads
    the known outcomes of everyone paying the user's payees. Entities are matched as ``entity_links``
    writes them, so a carrier network shared by thousands brings them all in: they do share it."""
    attempts = pay[pay["action"].isin(["purchase", "transfer"])]
    sender = attempts["user_id"]
    payee = attempts["counterparty"].where(attempts["action"] == "transfer").fillna("").astype(str)
    payee = payee.where(payee != sender, "")
    with_logins = {key: logins.dropna(subset=[key]).astype({key: str}) for key in ("device", "network")}

    def payees_of(accounts: set[str]) -> set[str]:
        return set(payee[sender.isin(accounts) & (payee != "")])

    def payers_of(accounts: set[str]) -> set[str]:
        return set(sender[payee.isin(accounts)])

    def crew_of(accounts: set[str]) -> set[str]:
        used = attempts.loc[sender.isin(accounts), "instrument"]
        crew = set(sender[attempts["instrument"].isin(used)])
        for key, rows in with_logins.items():
            used = rows.loc[rows["user_id"].isin(accounts), key]
            crew |= set(rows.loc[rows[key].isin(used), "user_id"])
        return crew

    wanted = set(map(str, users))
    crew = crew_of(wanted) | wanted
    return pd.Index(sorted(crew | payees_of(crew) | payers_of(wanted) | payers_of(payees_of(wanted))), name="user_id")


def fit_pu(x: np.ndarray, labelled: np.ndarray, groups: np.ndarray, seed: int) -> dict[str, Any] | None:
    """Gradient boosting, labelled payments against the rest, and the label frequency ``c`` out of fold.

    ``groups`` (the sender) keeps one account's payments in one fold. None when there are fewer
    than two labelled accounts: nothing to learn from.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    labelled = np.asarray(labelled, dtype=bool)
    positive_groups = np.unique(groups[labelled])
    if len(positive_groups) < 2 or labelled.all():
        return None

    def model() -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(
            max_depth=3, max_iter=100, learning_rate=0.1, min_samples_leaf=PU_MIN_LEAF, random_state=seed
        )

    # Folds by sender: a positive account's payments are scored by a model that never saw them.
    codes = pd.factorize(groups)[0]
    fold = np.random.default_rng(seed).permutation(codes.max() + 1)[codes] % PU_FOLDS
    held_out = np.zeros(len(x))
    # One OpenMP thread: the trees are shallow and the nightly fit sample is bounded, so their many short
    # parallel regions cost more in thread hand-offs than they save (17,559 payments: 0.8 CPU s on one
    # thread, 14 to 21 on two while other processes shared the two cores). Any thread count fits the
    # same model.
    with threadpool_limits(1, user_api="openmp"):
        for k in range(PU_FOLDS):
            train = fold != k
            if labelled[train].sum() == 0 or labelled[train].all():
                continue
            held_out[~train] = model().fit(x[train], labelled[train]).predict_proba(x[~train])[:, 1]
        final = model().fit(x, labelled)
    # c: per labelled account its best payment (a labelled account's other payments may be honest).
    best = pd.Series(held_out[labelled]).groupby(groups[labelled]).max()
    c = float(np.clip(best.mean(), 0.05, 1.0))
    return {"model": final, "c": c}


def predict_pu(pu: dict[str, Any] | None, x: np.ndarray) -> np.ndarray:
    """Calibrated ``p(y=1|x) = min(1, p(s=1|x) / c)``; zeros without a model."""
    if pu is None or len(x) == 0:
        return np.zeros(len(x))
    probability = np.asarray(pu["model"].predict_proba(x)[:, 1], dtype=float)
    return np.asarray(np.clip(probability / float(pu["c"]), 0.0, 1.0), dtype=float)


def feature_matrix(rows: pd.DataFrame) -> np.ndarray:
    return np.asarray(rows[list(PAYMENT_FEATURES)].to_numpy(dtype=float), dtype=float)


def rows_per_account(rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per account, its payment rows as one array (``PAYMENT_FEATURES`` then ``received``) and their
    event ids: the payments it sent and the transfers it received (a mule may only receive)."""
    if rows.empty:
        return pd.Series(dtype=object), pd.Series(dtype=object)
    values = feature_matrix(rows)
    sent = np.c_[values, np.zeros(len(rows))]
    incoming = (rows["payee"] != "").to_numpy()
    received = np.c_[values[incoming], np.ones(int(incoming.sum()))]
    owner = np.r_[rows["user_id"].to_numpy(dtype=object), rows["payee"].to_numpy(dtype=object)[incoming]]
    ids = np.r_[rows["event_id"].to_numpy(dtype=object), rows["event_id"].to_numpy(dtype=object)[incoming]]
    order = np.argsort(owner.astype(str), kind="stable")
    owner, ids, stacked = owner[order], ids[order], np.r_[sent, received][order]
    accounts, starts = np.unique(owner.astype(str), return_index=True)
    bounds = [*starts[1:], len(owner)]
    arrays = [stacked[a:b] for a, b in zip(starts, bounds, strict=True)]
    id_lists = [tuple(ids[a:b]) for a, b in zip(starts, bounds, strict=True)]
    return pd.Series(arrays, index=accounts, dtype=object), pd.Series(id_lists, index=accounts, dtype=object)


# --- helpers ---------------------------------------------------------------------------------
def _payout_delay_h(rows: pd.DataFrame, is_transfer: pd.Series) -> np.ndarray:
    """Hours from each transfer to the payee's next approved outgoing payment (``NO_PAYOUT_H`` if none)."""
    out = np.full(len(rows), float(NO_PAYOUT_H))
    sent = rows[rows["status"] == "approved"]
    incoming = rows[is_transfer]
    if sent.empty or incoming.empty:
        return np.asarray(np.log1p(out), dtype=float)
    t_in = incoming["t"].to_numpy(dtype=float)
    t_out = asof_times(incoming["payee"], t_in, sent["user_id"], sent["t"], forward=True)
    delay = (t_out - t_in) / 3_600
    out[is_transfer.to_numpy()] = np.where(np.isnan(delay), NO_PAYOUT_H, np.minimum(delay, NO_PAYOUT_H))
    return np.asarray(np.log1p(out), dtype=float)


def _inflow_before(rows: pd.DataFrame, transfers: pd.DataFrame) -> np.ndarray:
    """USD the sender received by transfer in the day before each of its payments."""
    out = np.zeros(len(rows))
    if transfers.empty:
        return out
    i, j = window_pairs(
        rows["user_id"].to_numpy(dtype=object), rows["t"].to_numpy(),
        transfers["payee"].to_numpy(dtype=object), transfers["t"].to_numpy(), -DAY_S, 0.0,
    )  # fmt: skip
    received = transfers["amount_usd"].fillna(0.0).to_numpy(dtype=float)
    # Strictly before the payment: an inflow at the same instant did not fund it.
    before = transfers["t"].to_numpy()[j] < rows["t"].to_numpy()[i]
    np.add.at(out, i[before], received[j[before]])
    return out


def _new_device_logins(logins: pd.DataFrame) -> pd.DataFrame:
    """Logins from a device the account had not used before in the window (not its first login)."""
    logins = logins.dropna(subset=["device"])
    if logins.empty:
        return logins.assign(device="")
    first = logins.groupby(["user_id", "device"])["t"].transform("min")
    earliest = logins.groupby("user_id")["t"].transform("min")
    return logins[(logins["t"] == first) & (logins["t"] > earliest)]


def _after_new_device(rows: pd.DataFrame, logins: pd.DataFrame) -> np.ndarray:
    new = _new_device_logins(logins)[["user_id", "t"]].drop_duplicates()
    out = np.zeros(len(rows))
    if new.empty:
        return out
    t_login = asof_times(rows["user_id"], rows["t"], new["user_id"], new["t"])
    return np.asarray((rows["t"].to_numpy(dtype=float) - t_login) <= NEW_DEVICE_SPEND_S, dtype=float)


def _device_hopping(logins: pd.DataFrame) -> pd.Series:
    """Per account, the most accounts for which one of its new devices was also new (one crew, many accounts)."""
    new = _new_device_logins(logins)[["user_id", "device"]].drop_duplicates()
    if new.empty:
        return pd.Series(dtype=float)
    accounts = new.groupby("device")["user_id"].transform("size")
    return accounts.groupby(new["user_id"]).max().astype(float)


def _around(rows: pd.DataFrame, mask: np.ndarray, window_s: float) -> np.ndarray:
    """Per row, the sender's ``mask`` rows within ``window_s`` before or after it (itself included if masked)."""
    key = timeline_keys(rows["user_id"].to_numpy(dtype=object), rows["t"].to_numpy(), window_s)
    marked = np.sort(key[np.asarray(mask, dtype=bool)])
    lo = np.searchsorted(marked, key - to_ms(window_s), side="left")
    hi = np.searchsorted(marked, key + to_ms(window_s), side="right")
    return np.asarray(hi - lo, dtype=float)
