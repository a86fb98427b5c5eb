"""Run the same Spark work under several shuffle partitionings (as masters with different cores would)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

CONF_KEYS = ("spark.sql.shuffle.partitions", "spark.sql.adaptive.enabled")


def each_shuffle_partitioning(spark: Any, partitions: tuple[int, ...] = (1, 7)) -> Iterator[int]:
    """Yield each count in ``partitions`` with the session's shuffles set to it (adaptive execution off, else
    small shuffles are coalesced to one partition); the session's settings are restored afterwards."""
    conf = spark.conf
    saved = {key: conf.get(key) for key in CONF_KEYS}
    try:
        conf.set("spark.sql.adaptive.enabled", "false")
        for count in partitions:
            conf.set("spark.sql.shuffle.partitions", str(count))
            yield count
    finally:
        for key, value in saved.items():
            conf.set(key, value)
