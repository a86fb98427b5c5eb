"""Linux processes as ``/proc`` lists them: enough to find a run's process tree and group, and to tell
whether a pid still names the process that held it (the one reader of ``/proc/<pid>/stat``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")
GONE_STATES = ("Z", "X")  # a zombie (exited, not reaped yet) or dead process runs nothing


@dataclass(frozen=True)
class ProcessStat:
    pid: int
    state: str  # R, S, D, Z (zombie), X (dead), ...
    parent: int
    group: int
    started: int = 0  # clock ticks after boot: with the pid, names one process even when pids are reused
    cpu_s: float = 0.0  # user plus system CPU time so far


def process_stat(pid: int) -> ProcessStat | None:
    """The process's pid, state, parent, group, start and CPU time; None when there is no such process."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ", from proc(5)'s field 3 (state)
    state, parent, group = fields[:3]
    cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime and stime
    return ProcessStat(pid, state, int(parent), int(group), int(fields[19]), cpu_s)


def process_stats() -> Iterator[ProcessStat]:
    """Every live process's stat (``process_stat``); processes gone while reading are skipped."""
    for entry in os.scandir(PROC):
        if entry.name.isdigit() and (stat := process_stat(int(entry.name))) is not None:
            yield stat


def is_running(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` names a running process (a zombie does not) and, given ``started`` (its
    ``ProcessStat.started``), the one that started then: a pid reused by a later process is not it."""
    if not PROC.is_dir():  # no procfs (not Linux): signal 0 tells whether the pid is taken, nothing more
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process
        return True
    stat = process_stat(pid)
    return stat is not None and stat.state not in GONE_STATES and started in (None, stat.started)
