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
    from argus.jobs.alert_blocks import read_alerts

    return {name: [alert.alert_id for alert in read_alerts(lake, [(name, day)])] for name in DETECTORS}


def _published(lake: Path, day: date) -> dict[str, Any]:
    """Every published output of ``day``: each table by (Delta version the manifest names, rows of ``day``),
    each alert file by the file the manifest names, model pointers by (inode, mtime), which a swap changes."""
    from argus.jobs.alert_blocks import alerts_key
    from argus.jobs.lake import latest_manifest, read_pandas

    manifest = latest_manifest(lake)
    assert manifest is not None
    outputs: dict[str, Any] = {}
    for table in ["profiles", "embeddings", *(f"scores/detector={name}" for name in DETECTORS)]:
        rows = read_pandas(lake, table, day, columns=["user_id"])
        outputs[table] = (manifest.tables[table], 0 if rows is None else len(rows))
    outputs.update({alerts_key(name, day): manifest.files[alerts_key(name, day)] for name in DETECTORS})
    pointers = [lake / "models" / name / "CURRENT" for name in DETECTORS]
    outputs.update({str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in pointers})
    return outputs


def _alert_runs(lake: Path) -> tuple[set[str], set[str]]:
    """The alert run folders in the lake and those a manifest names, relative to the lake."""
    from argus.jobs.lake import manifests

    runs = {p.parent.relative_to(lake).as_posix() for p in (lake / "alerts").glob("detector=*/date=*/run=*/part-*")}
    named = {f.rsplit("/", 1)[0] for m in manifests(lake) for f in m.files.values()}
    return runs, named


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
    runs, named = _alert_runs(lake)
    assert runs == named and len(runs) == 2 * len(DETECTORS)  # a file per night and detector, each published
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
    assert all(after[p] != before[p] for p in before if not p.endswith("CURRENT"))  # a new version or file each
    tables = [p for p in before if not p.startswith((str(lake), "alerts/"))]
    assert all(after[t][1] == before[t][1] > 0 for t in tables)  # the date replaced, not appended
    rescored = _scores(lake, "evaders", LAST)
    pd.testing.assert_frame_equal(rescored, scores)


def test_a_crash_mid_chain_leaves_the_previous_night_and_models_in_place(
    spark: object, backfilled: tuple[Path, list[dict[str, Any]], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import argus.jobs.score
    from argus.jobs.nightly import run_nightly

    lake, _, _ = backfilled
    before, before_ids = _published(lake, LAST), _alert_ids(lake, LAST)
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
    assert _published(lake, LAST) == before and _alert_ids(lake, LAST) == before_ids
    assert {name: (lake / "models" / name / "CURRENT").read_text() for name in DETECTORS} == versions
    runs, named = _alert_runs(lake)
    assert runs == named  # the alert files trolls and evaders wrote before the crash went with the run


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


def test_every_batch_job_takes_an_object_store_lake_as_a_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """`argus batch nightly|profile|embed|score --lake s3a://...` -> the job's arguments -> its ``--lake``, a URI
    still (and score's ``--model``), without Spark."""
    import shlex

    from typer.testing import CliRunner

    import argus.jobs.embed
    import argus.jobs.nightly
    import argus.jobs.profiles
    import argus.jobs.score
    from argus.cli import app

    lake, model = "s3a://bucket/lake", "s3a://bucket/lake/models/fraud/fraud-0123456789ab"
    commands = {
        argus.jobs.nightly: ["batch", "nightly", "--skip-ingest", "--date", str(LAST)],
        argus.jobs.profiles: ["batch", "profile", "--date", str(LAST)],
        argus.jobs.embed: ["batch", "embed", "--date", str(LAST)],
        argus.jobs.score: ["batch", "score", "--detector", "fraud", "--date", str(LAST), "--model", model],
    }
    parsed: list[Any] = []

    def run_job(parser: Any, argv: list[str], work: Any, lease: str | None = None) -> int:  # the arguments only
        parsed.append(parser.parse_args(argv))
        return 0

    for job, command in commands.items():
        printed = CliRunner().invoke(app, [*command, "--lake", lake, "--print-command"])
        assert printed.exit_code == 0, printed.output
        argv = shlex.split(printed.output.strip().splitlines()[-1])
        script = f"/{job.__name__.rsplit('.', 1)[-1]}.py"
        monkeypatch.setattr(job, "run_job", run_job)
        job.main(argv[next(n for n, arg in enumerate(argv) if arg.endswith(script)) + 1 :])
        assert parsed[-1].lake == lake, job.__name__
    assert parsed[-1].model == model
    wrong = CliRunner().invoke(app, [*commands[argus.jobs.score], "--model", "ftp://host/model", "--lake", lake])
    assert wrong.exit_code != 0 and "--model ftp://host/model: unknown scheme ftp://" in str(wrong.exception)


def test_the_chain_publishes_into_a_uri_lake_and_no_fit_scores_with_its_store_models(
    spark: object, tmp_path: Path
) -> None:
    from argus.detectors.store import ModelStore
    from argus.jobs.lake import latest_manifest, read_pandas
    from argus.jobs.nightly import run_nightly

    root = tmp_path / "lake"
    write_world(World(WorldConfig(users=60, days=2, seed=5, events_per_user_day=15.0, profile="dense")), root)
    lake = f"file://{root}"  # a URI, so the object-store code paths run: Hadoop FS, pyarrow FS, delta-rs
    detectors = ["trolls", "evaders"]
    fitted: list[dict[str, Any]] = []
    summary, code = run_nightly(spark, lake, [LAST], detectors, days=2, feature_days=2, report=fitted.append)  # type: ignore[arg-type]
    assert code == 0 and summary["dates"] == [str(LAST)] and summary["lake"] == lake
    users = {s["step"]: s["users"] for s in fitted if s["step"] in ("profiles", "embeddings")}
    scored = {s["detector"]: s for s in fitted if s["step"] == "score"}
    manifest = latest_manifest(lake)
    assert manifest is not None and manifest.name == f"nightly-{LAST}"
    for table, rows in [*users.items(), *((f"scores/detector={n}", s["users"]) for n, s in scored.items())]:
        published = read_pandas(lake, table, LAST, columns=["user_id"])
        assert published is not None and len(published) == rows > 40, table
    store = ModelStore(f"{lake}/models")
    for name, step in scored.items():
        assert step["fit_users"] > 0 and step["model"] == f"{lake}/models/{name}/{step['model_version']}"
        assert store.current_version(name) == step["model_version"]
    before = {name: read_pandas(lake, f"scores/detector={name}", LAST) for name in detectors}

    loaded: list[dict[str, Any]] = []
    summary, code = run_nightly(spark, lake, [LAST], detectors, fit=False, days=2, feature_days=2, report=loaded.append)  # type: ignore[arg-type]
    assert code == 0
    rescored = {s["detector"]: s for s in loaded if s["step"] == "score"}
    for name in detectors:
        assert rescored[name]["fit_users"] == 0  # nothing fitted: the store's current model
        assert rescored[name]["model_version"] == scored[name]["model_version"]
        after = read_pandas(lake, f"scores/detector={name}", LAST)
        assert before[name] is not None and after is not None
        pd.testing.assert_frame_equal(
            after.sort_values("user_id", ignore_index=True), before[name].sort_values("user_id", ignore_index=True)
        )
