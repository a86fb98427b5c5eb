"""Linux processes as ``/proc`` lists them: enough to find a run's process tree and group."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessStat:
    pid: int
    state: str  # R, S, D, Z (zombie), X (dead), ...
    parent: int
    group: int
    started: int = 0  # clock ticks after boot: with the pid, names one process even when pids are reused
    cpu_s: float = 0.0  # user plus system CPU time so far


def process_stats() -> Iterator[ProcessStat]:
    """Every live process's pid, state, parent, group, start and CPU time; processes gone while reading are skipped."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ", from proc(5)'s field 3 (state)
        state, parent, group = fields[:3]
        cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime and stime
        yield ProcessStat(int(entry.name), state, int(parent), int(group), int(fields[19]), cpu_s)
