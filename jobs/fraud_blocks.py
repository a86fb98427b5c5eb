"""Fraud features as blocks of users, built on the executors with what relates accounts aggregated by Spark.

A fraud feature of an account depends on other accounts: its payees' fan-in, medians and pay-out
habits, the accounts on its instruments, devices and networks, the merchant's and the currency's
norms, and suspicion spread over shared entities (a crew on one device, known outcomes on one
payee). ``FraudDetector.features_from`` takes those figures as a ``FraudPopulation`` and per-account
evidence; given them, an account's features are a function of its own events and the payments it
received. So the features are built in passes, each a Spark aggregation or a grouped pandas task
over one block of accounts (by a hash of ``user_id``, as ``jobs/feature_blocks.py`` cuts blocks):

1. **Payments** (``payment_table``) and logins as Spark rows; Spark aggregates the population's
   figures: per currency its median purchase, per hour of day the attempts, the embedding's last
   day (these few rows reach the driver and are broadcast), per merchant and per payee the median
   amount (Spark's exact ``percentile``), per payee its senders, per instrument, device and network
   its accounts, per account the largest of those over its own entities (left on the executors).
2. **Payment rows**: each block's task gets its accounts' events and the payments they received
   and, as rows, the figures for the keys they touch, and builds ``payment_features`` of its
   accounts' payments, the pay-out delay and forward share of the transfers they received, the
   ``mule`` and ``takeover`` patterns and the known outcomes of its accounts. A transfer row takes
   the payee-side figures from its payee's block (a join on the payment).
3. **Evidence over entities**: Spark joins each account's suspicion (the largest of its known
   outcome, its patterns and the mule pattern of its payees) onto the entity links; one task per
   entity sums it in the pandas path's order (``entity_totals``), and Spark takes each account's
   largest share over its entities (``crew_share``, ``known_nearby``).
4. **Blocks**: each block's task builds ``features_from`` its accounts' events, the payments they
   received, their sent and received payment rows and the figures above, and keeps its own users.

No pass collects payments or users to the driver: it receives the per-currency and per-hour
counts, a few maxima and the user count. Each figure is computed as the pandas path computes it
(the same functions on the same rows in the same order, or exact Spark aggregates: counts, maxima
and ``percentile``, whose median is the pandas median), so the blocks equal ``FraudDetector.features``.

Parallelism: the payment and account tables are built by ``spark.sql.shuffle.partitions`` tasks (by
user; a type read from the lake is often one partition), and the passes run with adaptive execution's
partition coalescing off, so a small shuffle still gives every core a share of the per-block pandas work.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from argus.jobs.feature_blocks import BLOCK_SCHEMA, BLOCK_USERS, events_from_wide, hashed_block, pack, user_block

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from argus.detectors.events import Events
    from argus.detectors.fraud import FraudDetector
    from argus.detectors.fraud_features import FraudPopulation

PAY_SCHEMA = (
    "event_id string, user_id string, t double, hour long, action string, status string, merchant string, "
    "instrument string, counterparty string, payee string, currency string, amount double, amount_usd double"
)
ACCOUNT_SCHEMA = "user_id string, t double, action string, device string, network string"
LOOKUP_SCHEMA = "_block long, kind string, key string, value double"
# Figures per user, as LOOKUP_SCHEMA rows (entity figures: context_median, payee_median, payee_fan_in,
# instrument_accounts).
USER_LOOKUPS = (
    "device_accounts",
    "network_accounts",
    "device_hopping",
    "user_instrument_accounts",
    "user_payee_fan_in",
)
COALESCE_PARTITIONS = "spark.sql.adaptive.coalescePartitions.enabled"


def fraud_blocks(
    window: DataFrame, columns: dict[str, list[str]], detector: FraudDetector, block_users: int = BLOCK_USERS
) -> DataFrame:
    """``BLOCK_SCHEMA`` rows of ``detector.features`` over the window's events (see the module doc)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from argus.detectors.fraud_payments import PAYMENT_FEATURES

    spark = window.sparkSession
    persisted: list[DataFrame] = []
    # Each pass's work is per block of users in pandas, not per byte shuffled: adaptive execution would
    # merge a pass's small shuffle partitions into one or two tasks (its lookups, its entity figures)
    # and leave a core idle, so every shuffle keeps its spark.sql.shuffle.partitions tasks here.
    coalescing = str(spark.conf.get(COALESCE_PARTITIONS, "true"))
    spark.conf.set(COALESCE_PARTITIONS, "false")

    def keep(frame: DataFrame) -> DataFrame:
        # Computed once on the executors and cut from its lineage: each pass plans over the last
        # pass's rows, not over every pass before it.
        persisted.append(frame.localCheckpoint(eager=True))
        return persisted[-1]

    try:
        pay = keep(_payments(window, columns))
        accounts = keep(_accounts(window, columns))
        attempts = pay.where(F.col("action").isin("purchase", "transfer"))
        logins = accounts.where(F.col("action").isin("signup", "login"))
        payees = attempts.where((F.col("action") == "transfer") & (F.col("status") == "approved"))
        users = window.select("user_id").union(
            payees.where(F.col("counterparty").isNotNull()).select(F.col("counterparty").alias("user_id"))
        )
        blocks = -(-max(users.distinct().count(), 1) // block_users)
        shared = spark.sparkContext.broadcast(_shared_figures(pay, accounts))
        keyed, user_figures = _key_figures(attempts, logins)
        keyed, user_figures = keep(keyed), keep(user_figures)

        # Pass 2: payment rows, patterns and outcomes per block of accounts.
        routed = keep(_routed(window, blocks))
        lookups = keep(
            _block_lookups(
                user_figures, blocks, ("device_accounts", "network_accounts", "device_hopping"), entities=(pay, keyed)
            )
        )
        pass_schema = (
            "kind string, event_id string, user_id string, payee string, t double, context string, "
            + ", ".join(f"{c} double" for c in PAYMENT_FEATURES)
            + ", mule double, takeover double, known double"
        )
        own_types = ("payment", "account", "moderation")

        def payments_of(key: tuple[Any, ...], rows: pd.DataFrame, figures: pd.DataFrame) -> pd.DataFrame:
            return _payment_pass(int(key[0]), blocks, rows, figures, columns, shared.value)

        passed = keep(
            routed.where(F.col("event_type").isin(*own_types))
            .groupBy("_block")
            .cogroup(lookups.groupBy("_block"))
            .applyInPandas(payments_of, pass_schema)
        )
        keys = ["event_id", "user_id", "payee", "t"]
        received = (
            passed.where(F.col("kind") == "received")
            .select(*keys, F.col("payee_forward_share").alias("_share"), F.col("payee_pays_out_h").alias("_out"))
            .dropDuplicates(keys)
        )
        rows = keep(
            passed.where(F.col("kind") == "sent")
            .join(received, keys, "left")
            .withColumn("payee_forward_share", F.coalesce("_share", "payee_forward_share"))
            .withColumn("payee_pays_out_h", F.coalesce("_out", "payee_pays_out_h"))
            .select(*keys, "context", *PAYMENT_FEATURES)
        )
        patterns = passed.where(F.col("kind") == "account").select("user_id", "mule", "takeover", "known")

        # Pass 3: evidence spread over shared entities.
        evidence = keep(_account_evidence(rows, patterns, attempts, logins))

        # Pass 4: the blocks.
        final_lookups = _block_lookups(
            user_figures,
            blocks,
            ("device_accounts", "network_accounts", "user_instrument_accounts", "user_payee_fan_in"),
            evidence=evidence,
        )
        with_rows = _routed_rows(rows, blocks).unionByName(final_lookups, allowMissingColumns=True)

        def block_of(key: tuple[Any, ...], events: pd.DataFrame, figures: pd.DataFrame) -> pd.DataFrame:
            number = int(key[0])
            features = _block_features(number, blocks, events, figures, columns, shared.value, detector)
            return pd.DataFrame([pack(features, number)])

        with_rows = keep(with_rows)
        built = routed.groupBy("_block").cogroup(with_rows.groupBy("_block")).applyInPandas(block_of, BLOCK_SCHEMA)
        built = built.persist(StorageLevel.MEMORY_AND_DISK)
        built.count()  # built while the passes are kept; the caller unpersists the blocks
        return built
    finally:
        spark.conf.set(COALESCE_PARTITIONS, coalescing)
        for frame in persisted:
            frame.unpersist()


# --- pass 1: payments, accounts and the population's figures -------------------------------------
def _payments(window: DataFrame, columns: dict[str, list[str]]) -> DataFrame:
    """``payment_table`` of the window's payments as Spark rows, with the ``payee`` and ``hour`` the
    payment rows use (``payment_features``)."""
    from pyspark.sql import functions as F

    from argus.detectors.fraud_features import payment_table

    def table(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            pay = payment_table(events_from_wide(batch, columns))
            payee = pay["counterparty"].where(pay["action"] == "transfer").fillna("").astype(str)
            pay["payee"] = payee.where(payee != pay["user_id"], "")
            pay["counterparty"] = pay["counterparty"].map(lambda c: None if pd.isna(c) else str(c))
            pay["hour"] = ((pay["t"] // 3_600) % 24).astype("int64")
            yield pay[[c.split()[0] for c in PAY_SCHEMA.split(", ")]]

    return _spread(window.where(F.col("event_type") == "payment")).mapInPandas(table, PAY_SCHEMA)


def _accounts(window: DataFrame, columns: dict[str, list[str]]) -> DataFrame:
    """The window's account events as ``ACCOUNT_SCHEMA`` rows (``t`` in unix seconds, as the features read it)."""
    from pyspark.sql import functions as F

    from argus.detectors.fraud_features import _seconds

    def table(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            acct = events_from_wide(batch, columns)["account"]
            yield pd.DataFrame(
                {
                    "user_id": acct["user_id"].astype(str),
                    "t": _seconds(acct["ts"]),
                    "action": acct["action"].astype(str),
                    "device": _strings(acct, "device_fp"),
                    "network": _strings(acct, "network_fp"),
                }
            )

    return _spread(window.where(F.col("event_type") == "account")).mapInPandas(table, ACCOUNT_SCHEMA)


def _spread(events: DataFrame) -> DataFrame:
    """``events`` over spark.sql.shuffle.partitions partitions by user: an event type read from the lake
    (or the window's cache) is often one partition, which would make its table one task's work."""
    from pyspark.sql import functions as F

    return events.repartition(_shuffle_partitions(events), F.col("user_id"))


def _shuffle_partitions(frame: DataFrame) -> int:
    """The session's spark.sql.shuffle.partitions (Spark's default 200 when unset)."""
    return int(frame.sparkSession.conf.get("spark.sql.shuffle.partitions") or 200)


def _strings(frame: pd.DataFrame, column: str) -> pd.Series:
    """``frame[column]`` as strings, missing values (or a missing column) as None."""
    if column not in frame:
        return pd.Series([None] * len(frame), index=frame.index, dtype=object)
    return frame[column].map(lambda v: None if pd.isna(v) else str(v))


def _shared_figures(pay: DataFrame, accounts: DataFrame) -> dict[str, Any]:
    """The figures every block needs, bounded by currencies and hours: currency norms, hour shares and
    the embedding's end (the only rows of the fraud features that reach the driver)."""
    from pyspark.sql import functions as F

    from argus.detectors.fraud_features import currency_norms, embedding_end

    # One query, one collect: per currency, per hour and overall figures, told apart by ``figure``.
    purchases = pay.where((F.col("action") == "purchase") & F.col("amount").isNotNull())
    by_currency = purchases.groupBy("currency").agg(
        F.percentile("amount", 0.5).alias("median"), F.count("*").alias("n")
    )
    by_hour = pay.where(F.col("action").isin("purchase", "transfer")).groupBy("hour").agg(F.count("*").alias("n"))
    overall = (
        purchases.agg(F.percentile("amount_usd", 0.5).alias("median"))
        .crossJoin(pay.where(F.col("action") != "chargeback").agg(F.max("t").alias("last")))
        .crossJoin(accounts.agg(F.max("t").alias("last_account")))
    )
    rows = (
        by_currency.withColumn("figure", F.lit("currency"))
        .unionByName(by_hour.withColumn("figure", F.lit("hour")), allowMissingColumns=True)
        .unionByName(overall.withColumn("figure", F.lit("overall")), allowMissingColumns=True)
        .collect()
    )
    currencies = [r for r in rows if r["figure"] == "currency"]
    medians = pd.Series({r["currency"]: float(r["median"]) for r in currencies}, dtype=float).sort_index()
    counts = pd.Series({r["currency"]: int(r["n"]) for r in currencies}, dtype="int64")
    hour_counts = pd.Series({int(r["hour"]): int(r["n"]) for r in rows if r["figure"] == "hour"}, dtype="int64")
    (total,) = [r for r in rows if r["figure"] == "overall"]
    usd_norm = float(total["median"]) if total["median"] is not None else np.nan
    ends = [t for t in (total["last"], total["last_account"]) if t is not None]
    return {
        "currency_norm": currency_norms(medians, counts, usd_norm),
        "hour_share": hour_counts / hour_counts.sum() if len(hour_counts) else pd.Series(dtype=float),
        "embed_end": embedding_end(max(ends)) if ends else None,
    }


def _key_figures(attempts: DataFrame, logins: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Figures per entity (``kind, key, value``: ``KEY_LOOKUPS``) and per user (``user_id`` and ``USER_LOOKUPS``)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    def keyed(kind: str, frame: DataFrame) -> DataFrame:
        return frame.select(F.lit(kind).alias("kind"), F.col("key"), F.col("value").cast("double"))

    transfers = attempts.where((F.col("payee") != "") & (F.col("status") == "approved"))
    contexts = attempts.groupBy(F.col("merchant").alias("key")).agg(F.percentile("amount_usd", 0.5).alias("value"))
    payee_medians = transfers.groupBy(F.col("payee").alias("key")).agg(F.percentile("amount_usd", 0.5).alias("value"))
    fan_in = transfers.groupBy(F.col("payee").alias("key")).agg(F.countDistinct("user_id").alias("value"))
    instruments = attempts.groupBy(F.col("instrument").alias("key")).agg(F.countDistinct("user_id").alias("value"))
    entities = (
        keyed("context_median", contexts)
        .unionByName(keyed("payee_median", payee_medians))
        .unionByName(keyed("payee_fan_in", fan_in))
        .unionByName(keyed("instrument_accounts", instruments))
    )

    def most_shared(key: str) -> DataFrame:
        """``shared_accounts``: per user, the most other accounts on one of its ``key`` values."""
        pairs = logins.where(F.col(key).isNotNull()).select("user_id", key).distinct()
        sizes = pairs.groupBy(key).agg(F.count("*").alias("n"))
        return pairs.join(sizes, key).groupBy("user_id").agg(F.max(F.col("n") - 1).alias(f"{key}_accounts"))

    with_device = logins.where(F.col("device").isNotNull())
    first = F.min("t").over(Window.partitionBy("user_id", "device"))
    earliest = F.min("t").over(Window.partitionBy("user_id"))
    new = (
        with_device.withColumn("_first", first)
        .withColumn("_earliest", earliest)
        .where((F.col("t") == F.col("_first")) & (F.col("t") > F.col("_earliest")))
        .select("user_id", "device")
        .distinct()
    )
    new_sizes = new.groupBy("device").agg(F.count("*").alias("n"))
    hopping = new.join(new_sizes, "device").groupBy("user_id").agg(F.max("n").alias("device_hopping"))
    user_cards = attempts.select("user_id", F.col("instrument").alias("key")).distinct()
    cards = (
        user_cards.join(instruments, "key")
        .groupBy("user_id")
        .agg(F.max(F.col("value") - 1).alias("user_instrument_accounts"))
    )
    user_payees = transfers.select("user_id", F.col("payee").alias("key")).distinct()
    payee_fan_in = user_payees.join(fan_in, "key").groupBy("user_id").agg(F.max("value").alias("user_payee_fan_in"))
    per_user = (
        most_shared("device")
        .join(most_shared("network"), "user_id", "full")
        .join(hopping, "user_id", "full")
        .join(cards, "user_id", "full")
        .join(payee_fan_in, "user_id", "full")
    )
    return entities, per_user.select("user_id", *(F.col(c).cast("double").alias(c) for c in USER_LOOKUPS))


def _routed(window: DataFrame, blocks: int) -> DataFrame:
    """The window's events keyed by ``_block``: each event in its user's block, a payment with a
    counterparty also in the counterparty's (whose features read the payments it received)."""
    from pyspark.sql import functions as F

    own = hashed_block(F.col("user_id"), blocks)
    if "counterparty_id" not in window.columns:
        return window.withColumn("_block", own)
    other = F.when(
        (F.col("event_type") == "payment") & F.col("counterparty_id").isNotNull(),
        hashed_block(F.col("counterparty_id"), blocks),
    )
    targets = F.array_distinct(F.array_compact(F.array(own, other)))
    return window.withColumn("_block", F.explode(targets))


def _routed_rows(rows: DataFrame, blocks: int) -> DataFrame:
    """Payment rows keyed by ``_block``: in the sender's block and, for a transfer, the payee's."""
    from pyspark.sql import functions as F

    payee = F.when(F.col("payee") != "", hashed_block(F.col("payee"), blocks))
    targets = F.array_distinct(F.array_compact(F.array(hashed_block(F.col("user_id"), blocks), payee)))
    return rows.withColumn("kind", F.lit("row")).withColumn("_block", F.explode(targets))


def _block_lookups(
    per_user: DataFrame,
    blocks: int,
    user_columns: tuple[str, ...],
    entities: tuple[DataFrame, DataFrame] | None = None,
    evidence: DataFrame | None = None,
) -> DataFrame:
    """``LOOKUP_SCHEMA`` rows: for each block its users' ``user_columns`` (and ``evidence``) figures and,
    with ``entities`` (payments, entity figures), those of the merchants, payees and instruments of the
    payments routed to it."""
    from pyspark.sql import functions as F

    users = per_user if evidence is None else per_user.join(evidence, "user_id", "full")
    names = [*user_columns, *([] if evidence is None else [c for c in evidence.columns if c != "user_id"])]
    figures = F.array(*(F.struct(F.lit(c).alias("kind"), F.col(c).alias("value")) for c in names))
    stacked = (
        users.select(
            hashed_block(F.col("user_id"), blocks).alias("_block"),
            F.col("user_id").alias("key"),
            F.explode(figures).alias("_f"),
        )
        .where(F.col("_f.value").isNotNull())
        .select("_block", F.col("_f.kind").alias("kind"), "key", F.col("_f.value").alias("value"))
    )
    if entities is None:
        return stacked
    pay, keyed = entities
    routed = _routed_payments(pay, blocks)
    transfers = routed.where(F.col("payee") != "")
    wanted = (
        routed.select("_block", F.lit("context_median").alias("kind"), F.col("merchant").alias("key"))
        .unionByName(transfers.select("_block", F.lit("payee_median").alias("kind"), F.col("payee").alias("key")))
        .unionByName(transfers.select("_block", F.lit("payee_fan_in").alias("kind"), F.col("payee").alias("key")))
        .unionByName(
            routed.select("_block", F.lit("instrument_accounts").alias("kind"), F.col("instrument").alias("key"))
        )
        .distinct()
    )
    return wanted.join(keyed, ["kind", "key"]).select("_block", "kind", "key", "value").unionByName(stacked)


def _routed_payments(pay: DataFrame, blocks: int) -> DataFrame:
    from pyspark.sql import functions as F

    other = F.when(F.col("counterparty").isNotNull(), hashed_block(F.col("counterparty"), blocks))
    targets = F.array_distinct(F.array_compact(F.array(hashed_block(F.col("user_id"), blocks), other)))
    return pay.where(F.col("action").isin("purchase", "transfer")).withColumn("_block", F.explode(targets))


def population_of(figures: pd.DataFrame, shared: dict[str, Any]) -> FraudPopulation:
    """A block's ``FraudPopulation`` from its ``LOOKUP_SCHEMA`` rows and the broadcast ``shared`` figures."""
    from argus.detectors.fraud_features import SHARED_COLUMNS, FraudPopulation

    renamed = {"device_accounts": "device_accounts", "network_accounts": "network_accounts",
               "device_hopping": "device_hopping", "user_instrument_accounts": "instrument_accounts",
               "user_payee_fan_in": "payee_fan_in"}  # fmt: skip
    per_user = pd.DataFrame({renamed[k]: _series(figures, k) for k in USER_LOOKUPS}).reindex(
        columns=list(SHARED_COLUMNS)
    )
    return FraudPopulation(
        currency_norm=shared["currency_norm"],
        hour_share=shared["hour_share"],
        embed_end=shared["embed_end"],
        context_median=_series(figures, "context_median"),
        payee_median=_series(figures, "payee_median"),
        payee_fan_in=_series(figures, "payee_fan_in"),
        instrument_accounts=_series(figures, "instrument_accounts"),
        per_user=per_user,
    )


def _block_inputs(
    events_rows: pd.DataFrame, lookups: pd.DataFrame, columns: dict[str, list[str]], shared: dict[str, Any]
) -> tuple[Events, FraudPopulation]:
    """What a block's task (passes 2 and 4) starts from: its ``_routed`` rows as events (its accounts' own and
    the payments they received) and the population of its ``LOOKUP_SCHEMA`` rows and the broadcast figures."""
    return events_from_wide(events_rows.drop(columns="_block"), columns), population_of(lookups, shared)


# --- pass 2: payment rows, patterns and outcomes of one block -------------------------------------
def _payment_pass(
    number: int,
    blocks: int,
    events_rows: pd.DataFrame,
    lookups: pd.DataFrame,
    columns: dict[str, list[str]],
    shared: dict[str, Any],
) -> pd.DataFrame:
    """One block's sent payment rows, the payee-side figures of the transfers it received and its
    accounts' patterns and known outcomes (``kind`` sent / received / account)."""
    from argus.detectors.fraud import _outcomes, outcome_counts
    from argus.detectors.fraud_payments import PAYMENT_FEATURES, pattern_scores, payment_features

    events, population = _block_inputs(events_rows, lookups, columns, shared)
    rows = payment_features(events, population)
    mine = _mine(rows["user_id"], number, blocks)
    received = (rows["payee"] != "").to_numpy() & _mine(rows["payee"], number, blocks)
    patterns = pattern_scores(rows, events, population)
    outcomes = outcome_counts(events)
    accounts = pd.Index(sorted(set(patterns.index) | set(outcomes.index) | set(events.user_ids.astype(str))))
    accounts = accounts[_mine(pd.Series(accounts), number, blocks)]
    known = _outcomes(outcomes.reindex(accounts), None).any(axis=1).astype(float)
    patterns = patterns.reindex(accounts)
    out = [
        rows[mine].assign(kind="sent"),
        rows[received].assign(kind="received"),
        pd.DataFrame(
            {
                "kind": "account",
                "user_id": accounts.to_numpy(dtype=object),
                "mule": patterns["mule"].to_numpy(),
                "takeover": patterns["takeover"].to_numpy(),
                "known": known.to_numpy(),
            }
        ),
    ]
    names = ["kind", "event_id", "user_id", "payee", "t", "context", *PAYMENT_FEATURES, "mule", "takeover", "known"]
    return pd.concat(out, ignore_index=True).reindex(columns=names)


def _mine(ids: pd.Series, number: int, blocks: int) -> np.ndarray:
    return np.asarray(user_block(pd.Index(ids.astype(str)), blocks) == number, dtype=bool)


# --- pass 3: evidence over shared entities --------------------------------------------------------
def _account_evidence(rows: DataFrame, patterns: DataFrame, attempts: DataFrame, logins: DataFrame) -> DataFrame:
    """Per account ``ACCOUNT_EVIDENCE`` (``account_evidence``): patterns, ``pays_mule`` and the shares of
    suspicion and known outcomes among the other accounts on its entities."""
    from pyspark.sql import functions as F

    from argus.detectors.fraud_payments import PROPAGATION_PRIOR, entity_totals

    mules = patterns.select(F.col("user_id").alias("payee"), F.col("mule").alias("_mule"))
    pays_mule = (
        rows.where((F.col("payee") != "") & (F.col("declined") == 0))
        .join(mules, "payee", "left")
        .groupBy("user_id")
        .agg(F.max(F.coalesce("_mule", F.lit(0.0))).alias("pays_mule"))
    )
    zero = F.lit(0.0)
    suspicion = patterns.join(pays_mule, "user_id", "full").select(
        "user_id",
        F.coalesce("mule", zero).alias("mule_pattern"),
        F.coalesce("takeover", zero).alias("takeover_pattern"),
        F.coalesce("pays_mule", zero).alias("pays_mule"),
        F.coalesce("known", zero).alias("known"),
        F.greatest(*(F.coalesce(c, zero) for c in ("known", "mule", "takeover", "pays_mule"))).alias("suspicion"),
    )
    transfers = rows.where(F.col("payee") != "")
    links = (
        transfers.select(F.concat(F.lit("payee:"), "payee").alias("entity"), "user_id")
        .unionByName(
            transfers.select(F.concat(F.lit("payee:"), "payee").alias("entity"), F.col("payee").alias("user_id"))
        )
        .unionByName(attempts.select(F.concat(F.lit("instrument:"), "instrument").alias("entity"), "user_id"))
        .unionByName(
            logins.where(F.col("device").isNotNull()).select(
                F.concat(F.lit("device:"), "device").alias("entity"), "user_id"
            )
        )
        .unionByName(
            logins.where(F.col("network").isNotNull()).select(
                F.concat(F.lit("network:"), "network").alias("entity"), "user_id"
            )
        )
        .distinct()
        .join(suspicion.select("user_id", "suspicion", "known"), "user_id", "left")
        .fillna(0.0, ["suspicion", "known"])
    )

    def totals_of(part: pd.DataFrame) -> pd.DataFrame:
        # Accounts by id within an entity: the order ``entity_links`` gives them and pandas sums them in
        # (a group's sum depends only on its own rows' order, so a bucket of entities sums each exactly).
        part = part.sort_values(["entity", "user_id"], kind="stable")
        values = part.drop_duplicates("user_id").set_index("user_id")
        suspicion_totals = entity_totals(part[["entity", "user_id"]], values["suspicion"])
        known_totals = entity_totals(part[["entity", "user_id"]], values["known"])
        return pd.DataFrame(
            {
                "entity": suspicion_totals.index.to_numpy(dtype=object),
                "n": suspicion_totals["n"].to_numpy(dtype="int64"),
                "s": suspicion_totals["s"].to_numpy(dtype=float),
                "k": known_totals["s"].to_numpy(dtype=float),
            }
        )

    # One pandas call per bucket of entities, not per entity: there are about as many devices, networks,
    # instruments and payees as accounts.
    buckets = _shuffle_partitions(links)
    totals = (
        links.withColumn("_bucket", F.pmod(F.xxhash64("entity"), F.lit(buckets)))
        .groupBy("_bucket")
        .applyInPandas(totals_of, "entity string, n long, s double, k double")
    )
    spread = links.join(totals, "entity")
    prior = (F.col("n") - 1) + F.lit(float(PROPAGATION_PRIOR))
    identity = ~F.col("entity").startswith("payee:")
    shares = spread.groupBy("user_id").agg(
        F.max(F.when(identity, F.greatest((F.col("s") - F.col("suspicion")) / prior, zero))).alias("crew_share"),
        F.max(F.greatest((F.col("k") - F.col("known")) / prior, zero)).alias("known_nearby"),
    )
    return suspicion.join(shares, "user_id", "full").select(
        "user_id",
        *(F.coalesce(c, zero).alias(c) for c in ("mule_pattern", "takeover_pattern", "pays_mule")),
        F.coalesce("crew_share", zero).alias("crew_share"),
        F.coalesce("known_nearby", zero).alias("known_nearby"),
    )


# --- pass 4: one block's features -----------------------------------------------------------------
def _block_features(
    number: int,
    blocks: int,
    events_rows: pd.DataFrame,
    figures: pd.DataFrame,
    columns: dict[str, list[str]],
    shared: dict[str, Any],
    detector: FraudDetector,
) -> pd.DataFrame:
    """The features of the block's own users, from their events, the payments they received, their
    payment rows (sent and received) and the figures about everybody."""
    from argus.detectors.fraud_payments import ACCOUNT_EVIDENCE, PAYMENT_FEATURES

    lookups = figures[figures["kind"] != "row"]
    events, population = _block_inputs(events_rows, lookups, columns, shared)
    evidence = pd.DataFrame({name: _series(lookups, name) for name in ACCOUNT_EVIDENCE}, columns=list(ACCOUNT_EVIDENCE))
    part = figures[figures["kind"] == "row"]
    rows = pd.DataFrame(
        {
            "event_id": part["event_id"].astype(str),
            "user_id": part["user_id"].astype(str),
            "payee": part["payee"].astype(str),
            "t": part["t"].astype(float),
            "context": part["context"].astype(str),
            **{c: part[c].astype(float) for c in PAYMENT_FEATURES},
        }
    )
    rows = rows.sort_values(["user_id", "t", "event_id"], kind="stable").reset_index(drop=True)
    features = detector.features_from(events, rows, population, evidence)
    features = features[_mine(pd.Series(features.index), number, blocks)]
    features.index.name = "user_id"
    return features


def _series(figures: pd.DataFrame, kind: str) -> pd.Series:
    part = figures[figures["kind"] == kind]
    return pd.Series(part["value"].to_numpy(dtype=float), index=part["key"].astype(str).to_numpy(), dtype=float)
