"""Publishing a job's outputs: staged, checked, then swapped in whole (never partially).

A single job publishes as it goes (``Publication(lake)``). The nightly chain stages every
output of a night first (``Publication(lake, deferred=True)``) and swaps them all in at the
end with ``commit``: a crash anywhere before that leaves the previous outputs and the models
in use as they were.
"""

from __future__ import annotations

import os
import shutil
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from argus.detectors.base import Detector


class Publication:
    """The outputs of one run under ``LAKE/_staging/<name>/``, swapped into the lake by ``commit``."""

    def __init__(self, lake: Path, name: str = "job", deferred: bool = False) -> None:
        self.lake = Path(lake)
        self.deferred = deferred
        self.staging_root = self.lake / "_staging" / name
        shutil.rmtree(self.staging_root, ignore_errors=True)  # what a crashed run of the same name left
        self._folders: dict[Path, Path] = {}  # target -> staged folder
        self._models: list[tuple[Path, Detector]] = []  # (store root, detector) to make current

    def stage(self, target: Path) -> Path:
        """A fresh, empty folder to write ``target``'s new contents into."""
        staged = self.staging_root / target.relative_to(self.lake)
        shutil.rmtree(staged, ignore_errors=True)
        staged.parent.mkdir(parents=True, exist_ok=True)
        self._folders[target] = staged
        return staged

    def readable(self, target: Path) -> Path:
        """Where ``target``'s newest contents are now: staged by this run, or already published."""
        return self._folders.get(target, target)

    def staged(self, target: Path) -> None:
        """``target``'s staged folder is complete; published now unless the publication is deferred."""
        if not self.deferred:
            self._swap(target)

    def model(self, store_root: Path, detector: Detector) -> Path:
        """Save ``detector`` to the store (versions are immutable) and make it current with the outputs."""
        from argus.detectors.store import ModelStore

        store = ModelStore(store_root)
        folder = store.save(detector)
        if self.deferred:
            self._models.append((store_root, detector))
        else:
            store.make_current(detector.name, detector.model_version)
        return folder

    def commit(self) -> list[Path]:
        """Swap every staged folder in, then make the new models current; the published targets."""
        from argus.detectors.store import ModelStore

        published = list(self._folders)
        for target in published:
            self._swap(target)
        for store_root, detector in self._models:
            ModelStore(store_root).make_current(detector.name, detector.model_version)
        self._models.clear()
        shutil.rmtree(self.staging_root, ignore_errors=True)
        return published

    def discard(self) -> None:
        self._folders.clear()
        self._models.clear()
        shutil.rmtree(self.staging_root, ignore_errors=True)

    def _swap(self, target: Path) -> None:
        staged = self._folders.pop(target)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)


def publish_per_user(
    spark: SparkSession,
    frame: DataFrame,
    lake: Path,
    kind: str,
    day: date,
    publication: Publication | None = None,
) -> tuple[Path, int]:
    """Write ``frame`` to ``LAKE/<kind>/date=D/`` if it passes its output checks; (path, rows).

    A failing check raises ``ValueError`` and leaves the published folder as it was. With a
    deferred ``publication`` the folder is staged and swapped in by its ``commit``.
    """
    from argus.jobs.quality import check_output

    publication = publication or Publication(lake, f"{kind}-{day.isoformat()}")
    target = lake / kind / f"date={day.isoformat()}"
    staging = publication.stage(target)
    shutil.rmtree(staging, ignore_errors=True)  # Spark writes the folder itself
    frame.repartition(4, "user_id").sortWithinPartitions("user_id").write.parquet(str(staging))
    written = spark.read.parquet(str(staging))
    failed = check_output(written, kind)
    if failed:
        publication.discard()
        raise ValueError(f"{kind} for {day} failed their output checks, nothing was published: {'; '.join(failed)}")
    rows = written.count()
    publication.staged(target)
    return target, rows
