"""Detector features as blocks of users on the executors: what lets nightly scoring outgrow the driver.

A *feature block* is one row of a Spark DataFrame (``block``, ``users``, ``frame``): ``frame`` is a
pickled pandas frame of up to ``block_users`` users' features, exactly as the detector's own
``features`` builds them (object columns such as fraud's payment rows and evaders' fingerprint sets
and the frame's ``attrs`` included). The driver never holds more than the blocks it fits on;
scoring unpickles one block at a time inside ``mapInPandas`` (see ``jobs/score.py``).

Where the blocks come from, per detector (each block is built by its own task from its own users'
rows; what a feature needs from everybody is aggregated by Spark first and handed to those tasks):

* ``trolls``: the nightly profile's chat columns (computed by Spark, the channel norms per context
  window included, ``jobs/profiles.py``), cut into blocks by a hash of ``user_id`` with ``applyInPandas``.
* ``evaders``: an account's profile is its own events' alone, so the window's events are grouped by
  block. Block 0 is the *core*, the accounts scored together: every account with a sign-up or a ban
  and every account on one of their devices or networks (found with Spark joins, ``evader_core``),
  because new accounts are paired with banned ones and a shared fingerprint is weighed by the
  accounts using it. The other blocks are users by hash; they hold no new account, so their
  scores need nobody else. Block 0 grows with new and banned accounts, not with all users; it is
  scored by several tasks, a share of its accounts each (``evader_core_shares``).
* ``churn``: each block's daily activity (``daily_activity``) is built by its task; Spark then
  aggregates what the features need from everybody (``ChurnPopulation``: the last day, the mode,
  the series' days without outages, and in purchase mode BG/NBD fitted on every customer's
  ``x, t_x, T`` pooled by value, a table bounded by the days in the data), and each block's
  features are built from its daily rows and those figures (``churn_blocks``).
* ``fraud``: its features relate accounts to each other through payees, instruments, devices,
  networks and currency norms (money matched between payer and payee, suspicion propagated over
  shared entities). ``jobs/fraud_blocks.py`` aggregates those figures with Spark, builds each
  block's payment rows and patterns in its own task, spreads suspicion over the entity links with
  Spark, then builds each block from its users' events, the payments they received and the figures.

Block numbers order the blocks: block 0 (evaders only) is the core, other blocks hold about
``block_users`` users each, by a hash of ``user_id``, so that the first blocks are a seeded random
sample of users.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from argus.detectors.churn_purchase import median_share, mode_of_share

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from argus.detectors.base import Detector
    from argus.detectors.churn import ChurnDetector, ChurnPopulation
    from argus.detectors.events import Events
    from argus.jobs.lake import Lake

BLOCK_USERS = 5_000  # users per block: a churn block (90 days x 8 channels) is ~30 MB pickled
PROFILE_SHARDS_MIN = 2
BLOCK_SCHEMA = "block long, users long, frame binary"
# A block to be scored a share of its users at a time (``evader_core_shares``): share k of ``shares``.
SHARED_SCHEMA = f"{BLOCK_SCHEMA}, share int, shares int"


def window_events(spark: SparkSession, lake: Lake, day: date, days: int) -> DataFrame | None:
    """Every event of the ``days`` days up to ``day``, all types in one wide frame (``event_type`` set)."""
    from pyspark.sql import functions as F

    from argus.jobs.profiles import EVENT_TYPES, read_events

    since = (day - timedelta(days=days - 1)).isoformat()
    wide: DataFrame | None = None
    for event_type in EVENT_TYPES:
        frame = read_events(spark, lake, event_type, day)
        if frame is None:
            continue
        frame = frame.where(F.col("date") >= since).drop("date")
        if "event_type" not in frame.columns:
            frame = frame.withColumn("event_type", F.lit(event_type))
        wide = frame if wide is None else wide.unionByName(frame, allowMissingColumns=True)
    return wide


def type_columns(spark: SparkSession, lake: Lake, day: date) -> dict[str, list[str]]:
    """The lake's columns of each event type (what ``night_events`` would hand the detectors)."""
    from argus.jobs.profiles import EVENT_TYPES, read_events

    out = {}
    for event_type in EVENT_TYPES:
        frame = read_events(spark, lake, event_type, day)
        if frame is not None:
            out[event_type] = [c for c in frame.columns if c != "date"]
    return out


def events_from_wide(rows: pd.DataFrame, columns: dict[str, list[str]]) -> Events:
    """The wide rows back as ``Events``: one frame per type with that type's lake columns."""
    import pyarrow as pa

    from argus.detectors.events import Events
    from argus.schemas.arrow import ARROW_SCHEMAS

    frames = {}
    for event_type, names in columns.items():
        part = rows[rows["event_type"] == event_type]
        part = part[[c for c in names if c in part.columns]].reset_index(drop=True)
        schema = ARROW_SCHEMAS.get(event_type)
        for field in schema if schema is not None else []:
            # A column of one type only is null in the others' rows, so the wide frame holds it as float.
            if pa.types.is_integer(field.type) and field.name in part and part[field.name].notna().all():
                part[field.name] = part[field.name].astype("int64")
        frames[event_type] = part
    return Events.from_frames(frames)


def user_block(user_ids: pd.Index | pd.Series, blocks: int) -> np.ndarray:
    """Block number (1..blocks) of each user: a stable hash, the same on every machine and run."""
    ids = [str(u).encode() for u in user_ids]
    return np.array([1 + zlib.crc32(u) % max(blocks, 1) for u in ids], dtype=np.int64)


def pack(frame: pd.DataFrame, block: int) -> dict[str, object]:
    return {"block": int(block), "users": len(frame), "frame": pickle.dumps(frame, protocol=5)}


def unpack(blob: bytes) -> pd.DataFrame:
    frame: pd.DataFrame = pickle.loads(blob)
    return frame


def cut_into_blocks(features: pd.DataFrame, block_users: int = BLOCK_USERS) -> pd.DataFrame:
    """Rows of ``BLOCK_SCHEMA``: ``features`` cut into blocks of ``block_users`` users by hash, sorted within."""
    count = max(1, -(-len(features) // block_users))
    numbers = user_block(features.index, count)
    rows = [pack(features[numbers == n], n) for n in range(1, count + 1) if (numbers == n).any()]
    if not rows:
        rows.append(pack(features, 1))  # no users: one empty block keeps the schema and attrs
    return pd.DataFrame(rows, columns=["block", "users", "frame"])


def hashed_block(user_id: Column, blocks: int) -> Column:
    """``user_block`` as a Spark column: Spark's crc32 is zlib's, so both name the same block."""
    from pyspark.sql import functions as F

    return (F.crc32(user_id.cast("string")) % F.lit(max(blocks, 1)) + F.lit(1)).cast("long")


def event_blocks(
    spark: SparkSession,
    window: DataFrame,
    columns: dict[str, list[str]],
    detector: Detector,
    block_users: int = BLOCK_USERS,
) -> DataFrame:
    """Blocks of ``detector.features`` over the window's events (see the module doc for how, per detector)."""
    if detector.name == "evaders":
        return evader_blocks(window, columns, detector, block_users)
    if detector.name == "churn":
        from argus.detectors.churn import ChurnDetector

        assert isinstance(detector, ChurnDetector)
        return churn_blocks(window, columns, detector, block_users)
    if detector.name == "fraud":
        from argus.detectors.fraud import FraudDetector
        from argus.jobs.fraud_blocks import fraud_blocks

        assert isinstance(detector, FraudDetector)
        return fraud_blocks(window, columns, detector, block_users)
    return whole_window_blocks(window, columns, detector, block_users)


def whole_window_blocks(
    window: DataFrame, columns: dict[str, list[str]], detector: Detector, block_users: int = BLOCK_USERS
) -> DataFrame:
    """``detector.features`` over the whole window in one executor task, cut into blocks: for a detector
    without a block builder of its own (every registered one has one)."""
    from pyspark.sql import functions as F

    def features_of(rows: pd.DataFrame) -> pd.DataFrame:
        return cut_into_blocks(detector.features(events_from_wide(rows, columns)), block_users)

    return window.withColumn("_all", F.lit(0)).groupBy("_all").applyInPandas(features_of, BLOCK_SCHEMA)


def evader_blocks(
    window: DataFrame, columns: dict[str, list[str]], detector: Detector, block_users: int = BLOCK_USERS
) -> DataFrame:
    """Evaders' features, each block built from its own users' events: block 0 the core (``evader_core``),
    the others by user hash. An account's profile is its own events' alone."""
    from pyspark.sql import functions as F

    core = evader_core(window, columns).withColumn("_core", F.lit(True))
    users = window.select("user_id").distinct().count()
    blocks = -(-max(users - core.count(), 1) // block_users)
    keyed = window.join(core, "user_id", "left").withColumn(
        "_block", F.when(F.col("_core"), F.lit(0).cast("long")).otherwise(hashed_block(F.col("user_id"), blocks))
    )
    return _blocks_by_key(keyed.drop("_core"), lambda rows: detector.features(events_from_wide(rows, columns)))


def evader_core_shares(blocks: DataFrame, share_users: int, max_shares: int | None = None) -> tuple[DataFrame, int]:
    """``blocks`` with ``share`` and ``shares`` (``SHARED_SCHEMA``), for scoring, and the core's shares: the
    core (block 0) once per share of its accounts, about ``share_users`` each but at most ``max_shares``
    (the task slots: more shares than tasks that run at once only add work), every share in a partition
    of its own, so that as many tasks score it; every other block once, as its only share.

    A task scores its share's accounts (``share_of``) among the whole core
    (``EvaderDetector.score_accounts(features, users=..., text_accounts=...)``): a new account's pairs
    need the core's banned accounts and fingerprint counts, which every share's copy holds, and the
    accounts of all the core's pairs, whose words weigh theirs (``jobs/score.py``'s ``core_pairs`` finds
    each share's pairs first, and its task takes them as found), so each score is the one the whole core
    gives. Without this the core, the largest block, is scored by one task.
    """
    from pyspark.sql import functions as F

    whole = whole_shares(blocks)
    core = blocks.where(F.col("block") == 0).select("block", "users", "frame")
    found = core.select("users").first()
    shares = -(-int(found["users"]) // max(share_users, 1)) if found is not None else 1
    if max_shares is not None:
        shares = min(shares, max(max_shares, 1))
    if shares <= 1:
        return whole, 1
    copies = core.rdd.flatMap(lambda row: [(share, (*row, share, shares)) for share in range(shares)])
    spread = copies.partitionBy(shares, lambda share: share).values()  # share k in partition k
    shared = blocks.sparkSession.createDataFrame(spread, SHARED_SCHEMA)
    return shared.unionByName(whole.where(F.col("block") != 0)), shares


def whole_shares(blocks: DataFrame) -> DataFrame:
    """``blocks`` as ``SHARED_SCHEMA`` rows, each block its only share."""
    from pyspark.sql import functions as F

    return blocks.select("block", "users", "frame", F.lit(0).alias("share"), F.lit(1).alias("shares"))


def share_of(user_ids: pd.Index, share: int, shares: int) -> pd.Index:
    """The users of ``user_ids`` in share ``share`` of ``shares``, by a stable hash of the user id."""
    return user_ids[user_block(user_ids, shares) == share + 1]


def iterate_shares(batches: Iterator[pd.DataFrame]) -> Iterator[tuple[int, pd.DataFrame, int, pd.Index | None]]:
    """(block number, features, share, the share's users or None for the whole block) for every
    ``SHARED_SCHEMA`` row."""
    for batch in batches:
        rows = zip(batch["block"], batch["frame"], batch["share"], batch["shares"], strict=True)
        for number, blob, share, shares in rows:
            features = unpack(blob)
            users = None if shares == 1 else share_of(features.index, int(share), int(shares))
            yield int(number), features, int(share), users


def evader_core(window: DataFrame, columns: dict[str, list[str]]) -> DataFrame:
    """``user_id`` of the accounts scored together: new and banned accounts and every account on one of
    their devices or networks.

    ``EvaderDetector`` pairs new accounts with banned ones and weighs a shared fingerprint by the accounts
    using it, so these accounts score alike with or without the rest of the population. Every account
    with a sign-up or a ban is taken (a superset of new and banned: an unbanned one scores alike).
    """
    from pyspark.sql import functions as F

    fields = set(columns.get("account", []))
    if not {"action", "device_fp", "network_fp"} <= fields:
        return window.sparkSession.createDataFrame([], "user_id string")
    account = window.where(F.col("event_type") == "account")
    involved = account.where(F.col("action").isin("signup", "ban")).select("user_id").distinct()
    fingerprints = account.select("user_id", F.explode(F.array("device_fp", "network_fp")).alias("fp")).where(
        F.col("fp").isNotNull()
    )
    shared = fingerprints.join(involved, "user_id").select("fp").distinct()
    sharing = fingerprints.join(shared, "fp").select("user_id")
    return involved.union(sharing).distinct()


def churn_blocks(
    window: DataFrame, columns: dict[str, list[str]], detector: ChurnDetector, block_users: int = BLOCK_USERS
) -> DataFrame:
    """Churn's features by user hash: each block's daily activity, then its features given the population's
    figures (``ChurnPopulation``: as_of, mode, the series' days, the BG/NBD fit), which Spark aggregates."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from argus.detectors.churn import CHANNELS, daily_activity

    users = window.select("user_id").distinct().count()
    keyed = window.withColumn("_block", hashed_block(F.col("user_id"), -(-max(users, 1) // block_users)))
    schema = "_block long, user_id string, day timestamp, " + ", ".join(f"{c} double" for c in CHANNELS)

    def daily_of(rows: pd.DataFrame) -> pd.DataFrame:
        daily = daily_activity(events_from_wide(rows.drop(columns="_block"), columns)).reset_index()
        return daily.assign(_block=int(rows["_block"].iloc[0]))[["_block", "user_id", "day", *CHANNELS]]

    daily = keyed.groupBy("_block").applyInPandas(daily_of, schema).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        population = churn_population(daily, detector)

        def features_of(rows: pd.DataFrame) -> pd.DataFrame:
            part = _daily_frame(rows)
            users = pd.Index(part.index.get_level_values("user_id").unique())
            features = detector.features_from_daily(part, users, population)
            return pd.DataFrame([pack(features, int(rows["_block"].iloc[0]))])

        blocks = daily.groupBy("_block").applyInPandas(features_of, BLOCK_SCHEMA)
        blocks = blocks.persist(StorageLevel.MEMORY_AND_DISK)
        blocks.count()  # built while the daily rows are cached; the caller unpersists the blocks
        return blocks
    finally:
        daily.unpersist()


def churn_population(daily: DataFrame, detector: ChurnDetector) -> ChurnPopulation:
    """``detector.population`` from every user's daily rows (a Spark frame): what reaches the driver is
    bounded by the days in the data, not by the users."""
    from pyspark.sql import functions as F

    from argus.detectors.churn import ACTIVITY_CHANNELS, ChurnPopulation

    own = sum((F.col(c) for c in ACTIVITY_CHANNELS), F.lit(0.0))
    as_of = detector.params["as_of"]
    last = daily.agg(F.date_format(F.max("day"), "yyyy-MM-dd").alias("last")).first()
    if last is None or last["last"] is None:
        mode, why = detector.fixed_mode() or ("purchase", "no activity to measure")
        return ChurnPopulation(mode, why, None, pd.DatetimeIndex([], tz="UTC"))
    as_of_day = pd.Timestamp(as_of or last["last"], tz="UTC")
    mode_why = detector.fixed_mode()
    if mode_why is None:
        active = daily.where(own > 0)
        if as_of is not None:
            active = active.where(F.col("day") <= F.lit(as_of_day.to_pydatetime()))
        newest = active.agg(F.max("day").alias("newest"))
        spans: pd.DataFrame = (
            active.groupBy("user_id")
            .agg(F.count("*").alias("active"), F.min("day").alias("first"))
            .crossJoin(newest)
            .select("active", (F.datediff("newest", "first") + 1).alias("span"))
            .groupBy("active", "span")
            .count()
            .toPandas()
        )
        share = median_share(spans["active"].to_numpy(), spans["span"].to_numpy(), spans["count"].to_numpy())
        mode_why = mode_of_share(share)
    mode, why = mode_why
    if mode == "purchase":
        inputs, has_spend = _bgnbd_inputs(daily, detector, as_of_day)
        return detector.purchase_population(why, as_of_day, inputs, has_spend)
    per_day = daily.groupBy(F.date_format("day", "yyyy-MM-dd").alias("day")).agg(F.sum(own).alias("total"))
    totals: pd.DataFrame = per_day.toPandas()
    series = pd.Series(totals["total"].to_numpy(dtype=float), index=pd.DatetimeIndex(totals["day"], tz="UTC"))
    return detector.daily_population(why, as_of_day, series.sort_index())


def _bgnbd_inputs(daily: DataFrame, detector: ChurnDetector, as_of: pd.Timestamp) -> tuple[pd.DataFrame, bool]:
    """Purchase mode: BG/NBD's ``x, t_x, t`` pooled over every user (``users`` per row), and whether any
    history has spend; each block's summary is computed where its daily rows are."""
    from pyspark.sql import functions as F

    from argus.detectors.churn_purchase import History, bgnbd_inputs, encode_history, history_has_spend

    def inputs_of(rows: pd.DataFrame) -> pd.DataFrame:
        part = _daily_frame(rows)
        users = pd.Index(part.index.get_level_values("user_id").unique())
        history = History.from_features(encode_history(part, users, as_of))
        found = bgnbd_inputs(history).assign(spend=False)
        return pd.concat([found, pd.DataFrame({"spend": [history_has_spend(history)]})], ignore_index=True)

    rows = daily.groupBy("_block").applyInPandas(inputs_of, "x double, t_x double, t double, spend boolean")
    rows = rows.persist()
    try:
        found = F.col("x").isNotNull() & ~F.isnan("x")
        pooled = rows.where(found).groupBy("x", "t_x", "t").agg(F.count("*").alias("users"))
        spend = rows.agg(F.max(F.col("spend").cast("int")).alias("spend")).first()
        return pooled.toPandas(), bool(spend is not None and spend["spend"])
    finally:
        rows.unpersist()


def _daily_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Daily rows from Spark (``churn_blocks``) back as ``daily_activity`` gives them."""
    from argus.detectors.churn import CHANNELS

    day = pd.to_datetime(rows["day"])
    day = (day.dt.tz_localize("UTC") if day.dt.tz is None else day.dt.tz_convert("UTC")).astype("datetime64[ns, UTC]")
    frame = pd.DataFrame({"user_id": rows["user_id"].astype(str), "day": day})
    for channel in CHANNELS:
        frame[channel] = rows[channel].astype(float).to_numpy()
    return frame.set_index(["user_id", "day"]).sort_index()


def _blocks_by_key(keyed: DataFrame, build: Callable[[pd.DataFrame], pd.DataFrame]) -> DataFrame:
    """One ``BLOCK_SCHEMA`` row per value of ``keyed``'s ``_block``: ``build`` over that block's rows."""

    def block_of(rows: pd.DataFrame) -> pd.DataFrame:
        number = int(rows["_block"].iloc[0])
        return pd.DataFrame([pack(build(rows.drop(columns="_block")), number)])

    return keyed.groupBy("_block").applyInPandas(block_of, BLOCK_SCHEMA)


def profile_frame(profile: pd.DataFrame) -> pd.DataFrame:
    """The troll detector's features from profile rows: the chat columns, indexed and sorted by user."""
    from argus.detectors.chat_features import FEATURE_COLUMNS

    columns = [c for c in FEATURE_COLUMNS if c != "chat_windows"]
    frame = profile[["user_id", *columns]].set_index("user_id").sort_index().astype(float)
    frame["chat_messages"] = frame["chat_messages"].fillna(0.0)
    frame["chat_anarchy_mode_share"] = frame["chat_anarchy_mode_share"].fillna(0.0)
    return frame


def profile_blocks(profile: DataFrame, block_users: int = BLOCK_USERS) -> DataFrame:
    """Blocks of the troll detector's features from the profile, built in parallel by user hash."""
    from pyspark.sql import functions as F

    from argus.detectors.chat_features import FEATURE_COLUMNS

    columns = [c for c in FEATURE_COLUMNS if c != "chat_windows"]
    users = profile.count()
    blocks = max(PROFILE_SHARDS_MIN, -(-users // block_users))
    # Spark's crc32 matches zlib.crc32, so user_block (1 + crc32 % blocks) names the same blocks.
    keyed = profile.select("user_id", *columns).withColumn(
        "_block", (F.crc32(F.col("user_id").cast("string")) % F.lit(blocks) + F.lit(1)).cast("long")
    )

    def block_of(rows: pd.DataFrame) -> pd.DataFrame:
        number = int(rows["_block"].iloc[0])
        return pd.DataFrame([pack(profile_frame(rows.drop(columns="_block")), number)])

    return keyed.groupBy("_block").applyInPandas(block_of, BLOCK_SCHEMA)


def fit_sample(blocks: DataFrame, max_users: int, whole_core: bool = False) -> pd.DataFrame:
    """The features the detector is fitted on, at most about ``max_users`` users (plus the core when whole).

    Whole blocks in block order up to ``max_users``; past block 0 blocks are users by hash, so the
    sample is a seeded random one, the same every run. Block 0 comes whole when ``whole_core``
    (evaders: its pairs need every candidate), else thinned by user hash on the executors to its
    share of ``max_users``.
    """
    from pyspark.sql import functions as F

    sizes = [(int(r["block"]), int(r["users"])) for r in blocks.select("block", "users").orderBy("block").collect()]
    chosen: list[int] = []
    taken = 0
    for number, users in sizes:
        if taken < max_users or (number == 0 and whole_core):
            chosen.append(number)
            taken += users
    picked = blocks.where(F.col("block").isin(chosen))
    core = dict(sizes).get(0, 0)
    if core > max_users and not whole_core:
        keep_one_in = -(-core // max_users)

        def thin(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for number, features in iterate_blocks(batches):
                if number == 0:
                    hashes = np.array([zlib.crc32(str(u).encode()) for u in features.index], dtype=np.int64)
                    features = features[hashes % keep_one_in == 0]
                yield pd.DataFrame([pack(features, number)])

        picked = picked.mapInPandas(thin, BLOCK_SCHEMA)
    # A partition at a time (toLocalIterator), each block unpacked as it comes: the driver's JVM holds
    # one partition's results, its Python one packed block beside the frames, never the whole sample twice.
    rows = picked.orderBy("block").select("frame").toLocalIterator()
    return concat_blocks([unpack(row["frame"]) for row in rows])


def concat_blocks(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Blocks back into one features frame, sorted by user, with the first block's ``attrs``."""
    if not frames:
        raise ValueError("no feature blocks")
    attrs = dict(frames[0].attrs)
    frame = pd.concat(frames).sort_index() if len(frames) > 1 else frames[0]
    frame.attrs.update(attrs)
    return frame


def iterate_blocks(batches: Iterator[pd.DataFrame]) -> Iterator[tuple[int, pd.DataFrame]]:
    """(block number, features) for every block row of ``mapInPandas`` batches."""
    for batch in batches:
        for number, blob in zip(batch["block"], batch["frame"], strict=True):
            yield int(number), unpack(blob)
