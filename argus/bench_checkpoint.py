"""``argus bench checkpoint``: what checkpoints cost on Prism, in runner memory and wall time, fresh and restarted.

What it does:

1. generates a world of ``users`` accounts over ``days`` days (the realistic profile: sparse users,
   bans, sign-ups, churners), fits the requested streaming detectors on it and publishes them to a
   scratch model store;
2. on a broker (a scratch one unless ``bootstrap`` is given) runs ``argus stream run --bounded``
   with ``--checkpoint-dir``, each run in its own process and session:

   - ``fresh``: the whole log on fresh topics, no checkpoint yet (left out with ``skip_fresh``);
   - ``first``: a new group over the log's first ``first_days`` days; it ends with a checkpoint
     committed. With ``kill`` it runs unbounded instead and is killed (SIGKILL, the whole process
     group) once it has committed offsets, as a crash mid-stream would;
   - ``restart``: the rest of the log produced, the same group again: it restores the first run's
     checkpoint and reads only what lies after the committed offsets.

Printed keys: ``events``, ``users``, ``days``, ``first_days``, ``detectors``; per run (``fresh``,
``first``, ``restart``) ``wall_s``, ``prism_peak_mib`` (the largest ``VmHWM`` of a ``prism`` process
below the run, sampled every half second), ``records_read``, ``checkpoints`` and ``alerts`` (the
run's counters; ``killed_after_s`` instead for a killed first run); ``checkpoint_file_kib`` (the
newest checkpoint file). Interrupted, it stops the runs and the broker it started, as ``argus bench
stream`` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from argus.bench_stream import EVENT_TYPES, _cleanup_on_signals, _create_topics, _delete_topics, _stop_group

__all__ = ["CHECKPOINT_DETECTORS", "BenchCheckpointError", "bench_checkpoint", "check_settings", "world_records"]

# The streaming detectors the benchmark can fit on a world and run (argus stream run --detectors).
CHECKPOINT_DETECTORS = ("trolls", "troll-messages", "churn", "evaders", "fraud")
CHURN_HORIZON_DAYS, CHURN_LOOKBACK_DAYS = 7, 14  # churn's fit needs a horizon and a lookback inside the world
PARTITIONS = 3


class BenchCheckpointError(RuntimeError):
    """The benchmark could not run; the message says why."""


def world_records(users: int, days: int, seed: int) -> pd.DataFrame:
    """Every event of a realistic world as Kafka records, in event-time order: event_type, key, value, t_us."""
    from argus.world.config import WorldConfig
    from argus.world.simulate import World
    from argus.world.sinks import to_json_lines

    parts = []
    for _, tables in World(WorldConfig(users=users, days=days, seed=seed)).days():
        for event_type, table in tables.items():
            if table.num_rows:
                parts.append(
                    pd.DataFrame(
                        {
                            "event_type": event_type,
                            "key": table["user_id"].to_numpy(zero_copy_only=False).astype(str),
                            "value": to_json_lines(table),
                            "t_us": table["ts"].to_numpy().astype("datetime64[us]").astype(np.int64),
                        }
                    )
                )
    return pd.concat(parts, ignore_index=True).sort_values("t_us", kind="stable").reset_index(drop=True)


def _publish_models(store: Path, detectors: Sequence[str], users: int, days: int, seed: int) -> None:
    """Fit each detector the runs need on the benchmark's world and publish it (troll-messages: the trolls model)."""
    from argus.detectors.churn import ChurnDetector
    from argus.detectors.registry import detector_class
    from argus.detectors.store import ModelStore
    from argus.evals.common import world_events
    from argus.world.config import WorldConfig
    from argus.world.simulate import World

    events = world_events(World(WorldConfig(users=users, days=days, seed=seed)))
    names = sorted({"trolls" if d == "troll-messages" else d for d in detectors})
    for name in names:
        if name == "churn":
            detector: Any = ChurnDetector(
                horizon_days=CHURN_HORIZON_DAYS, lookback_days=CHURN_LOOKBACK_DAYS, model="gbm", mode="daily"
            )
        else:
            detector = detector_class(name)()
        detector.fit(detector.features(events))
        ModelStore(store).publish(detector)


def _produce(bootstrap: str, records: pd.DataFrame, topics: dict[str, str]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all", "log_level": 3})
    for event_type, key, value in zip(records["event_type"], records["key"], records["value"], strict=True):
        while True:
            try:
                producer.produce(topics[str(event_type)], value, str(key).encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120):
        raise BenchCheckpointError("the broker did not take every benchmark record within 120 s")


def prism_peak_kib(root: int) -> int:
    """The largest ``VmHWM`` (peak resident memory) among the ``prism`` processes below ``root`` (0: none)."""
    from argus.bench_nightly import processes_below

    peak = 0
    for process in processes_below(root):
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except OSError:
            continue  # it ended between the listing and the read
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Name", "").strip() == "prism":
            peak = max(peak, int(fields.get("VmHWM", "0 kB").split()[0]))
    return peak


@contextmanager
def _sampled(process: subprocess.Popen[Any]) -> Iterator[list[int]]:
    """The Prism runner's peak memory below ``process`` (KiB, in a one-item list), sampled while the block runs."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], prism_peak_kib(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


def _run(cmd: list[str]) -> dict[str, Any]:
    """Run a bounded ``argus stream run``; its counters, wall time and Prism's peak memory."""
    started = time.monotonic()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        with _sampled(process) as peak:
            out, err = process.communicate()
    finally:
        _stop_group(process)  # the runner, should the pipeline have left it (or the benchmark be interrupted)
    wall = time.monotonic() - started
    if process.returncode != 0:
        tail = " | ".join(err.strip().splitlines()[-5:])
        raise BenchCheckpointError(f"argus stream run failed with code {process.returncode}: {tail}")
    counters = json.loads(out.strip().splitlines()[-1])
    return {
        "wall_s": round(wall, 1),
        "prism_peak_mib": round(peak[0] / 1024, 1),
        "records_read": counters.get("records_read"),
        "checkpoints": counters.get("checkpoints"),
        "alerts": counters.get("alerts"),
    }


def _run_until_committed(cmd: list[str], bootstrap: str, group: str, topics: list[str], timeout_s: float) -> float:
    """Run ``cmd`` unbounded; SIGKILL its process group once ``group`` has committed offsets. Seconds it ran."""
    from argus.pipelines.checkpoint import committed_offsets

    started = time.monotonic()
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while process.poll() is None and time.monotonic() - started < timeout_s:
            if any(o for parts in committed_offsets(bootstrap, group, topics).values() for o in parts.values()):
                return round(time.monotonic() - started, 1)
            time.sleep(0.5)
        raise BenchCheckpointError(f"the first run committed no offsets within {timeout_s:.0f} s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a crash: the pipeline and its runner, no time to clean up
        process.wait()


def check_settings(days: int, first_days: int, detectors: Sequence[str]) -> None:
    """Raise ``BenchCheckpointError`` (one line naming the option) for settings the benchmark cannot run."""
    unknown = [d for d in detectors if d not in CHECKPOINT_DETECTORS]
    if unknown or not detectors:
        given = unknown[0] if unknown else ""
        raise BenchCheckpointError(
            f"--detectors: unknown streaming detector {given!r}; use some of {', '.join(CHECKPOINT_DETECTORS)}"
        )
    if not 0 < first_days < days:
        raise BenchCheckpointError(f"--first-days must lie between 1 and --days - 1 ({days - 1}), not {first_days}")
    if "churn" in detectors and days <= CHURN_HORIZON_DAYS + CHURN_LOOKBACK_DAYS:
        need = CHURN_HORIZON_DAYS + CHURN_LOOKBACK_DAYS + 1
        raise BenchCheckpointError(f"--days: churn is fitted on a world of {need} days or more; give --days {need}")


def bench_checkpoint(
    users: int = 500,
    days: int = 30,
    first_days: int = 10,
    detectors: Sequence[str] = ("trolls", "churn", "evaders"),
    skip_fresh: bool = False,
    kill: bool = False,
    bootstrap: str | None = None,
    seed: int = 7,
    timeout_s: float = 600.0,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the benchmark (see the module doc) and return its figures."""
    from argus.bench import scratch_broker

    check_settings(days, first_days, detectors)
    records = world_records(users, days, seed)
    with _cleanup_on_signals(), tempfile.TemporaryDirectory(prefix="argus-bench-checkpoint-", dir=work_dir) as scratch:
        home = Path(scratch)
        _publish_models(home / "models", detectors, users, days, seed)
        with _given(bootstrap) if bootstrap else scratch_broker() as servers:
            runs = _runs(servers, records, list(detectors), first_days, skip_fresh, kill, timeout_s, home)
        newest = max(home.glob("*/checkpoint-*.pkl"), key=lambda p: p.stat().st_mtime, default=None)
        file_kib = round(newest.stat().st_size / 1024, 1) if newest is not None else None
    return {
        "events": len(records),
        "users": users,
        "days": days,
        "first_days": first_days,
        "detectors": ",".join(detectors),
        **runs,
        "checkpoint_file_kib": file_kib,
    }


@contextmanager
def _given(bootstrap: str) -> Iterator[str]:
    yield bootstrap


def _runs(
    bootstrap: str,
    records: pd.DataFrame,
    detectors: list[str],
    first_days: int,
    skip_fresh: bool,
    kill: bool,
    timeout_s: float,
    home: Path,
) -> dict[str, Any]:
    from argus.infra.topics import ALERT_KINDS

    prefix = f"benchckpt{int(time.time() * 1000) % 10**9}"
    made: list[str] = []

    def topics(name: str) -> dict[str, str]:
        """A run's topics (event topics by event type returned; its alert and dead-letter topics made too)."""
        names = {t: f"{prefix}{name}.events.{t}" for t in EVENT_TYPES}
        outputs = [f"{prefix}{name}.dlq", *(f"{prefix}{name}.alerts.{k}" for k in ALERT_KINDS)]
        _create_topics(bootstrap, {t: PARTITIONS for t in names.values()} | dict.fromkeys(outputs, 1))
        made.extend([*names.values(), *outputs])
        return names

    def command(name: str, event_topics: dict[str, str], bounded: bool = True) -> list[str]:
        return [
            sys.executable, "-m", "argus.cli", "stream", "run", "--bounded" if bounded else "--unbounded",
            "--detectors", ",".join(detectors), "--model-store", str(home / "models"),
            "--topics", ",".join(event_topics.values()), "--bootstrap", bootstrap,
            "--alerts-prefix", f"{prefix}{name}.alerts", "--dlq-topic", f"{prefix}{name}.dlq",
            "--checkpoint-dir", str(home / name), "--group", f"{prefix}{name}", "--max-batch", "1000",
            *([] if bounded else ["--idle-slack", "1e9"]),  # unbounded: the watermark stops at the log's newest event
        ]  # fmt: skip

    split_us = int(records["t_us"].min() // 86_400_000_000 + first_days) * 86_400_000_000
    first, rest = records[records["t_us"] < split_us], records[records["t_us"] >= split_us]
    out: dict[str, Any] = {}
    try:
        if not skip_fresh:
            fresh = topics("f")
            _produce(bootstrap, records, fresh)
            out["fresh"] = _run(command("f", fresh))
        resumed = topics("r")
        _produce(bootstrap, first, resumed)
        if kill:
            unbounded = command("r", resumed, bounded=False)
            killed_after = _run_until_committed(unbounded, bootstrap, f"{prefix}r", list(resumed.values()), timeout_s)
            out["first"] = {"killed_after_s": killed_after}
        else:
            out["first"] = _run(command("r", resumed))
        _produce(bootstrap, rest, resumed)
        out["restart"] = _run(command("r", resumed))
    finally:
        _delete_topics(bootstrap, made)
    return out
