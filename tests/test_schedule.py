"""`argus schedule` against a stand-in `crontab` command: the user's real crontab is never touched."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from argus.schedule import BEGIN, END, NightlyCron, ScheduleError, check_schedule, install, remove, show

# Reads and writes the table in $FAKE_CRONTAB, answering like cron's crontab: -l, or - (stdin).
FAKE_CRONTAB = """#!/bin/sh
case "$1" in
  -l) if [ -f "$FAKE_CRONTAB" ]; then cat "$FAKE_CRONTAB"; else echo "no crontab for tester" >&2; exit 1; fi ;;
  -) cat > "$FAKE_CRONTAB" ;;
  *) echo "usage: crontab -l | crontab -" >&2; exit 1 ;;
esac
"""
OTHER_LINES = ["MAILTO=ops@example.com", "0 * * * * /usr/bin/backup --quick"]


@pytest.fixture
def crontab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH starts with a folder holding the stand-in crontab; returns the table's file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "crontab").write_text(FAKE_CRONTAB)
    (bin_dir / "crontab").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    table = tmp_path / "table"
    monkeypatch.setenv("FAKE_CRONTAB", str(table))
    return table


def _fake_argus(tmp_path: Path) -> Path:
    """An `argus` that records its arguments, one per line, to calls.txt beside it."""
    path = tmp_path / "venv" / "bin" / "argus"
    path.parent.mkdir(parents=True)
    calls = path.parent / "calls.txt"
    path.write_text(
        f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done >> {calls}\necho "$1 done"\n'
        '[ "$1" = batch ] && [ -n "$NIGHT_FAILS" ] && exit 1\nexit 0\n'
    )
    path.chmod(0o755)
    return path


def _run_as_cron(line: str, env: dict[str, str]) -> int:
    """Run a crontab line's command the way cron does: fields off, '\\%' -> '%', /bin/sh, a bare environment."""
    command = line.split(None, 5)[5].replace("\\%", "%")
    return subprocess.run(["/bin/sh", "-c", command], env=env, timeout=60).returncode


def test_install_is_idempotent_and_keeps_other_lines(crontab: Path, tmp_path: Path) -> None:
    crontab.write_text("\n".join(OTHER_LINES) + "\n")
    lake = tmp_path / "lake"
    entry = NightlyCron(lake, master="local[2]", argus=_fake_argus(tmp_path), workdir=tmp_path)
    block, replaced = install(entry)
    assert not replaced and block[0] == BEGIN and block[-1] == END
    again, replaced = install(NightlyCron(lake, at="15 2 * * *", argus=entry.argus, workdir=tmp_path))
    assert replaced
    lines = crontab.read_text().splitlines()
    assert lines[:2] == OTHER_LINES
    assert lines.count(BEGIN) == 1 and lines.count(END) == 1
    assert show() == again and again[1].startswith("15 2 * * * ")


@pytest.mark.parametrize("night_fails", [False, True])
def test_the_entry_runs_the_nightly_chain_for_yesterday(crontab: Path, tmp_path: Path, night_fails: bool) -> None:
    argus = _fake_argus(tmp_path)
    lake, reports = tmp_path / "my lake", tmp_path / "reports"
    entry = NightlyCron(
        lake, master="local[2]", report_dir=reports, alerts=True, bootstrap="broker:9092", argus=argus, workdir=tmp_path
    )
    block, _ = install(entry)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    status = _run_as_cron(block[1], {"HOME": str(tmp_path), **({"NIGHT_FAILS": "1"} if night_fails else {})})
    assert status == (1 if night_fails else 0)  # the night's status, after the report was written anyway
    calls = (argus.parent / "calls.txt").read_text().splitlines()
    nightly = ["batch", "nightly", "--date", yesterday, "--lake", str(lake), "--master", "local[2]", "--alerts"]
    # After a published night only: old Delta files go, the last week's versions (168 h) stay.
    vacuum = ["lake", "vacuum", "--lake", str(lake), "--retain-hours", "168", "--no-dry-run"]
    report = ["report", "--date", yesterday, "--lake", str(lake), "--out", f"{reports}/argus-report-{yesterday}.html"]
    assert calls == nightly + ([] if night_fails else vacuum) + report
    logged = "batch done\nreport done\n" if night_fails else "batch done\nlake done\nreport done\n"
    assert (lake / "_logs" / "cron-nightly.log").read_text() == logged
    assert "KAFKA_BOOTSTRAP=broker:9092" in block[1] and "+\\%F" in block[1]


def test_the_vacuum_step_keeps_at_least_a_week_or_is_left_out(crontab: Path, tmp_path: Path) -> None:
    argus = _fake_argus(tmp_path)
    without = NightlyCron(tmp_path / "lake", argus=argus, workdir=tmp_path, vacuum_retain_hours=None)
    assert "lake vacuum" not in without.command()
    longer = NightlyCron(tmp_path / "lake", argus=argus, workdir=tmp_path, vacuum_retain_hours=720)
    assert "lake vacuum --lake " in longer.command() and "--retain-hours 720 --no-dry-run" in longer.command()
    with pytest.raises(ScheduleError, match="--vacuum-retain-hours 24: keep at least 168"):
        NightlyCron(tmp_path / "lake", argus=argus, workdir=tmp_path, vacuum_retain_hours=24)


def test_remove_deletes_only_our_block(crontab: Path, tmp_path: Path) -> None:
    assert show() is None and remove() is False  # no crontab yet
    crontab.write_text("\n".join(OTHER_LINES) + "\n")
    install(NightlyCron(tmp_path / "lake", argus=_fake_argus(tmp_path)))
    assert remove() is True
    assert crontab.read_text().splitlines() == OTHER_LINES
    assert show() is None and remove() is False


def test_schedules_are_checked() -> None:
    for good in ("30 1 * * *", "*/15 0-6 * * mon-fri", "0 2 1,15 * *", "@daily"):
        check_schedule(good)
    for bad in ("30 1 * *", "every night", "30 1 * * * *", "@sometimes"):
        with pytest.raises(ScheduleError, match="--at"):
            check_schedule(bad)


def _argus(*args: str, path: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path}
    return subprocess.run(
        [sys.executable, "-c", "from argus.cli import main; main()", "schedule", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_schedule_commands(crontab: Path, tmp_path: Path) -> None:
    path = os.environ["PATH"]
    installed = _argus("install", "--lake", str(tmp_path / "lake"), "--at", "0 3 * * *", path=path)
    assert installed.returncode == 0, installed.stderr
    assert "batch nightly --date" in installed.stdout and "0 3 * * *" in installed.stdout
    assert "lake vacuum --lake" in installed.stdout and "--retain-hours 168 --no-dry-run" in installed.stdout
    no_vacuum = _argus("install", "--lake", str(tmp_path / "lake"), "--no-vacuum", path=path)
    assert no_vacuum.returncode == 0 and "lake vacuum" not in no_vacuum.stdout, no_vacuum.stderr
    too_short = _argus("install", "--vacuum-retain-hours", "24", path=path)
    assert too_short.returncode == 2 and "keep at least 168" in too_short.stderr
    installed = _argus("install", "--lake", str(tmp_path / "lake"), "--at", "0 3 * * *", path=path)
    shown = _argus("show", path=path)
    assert shown.returncode == 0 and shown.stdout == installed.stdout
    assert _argus("remove", path=path).returncode == 0
    assert _argus("show", path=path).returncode == 1
    bad = _argus("install", "--at", "nightly", path=path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--at 'nightly'" in bad.stderr
    # Without any crontab command: one line saying what to install.
    python_only = str(Path(sys.executable).parent)
    missing = _argus("show", path=python_only)
    assert missing.returncode == 2 and "install cron" in missing.stderr and "Traceback" not in missing.stderr
