"""The nightly chain: one spark-submit for every step and date, all-or-nothing per date, reruns identical."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from argus.world.config import WorldConfig
from argus.world.simulate import World
from argus.world.sinks import write_world

FIRST, LAST = date(2026, 10, 1), date(2026, 10, 2)
DETECTORS = ["trolls", "evaders", "fraud", "churn"]


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]], str]:
    """A small lake backfilled over two dates by one `argus batch nightly` (one spark-submit)."""
    from argus.infra.broker import argus_home

    lake = tmp_path_factory.mktemp("lake")
    write_world(World(WorldConfig(users=60, days=2, seed=5, events_per_user_day=15.0, profile="dense")), lake)
    args = ["batch", "nightly", "--from", str(FIRST), "--to", str(LAST), "--lake", str(lake), "--skip-ingest"]
    home = tmp_path_factory.mktemp("home")  # as tests/conftest.py isolates each test: its own home, shared jars
    (home / "cache").symlink_to(argus_home() / "cache", target_is_directory=True)
    env = {**os.environ, "ARGUS_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-c", "from argus.cli import main; main()", *args], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return lake, [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def _alert_ids(lake: Path, day: date) -> dict[str, list[str]]:
    ids = {}
    for name in DETECTORS:
        path = lake / "alerts" / f"detector={name}" / f"date={day}" / "alerts.jsonl"
        ids[name] = [json.loads(line)["alert_id"] for line in path.read_text().splitlines()]
    return ids


def _published(lake: Path, day: date) -> dict[str, tuple[int, int]]:
    """Every published output of ``day``: each table by (Delta version the manifest names, rows of ``day``),
    alert folders and model pointers by (inode, mtime), which a swap changes."""
    from argus.jobs.lake import latest_manifest, read_pandas

    manifest = latest_manifest(lake)
    assert manifest is not None
    outputs: dict[str, tuple[int, int]] = {}
    for table in ["profiles", "embeddings", *(f"scores/detector={name}" for name in DETECTORS)]:
        rows = read_pandas(lake, table, day, columns=["user_id"])
        outputs[table] = (manifest.tables[table], 0 if rows is None else len(rows))
    files = [lake / "alerts" / f"detector={name}" / f"date={day}" for name in DETECTORS]
    files += [lake / "models" / name / "CURRENT" for name in DETECTORS]
    outputs.update({str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in files})
    return outputs


def _scores(lake: Path, name: str, day: date) -> pd.DataFrame:
    from argus.jobs.lake import read_pandas

    scores = read_pandas(lake, f"scores/detector={name}", day)
    assert scores is not None, f"no {name} scores published for {day}"
    return scores.sort_values("user_id", ignore_index=True)


def test_backfill_runs_every_step_of_every_date_in_one_spark_application(
    backfilled: tuple[Path, list[dict[str, Any]], str],
) -> None:
    lake, steps, stderr = backfilled
    per_date = ["quality", "profiles", "embeddings", "score", "score", "score", "score", "publish"]
    assert [s["step"] for s in steps] == per_date * 2 + ["done"]
    assert steps[-1]["dates"] == [str(FIRST), str(LAST)]
    log = (lake / "_logs" / f"nightly-{FIRST}_{LAST}.log").read_text()
    assert log.count("SparkContext: Running Spark version") == 1  # one SparkContext for the whole backfill
    assert steps[-1]["application"].startswith("local-")
    assert "WARN" not in stderr and "Running Spark version" not in stderr  # Spark's noise stays in the log
    scored = {s["detector"]: s for s in steps if s["step"] == "score" and s["date"] == str(LAST)}
    assert list(scored) == DETECTORS
    for name, step in scored.items():
        assert step["users"] > 40 and step["scored"] > 0, step
        scores = _scores(lake, name, LAST)
        assert len(scores) == step["users"] and scores["status"].str.len().gt(0).all()
        assert (lake / "models" / name / "CURRENT").read_text().strip() == step["model_version"]
        assert len(_alert_ids(lake, LAST)[name]) == step["alerts"] == step["flagged"]
    assert not (lake / "_staging").exists() or not any((lake / "_staging").iterdir())
    (lease,) = [json.loads(p.read_text()) for p in (lake / "_lease").iterdir()]  # the chain wrote under its lease
    assert (lease["command"], lease["released"]) == ("argus batch nightly", True)


def test_rerunning_a_date_replaces_its_outputs_with_the_same_alert_ids(
    spark: object, backfilled: tuple[Path, list[dict[str, Any]], str]
) -> None:
    from argus.jobs.nightly import run_nightly

    lake = backfilled[0]
    before_ids = _alert_ids(lake, LAST)
    before = _published(lake, LAST)
    scores = _scores(lake, "evaders", LAST)
    summary, code = run_nightly(spark, lake, [LAST], DETECTORS, report=lambda step: None)  # type: ignore[arg-type]
    assert code == 0 and summary["dates"] == [str(LAST)]
    assert _alert_ids(lake, LAST) == before_ids
    assert sum(map(len, before_ids.values())) > 0
    after = _published(lake, LAST)
    assert all(after[p][0] != before[p][0] for p in before if not p.endswith("CURRENT"))  # a new version each
    tables = [p for p in before if not p.startswith(str(lake))]
    assert all(after[t][1] == before[t][1] > 0 for t in tables)  # the date replaced, not appended
    rescored = _scores(lake, "evaders", LAST)
    pd.testing.assert_frame_equal(rescored, scores)


def test_a_crash_mid_chain_leaves_the_previous_night_and_models_in_place(
    spark: object, backfilled: tuple[Path, list[dict[str, Any]], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import argus.jobs.score
    from argus.jobs.nightly import run_nightly

    lake, _, _ = backfilled
    before = _published(lake, LAST)
    versions = {name: (lake / "models" / name / "CURRENT").read_text() for name in DETECTORS}
    real = argus.jobs.score.score_night

    def crash_on_fraud(*args: Any, **kwargs: Any) -> Any:
        if args[3] == "fraud":
            raise RuntimeError("injected crash while scoring fraud")
        return real(*args, **kwargs)

    monkeypatch.setattr(argus.jobs.score, "score_night", crash_on_fraud)
    with pytest.raises(RuntimeError, match="injected crash"):
        # One day of features instead of 30: every output and model would differ if it were published.
        run_nightly(spark, lake, [LAST], DETECTORS, days=1, feature_days=1, report=lambda step: None)  # type: ignore[arg-type]
    assert _published(lake, LAST) == before
    assert {name: (lake / "models" / name / "CURRENT").read_text() for name in DETECTORS} == versions
    assert not (lake / "_staging" / f"nightly-{LAST}").exists()


def test_a_failing_quality_gate_stops_the_chain_before_anything_is_published(
    spark: object, backfilled: tuple[Path, list[dict[str, Any]], str], tmp_path: Path
) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from argus.jobs.nightly import run_nightly
    from argus.world.sinks import lake_path

    lake = tmp_path / "lake"
    shutil.copytree(backfilled[0], lake, symlinks=True)
    before = _published(lake, FIRST)
    path = lake_path(lake, "payment", FIRST)
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index("amount"), "amount", pc.negate(table["amount"])), path)
    seen: list[dict[str, Any]] = []
    summary, code = run_nightly(spark, lake, [FIRST, LAST], DETECTORS, report=seen.append)  # type: ignore[arg-type]
    assert code == 1 and summary["failed"] == str(FIRST) and summary["dates"] == []
    assert [s["step"] for s in seen] == ["quality"] and "column=amount" in seen[0]["summary"]
    assert _published(lake, FIRST) == before  # nor was the next date run


def test_nightly_user_mistakes_name_the_option(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from argus.cli import app

    runner = CliRunner()
    for args, message in [
        (["--date", "2026/10/02"], "--date must be YYYY-MM-DD"),
        (["--from", "2026-10-03", "--to", "2026-10-01"], "--to 2026-10-01 is before --from 2026-10-03"),
        (["--from", "2026-10-03"], "give --date YYYY-MM-DD, or --from and --to"),
        (["--date", "2026-10-03", "--detectors", "gremlins"], "--detectors: unknown detector 'gremlins'"),
    ]:
        result = runner.invoke(app, ["batch", "nightly", "--skip-ingest", "--lake", str(tmp_path), *args])
        assert result.exit_code != 0
        assert message in str(result.exception), (args, result.exception)


def test_word2vec_partitions_reach_the_embed_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`argus batch nightly --word2vec-partitions N` -> the job's arguments -> run_embed, without Spark."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import argus.jobs.embed
    import argus.jobs.nightly
    import argus.jobs.profiles
    import argus.jobs.quality
    import argus.nightly
    from argus.cli import app

    submitted: list[argus.nightly.NightlyRun] = []
    monkeypatch.setattr(argus.nightly, "run_nightly_submit", lambda run, console: submitted.append(run) or 0)
    args = ["batch", "nightly", "--skip-ingest", "--lake", str(tmp_path), "--date", str(LAST), "--detectors", ""]
    result = CliRunner().invoke(app, [*args, "--word2vec-partitions", "3"])
    assert result.exit_code == 0, result.output
    (run,) = submitted
    job_args = run.job_args()
    assert job_args[job_args.index("--word2vec-partitions") + 1] == "3"

    class Stop(Exception):
        """Ends the chain at the embed step: what follows needs Spark."""

    embedded: list[dict[str, Any]] = []

    def embed(*args: Any, **kwargs: Any) -> dict[str, Any]:
        embedded.append(kwargs)
        raise Stop

    gate = SimpleNamespace(passed=True, rows={}, summary=lambda: "passed")
    monkeypatch.setattr(argus.jobs.quality, "run_quality", lambda *args, **kwargs: gate)
    monkeypatch.setattr(argus.jobs.profiles, "run_profile", lambda *args, **kwargs: {"users": 0})
    monkeypatch.setattr(argus.jobs.embed, "run_embed", embed)
    spark = SimpleNamespace(sparkContext=SimpleNamespace(setLogLevel=lambda level: None, applicationId="local-1"))

    def run_job(parser: Any, argv: list[str], work: Any, lease: str | None = None) -> int:  # less the SparkSession
        assert lease == "argus batch nightly"  # the chain writes the lake under its writer lease
        return int(work(spark, parser.parse_args(argv))[1])

    monkeypatch.setattr(argus.jobs.nightly, "run_job", run_job)
    with pytest.raises(Stop):
        argus.jobs.nightly.main(job_args)
    assert [e["word2vec_partitions"] for e in embedded] == [3]
    with pytest.raises(ValueError, match="--word2vec-partitions 0: give 1 or more"):
        argus.jobs.nightly.main([*job_args, "--word2vec-partitions", "0"])
    result = CliRunner().invoke(app, [*args, "--word2vec-partitions", "0"])
    assert result.exit_code == 2 and "--word2vec-partitions" in result.output
