"""Data-quality gate on a lake date: great-expectations suites derived from the event contracts.

Per event type present on the date: the columns match the contract, required fields are not
null, enumerated fields hold known values, amounts and durations are in range, ``event_id`` is
unique, the partition is fresh (its newest event is within ``freshness_hours`` of the day's
end) and its volume is within ``volume_tolerance`` of the previous day's (both judged only on
partitions of ``trend_min_rows`` rows or more: sparse streams swing too much). The full results go to
``LAKE/_quality/date=D/results.json``; a failing gate exits non-zero with a one-screen summary,
so a nightly chain stops before anything downstream is published. The lake is a folder or a URI
(``s3a://``, ``gs://``, ``hdfs://``): results are written through its file system.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import typing
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from argus.jobs.entry import run_job
from argus.jobs.lake import Lake, is_uri, job_uri_lake, join, list_files, put_file
from argus.schemas.arrow import ARROW_SCHEMAS
from argus.schemas.models import EVENT_MODELS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

RANGES = {"amount": (0.0, 10_000_000.0), "duration_ms": (0, 86_400_000)}


@dataclass
class QualityReport:
    day: str
    passed: bool
    results_path: str  # a path, or a URI on an object-store lake
    failures: dict[str, list[str]] = field(default_factory=dict)  # event type -> failed checks
    rows: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        if self.passed:
            return f"quality gate passed for {self.day}: " + ", ".join(f"{t} {n:,} rows" for t, n in self.rows.items())
        lines = [f"quality gate FAILED for {self.day} (full results: {self.results_path})"]
        for event_type, failed in self.failures.items():
            lines += [f"  {event_type}: {check}" for check in failed]
        return "\n".join(lines)


def _enum_values(annotation: object) -> list[str] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is typing.Literal:
            return [v for v in typing.get_args(arg) if isinstance(v, str)]
    return None


def contract_suite(event_type: str, expected_rows: tuple[int, int] | None, fresh_after: datetime | None) -> Any:
    """The expectation suite of one event type, built from its model."""
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=f"lake.{event_type}")
    schema = ARROW_SCHEMAS[event_type]
    add = suite.add_expectation
    add(gx.expectations.ExpectTableColumnsToMatchSet(column_set=list(schema.names), exact_match=True))
    for name, info in EVENT_MODELS[event_type].model_fields.items():
        if info.is_required():
            add(gx.expectations.ExpectColumnValuesToNotBeNull(column=name))
        values = _enum_values(info.annotation)
        if values and name != "event_type":
            add(gx.expectations.ExpectColumnValuesToBeInSet(column=name, value_set=values))
        if name in RANGES:
            low, high = RANGES[name]
            add(gx.expectations.ExpectColumnValuesToBeBetween(column=name, min_value=low, max_value=high))
    add(gx.expectations.ExpectColumnValuesToBeUnique(column="event_id"))
    if fresh_after is not None:
        add(gx.expectations.ExpectColumnMaxToBeBetween(column="ts", min_value=fresh_after))
    if expected_rows is not None:
        add(gx.expectations.ExpectTableRowCountToBeBetween(min_value=expected_rows[0], max_value=expected_rows[1]))
    else:
        add(gx.expectations.ExpectTableRowCountToBeBetween(min_value=1))
    return suite


def partition(event_type: str, day: date) -> str:
    """Where ``argus import`` and ``argus generate`` land ``day``'s ``event_type`` events as plain files,
    under the lake."""
    return f"events/event_type={event_type}/date={day.isoformat()}"


def day_events(spark: SparkSession, lake: Lake, event_type: str, day: date) -> DataFrame | None:
    """``day``'s ``event_type`` events, without the ``date`` column: the landed plain files and the
    ingested Delta table's published rows; None when there are none."""
    from argus.jobs.lake import events_table, read_spark
    from argus.jobs.profiles import union_events

    landed = partition(event_type, day)
    parts = [_read(spark, str(join(lake, *landed.split("/"))))] if list_files(lake, landed) else []
    ingested = read_spark(spark, lake, events_table(event_type), day)
    if ingested is not None:
        parts.append(ingested)
    return union_events(parts)


def run_quality(
    spark: SparkSession,
    lake: Lake,
    day: date,
    freshness_hours: float = 6.0,
    volume_tolerance: float = 0.5,
    trend_min_rows: int = 1000,
) -> QualityReport:
    """Run the gate on ``day`` of ``lake`` (a folder or a URI) and write its full results to the lake."""
    import great_expectations as gx

    lake = lake if is_uri(lake) else Path(lake)  # a URI as given (``--lake`` parses it: job_uri_lake)
    frames = {t: day_events(spark, lake, t, day) for t in ARROW_SCHEMAS}
    present = {t: frame for t, frame in frames.items() if frame is not None}
    if not present:
        raise ValueError(f"no events for {day} in {lake} (events/, ingested/); ingest that day first or check --date")
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    assets = context.data_sources.add_spark("lake")
    # Spark hands great-expectations naive timestamps in the session's time zone, which is UTC.
    fresh_after = datetime.combine(day, time()) + timedelta(hours=24 - freshness_hours)
    results = f"_quality/date={day.isoformat()}/results.json"
    report = QualityReport(day.isoformat(), True, str(join(lake, *results.split("/"))))
    full: dict[str, Any] = {}
    for event_type, frame in present.items():
        rows = frame.count()
        report.rows[event_type] = rows
        previous = day_events(spark, lake, event_type, day - timedelta(days=1))
        expected = None
        before = previous.count() if previous is not None else 0
        # Freshness and volume mean little on sparse streams: judged from trend_min_rows rows up.
        if before >= trend_min_rows:
            expected = (int(before * (1 - volume_tolerance)), int(before * (1 + volume_tolerance)) + 1)
        fresh = fresh_after if rows >= trend_min_rows else None
        suite = context.suites.add(contract_suite(event_type, expected, fresh))
        batch = assets.add_dataframe_asset(event_type).add_batch_definition_whole_dataframe("day")
        result = _validate(context, batch.get_batch(batch_parameters={"dataframe": frame}), suite)
        full[event_type] = result.to_json_dict()
        failed = [_describe(r) for r in result.results if not r.success]
        if failed:
            report.passed = False
            report.failures[event_type] = failed
    written = {"day": report.day, "passed": report.passed, "suites": full}
    put_file(lake, results, json.dumps(written, indent=1, default=str).encode())  # whole, or not at all
    return report


def _validate(context: Any, batch: Any, suite: Any) -> Any:
    """``suite`` on ``batch``: whether each check passed, and the details (unexpected counts, sample
    values, observed values) of those that failed. Asking only pass or fail first spares every
    passing column check its own scan for sample values, a Spark job each; the failed ones are
    validated again in full, and their results take the place of the first ones."""
    import great_expectations as gx

    result = batch.validate(suite, result_format="BOOLEAN_ONLY")
    failing = [r.expectation_config for r in result.results if not r.success]
    if not failing:
        return result
    details = context.suites.add(
        gx.ExpectationSuite(name=f"{suite.name}.failed", expectations=[copy.copy(c.to_domain_obj()) for c in failing])
    )
    detailed = {_key(r.expectation_config): r for r in batch.validate(details).results}
    result.results = [r if r.success else detailed[_key(r.expectation_config)] for r in result.results]
    return result


def _key(config: Any) -> str:
    """An expectation's type and arguments, to pair its two results."""
    return str(config.type) + json.dumps(config.kwargs, sort_keys=True, default=str)


def check_output(frame: DataFrame, kind: str) -> list[str]:
    """Checks on a job's output before it is published: the failed checks, empty when all pass.

    ``kind``: ``profiles`` (one row per user, shares and ratios in [0, 1], counts >= 0) or
    ``embeddings`` (one row per user, an embedding, at least one token).
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    suite = gx.ExpectationSuite(name=f"output.{kind}")
    suite.add_expectation(gx.expectations.ExpectColumnValuesToNotBeNull(column="user_id"))
    suite.add_expectation(gx.expectations.ExpectColumnValuesToBeUnique(column="user_id"))
    suite.add_expectation(gx.expectations.ExpectTableRowCountToBeBetween(min_value=1))
    if kind == "profiles":
        for column in frame.columns:
            if column.endswith(("_share", "_ratio")):
                suite.add_expectation(
                    gx.expectations.ExpectColumnValuesToBeBetween(column=column, min_value=0, max_value=1)
                )
            elif column.startswith("events_"):
                suite.add_expectation(gx.expectations.ExpectColumnValuesToBeBetween(column=column, min_value=0))
    else:
        suite.add_expectation(gx.expectations.ExpectColumnValuesToNotBeNull(column="embedding"))
        suite.add_expectation(gx.expectations.ExpectColumnValuesToBeBetween(column="tokens", min_value=1))
    suite = context.suites.add(suite)
    asset = context.data_sources.add_spark("output").add_dataframe_asset(kind)
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame})
    return [_describe(r) for r in _validate(context, batch, suite).results if not r.success]


def _read(spark: SparkSession, location: str) -> DataFrame:
    return spark.read.parquet(location)


def _describe(result: Any) -> str:
    config = result.expectation_config
    column = config.kwargs.get("column")
    detail = result.result or {}
    error = (result.exception_info or {}).get("exception_message")
    if error:
        return f"{config.type.removeprefix('expect_')} column={column} could not run: {error}"
    observed = detail.get("observed_value")
    unexpected = detail.get("unexpected_count")
    parts = [config.type.removeprefix("expect_")]
    if column:
        parts.append(f"column={column}")
    if unexpected:
        parts.append(f"unexpected={unexpected}")
        sample = detail.get("partial_unexpected_list")
        if sample:
            parts.append(f"e.g. {sample[:3]}")
    elif observed is not None:
        parts.append(f"observed={observed}")
    return " ".join(str(p) for p in parts)


def main(argv: list[str]) -> int:
    """spark-submit entry point: quality.py --lake DIR --date YYYY-MM-DD (exit 1 when the gate fails)."""
    parser = argparse.ArgumentParser(prog="quality.py", description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True, type=job_uri_lake)
    parser.add_argument("--date", required=True, type=date.fromisoformat)
    parser.add_argument("--freshness-hours", type=float, default=6.0)
    parser.add_argument("--volume-tolerance", type=float, default=0.5)

    def gate(spark: SparkSession, a: argparse.Namespace) -> tuple[dict[str, Any], int]:
        report = run_quality(spark, a.lake, a.date, a.freshness_hours, a.volume_tolerance)
        print(report.summary())  # stdout: spark-submit's stderr is full of Spark's own logging
        result = {"passed": report.passed, "date": report.day, "rows": report.rows, "results": report.results_path}
        return result, 0 if report.passed else 1

    return run_job(parser, argv, gate, lease="argus batch quality")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
