"""Linux processes as ``/proc`` lists them: enough to find a run's process tree and group."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessStat:
    pid: int
    state: str  # R, S, D, Z (zombie), X (dead), ...
    parent: int
    group: int


def process_stats() -> Iterator[ProcessStat]:
    """Every live process's pid, state, parent and group; processes gone while reading are skipped."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        state, parent, group = stat[stat.rindex(")") + 2 :].split()[:3]  # after "pid (comm) "
        yield ProcessStat(int(entry.name), state, int(parent), int(group))
