"""``argus bench stream``: its accounting of lost events, and, interrupted, it stops the broker, the pipeline and
Prism it started, and its scratch files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from argus.bench_nightly import processes_below
from argus.bench_stream import _cpu_spent, _first_cover, cpu_by_part, lost_reasons
from argus.infra.procfs import ProcessStat, process_stats

HOUR_US = 3_600 * 1_000_000


def test_a_fraud_snapshot_covers_the_events_before_its_boundary_not_one_at_it() -> None:
    events = pd.DataFrame({"user_id": ["a", "a", "b"], "t_us": [HOUR_US - 1, HOUR_US, HOUR_US - 1]})
    snapshots = [("a", HOUR_US, 5.0), ("a", 2 * HOUR_US, 7.0), ("b", 2 * HOUR_US, 9.0)]
    # The event at the boundary itself belongs to the next one; b's first snapshot is a later boundary's.
    np.testing.assert_array_equal(_first_cover(events, snapshots, strictly_after=True), [5.0, 7.0, 9.0])
    # Troll snapshots are stamped with the user's last message: one at its time covers it.
    np.testing.assert_array_equal(_first_cover(events, snapshots), [5.0, 5.0, 9.0])


def test_lost_events_are_told_apart_by_when_they_reached_kafka_and_what_output_came() -> None:
    t_us = np.array([600, 1_200, 5_400, 600], dtype=np.int64) * 1_000_000
    acked = np.array([100.0, 110.0, 100.0, np.nan])
    # Someone else's snapshots: at the first hourly boundary, seen at 105 s; none at or after the second.
    snapshots = [("other", HOUR_US, 105.0), ("other", HOUR_US, 104.0)]
    assert lost_reasons(t_us, acked, snapshots, HOUR_US) == [
        "not_in_output_at_its_point",  # in Kafka at 100 s, its boundary's output seen from 104 s without it
        "arrived_after_its_point_was_output",  # in Kafka at 110 s, after that output: late
        "no_output_after_its_point",  # its boundary (2 h) never scored
        "not_acknowledged",
    ]
    # Output for a later point seen earlier also means its point had passed.
    assert lost_reasons(t_us[:1], acked[:1], [*snapshots, ("other", 3 * HOUR_US, 90.0)], HOUR_US) == [
        "arrived_after_its_point_was_output"
    ]
    assert lost_reasons(t_us[:1], acked[:1], [], HOUR_US) == ["no_output_after_its_point"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_cpu_is_split_between_the_pipeline_group_and_this_process_and_counts_only_what_was_spent_between() -> None:
    # A busy child in a session of its own stands in for the pipeline (its process group).
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass"],
        start_new_session=True,
    )
    try:
        before = cpu_by_part(child.pid)
        end = time.process_time() + 0.3
        while time.process_time() < end:  # this process: the bench's part
            pass
        after = cpu_by_part(child.pid)
        child.wait(30)
    finally:
        child.kill()
    parts = {part for part, _ in after.values()}
    assert {"bench", "pipeline"} <= parts and "runner" not in parts
    spent = _cpu_spent(before, after)
    assert 0.25 <= spent["bench"] < 5.0
    assert spent["pipeline"] > 0.0
    # A process seen only at the end counts whole; one seen at both counts the difference.
    assert _cpu_spent({(1, 5): ("broker", 2.0)}, {(1, 5): ("broker", 3.5), (2, 9): ("runner", 1.0)}) == {
        "broker": 1.5,
        "runner": 1.0,
    }


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(seen: dict[tuple[int, int], str]) -> dict[tuple[int, int], str]:
    """The processes of ``seen`` (pid, start) still running: the same pid and start time, not a zombie."""
    running = {(p.pid, p.started) for p in process_stats() if p.state not in ("Z", "X")}
    return {key: cmd for key, cmd in seen.items() if key in running}


@pytest.mark.kafka
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_bench_leaves_no_process_behind(signum: int, tmp_path: Path) -> None:
    from argus.infra.prism import PrismError, fetch_prism

    try:
        fetch_prism()
    except PrismError as exc:
        pytest.skip(f"the Prism runner cannot be built here: {exc}")
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the bench's scratch directories land here
    env.pop("KAFKA_BOOTSTRAP", None)
    bench = subprocess.Popen(
        [sys.executable, "-m", "argus.cli", "bench", "stream", "--events", "1000", "--rate", "20", "--detectors",
         "trolls", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )  # fmt: skip
    seen: dict[tuple[int, int], str] = {}
    try:
        deadline = time.monotonic() + 300
        kinds: set[str] = set()
        while time.monotonic() < deadline and bench.poll() is None and kinds != {"broker", "pipeline", "prism"}:
            below: list[ProcessStat] = processes_below(bench.pid)
            for process in below:
                seen.setdefault((process.pid, process.started), _cmdline(process.pid))
            for cmd in (_cmdline(p.pid) for p in below):
                kinds |= {"broker"} if "kafka.Kafka" in cmd else set()
                kinds |= {"pipeline"} if "stream run" in cmd else set()
                kinds |= {"prism"} if "prism" in cmd.split(" ")[0] else set()
            time.sleep(0.5)
        assert bench.poll() is None, bench.communicate()[1].decode()[-2000:]
        assert kinds == {"broker", "pipeline", "prism"}, f"not all started within 300 s: {kinds}"
        time.sleep(2)  # the pipeline reading, events on their way in
        for process in processes_below(bench.pid):
            seen.setdefault((process.pid, process.started), _cmdline(process.pid))
        os.kill(bench.pid, signum)  # the bench alone, not its group: it must stop its children itself
        _, err = bench.communicate(timeout=180)
        deadline = time.monotonic() + 15  # a SIGKILLed process can take a moment to go
        while _alive(seen) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _alive(seen) == {}
        assert bench.returncode == (128 + signum if signum == signal.SIGTERM else 130), err.decode()[-2000:]
        assert b"Traceback" not in err, err.decode()[-2000:]
        assert not list(tmp_path.glob("argus-bench-*"))  # scratch broker and models removed
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for pid, _ in _alive(seen):
            os.kill(pid, signal.SIGKILL)
