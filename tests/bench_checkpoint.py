"""What checkpoints cost on Prism: peak runner memory and wall time of a fresh run and of a restart.

The adapters' event log (``tests/test_stream_adapters.py``: churn, evaders, troll messages) on a
broker of its own, three bounded, checkpointed runs of ``argus stream run``, each in its own process:

1. ``fresh``: the whole log, no checkpoint yet;
2. ``first``: a new group over the log's first ``--first-days`` days (default 5; it ends with a
   checkpoint committed);
3. ``restart``: the rest of the log produced, the same group again: it restores the first run's
   checkpoint and reads only the rest (with 5 days: most of the log on restored state, like a
   restart soon after the first checkpoint).

Prints one JSON line: per run the wall time, the Prism runner's peak resident memory (``VmHWM``),
the records read and the checkpoints written; and the newest checkpoint file's size. Run:
``.venv/bin/python -m tests.bench_checkpoint [--first-days N] [--skip-fresh] [--kill]``. With
``--kill`` the first run is unbounded and killed (SIGKILL) after its first commit, as the adapters'
kill test does (with ``--first-days 31``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _prism_peak_kib(root: int) -> int:
    """The largest ``VmHWM`` among the prism processes below ``root`` (0 when none)."""
    peak = 0
    children = {root}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("Name", "").strip() != "prism":
            continue
        parent = int(fields.get("PPid", "0").strip())
        if parent in children or _descends(parent, root):
            peak = max(peak, int(fields.get("VmHWM", "0 kB").split()[0]))
    return peak


def _descends(pid: int, root: int) -> bool:
    while pid > 1:
        if pid == root:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def _run(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd``, sampling its Prism runner's peak memory; its counters, wall time and that peak."""
    started = time.monotonic()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], _prism_peak_kib(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    done.set()
    sampler.join()
    wall = time.monotonic() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({process.returncode}):\n{err[-3000:]}")
    counters = json.loads(out.strip().splitlines()[-1])
    return {
        "wall_s": round(wall, 1),
        "prism_peak_mib": round(peak[0] / 1024, 1),
        "records_read": counters.get("records_read"),
        "checkpoints": counters.get("checkpoints"),
        "alerts": counters.get("alerts"),
    }


def main() -> None:
    import argparse

    import pandas as pd

    from argus.detectors.churn import ChurnDetector
    from argus.detectors.evaders import EvaderDetector
    from argus.detectors.store import ModelStore
    from argus.detectors.trolls import TrollDetector
    from argus.evals.common import world_events
    from argus.infra.broker import LocalBroker, free_port
    from argus.pipelines.checkpoint import committed_offsets
    from argus.world.config import WorldConfig
    from argus.world.simulate import World
    from tests.test_stream_adapters import (
        ADAPTERS,
        DAYS,
        START,
        _produce,
        _topics,
        as_events,
        churn_log,
        evader_and_troll_events,
        evader_history,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-days", type=int, default=5, help="days of the log the first run reads")
    parser.add_argument("--skip-fresh", action="store_true", help="leave out the fresh run over the whole log")
    parser.add_argument(
        "--kill", action="store_true", help="the first run unbounded, killed after its first commit (the kill test)"
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    records = churn_log() + evader_and_troll_events()
    store = ModelStore(home / "models")
    churn = ChurnDetector(horizon_days=7, lookback_days=14, history_days=DAYS, model="gbm", mode="daily")
    store.publish(churn.fit(churn.features(as_events(records))))
    store.publish(EvaderDetector().fit(EvaderDetector().features(evader_history())))
    chat_world = world_events(World(WorldConfig(users=80, days=1, seed=5, troll_fraction=0.1, profile="dense")))
    trolls = TrollDetector()
    store.publish(trolls.fit(trolls.features(chat_world)))

    broker = LocalBroker(home=home / "kafka", port=free_port(), heap="512m")
    broker.up()
    try:
        bootstrap = broker.bootstrap

        def command(prefix: str, topics: list[str], group: str) -> list[str]:
            return [
                sys.executable, "-m", "argus.cli", "stream", "run", "--bounded", "--detectors", ",".join(ADAPTERS),
                "--model-store", str(store.root), "--topics", ",".join(topics), "--bootstrap", bootstrap,
                "--alerts-prefix", f"{prefix}.alerts", "--dlq-topic", f"{prefix}.dlq",
                "--features-prefix", f"{prefix}.features", "--checkpoint-dir", str(home / group),
                "--group", group, "--max-batch", "1000",
            ]  # fmt: skip

        results: dict[str, Any] = {"events": len(records), "first_days": args.first_days}
        if not args.skip_fresh:
            fresh_topics = _topics(bootstrap, "bf")
            _produce(bootstrap, fresh_topics, records)
            results["fresh"] = _run(command("bf", fresh_topics, "bf"))
        split = str(START + pd.Timedelta(days=args.first_days))
        topics = _topics(bootstrap, "br")
        _produce(bootstrap, topics, [r for r in records if str(r["ts"]) < split])
        if args.kill:  # as the kill test does: unbounded, killed after its first commit
            started = time.monotonic()
            unbounded = [a for a in command("br", topics, "br") if a != "--bounded"]
            first = subprocess.Popen(
                [*unbounded, "--unbounded", "--idle-slack", "1e9"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                while first.poll() is None and not any(
                    o for parts in committed_offsets(bootstrap, "br", topics).values() for o in parts.values()
                ):
                    time.sleep(0.5)
            finally:
                os.killpg(first.pid, signal.SIGKILL)
                first.wait()
            results["first"] = {"killed_after_s": round(time.monotonic() - started, 1)}
        else:
            results["first"] = _run(command("br", topics, "br"))
        _produce(bootstrap, topics, [r for r in records if str(r["ts"]) >= split])
        results["restart"] = _run(command("br", topics, "br"))
        sizes = [p.stat().st_size for p in (home / "br").glob("checkpoint-*.pkl")]
        results["checkpoint_file_kib"] = round(max(sizes, default=0) / 1024, 1)
        print(json.dumps(results))
    finally:
        broker.down()
        if not os.environ.get("BENCH_KEEP"):
            subprocess.run(["rm", "-rf", str(home)], check=False)


if __name__ == "__main__":
    main()
