"""The nightly chain in cron: ``argus schedule install|show|remove``.

The entry is a block of the user's crontab between two marker comments, so ``install`` replaces
it (running it twice leaves one entry), ``show`` prints it and ``remove`` deletes it; every other
line of the crontab stays as it was. The crontab is read with ``crontab -l`` and written with
``crontab -``, so cron's own checks apply.

After a night that succeeded, the entry runs ``argus lake vacuum --no-dry-run`` so replaced Delta
files do not pile up: it keeps every version of the last ``vacuum_retain_hours`` (a week by default,
Delta's own ``deletedFileRetentionDuration``), so the previous seven nights stay readable by time
travel and a reader or writer still working on a version of the last week never loses a file.

Cron starts commands with almost no environment, so the entry carries what the chain needs:
absolute paths (the ``argus`` executable, the lake, the log), the working directory, and
``KAFKA_BOOTSTRAP`` / ``ARGUS_CONFIG`` when they are set. The night to process is yesterday in
UTC, computed when the entry runs (GNU ``date``); ``%`` is escaped as cron requires.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from argus.jobs.lake import DEFAULT_RETAIN_HOURS

MARKER = "argus-nightly"
BEGIN = (
    f"# BEGIN {MARKER}: managed by `argus schedule` (replace: argus schedule install; delete: argus schedule remove)"
)
END = f"# END {MARKER}"
DEFAULT_AT = "30 1 * * *"  # after midnight, once the day's events have landed
_FIELD = re.compile(r"^(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?(,(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?)*$")
_NICKNAMES = ("@daily", "@midnight", "@hourly", "@weekly", "@monthly", "@yearly", "@annually")


class ScheduleError(ValueError):
    """A mistake in the options or a crontab that cannot be read or written; one line for the user."""


@dataclass
class NightlyCron:
    """The cron entry that runs ``argus batch nightly`` for yesterday (UTC) every night."""

    lake: Path
    master: str = "local[2]"
    at: str = DEFAULT_AT
    log: Path | None = None  # default: LAKE/_logs/cron-nightly.log
    report_dir: Path | None = None  # also write the night's HTML report there
    skip_ingest: bool = False
    alerts: bool = False
    bootstrap: str | None = None
    config: Path | None = None
    argus: Path | None = None  # default: the argus executable running now
    workdir: Path | None = None  # default: the current directory
    vacuum_retain_hours: int | None = DEFAULT_RETAIN_HOURS  # None: no vacuum step after the night

    def __post_init__(self) -> None:
        check_schedule(self.at)
        check_retention(self.vacuum_retain_hours)
        self.lake = self.lake.expanduser().resolve()
        self.log = self.log.expanduser().resolve() if self.log else self.lake / "_logs" / "cron-nightly.log"
        if self.report_dir is not None:
            self.report_dir = self.report_dir.expanduser().resolve()
        self.argus = (self.argus or argus_executable()).resolve()
        self.workdir = (self.workdir or Path.cwd()).resolve()
        if self.config is not None:
            self.config = self.config.expanduser().resolve()

    def command(self) -> str:
        """The shell command of the entry, before cron's ``%`` escaping."""
        assert self.argus is not None and self.log is not None and self.workdir is not None
        argus = shlex.quote(str(self.argus))
        lake = shlex.quote(str(self.lake))
        env = [f"PATH={shlex.quote(str(self.argus.parent))}:/usr/local/bin:/usr/bin:/bin"]
        if self.config is not None:
            env.append(f"ARGUS_CONFIG={shlex.quote(str(self.config))}")
        if self.bootstrap:
            env.append(f"KAFKA_BOOTSTRAP={shlex.quote(self.bootstrap)}")
        nightly = f'{argus} batch nightly --date "$D" --lake {lake} --master {shlex.quote(self.master)}'
        if self.skip_ingest:
            nightly += " --skip-ingest"
        if self.alerts:
            nightly += " --alerts"
        if self.vacuum_retain_hours is not None:  # only after a night that published: && keeps a failure's status
            nightly += f" && {argus} lake vacuum --lake {lake} --retain-hours {self.vacuum_retain_hours} --no-dry-run"
        body = nightly
        if self.report_dir is not None:
            # The report is written after a failed night too (it shows the failed gate); the night's status stays.
            out = shlex.quote(str(self.report_dir)) + '/argus-report-"$D".html'
            body = f'{nightly}; status=$?; {argus} report --date "$D" --lake {lake} --out {out}; exit $status'
        return (
            f"cd {shlex.quote(str(self.workdir))} && export {' '.join(env)} && D=$(date -u -d yesterday +%F) && "
            f"mkdir -p {shlex.quote(str(self.log.parent))} && {{ {body}; }} >> {shlex.quote(str(self.log))} 2>&1"
        )

    def lines(self) -> list[str]:
        """The marked block as it goes into the crontab."""
        return [BEGIN, f"{self.at} {self.command().replace('%', chr(92) + '%')}", END]


def argus_executable() -> Path:
    """The ``argus`` console script of this installation (beside the running Python)."""
    beside = Path(sys.executable).parent / "argus"
    if beside.is_file():
        return beside
    found = shutil.which("argus")
    if found is None:
        raise ScheduleError("cannot find the argus executable; install Argus (pip install -e .) and run this again")
    return Path(found)


def check_schedule(at: str) -> None:
    """Five cron fields (minute hour day-of-month month day-of-week) or a nickname such as @daily."""
    fields = at.split()
    if (len(fields) == 1 and fields[0] in _NICKNAMES) or (len(fields) == 5 and all(_FIELD.match(f) for f in fields)):
        return
    raise ScheduleError(
        f"--at {at!r} is not a cron schedule; give five fields like '30 1 * * *' (01:30 every day) or @daily"
    )


def check_retention(hours: int | None) -> None:
    """The vacuum step keeps at least Delta's own retention (a week): VACUUM refuses less anyway, and a
    shorter one would delete files a reader or a writer of the last days may still need."""
    if hours is not None and hours < DEFAULT_RETAIN_HOURS:
        raise ScheduleError(
            f"--vacuum-retain-hours {hours}: keep at least {DEFAULT_RETAIN_HOURS} (a week, Delta's safety check), "
            "or --no-vacuum to leave old files in place"
        )


def _crontab() -> str:
    found = shutil.which("crontab")
    if found is None:
        raise ScheduleError(
            "no crontab command here; install cron (apt-get install cron) or schedule with the Airflow DAG "
            "in infra/schedule/"
        )
    return found


def read_crontab() -> list[str]:
    """The user's crontab as lines; empty when the user has none yet."""
    result = subprocess.run([_crontab(), "-l"], capture_output=True, text=True)
    if result.returncode != 0:
        if "no crontab" in result.stderr.lower():
            return []
        raise ScheduleError(f"crontab -l failed: {result.stderr.strip() or f'exit code {result.returncode}'}")
    return result.stdout.splitlines()


def write_crontab(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n" if lines else ""
    result = subprocess.run([_crontab(), "-"], input=text, capture_output=True, text=True)
    if result.returncode != 0:
        raise ScheduleError(
            f"crontab refused the new table: {result.stderr.strip() or f'exit code {result.returncode}'}"
        )


def _split(lines: list[str]) -> tuple[list[str], list[str] | None]:
    """(the lines outside our block, our block or None); a block without its END marker ends at the file's end."""
    try:
        start = lines.index(BEGIN)
    except ValueError:
        return lines, None
    end = next((i for i in range(start + 1, len(lines)) if lines[i] == END), len(lines) - 1)
    return lines[:start] + lines[end + 1 :], lines[start : end + 1]


def install(entry: NightlyCron) -> tuple[list[str], bool]:
    """Put ``entry`` in the crontab, replacing an earlier one; (the block, whether one was replaced)."""
    others, ours = _split(read_crontab())
    block = entry.lines()
    while others and not others[-1].strip():
        others.pop()
    write_crontab([*others, *([""] if others else []), *block])
    return block, ours is not None


def show() -> list[str] | None:
    """The installed block, or None."""
    return _split(read_crontab())[1]


def remove() -> bool:
    """Delete the block; False when there was none. The rest of the crontab is kept."""
    others, ours = _split(read_crontab())
    if ours is None:
        return False
    while others and not others[-1].strip():
        others.pop()
    write_crontab(others)
    return True
