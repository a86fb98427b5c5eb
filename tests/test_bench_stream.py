"""``argus bench stream`` interrupted: it stops the broker, the pipeline and Prism it started, and its scratch files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from argus.bench_nightly import processes_below
from argus.infra.procfs import ProcessStat, process_stats

pytestmark = pytest.mark.kafka


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(seen: dict[tuple[int, int], str]) -> dict[tuple[int, int], str]:
    """The processes of ``seen`` (pid, start) still running: the same pid and start time, not a zombie."""
    running = {(p.pid, p.started) for p in process_stats() if p.state not in ("Z", "X")}
    return {key: cmd for key, cmd in seen.items() if key in running}


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
