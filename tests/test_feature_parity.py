"""The nightly Spark profile and the detectors compute the same chat context features."""

from __future__ import annotations

import numpy as np
import pandas as pd

from argus.detectors.chat_features import FEATURE_COLUMNS, chat_context_features
from argus.world.simulate import World

SHARED = [c for c in FEATURE_COLUMNS if c not in ("chat_windows",)]


def test_spark_profile_and_pandas_features_agree(spark: object, small_world: World) -> None:
    from argus.jobs.profiles import chat_features

    chat = small_world.day(0)["chat"].to_pandas()
    chat["ts"] = pd.to_datetime(chat["ts"], utc=True)
    expected = chat_context_features(chat)
    frame = spark.createDataFrame(chat[["event_id", "user_id", "context", "ts", "text", "channel_mode"]])  # type: ignore[attr-defined]
    got = chat_features(frame).toPandas().set_index("user_id").sort_index()
    got["chat_anarchy_mode_share"] = got["chat_anarchy_mode_share"].fillna(0.0)
    assert len(expected) > 100
    assert list(got.index) == list(expected.index)
    for column in SHARED:
        assert np.allclose(got[column].astype(float), expected[column].astype(float), equal_nan=True, atol=1e-9), column
    assert expected["chat_hostile_ratio"].gt(0).any()
