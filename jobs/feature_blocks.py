"""Detector features as blocks of users on the executors: what lets nightly scoring outgrow the driver.

A *feature block* is one row of a Spark DataFrame (``block``, ``users``, ``frame``): ``frame`` is a
pickled pandas frame of up to ``block_users`` users' features, exactly as the detector's own
``features`` builds them (object columns such as fraud's payment rows and evaders' fingerprint sets
and the frame's ``attrs`` included). The driver never holds more than the blocks it fits on;
scoring unpickles one block at a time inside ``mapInPandas`` (see ``jobs/score.py``).

Where the blocks come from, per detector:

* ``trolls``: the nightly profile's chat columns (computed by Spark, the channel norms per context
  window included, ``jobs/profiles.py``), cut into blocks by a hash of ``user_id`` with ``applyInPandas``.
* ``evaders``, ``fraud``, ``churn``: the detector's ``features`` over the look-back's events on one
  executor (``applyInPandas`` over a single group), the result cut into blocks. Their features are
  not per-user alone (candidate parents banned before a sign-up, accounts per card, device and
  payee, the population's currency norms, the BG/NBD fit of purchase-mode churn), so one task
  sees the whole look-back; the driver does not.

Block numbers order the blocks: ``block`` 0 is the detector's *core* block, the users whose scores
depend on each other and must be scored together (evaders: new accounts, banned accounts and the
accounts sharing a device or network with them; purchase-mode churn: everyone, since its BG/NBD
summary is fitted over the users it scores). Other blocks hold ``block_users`` users each, by a
hash of ``user_id`` so that the first blocks are a seeded random sample of users.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from argus.detectors.events import Events

BLOCK_USERS = 5_000  # users per block: a churn block (90 days x 8 channels) is ~30 MB pickled
PROFILE_SHARDS_MIN = 2
BLOCK_SCHEMA = "block long, users long, frame binary"
EVENT_DETECTORS = ("evaders", "fraud", "churn")
FeatureBuilder = Callable[["Events"], pd.DataFrame]


def window_events(spark: SparkSession, lake: Path, day: date, days: int) -> DataFrame | None:
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


def type_columns(spark: SparkSession, lake: Path, day: date) -> dict[str, list[str]]:
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


def cut_into_blocks(
    features: pd.DataFrame, core: np.ndarray | None = None, block_users: int = BLOCK_USERS
) -> pd.DataFrame:
    """Rows of ``BLOCK_SCHEMA``: the ``core`` users (a mask) as block 0, the others by hash, sorted within."""
    core = np.zeros(len(features), dtype=bool) if core is None else np.asarray(core, dtype=bool)
    rest = features[~core]
    count = max(1, -(-len(rest) // block_users))
    numbers = user_block(rest.index, count)
    rows = [pack(features[core], 0)] if core.any() else []
    for number in range(1, count + 1):
        part = rest[numbers == number]
        if len(part):
            rows.append(pack(part, number))
    if not rows:
        rows.append(pack(features, 1))  # no users: one empty block keeps the schema and attrs
    return pd.DataFrame(rows, columns=["block", "users", "frame"])


def core_users(detector_name: str, features: pd.DataFrame) -> np.ndarray | None:
    """The users that must be scored together (block 0), or None when every user scores alone."""
    if detector_name == "evaders":
        return evader_core(features)
    if detector_name == "churn" and features.attrs.get("mode") == "purchase":
        return np.ones(len(features), dtype=bool)
    return None


def evader_core(features: pd.DataFrame) -> np.ndarray:
    """New and banned accounts and every account on one of their devices or networks.

    ``EvaderDetector`` pairs new accounts with banned ones and weighs a shared fingerprint by the
    accounts using it, so these rows score alike whether the rest of the population is there or not.
    """
    involved = (features["created_ts"].notna() | features["banned_ts"].notna()).to_numpy()
    shared: set[str] = set()
    for column in ("devices", "networks"):
        for fingerprints in features.loc[involved, column]:
            shared |= set(fingerprints)
    if shared:
        for column in ("devices", "networks"):
            involved |= features[column].map(lambda f: not shared.isdisjoint(f)).to_numpy(dtype=bool)
    return np.asarray(involved, dtype=bool)


def event_blocks(
    spark: SparkSession,
    window: DataFrame,
    columns: dict[str, list[str]],
    detector_name: str,
    build: FeatureBuilder,
    block_users: int = BLOCK_USERS,
) -> DataFrame:
    """Blocks of ``build(events)`` over the whole window, built on one executor (see the module doc)."""
    from pyspark.sql import functions as F

    def features_of(rows: pd.DataFrame) -> pd.DataFrame:
        features = build(events_from_wide(rows, columns))
        return cut_into_blocks(features, core_users(detector_name, features), block_users)

    return window.withColumn("_all", F.lit(0)).groupBy("_all").applyInPandas(features_of, BLOCK_SCHEMA)


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
    rows = picked.orderBy("block").select("frame").collect()
    return concat_blocks([unpack(r["frame"]) for r in rows])


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
