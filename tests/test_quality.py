"""The quality gate: a clean generated day passes; each kind of damage fails with its check named."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from argus.world.config import WorldConfig
from argus.world.simulate import World
from argus.world.sinks import lake_path, write_world

DAY = date(2026, 10, 2)


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    write_world(World(WorldConfig(users=120, days=2, seed=2, events_per_user_day=15.0, profile="dense")), tmp_path)
    return tmp_path


def _edit(lake: Path, event_type: str, change) -> None:  # type: ignore[no-untyped-def]
    path = lake_path(lake, event_type, DAY)
    pq.write_table(change(pq.read_table(path)), path)


def test_a_clean_day_passes_and_writes_full_results(spark: object, lake: Path) -> None:
    from argus.jobs.quality import run_quality

    report = run_quality(spark, lake, DAY)  # type: ignore[arg-type]
    assert report.passed, report.summary()
    assert set(report.rows) == {"chat", "click", "payment", "account", "moderation"}
    results = json.loads(Path(report.results_path).read_text())
    assert results["passed"] is True and set(results["suites"]) == set(report.rows)


def test_damage_fails_with_the_check_named(spark: object, lake: Path) -> None:
    from argus.jobs.quality import run_quality

    def negative_amounts(t: pa.Table) -> pa.Table:
        return t.set_column(t.schema.get_field_index("amount"), "amount", pc.multiply(t["amount"], -1.0))

    def repeated_ids(t: pa.Table) -> pa.Table:
        ids = t["event_id"].to_pylist()
        return t.set_column(t.schema.get_field_index("event_id"), "event_id", pa.array([ids[0], *ids[1:-1], ids[0]]))

    def extra_column(t: pa.Table) -> pa.Table:
        return t.append_column("surprise", pa.array([1] * t.num_rows))

    _edit(lake, "payment", negative_amounts)
    _edit(lake, "chat", repeated_ids)
    _edit(lake, "click", extra_column)
    report = run_quality(spark, lake, DAY)  # type: ignore[arg-type]
    assert not report.passed
    assert any("column=amount" in f and "unexpected=" in f for f in report.failures["payment"])  # with its details
    assert any("unique" in f and "column=event_id" in f for f in report.failures["chat"])
    assert any("table_columns_to_match_set" in f for f in report.failures["click"])
    assert "account" not in report.failures
    assert "FAILED" in report.summary() and report.results_path in report.summary()


def test_volume_against_the_previous_day(spark: object, lake: Path) -> None:
    from argus.jobs.quality import run_quality

    _edit(lake, "click", lambda t: t.slice(0, t.num_rows // 4))
    report = run_quality(spark, lake, DAY, trend_min_rows=100)  # type: ignore[arg-type]
    assert any("table_row_count" in f for f in report.failures["click"])


def test_a_missing_day_is_a_clear_error(spark: object, lake: Path) -> None:
    from argus.jobs.quality import run_quality

    with pytest.raises(ValueError, match="no events for 2026-12-01"):
        run_quality(spark, lake, date(2026, 12, 1))  # type: ignore[arg-type]


def test_output_checks_catch_impossible_profiles(spark: object) -> None:
    from argus.jobs.quality import check_output

    good = spark.createDataFrame([("a", 0.5, 3), ("b", 1.0, 0)], ["user_id", "chat_top1_share", "events_chat_1d"])  # type: ignore[attr-defined]
    assert check_output(good, "profiles") == []
    bad = spark.createDataFrame([("a", 1.5, 3), ("a", 0.2, -1)], ["user_id", "chat_top1_share", "events_chat_1d"])  # type: ignore[attr-defined]
    failed = " | ".join(check_output(bad, "profiles"))
    assert "column=chat_top1_share" in failed and "column=events_chat_1d" in failed and "unique" in failed
