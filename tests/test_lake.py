"""The lake's Delta tables: a date replaced in one commit, a night published by one manifest, time travel,
the pandas reader against Spark's, and lake URIs kept as URIs."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from argus.detectors import lake_tables
from argus.jobs import lake as tables
from argus.jobs.lake import LakeError, lake_location

D1, D2 = date(2026, 10, 1), date(2026, 10, 2)


def _frame(spark: Any, users: list[str], value: float) -> Any:
    return spark.createDataFrame(pd.DataFrame({"user_id": users, "score": [value] * len(users)}))


def _rows(frame: Any) -> list[tuple[str, float]]:
    if frame is None:
        return []
    if isinstance(frame, pd.DataFrame):
        return sorted(zip(frame["user_id"], frame["score"], strict=True))
    return sorted((r["user_id"], r["score"]) for r in frame.collect())


def test_lake_locations_keep_uris_as_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert lake_location("s3a://bucket/lake/") == "s3a://bucket/lake"
    assert lake_location("gs://bucket/lake") == "gs://bucket/lake"
    assert lake_location("hdfs://namenode:8020/argus/lake") == "hdfs://namenode:8020/argus/lake"
    assert lake_location("lake") == tmp_path / "lake"
    assert lake_location(f"file://{tmp_path}/lake") == tmp_path / "lake"
    assert tables.join("s3a://bucket/lake", "scores", "detector=fraud") == "s3a://bucket/lake/scores/detector=fraud"
    assert tables.native_location("s3a://bucket/lake/profiles") == "s3://bucket/lake/profiles"
    with pytest.raises(LakeError, match="--lake ftp://host/lake: unknown scheme ftp://"):
        lake_location("ftp://host/lake")
    with pytest.raises(LakeError, match="name a bucket"):
        lake_location("s3a://")


def test_detectors_read_the_lake_without_importing_the_jobs() -> None:
    """The detection library depends on schemas only: its lake reader is its own, the jobs build on it."""
    import ast

    import argus.detectors

    engines = ("argus.jobs", "argus.pipelines", "argus.infra", "argus.cli", "pyspark", "apache_beam")
    wrong = []
    for source in sorted(Path(argus.detectors.__path__[0]).rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            wrong += [f"{source.name}:{node.lineno} imports {n}" for n in names if n.startswith(engines)]
    assert wrong == []
    assert tables.read_pandas is lake_tables.read_pandas and tables.LakeError is lake_tables.LakeError


def test_the_cli_passes_an_object_store_lake_on_as_a_uri(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from argus.cli import app

    args = ["batch", "profile", "--date", str(D1), "--lake", "s3a://bucket/lake", "--print-command"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "--lake s3a://bucket/lake " in result.output and "s3a:/bucket" not in result.output
    wrong = CliRunner().invoke(app, ["batch", "profile", "--date", str(D1), "--lake", "ftp://host/lake"])
    assert wrong.exit_code != 0 and "--lake ftp://host/lake: unknown scheme ftp://" in str(wrong.exception)


def test_a_date_is_replaced_in_one_commit_and_a_rerun_changes_nothing(spark: Any, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    first = tables.write_date(spark, _frame(spark, ["a", "b"], 1.0), lake, "scores", D1)
    tables.write_date(spark, _frame(spark, ["a", "c"], 2.0), lake, "scores", D2)
    replaced = tables.write_date(spark, _frame(spark, ["b", "d", "e"], 3.0), lake, "scores", D2)
    again = tables.write_date(spark, _frame(spark, ["b", "d", "e"], 3.0), lake, "scores", D2)
    assert (first, replaced, again) == (0, 2, 3)  # one commit each
    for version in (replaced, again):
        assert _rows(tables.read_pandas(lake, "scores", D2, version=version)) == [("b", 3.0), ("d", 3.0), ("e", 3.0)]
        assert _rows(tables.read_pandas(lake, "scores", D1, version=version)) == [("a", 1.0), ("b", 1.0)]
    # Time travel: the version before the replacement still holds the old date.
    assert _rows(tables.read_spark(spark, lake, "scores", D2, version=replaced - 1)) == [("a", 2.0), ("c", 2.0)]
    assert tables.read_spark(spark, lake, "scores", D2) is None  # written, but no manifest publishes it


def test_a_night_is_published_by_its_manifest_and_a_failed_night_leaves_the_previous_one(
    spark: Any, tmp_path: Path
) -> None:
    from argus.jobs.publish import Publication

    lake = tmp_path / "lake"
    night = Publication(lake, "nightly-1", deferred=True)
    night.write(spark, _frame(spark, ["a", "b"], 1.0), "profiles", D1)
    night.write(spark, _frame(spark, ["a", "b"], 0.5), "scores/detector=fraud", D1)
    assert tables.latest_manifest(lake) is None and tables.read_pandas(lake, "profiles", D1) is None
    assert _rows(night.read(spark, "profiles", D1)) == [("a", 1.0), ("b", 1.0)]  # the run reads its own writes
    night.commit()
    published = tables.latest_manifest(lake)
    assert published is not None and published.sequence == 1
    assert published.tables == {"profiles": 0, "scores/detector=fraud": 0}

    # The next night rewrites the same date and fails after its first table: nothing of it is visible.
    failing = Publication(lake, "nightly-2", deferred=True)
    failing.write(spark, _frame(spark, ["z"], 9.0), "profiles", D1)
    failing.discard()
    assert tables.latest_manifest(lake) == published
    assert _rows(tables.read_pandas(lake, "profiles", D1)) == [("a", 1.0), ("b", 1.0)]
    newest = tables.latest_version(spark, lake, "profiles")
    restored = tables.read_pandas(lake, "profiles", D1, version=newest)
    assert _rows(restored) == [("a", 1.0), ("b", 1.0)]  # the table itself is back at the published content

    # A crash that never reached discard: the manifest still names the old versions, and the next
    # publication first undoes the orphaned version before writing its own.
    crashed = Publication(lake, "nightly-3", deferred=True)
    crashed.write(spark, _frame(spark, ["y"], 8.0), "scores/detector=fraud", D1)
    assert _rows(tables.read_pandas(lake, "scores/detector=fraud", D1)) == [("a", 0.5), ("b", 0.5)]
    rerun = Publication(lake, "nightly-3", deferred=True)
    rerun.write(spark, _frame(spark, ["x"], 7.0), "scores/detector=fraud", D2)
    rerun.commit()
    assert _rows(tables.read_pandas(lake, "scores/detector=fraud", D1)) == [("a", 0.5), ("b", 0.5)]
    assert _rows(tables.read_pandas(lake, "scores/detector=fraud", D2)) == [("x", 7.0)]

    # Time travel to the previous night through the manifest before the newest.
    newest = tables.latest_manifest(lake)
    assert newest is not None and newest.sequence == 2 and newest.changed == ["scores/detector=fraud"]
    previous = tables.manifest_before(lake, newest.sequence)
    assert previous == published
    old = previous.tables["scores/detector=fraud"]
    assert tables.read_pandas(lake, "scores/detector=fraud", D2, version=old) is None
    assert tables.published_dates(lake, "scores/detector=fraud") == [str(D1), str(D2)]


def test_ingest_merges_keep_each_key_once_and_a_failed_run_leaves_the_previous_rows(spark: Any, tmp_path: Path) -> None:
    from argus.jobs.publish import Publication

    lake, table = tmp_path / "lake", tables.events_table("chat")

    def events(ids: list[str]) -> Any:
        return spark.createDataFrame(pd.DataFrame({"event_id": ids, "user_id": ids, "date": [str(D1)] * len(ids)}))

    def stored(version: int | None = None) -> list[str]:
        frame = tables.read_pandas(lake, table, D1, version=version)
        return [] if frame is None else sorted(frame["event_id"])

    first = Publication(lake, "ingest-1", deferred=True)
    assert first.merge(spark, events(["e1", "e2"]), table, ["event_id"], [str(D1)]) == 2
    first.commit()
    # A run over an overlapping range fails before its manifest: readers and the table keep the old rows.
    failing = Publication(lake, "ingest-2", deferred=True)
    assert failing.merge(spark, events(["e2", "e3"]), table, ["event_id"], [str(D1)]) == 1
    failing.discard()
    assert stored() == stored(tables.latest_version(spark, lake, table)) == ["e1", "e2"]
    # Its rerun stores only the new key; a second rerun finds every key and commits nothing.
    for expected_inserted in (1, 0):
        rerun = Publication(lake, "ingest-2", deferred=True)
        assert rerun.merge(spark, events(["e3", "e2"]), table, ["event_id"], [str(D1)]) == expected_inserted
        rerun.commit()
        assert stored() == ["e1", "e2", "e3"]
    history = tables.manifests(lake)
    assert [m.name for m in history] == ["ingest-1", "ingest-2"]  # the rerun that changed nothing published nothing
    assert history[1].tables[table] == tables.latest_version(spark, lake, table)
    assert stored(history[0].tables[table]) == ["e1", "e2"]  # the first run's lake, by time travel


def _operations(spark: Any, lake: Path, table: str) -> list[str]:
    """The table's Delta commits, oldest first, by operation (WRITE, MERGE, RESTORE...)."""
    history = spark.sql(f"DESCRIBE HISTORY delta.`{tables.table_location(lake, table)}`").orderBy("version")
    return [row["operation"] for row in history.collect()]


def test_a_re_arrived_event_id_is_skipped_and_a_rerun_after_a_failed_run_restores_nothing_twice(
    spark: Any, tmp_path: Path
) -> None:
    from argus.jobs.publish import Publication

    lake, table = tmp_path / "lake", tables.events_table("chat")

    def events(ids: list[str], day: date = D1) -> Any:
        return spark.createDataFrame(pd.DataFrame({"event_id": ids, "user_id": ids, "date": [str(day)] * len(ids)}))

    def stored() -> list[str]:
        frame = tables.read_pandas(lake, table)
        return [] if frame is None else sorted(frame["event_id"])

    first = Publication(lake, "ingest-1", deferred=True)
    assert first.merge(spark, events(["e1", "e2"]), table, ["event_id"], [str(D1)]) == 2
    first.commit()
    # e1 re-arrives with its time moved to the next day: the search of both dates finds it stored.
    again = Publication(lake, "ingest-2", deferred=True)
    assert again.merge(spark, events(["e3", "e1"], D2), table, ["event_id"], [str(D1), str(D2)]) == 1
    again.commit()
    assert stored() == ["e1", "e2", "e3"]

    # A run that fails is undone by one RESTORE; its reruns restore nothing more, and a rerun that
    # finds every event stored publishes nothing.
    failing = Publication(lake, "ingest-3", deferred=True)
    assert failing.merge(spark, events(["e4"]), table, ["event_id"], [str(D1)]) == 1
    failing.discard()
    published = len(tables.manifests(lake))
    nothing_new = Publication(lake, "ingest-3", deferred=True)
    assert nothing_new.merge(spark, events(["e2"]), table, ["event_id"], [str(D1)]) == 0
    nothing_new.commit()
    assert len(tables.manifests(lake)) == published
    rerun = Publication(lake, "ingest-3", deferred=True)
    assert rerun.merge(spark, events(["e4", "e1"]), table, ["event_id"], [str(D1)]) == 1
    rerun.commit()
    assert stored() == ["e1", "e2", "e3", "e4"]
    assert _operations(spark, lake, table) == ["WRITE", "MERGE", "MERGE", "RESTORE", "MERGE"]


def test_plain_parquet_dead_letters_of_an_older_lake_become_a_delta_table(spark: Any, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    folder = lake / tables.DEAD_LETTER / f"date={D1}"
    folder.mkdir(parents=True)
    letters = pd.DataFrame({"original_b64": ["e30=", "eA=="], "source_offset": [4, 7], "reason_code": ["a", "b"]})
    letters.to_parquet(folder / "part-run1-00000.parquet", index=False)
    assert tables.convert_plain_parquet(spark, lake, tables.DEAD_LETTER)
    assert not tables.convert_plain_parquet(spark, lake, tables.DEAD_LETTER)  # a Delta table already
    version = tables.latest_version(spark, lake, tables.DEAD_LETTER)
    assert version is not None
    converted = tables.read_pandas(lake, tables.DEAD_LETTER, D1, version=version)
    assert converted is not None
    assert sorted(zip(converted.source_offset, converted.original_b64, strict=True)) == [(4, "e30="), (7, "eA==")]


def test_events_readers_read_the_landed_files_and_the_ingested_table_together(spark: Any, tmp_path: Path) -> None:
    from argus.detectors.events import load_events
    from argus.jobs.profiles import read_events
    from argus.jobs.quality import day_events
    from argus.report import rows_per_event_type
    from argus.schemas.arrow import ARROW_SCHEMAS
    from argus.world.config import WorldConfig
    from argus.world.simulate import World
    from argus.world.sinks import lake_path, write_table

    lake, table = tmp_path / "lake", tables.events_table("chat")
    world = World(WorldConfig(users=50, days=2, seed=3, events_per_user_day=2.0, profile="dense"))
    (first_day, landed), (second_day, arrived) = ((d, t["chat"]) for d, t in world.days())
    write_table(landed, lake_path(lake, "chat", first_day), "parquet")  # as `argus generate --out` lands it
    ingested = spark.createDataFrame(arrived.to_pandas().assign(date=str(second_day)))
    version, inserted = tables.merge_new_rows(spark, ingested, lake, table, ["event_id"], [str(second_day)])
    tables.commit_manifest(lake, {table: version}, "ingest-1")
    assert inserted == arrived.num_rows > 0 and landed.num_rows > 0

    until_first, until_second = (read_events(spark, lake, "chat", d) for d in (first_day, second_day))
    assert until_first is not None and until_first.count() == landed.num_rows
    assert until_second is not None and until_second.count() == landed.num_rows + arrived.num_rows
    assert dict(until_second.dtypes)["date"] == "string"
    gated = {d: day_events(spark, lake, "chat", d) for d in (first_day, second_day)}
    assert {d: None if f is None else f.count() for d, f in gated.items()} == {
        first_day: landed.num_rows,
        second_day: arrived.num_rows,
    }
    assert set(gated[second_day].columns) == set(ARROW_SCHEMAS["chat"].names)  # type: ignore[union-attr]
    both = load_events(lake)["chat"]  # `argus detect --events LAKE`
    assert sorted(both.event_id) == sorted(landed["event_id"].to_pylist() + arrived["event_id"].to_pylist())
    # The nightly report's rows per event type count both too.
    assert {d: rows_per_event_type(lake, d) for d in (first_day, second_day)} == {
        first_day: {"chat": landed.num_rows},
        second_day: {"chat": arrived.num_rows},
    }


def test_the_pandas_reader_reads_what_spark_reads_on_a_uri_lake(spark: Any, tmp_path: Path) -> None:
    lake = f"file://{tmp_path}/lake"  # a URI, so the object-store code paths run: Hadoop FS, pyarrow FS, delta-rs
    frame = spark.createDataFrame(
        pd.DataFrame(
            {
                "user_id": [f"u{n}" for n in range(50)],
                "score": [n / 50 for n in range(50)],
                "flagged": [n % 3 == 0 for n in range(50)],
                "reasons": [[f"r{n}"] for n in range(50)],
            }
        )
    )
    version = tables.write_date(spark, frame, lake, "scores/detector=churn", D1)
    tables.commit_manifest(lake, {"scores/detector=churn": version}, "scores-churn")
    assert (tmp_path / "lake" / "_manifests" / f"{1:020d}.json").is_file()
    from_spark = tables.read_spark(spark, lake, "scores/detector=churn", D1)
    from_pandas = tables.read_pandas(lake, "scores/detector=churn", D1)
    assert from_spark is not None and from_pandas is not None
    expected = from_spark.toPandas().sort_values("user_id", ignore_index=True)
    actual = from_pandas.sort_values("user_id", ignore_index=True)[list(expected.columns)]
    actual["reasons"] = actual["reasons"].map(list)
    expected["reasons"] = expected["reasons"].map(list)
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False)
    assert len(actual) == 50 and actual["flagged"].sum() == 17


def test_the_quality_gate_reads_and_writes_a_uri_lake(spark: Any, tmp_path: Path) -> None:
    import json

    from argus.jobs.quality import run_quality
    from argus.world.config import WorldConfig
    from argus.world.simulate import World
    from argus.world.sinks import write_world

    world = World(WorldConfig(users=50, days=1, seed=3, events_per_user_day=3.0, profile="dense"))
    write_world(world, tmp_path / "lake")  # landed as `argus generate --out` lands them
    (day, landed), *_ = world.days()
    lake = f"file://{tmp_path}/lake"  # a URI, so the object-store code paths run: Hadoop FS, pyarrow FS

    report = run_quality(spark, lake, day)
    assert report.rows == {t: table.num_rows for t, table in landed.items() if table.num_rows}
    assert report.results_path == f"{lake}/_quality/date={day}/results.json"
    written = json.loads((tmp_path / "lake" / "_quality" / f"date={day}" / "results.json").read_text())
    assert (written["day"], written["passed"], sorted(written["suites"])) == (
        str(day),
        report.passed,
        sorted(report.rows),
    )


def test_history_lists_publications_and_vacuum_keeps_the_retention(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from argus.cli import app

    lake = tmp_path / "lake"
    for value in (1.0, 2.0):  # delta-rs writes the same tables without Spark
        frame = pd.DataFrame({"user_id": ["a", "b"], "score": [value, value]})
        version = tables.write_date_pandas(frame, lake, "scores/detector=fraud", D1)
        tables.commit_manifest(lake, {"scores/detector=fraud": version}, f"night-{value}")
    assert _rows(tables.read_pandas(lake, "scores/detector=fraud", D1)) == [("a", 2.0), ("b", 2.0)]
    runner = CliRunner()
    history = runner.invoke(app, ["lake", "history", "--lake", str(lake)])
    assert history.exit_code == 0, history.output
    lines = [json.loads(line) for line in history.output.splitlines()]
    assert [(m["sequence"], m["name"], m["tables"]) for m in lines] == [
        (1, "night-1.0", {"scores/detector=fraud": 0}),
        (2, "night-2.0", {"scores/detector=fraud": 1}),
    ]
    kept = runner.invoke(app, ["lake", "vacuum", "--lake", str(lake), "--no-dry-run"])
    assert kept.exit_code == 0, kept.output
    assert json.loads(kept.stdout)["files"] == {"scores/detector=fraud": 0}  # version 0 is younger than a week
    assert "vacuum removed 0 files (0.0 MB) from 1 tables" in kept.stderr
    assert _rows(tables.read_pandas(lake, "scores/detector=fraud", D1, version=0)) == [("a", 1.0), ("b", 1.0)]
    refused = runner.invoke(app, ["lake", "vacuum", "--lake", str(lake), "--retain-hours", "1"])
    assert refused.exit_code != 0 and "--retain-hours 1:" in str(refused.exception)


def test_vacuum_prints_the_files_and_bytes_it_removes(tmp_path: Path) -> None:
    """A table whose own retention is 0 hours lets VACUUM remove a replaced version's file now."""
    import json

    from deltalake import DeltaTable, write_deltalake
    from typer.testing import CliRunner

    from argus.cli import app

    lake, table = tmp_path / "lake", "scores/detector=fraud"
    location = lake / "scores" / "detector=fraud"
    first = pd.DataFrame({"user_id": ["a", "b"], "score": [1.0, 1.0], "date": [D1.isoformat()] * 2})
    zero = {"delta.deletedFileRetentionDuration": "interval 0 hours"}
    write_deltalake(str(location), first, partition_by=["date"], configuration=zero)
    tables.commit_manifest(lake, {table: 0}, "night-1")
    second = pd.DataFrame({"user_id": ["a", "b"], "score": [2.0, 2.0]})
    tables.commit_manifest(lake, {table: tables.write_date_pandas(second, lake, table, D1)}, "night-2")
    current = {Path(uri.removeprefix("file://")) for uri in DeltaTable(str(location)).file_uris()}
    (replaced,) = [p for p in location.rglob("*.parquet") if p not in current]  # version 0's only file
    runner = CliRunner()
    counted = runner.invoke(app, ["lake", "vacuum", "--lake", str(lake), "--retain-hours", "0"])
    assert counted.exit_code == 0, counted.output
    expected = {"files": {table: 1}, "bytes": {table: replaced.stat().st_size}, "total_files": 1}
    assert {k: v for k, v in json.loads(counted.stdout).items() if k in expected} == expected
    assert "would remove 1 files" in counted.stderr and replaced.exists()  # a dry run by default
    removed = runner.invoke(app, ["lake", "vacuum", "--lake", str(lake), "--retain-hours", "0", "--no-dry-run"])
    assert removed.exit_code == 0, removed.output
    assert json.loads(removed.stdout)["bytes"] == {table: expected["bytes"][table]}
    assert not replaced.exists() and _rows(tables.read_pandas(lake, table, D1)) == [("a", 2.0), ("b", 2.0)]
    assert tables.lease_holder(lake) is None  # the lease it took for deleting is given back


def test_forget_erases_a_user_from_every_version_of_a_delta_table(tmp_path: Path) -> None:
    from argus.forget import forget

    lake = tmp_path / "lake"
    table = "scores/detector=evaders"
    for value in (1.0, 2.0):
        frame = pd.DataFrame({"user_id": ["gone", "kept"], "score": [value, value]})
        tables.commit_manifest(lake, {table: tables.write_date_pandas(frame, lake, table, D1)}, f"night-{value}")

    def holding_the_user() -> list[Path]:
        return [p for p in (lake / "scores").rglob("*.parquet") if b"gone" in p.read_bytes()]

    assert len(holding_the_user()) == 2  # both versions' files name the user
    report = forget(lake, ["gone"], kafka=False)
    assert report.tables == {"scores/evaders": 1}
    assert _rows(tables.read_pandas(lake, table, D1)) == [("kept", 2.0)]
    manifest = tables.latest_manifest(lake)
    assert manifest is not None and manifest.name == "forget" and manifest.tables[table] == 2
    assert holding_the_user() == []  # the older version's files went with VACUUM
    assert forget(lake, ["gone"], kafka=False).tables == {}  # a rerun finds nothing left
