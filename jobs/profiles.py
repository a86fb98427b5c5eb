"""Nightly profile: one row per user with activity windows and context-aware behaviour features.

Windows: event counts per type over the last 1, 7 and 30 days and the whole lake up to ``--date``.
Behaviour features use the last ``feature_days`` (30) days:

* chat, after Haque's context-aware troll features, generalised to live chat: the context is
  (channel, 10-minute window); the window's goals are its most frequent terms (a term counts once
  per message). Per user: shares of messages on the window's top-1/2/3 and bottom-1/2/3 terms,
  spam (links, or a text repeated by the same user in the same window), repetition, caps, mentions,
  anarchy-mode, START and anarchy-vote shares where present, rate, burstiness
  ((sd - mean) / (sd + mean) of gaps) and rate against the window's norm;
* click: sessions, events per session, session length, pages, add-to-cart and search shares;
* payment: amounts, decline and chargeback ratios, small-amount share, peak payments in an hour,
  merchants, instruments, counterparty fan-out and fan-in, and purchases folded by merchant
  (the top merchant's share);
* account: age, renames, devices, networks, logins, ban state, and how many other users share
  one of the user's devices.

Output: ``LAKE/profiles/``, a Delta table by date (the night replaced in one Delta commit).
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

# One definition of the chat context for the nightly job and the detectors (tested equal).
from argus.detectors.chat_features import CONTEXT_WINDOW_S, HOSTILE_TERMS, LINK_PATTERN, STOPWORDS
from argus.jobs import lake as tables
from argus.jobs.entry import run_job
from argus.jobs.lake import Lake, job_uri_lake
from argus.jobs.publish import Publication, publish_per_user

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

WINDOWS_DAYS = (1, 7, 30)
EVENT_TYPES = ("chat", "click", "payment", "account", "moderation")


def read_events(spark: SparkSession, lake: Lake, event_type: str, day: date) -> DataFrame | None:
    """Every ``event_type`` event dated ``day`` or earlier, with its ``date`` (a string): the ingested
    Delta table's published rows and the plain files ``argus import`` and ``argus generate`` landed."""
    from pyspark.sql import functions as F

    frame = lake_events(spark, lake, event_type)
    return None if frame is None else frame.where(F.col("date") <= F.lit(day.isoformat()))


def lake_events(spark: SparkSession, lake: Lake, event_type: str) -> DataFrame | None:
    """All of the lake's ``event_type`` events (see ``read_events``); None when it has none."""
    from pyspark.sql import functions as F

    parts = []
    landed = f"events/event_type={event_type}"
    if tables.is_folder(lake, landed):
        frame = spark.read.parquet(tables.table_location(lake, landed))
        parts.append(frame.withColumn("date", F.col("date").cast("string")))
    ingested = tables.read_spark(spark, lake, tables.events_table(event_type))
    if ingested is not None:
        parts.append(ingested)
    return union_events(parts)


def union_events(parts: list[DataFrame]) -> DataFrame | None:
    """One frame of events read from several sources: the first's columns and types, by name."""
    from pyspark.sql import functions as F

    if not parts:
        return None
    first, *rest = parts
    types = {f.name: f.dataType for f in first.schema.fields}
    frame = first
    for part in rest:
        present = set(part.columns)
        aligned = part.select(
            *[(F.col(n) if n in present else F.lit(None)).cast(t).alias(n) for n, t in types.items()],
            *[n for n in part.columns if n not in types],
        )
        frame = frame.unionByName(aligned, allowMissingColumns=True)
    return frame


def activity_counts(events: dict[str, DataFrame], day: date) -> DataFrame:
    """events_<type>_<w>d for each window and events_<type>_life."""
    from pyspark.sql import functions as F

    parts = []
    for event_type, frame in events.items():
        sums = [F.count(F.lit(1)).alias(f"events_{event_type}_life")]
        for days in WINDOWS_DAYS:
            since = (day - timedelta(days=days - 1)).isoformat()
            sums.append(F.sum(F.when(F.col("date") >= since, 1).otherwise(0)).alias(f"events_{event_type}_{days}d"))
        parts.append(frame.groupBy("user_id").agg(*sums))
    return _outer_join(parts)


def chat_features(chat: DataFrame) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    msgs = chat.select(
        "user_id",
        "context",
        "ts",
        "text",
        "channel_mode",
        "event_id",
        F.floor(F.unix_timestamp("ts") / CONTEXT_WINDOW_S).alias("slot"),
    )
    terms = msgs.select(
        "event_id",
        "context",
        "slot",
        F.explode(F.array_distinct(F.split(F.lower("text"), r"[^\p{L}\p{N}]+"))).alias("term"),
    ).where((F.length("term") >= 2) & ~F.col("term").isin(sorted(STOPWORDS)))
    counts = terms.groupBy("context", "slot", "term").agg(F.count(F.lit(1)).alias("n"))
    window = Window.partitionBy("context", "slot")
    ranked = counts.select(
        "context",
        "slot",
        "term",
        F.row_number().over(window.orderBy(F.desc("n"), "term")).alias("top_rank"),
        F.row_number().over(window.orderBy("n", "term")).alias("bottom_rank"),
    )
    per_message = (
        terms.join(ranked, ["context", "slot", "term"])
        .groupBy("event_id")
        .agg(F.min("top_rank").alias("best_top"), F.min("bottom_rank").alias("best_bottom"))
    )
    repeats = Window.partitionBy("user_id", "context", "slot", "text").orderBy("ts", "event_id")
    per_user_slot = Window.partitionBy("context", "slot")
    by_time = Window.partitionBy("user_id").orderBy("ts", "event_id")
    enriched = (
        msgs.join(per_message, "event_id", "left")
        .withColumn("copy", F.row_number().over(repeats))
        .withColumn("gap", F.unix_timestamp("ts") - F.unix_timestamp(F.lag("ts").over(by_time)))
    )
    user_slot = enriched.groupBy("user_id", "context", "slot").agg(F.count(F.lit(1)).alias("in_slot"))
    # Averaged as decimals, whose sums are exact: a float sum's rounding depends on the order of its
    # terms, which here follows how the windows are split across partitions (the cores, the shuffle).
    rate = (F.col("in_slot") / F.col("slot_mean")).cast("decimal(38,18)")
    slot_norm = (
        user_slot.withColumn("slot_mean", F.avg("in_slot").over(per_user_slot))
        .groupBy("user_id")
        .agg(F.avg(rate).cast("double").alias("chat_rate_vs_window"))
    )

    def share(condition: Column) -> Column:
        return F.avg(F.when(condition, 1.0).otherwise(0.0))

    text = F.trim(F.lower("text"))
    hostile = F.array(*[F.lit(t) for t in sorted(HOSTILE_TERMS)])
    letters = F.regexp_replace("text", r"[^\p{L}]", "")
    features = enriched.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("chat_messages"),
        *[share(F.col("best_top") <= k).alias(f"chat_top{k}_share") for k in (1, 2, 3)],
        *[share(F.col("best_bottom") <= k).alias(f"chat_bottom{k}_share") for k in (1, 2, 3)],
        share(F.col("text").rlike(LINK_PATTERN) | (F.col("copy") > 1)).alias("chat_spam_ratio"),
        (1 - F.countDistinct("text") / F.count(F.lit(1))).alias("chat_repetition"),
        share((F.length(letters) >= 3) & (F.upper(letters) == letters)).alias("chat_caps_ratio"),
        share(F.col("text").contains("@")).alias("chat_mention_ratio"),
        share(F.col("text").rlike(LINK_PATTERN)).alias("chat_link_ratio"),
        share(F.arrays_overlap(F.split(F.lower("text"), r"[^\p{L}\p{N}]+"), hostile)).alias("chat_hostile_ratio"),
        F.avg(F.when(F.col("channel_mode").isNotNull(), (F.col("channel_mode") == "anarchy").cast("double"))).alias(
            "chat_anarchy_mode_share"
        ),
        share(text == "start").alias("chat_start_share"),
        share(text == "anarchy").alias("chat_anarchy_vote_share"),
        (F.count(F.lit(1)) / F.countDistinct(F.to_date("ts"))).alias("chat_per_active_day"),
        F.avg("gap").alias("_gap_mean"),
        F.stddev_pop("gap").alias("_gap_sd"),
    )
    burst = (F.col("_gap_sd") - F.col("_gap_mean")) / (F.col("_gap_sd") + F.col("_gap_mean"))
    features = features.withColumn("chat_burstiness", F.when(F.col("_gap_mean") > 0, burst)).drop(
        "_gap_mean", "_gap_sd"
    )
    return features.join(slot_norm, "user_id", "left")


def click_features(click: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    sessions = click.groupBy("user_id", "session_id").agg(
        F.count(F.lit(1)).alias("n"), (F.unix_timestamp(F.max("ts")) - F.unix_timestamp(F.min("ts"))).alias("length")
    )
    per_user = sessions.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("click_sessions"),
        F.avg("n").alias("click_events_per_session"),
        F.avg("length").alias("click_session_seconds"),
    )
    shares = click.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("click_events"),
        F.countDistinct("context").alias("click_pages"),
        F.avg((F.col("action") == "add_to_cart").cast("double")).alias("click_cart_share"),
        F.avg((F.col("action") == "search").cast("double")).alias("click_search_share"),
    )
    return shares.join(per_user, "user_id", "left")


def payment_features(payment: DataFrame) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    purchase = F.col("action") == "purchase"
    approved_purchase = purchase & (F.col("status") == "approved")
    own = payment.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("pay_count"),
        F.sum(purchase.cast("int")).alias("pay_purchases"),
        F.avg(F.when(approved_purchase, F.col("amount"))).alias("pay_amount_mean"),
        F.stddev_pop(F.when(approved_purchase, F.col("amount"))).alias("pay_amount_sd"),
        F.max(F.when(approved_purchase, F.col("amount"))).alias("pay_amount_max"),
        F.avg((F.col("status") == "declined").cast("double")).alias("pay_decline_ratio"),
        F.sum((F.col("action") == "chargeback").cast("int")).alias("pay_chargebacks"),
        F.avg(F.when(purchase, (F.col("amount") <= 5).cast("double"))).alias("pay_small_share"),
        F.avg((F.col("action") == "transfer").cast("double")).alias("pay_transfer_share"),
        F.countDistinct(F.when(purchase, F.col("context"))).alias("pay_merchants"),
        F.countDistinct("instrument_id").alias("pay_instruments"),
        F.countDistinct("counterparty_id").alias("pay_fan_out"),
    )
    own = own.withColumn(
        "pay_chargeback_ratio",
        F.when(F.col("pay_purchases") > 0, F.col("pay_chargebacks") / F.col("pay_purchases")),
    )
    velocity = (
        payment.groupBy("user_id", F.date_trunc("hour", "ts").alias("hour"))
        .agg(F.count(F.lit(1)).alias("n"))
        .groupBy("user_id")
        .agg(F.max("n").alias("pay_max_per_hour"))
    )
    fan_in = (
        payment.where(F.col("counterparty_id").isNotNull())
        .groupBy(F.col("counterparty_id").alias("user_id"))
        .agg(F.countDistinct(F.col("user_id")).alias("pay_fan_in"))
    )
    by_merchant = payment.where(purchase).groupBy("user_id", "context").agg(F.count(F.lit(1)).alias("n"))
    folded = (
        by_merchant.withColumn("total", F.sum("n").over(Window.partitionBy("user_id")))
        .groupBy("user_id")
        .agg((F.max("n") / F.max("total")).alias("pay_top_merchant_share"))
    )
    return _outer_join([own, velocity, fan_in, folded])


def account_features(account: DataFrame, day: date) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    end_of_day = F.lit(f"{(day + timedelta(days=1)).isoformat()} 00:00:00").cast("timestamp")
    per_user = account.groupBy("user_id").agg(
        F.min(F.when(F.col("action") == "signup", F.col("ts"))).alias("_signup"),
        F.min("ts").alias("_first_seen"),
        F.sum((F.col("action") == "rename").cast("int")).alias("acct_renames"),
        F.sum((F.col("action") == "login").cast("int")).alias("acct_logins"),
        F.countDistinct("device_fp").alias("acct_devices"),
        F.countDistinct("network_fp").alias("acct_networks"),
        F.max_by(F.when(F.col("action").isin("ban", "unban"), F.col("action")), F.col("ts")).alias("_last_ban_action"),
    )
    per_user = per_user.withColumn(
        "acct_age_days",
        (F.unix_timestamp(end_of_day) - F.unix_timestamp(F.coalesce("_signup", "_first_seen"))) / 86_400.0,
    ).withColumn("acct_banned", F.coalesce(F.col("_last_ban_action") == "ban", F.lit(False)))
    devices = account.where(F.col("device_fp").isNotNull()).select("user_id", "device_fp").distinct()
    sharing = devices.withColumn("users_on_device", F.count(F.lit(1)).over(Window.partitionBy("device_fp")))
    shared = sharing.groupBy("user_id").agg((F.max("users_on_device") - 1).alias("acct_device_shared_with"))
    return per_user.drop("_signup", "_first_seen", "_last_ban_action").join(shared, "user_id", "left")


def build_profiles(spark: SparkSession, lake: Lake, day: date, feature_days: int = 30) -> DataFrame:
    from pyspark.sql import functions as F

    events = {t: frame for t in EVENT_TYPES if (frame := read_events(spark, lake, t, day)) is not None}
    if not events:
        raise ValueError(f"no events in {lake}/events up to {day}; ingest first or check --date")
    if not any(frame.where(F.col("date") == day.isoformat()).limit(1).count() for frame in events.values()):
        raise ValueError(f"the lake has no events on {day}; ingest that day first or check --date")
    since = (day - timedelta(days=feature_days - 1)).isoformat()
    recent = {t: f.where(F.col("date") >= since) for t, f in events.items()}
    parts = [activity_counts(events, day)]
    if "chat" in recent:
        parts.append(chat_features(recent["chat"]))
    if "click" in recent:
        parts.append(click_features(recent["click"]))
    if "payment" in recent:
        parts.append(payment_features(recent["payment"]))
    if "account" in events:
        parts.append(account_features(events["account"], day))
    profiles = _outer_join(parts)
    return profiles.withColumn("profile_date", F.lit(day.isoformat()).cast("date"))


def run_profile(
    spark: SparkSession, lake: Lake, day: date, feature_days: int = 30, publication: Publication | None = None
) -> dict[str, object]:
    """Build and publish ``day`` of the ``profiles`` table (a deferred ``publication`` publishes it at its commit)."""
    lake = lake if tables.is_uri(lake) else Path(lake)
    profiles = build_profiles(spark, lake, day, feature_days)
    table, rows = publish_per_user(spark, profiles, lake, "profiles", day, publication)
    return {"date": day.isoformat(), "users": rows, "columns": len(profiles.columns), "table": table}


def _outer_join(frames: list[DataFrame]) -> DataFrame:
    joined = frames[0]
    for frame in frames[1:]:
        joined = joined.join(frame, "user_id", "full_outer")
    return joined


def main(argv: list[str]) -> int:
    """spark-submit entry point: profiles.py --lake DIR|URI --date YYYY-MM-DD [--feature-days 30]."""
    parser = argparse.ArgumentParser(prog="profiles.py", description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True, type=job_uri_lake)
    parser.add_argument("--date", required=True, type=date.fromisoformat)
    parser.add_argument("--feature-days", type=int, default=30)
    return run_job(
        parser,
        argv,
        lambda spark, a: (run_profile(spark, a.lake, a.date, a.feature_days), 0),
        lease="argus batch profile",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
