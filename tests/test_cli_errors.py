"""User mistakes and useless runs: one line naming the option, a non-zero exit, never a traceback;
progress on stderr only on a terminal; the JVM's noise in a log file."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from argus.progress import advance, step, working
from tests.cli_run import one_line_error, run_argus

# Deep enough that an error naming it is longer than a pipe's 80 columns: it must stay one line.
LONG = "a-folder-with-a-name-long-enough-to-wrap-at-eighty-columns-if-anything-wrapped-it"


_argus = run_argus


_one_line_error = one_line_error


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-day world: too short for a 14-day churn horizon."""
    out = tmp_path_factory.mktemp("w")
    result = _argus(
        "generate",
        "--users",
        "60",
        "--days",
        "3",
        "--profile",
        "dense",
        "--events-per-user-day",
        "10",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    return out


def test_out_pointing_at_a_folder(world: Path, tmp_path: Path) -> None:
    folder = tmp_path / LONG
    folder.mkdir()
    line = _one_line_error(_argus("detect", "trolls", "--events", str(world), "--out", str(folder)), "--out", "folder")
    assert str(folder) in line  # the whole path, unbroken


def test_out_under_a_file(world: Path, tmp_path: Path) -> None:
    (tmp_path / "scores.csv").write_text("")
    result = _argus("detect", "trolls", "--events", str(world), "--out", str(tmp_path / "scores.csv" / "x.csv"))
    _one_line_error(result, "--out", "is a file, not a folder")


def test_save_model_that_is_a_file(world: Path, tmp_path: Path) -> None:
    (tmp_path / "model").write_text("")
    result = _argus(
        "detect",
        "trolls",
        "--events",
        str(world),
        "--out",
        str(tmp_path / "s.csv"),
        "--save-model",
        str(tmp_path / "model"),
    )
    _one_line_error(result, "--save-model", "is a file")
    assert not (tmp_path / "s.csv").exists()  # refused before the fit


def test_bad_dates_name_their_option(world: Path, tmp_path: Path) -> None:
    churn = _argus("detect", "churn", "--events", str(world), "--out", str(tmp_path / "c.csv"), "--as-of", "2026/10/04")
    _one_line_error(churn, "--as-of", "YYYY-MM-DD", "2026/10/04")
    generate = _argus("generate", "--out", str(tmp_path / "w"), "--start", "10/01/2026")
    _one_line_error(generate, "--start", "YYYY-MM-DD", "10/01/2026")


@pytest.mark.parametrize("as_of", ["2026-09-01", "2026-12-01"])
def test_as_of_outside_the_events(world: Path, tmp_path: Path, as_of: str) -> None:
    result = _argus("detect", "churn", "--events", str(world), "--out", str(tmp_path / "c.csv"), "--as-of", as_of)
    _one_line_error(result, f"--as-of {as_of}", "outside the events", "2026-10-01 to 2026-10-03")
    assert not (tmp_path / "c.csv").exists()


def test_churn_on_a_short_world_warns_and_exits_1(world: Path, tmp_path: Path) -> None:
    result = _argus("detect", "churn", "--events", str(world), "--out", str(tmp_path / "c.csv"))
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["model"] == "prior"  # the summary is still printed
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "no horizon to learn from" in warning[0], result.stderr
    assert "Traceback" not in result.stderr


def test_alerts_with_no_broker_fail_before_the_fit(world: Path, tmp_path: Path) -> None:
    from argus.infra.broker import free_port

    out = tmp_path / "t.csv"
    result = _argus(
        "detect",
        "trolls",
        "--events",
        str(world),
        "--out",
        str(out),
        "--alerts",
        "--bootstrap",
        f"127.0.0.1:{free_port()}",
    )
    _one_line_error(result, "no Kafka broker answers", "argus kafka up")
    assert not out.exists()


def test_broker_down_commands(tmp_path: Path) -> None:
    from argus.infra.broker import free_port

    env = {**os.environ, "KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    _one_line_error(_argus("validate", env=env), "no Kafka broker answers")
    status = _argus("kafka", "status", "--json", env=env)
    assert status.returncode == 1 and "Traceback" not in status.stderr
    assert json.loads(status.stdout) == {"bootstrap": env["KAFKA_BOOTSTRAP"], "reachable": False, "topics": {}}


# --- progress ------------------------------------------------------------------------------------


def test_steps_show_on_a_terminal_only() -> None:
    shown = io.StringIO()
    with working("detect fraud", Console(file=shown, force_terminal=True, width=120)):
        step("fitting on 2,000 users", total=4)
        advance(2)
    assert "detect fraud: fitting on 2,000 users" in shown.getvalue()
    assert "step 1" in shown.getvalue() and "2/4" in shown.getvalue()

    piped = io.StringIO()
    with working("detect fraud", Console(file=piped, force_terminal=False)):
        step("fitting")
    assert piped.getvalue() == ""
    step("outside any display")  # a library call with nobody watching does nothing
    advance()


# --- the JVM's output ---------------------------------------------------------------------------


def test_jvm_output_goes_to_the_log(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from argus.infra.spark import jvm_output_to

    log = tmp_path / "logs" / "spark.log"
    with jvm_output_to(log):  # a child started here inherits the log as stdout and stderr
        subprocess.run(["sh", "-c", "echo 'WARN NativeCodeLoader' >&2; echo 'netlib-blas: JNI_OnLoad'"], check=True)
    print("after")
    captured = capfd.readouterr()
    assert "WARN" not in captured.err and "netlib" not in captured.out
    assert captured.out == "after\n"
    assert log.read_text().splitlines() == ["WARN NativeCodeLoader", "netlib-blas: JNI_OnLoad"]
