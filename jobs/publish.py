"""Publishing a job's outputs: written, checked, then made visible together (never partially).

Tables (profiles, embeddings, scores, ingested events, dead letters) are Delta tables
(``argus.jobs.lake``): each write replaces one date in one commit (ingest's merge inserts new rows),
and the publication's manifest (one object, written last) is what readers follow. A single job
publishes as it goes (``Publication(lake)``: a manifest after each table). The nightly chain
publishes every output of a night together (``Publication(lake, deferred=True)``): its tables get
new versions as the steps finish, ``commit`` writes one manifest naming them all,
then swaps in the staged plain files (alerts) and makes the new models current. A crash anywhere
before the manifest leaves the previous night visible; ``discard`` (and the next publication, after
a crash that skipped it) restores each table to the version the manifest names.
"""

from __future__ import annotations

import os
import shutil
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from argus.jobs import lake as tables
from argus.jobs.lake import Lake

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from argus.detectors.base import Detector


class Publication:
    """The outputs of one run: table versions to publish, plain folders under ``LAKE/_staging/<name>/``."""

    def __init__(self, lake: Lake, name: str = "job", deferred: bool = False) -> None:
        self.lake = tables.lake_location(lake)
        self.name = name
        self.deferred = deferred
        self._spark: SparkSession | None = None
        self._tables: dict[str, int] = {}  # table -> version written by this run, not yet published
        self._before: dict[str, int | None] = {}  # table -> the version readers saw when this run began
        self._folders: dict[Path, Path] = {}  # target -> staged folder
        self._models: list[tuple[Path, Detector]] = []  # (store root, detector) to make current
        if not tables.is_uri(self.lake):
            shutil.rmtree(self.staging_root, ignore_errors=True)  # what a crashed run of the same name left

    @property
    def staging_root(self) -> Path:
        return tables.local_root(self.lake, "staging plain files (alerts)") / "_staging" / self.name

    # --- tables -----------------------------------------------------------------------------

    def write(self, spark: SparkSession, frame: DataFrame, table: str, day: date, publish: bool = True) -> int:
        """Replace ``day`` of ``table`` with ``frame`` (one Delta commit); published at once unless the
        publication is deferred or ``publish`` is false (``publish()`` then, after checks)."""
        self._spark = spark
        if table not in self._before:
            self._before[table] = self._recover(spark, table)
        version = tables.write_date(spark, frame, self.lake, table, day)
        self._tables[table] = version
        if publish and not self.deferred:
            self.publish()
        return version

    def merge(
        self, spark: SparkSession, frame: DataFrame, table: str, keys: list[str], dates: list[str] | None = None
    ) -> int:
        """Insert the rows of ``frame`` whose ``keys`` ``table`` lacks (``argus.jobs.lake.merge_new_rows``),
        published like ``write``'s (a table it left unchanged is not republished); the rows inserted."""
        self._spark = spark
        if table not in self._before:
            self._before[table] = self._recover(spark, table)
        version, inserted = tables.merge_new_rows(spark, frame, self.lake, table, keys, dates)
        if self._changed(spark, table, version, self._before[table]):  # a merge finding every key commits nothing
            self._tables[table] = version
        if not self.deferred:
            self.publish()
        return inserted

    def read(self, spark: SparkSession, table: str, day: date) -> DataFrame | None:
        """``day`` of ``table`` as this run wrote it, or as published; None when there is none."""
        return tables.read_spark(spark, self.lake, table, day, version=self._tables.get(table))

    def _recover(self, spark: SparkSession, table: str) -> int | None:
        """The published version of ``table``; a newer one that no manifest names (a crashed run's) is undone."""
        published = tables.published_version(self.lake, table)
        latest = tables.latest_version(spark, self.lake, table)
        if published is not None and latest is not None and self._changed(spark, table, latest, published):
            tables.restore(spark, self.lake, table, published)
        return published

    def _changed(self, spark: SparkSession, table: str, version: int, published: int | None) -> bool:
        """Whether ``version`` of ``table`` holds other content than the ``published`` version: a later
        commit that is not the RESTORE to it a failed run's ``discard`` (or a ``_recover``) made."""
        if version == published:
            return False
        return published is None or not tables.restores(spark, self.lake, table, version, published)

    def publish(self) -> None:
        """One manifest naming every table version written and not yet published."""
        if self._tables:
            tables.commit_manifest(self.lake, self._tables, self.name)
            self._before.update(self._tables)
            self._tables.clear()

    # --- plain folders and models ---------------------------------------------------------------

    def stage(self, target: Path) -> Path:
        """A fresh, empty folder to write ``target``'s new contents into."""
        staged = self.staging_root / target.relative_to(tables.local_root(self.lake, "plain files"))
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

    def model(self, store_root: Path, detector: Detector) -> Path | str:
        """Save ``detector`` to the store (versions are immutable) and make it current with the outputs."""
        from argus.detectors.store import ModelStore

        store = ModelStore(store_root)
        folder = store.save(detector)
        if self.deferred:
            self._models.append((store_root, detector))
        else:
            store.make_current(detector.name, detector.model_version)
        return folder

    def commit(self) -> tuple[list[str], list[Path]]:
        """Publish every table version in one manifest, swap the staged folders in, make the new models
        current; the tables and the folders published."""
        from argus.detectors.store import ModelStore

        published = sorted(self._tables)
        self.publish()  # the commit point: from here on readers see the new night
        folders = list(self._folders)
        for target in folders:
            self._swap(target)
        for store_root, detector in self._models:
            ModelStore(store_root).make_current(detector.name, detector.model_version)
        self._models.clear()
        if not tables.is_uri(self.lake):
            shutil.rmtree(self.staging_root, ignore_errors=True)
        return published, folders

    def discard(self) -> None:
        """Drop everything unpublished: tables back at the versions readers see, staged folders removed.
        A run whose writer lease was taken over leaves the tables alone: the new holder writes them now,
        and undoes this run's unpublished versions itself (``_recover``)."""
        if self._spark is not None and not tables.lease_lost(self.lake):
            for table in self._tables:
                before = self._before.get(table)
                if before is not None:
                    tables.restore(self._spark, self.lake, table, before)
        self._tables.clear()
        self._folders.clear()
        self._models.clear()
        if not tables.is_uri(self.lake):
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
    lake: Lake,
    kind: str,
    day: date,
    publication: Publication | None = None,
) -> tuple[str, int]:
    """Write ``frame`` as ``day`` of the ``kind`` table if it passes its output checks; (table, rows).

    A failing check raises ``ValueError`` and leaves the published table as it was. With a deferred
    ``publication`` the new version is published by its ``commit``.
    """
    from argus.jobs.quality import check_output

    publication = publication or Publication(lake, f"{kind}-{day.isoformat()}")
    ordered = frame.repartition(4, "user_id").sortWithinPartitions("user_id")
    publication.write(spark, ordered, kind, day, publish=False)  # checked before anyone sees it
    written = publication.read(spark, kind, day)
    failed = ["no rows"] if written is None else check_output(written, kind)
    if failed or written is None:
        publication.discard()
        raise ValueError(f"{kind} for {day} failed their output checks, nothing was published: {'; '.join(failed)}")
    rows = written.count()
    if not publication.deferred:
        publication.publish()
    return kind, rows
