"""The command line: help everywhere, one-line user errors, and the generate/validate paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from argus.cli import app
from tests.cli_run import run_argus

runner = CliRunner()


def _commands(group, prefix=()):  # type: ignore[no-untyped-def]
    for name, command in getattr(group, "commands", {}).items():
        yield (*prefix, name)
        yield from _commands(command, (*prefix, name))


@pytest.mark.parametrize("path", [(), *_commands(get_command(app))], ids=lambda p: " ".join(p) or "argus")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


_argus = run_argus


def test_user_mistakes_get_one_line_and_exit_2() -> None:
    for args, message in [
        (["generate"], "--out DIR, --kafka"),
        (["generate", "--out", "x", "--format", "xml"], "parquet or jsonl"),
        (["generate", "--out", "x", "--start", "tomorrow"], "--start must be a date as YYYY-MM-DD"),
        (["generate", "--out", "x", "--profile", "sparse"], "realistic or dense"),
        (["schemas", "check", "/no/such/file.jsonl"], "does not exist"),
    ]:
        result = _argus(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_unreachable_kafka_is_one_line(tmp_path: Path) -> None:
    import os

    from argus.infra.broker import free_port

    env = {**os.environ, "KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    result = _argus("validate", "--idle-timeout", "1", env=env)
    assert result.returncode == 2
    assert "no Kafka broker answers" in result.stderr and "Traceback" not in result.stderr


def test_bad_config_file_is_one_line(tmp_path: Path) -> None:
    import os

    bad = tmp_path / "argus.toml"
    bad.write_text("[kafka\nbootstrap = ")
    result = _argus("validate", env={**os.environ, "ARGUS_CONFIG": str(bad)})
    assert result.returncode == 2 and "not valid TOML" in result.stderr


def test_generate_to_jsonl_then_check_it(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "generate",
            "--users",
            "60",
            "--days",
            "1",
            "--events-per-user-day",
            "10",
            "--out",
            str(tmp_path),
            "--format",
            "jsonl",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    files = sorted(tmp_path.glob("events/event_type=*/date=*/part-00000.jsonl"))
    assert len(files) == 5
    total = sum(len(f.read_bytes().splitlines()) for f in files)
    assert total == summary["events"]
    check = runner.invoke(app, ["schemas", "check", str(files[0])])
    assert check.exit_code == 0, check.output
    assert json.loads(check.output.strip().splitlines()[-1])["rejected"] == 0


def test_schemas_check_counts_rejects(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"event_type": "chat"}\nnot json\n')
    result = runner.invoke(app, ["schemas", "check", str(path)])
    assert result.exit_code == 1
    assert json.loads(result.output.strip().splitlines()[-1])["by_reason"] == {"missing_field": 1, "not_json": 1}


@pytest.mark.kafka
def test_generate_to_kafka_and_validate(kafka_bootstrap: str) -> None:
    from argus.infra.topics import ensure_topics, topic_sizes

    ensure_topics(kafka_bootstrap)
    before = topic_sizes(kafka_bootstrap)
    result = runner.invoke(
        app,
        [
            "generate",
            "--users",
            "60",
            "--days",
            "1",
            "--events-per-user-day",
            "10",
            "--kafka",
            "--bad-records",
            "10",
            "--bootstrap",
            kafka_bootstrap,
        ],
    )
    assert result.exit_code == 0, result.output
    produced = json.loads(result.output.strip().splitlines()[-1])["produced"]
    after = topic_sizes(kafka_bootstrap)
    grown = sum(after[t]["records"] - before[t]["records"] for t in after if t.startswith("events."))
    assert grown == produced
    status = runner.invoke(app, ["kafka", "status", "--json", "--bootstrap", kafka_bootstrap])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["topics"]["events.chat"]["records"] == after["events.chat"]["records"]
