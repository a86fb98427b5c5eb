"""Publishing a job's outputs: written, checked, then made visible together (never partially).

Tables (profiles, embeddings, scores, ingested events, dead letters) are Delta tables
(``argus.jobs.lake``): each write replaces one date in one commit (ingest's merge inserts new rows),
and the publication's manifest (one object, written last) is what readers follow. Plain files (a
night's alerts) are written once each, to a folder of their own run (``new_folder``), and published
by the manifest naming them: nothing is renamed or replaced in place, which object storage could not
do atomically. A single job publishes as it goes (``Publication(lake)``: a manifest after each table
or file). The nightly chain publishes every output of a night together (``Publication(lake,
deferred=True)``): its tables get new versions and its files are written as the steps finish,
``commit`` writes one manifest naming them all, then makes the new models current. A crash anywhere
before the manifest leaves the previous night visible; ``discard`` (and the next publication, after
a crash that skipped it) restores each table to the version the manifest names, and ``discard``
deletes the run's unpublished files (a crash's are left to ``argus lake vacuum``).
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from argus.jobs import lake as tables
from argus.jobs.lake import Lake

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from argus.detectors.base import Detector


class Publication:
    """The outputs of one run: table versions and plain files (``key`` -> file) to publish, models to make current."""

    def __init__(self, lake: Lake, name: str = "job", deferred: bool = False) -> None:
        self.lake = tables.lake_location(lake)
        self.name = name
        self.deferred = deferred
        self._spark: SparkSession | None = None
        self._tables: dict[str, int] = {}  # table -> version written by this run, not yet published
        self._before: dict[str, int | None] = {}  # table -> the version readers saw when this run began
        self._files: dict[str, str] = {}  # key -> file written by this run, not yet published
        self._folders: set[str] = set()  # this run's folders of plain files that no manifest names yet
        self._models: list[tuple[Lake, Detector]] = []  # (store root, detector) to make current

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
        """One manifest naming every table version and file written and not yet published."""
        if self._tables or self._files:
            tables.commit_manifest(self.lake, self._tables, self.name, self._files)
            self._before.update(self._tables)
            self._tables.clear()
            self._folders -= {posixpath.dirname(f) for f in self._files.values()}
            self._files.clear()

    # --- plain files and models ---------------------------------------------------------------

    def new_folder(self, key: str) -> str:
        """A folder of this run's own, ``key/run=<time>-<random>`` (relative to the lake), to write ``key``'s
        next file into once; no reader looks there until a manifest names the file (``file``)."""
        folder = f"{key}/run={datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        self._folders.add(folder)
        return folder

    def file(self, key: str, relative: str) -> None:
        """``relative``, written complete in a ``new_folder``, is ``key``'s file now; published at once
        unless the publication is deferred."""
        self._files[key] = relative
        if not self.deferred:
            self.publish()

    def model(self, store_root: Lake, detector: Detector) -> Path | str:
        """Save ``detector`` to the store (versions are immutable) and make it current with the outputs."""
        from argus.detectors.store import ModelStore

        store = ModelStore(store_root)
        folder = store.save(detector)
        if self.deferred:
            self._models.append((store_root, detector))
        else:
            store.make_current(detector.name, detector.model_version)
        return folder

    def commit(self) -> tuple[list[str], list[str]]:
        """Publish every table version and file in one manifest, make the new models current; the tables
        and the files (their keys) published."""
        from argus.detectors.store import ModelStore

        published, files = sorted(self._tables), sorted(self._files)
        self.publish()  # the commit point: from here on readers see the new night
        for store_root, detector in self._models:
            ModelStore(store_root).make_current(detector.name, detector.model_version)
        self._models.clear()
        return published, files

    def discard(self) -> None:
        """Drop everything unpublished: tables back at the versions readers see, this run's files deleted.
        A run whose writer lease was taken over leaves the tables alone: the new holder writes them now,
        and undoes this run's unpublished versions itself (``_recover``)."""
        if self._spark is not None and not tables.lease_lost(self.lake):
            for table in self._tables:
                before = self._before.get(table)
                if before is not None:
                    tables.restore(self._spark, self.lake, table, before)
        self._tables.clear()
        self._files.clear()
        self._models.clear()
        # A manifest whose put failed late (its answer lost) may have been stored: its files stay.
        newest = tables.latest_manifest(self.lake)
        named = {posixpath.dirname(f) for f in newest.files.values()} if newest else set()
        fs, root = tables.lake_filesystem(self.lake)
        for folder in self._folders - named:
            with contextlib.suppress(FileNotFoundError):  # discarded before anything was written there
                fs.delete_dir(f"{root}/{folder}")
        self._folders.clear()


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
