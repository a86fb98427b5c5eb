"""Publishing a job's per-user output: staged, checked, then swapped in whole (never partially)."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def publish_per_user(spark: SparkSession, frame: DataFrame, lake: Path, kind: str, day: date) -> tuple[Path, int]:
    """Write ``frame`` to ``LAKE/<kind>/date=D/`` if it passes its output checks; (path, rows).

    A failing check raises ``ValueError`` and leaves the published folder as it was.
    """
    from jobs.quality import check_output

    target = lake / kind / f"date={day.isoformat()}"
    staging = lake / "_staging" / f"{kind}-{day.isoformat()}"
    shutil.rmtree(staging, ignore_errors=True)
    frame.repartition(4, "user_id").sortWithinPartitions("user_id").write.parquet(str(staging))
    written = spark.read.parquet(str(staging))
    failed = check_output(written, kind)
    if failed:
        shutil.rmtree(staging, ignore_errors=True)
        raise ValueError(f"{kind} for {day} failed their output checks, nothing was published: {'; '.join(failed)}")
    rows = written.count()
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    return target, rows
