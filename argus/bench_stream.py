"""``argus bench stream``: the streaming pipeline on Prism, fed at a fixed rate, timed from Kafka in to topics out.

What it does:

1. generates one day of a dense world big enough for ``events`` events, fits the requested
   detectors on a *separate*, smaller world and publishes them to a scratch model store;
2. starts ``argus stream run --unbounded`` in its own process (its own Python, as in production)
   on fresh topics, with feature snapshots on, and waits until a probe record's dead letter
   shows the pipeline is reading;
3. offers the events in event-time order at ``rate`` events/s, then one heartbeat record per
   partition two hours of event time later (so the last windows and fraud boundaries close);
4. reads the alert and feature topics while that runs, noting when each record became visible.

An event counts as *visible* when the first output that covers it is: a troll feature snapshot
of its user at or after its event time (chat), a fraud snapshot of its user at the boundary after
it (payments). Those are the events with a per-event observable output; clicks, account and
moderation events only feed state and are counted in ``events`` and ``events_per_s`` but not in
``latency_*`` or ``lost``.

Printed keys: ``events``, ``offered_per_s``, ``events_per_s`` (events / (last covering output
visible - first event offered)), ``latency_p50_s``, ``latency_p99_s``, ``latency_max_s``,
``checked`` (events with a per-event output), ``lost`` (checked events never covered),
``lost_by_reason`` (``detector:reason`` -> lost events, reasons in ``LOST_REASONS``), ``lost_sample`` (a few
lost events: type, user, event time, partition, offset, reason), ``arrived_late`` (per detector: events Kafka
acknowledged only after output for their point was visible, so the pipeline met them late; such events are
applied late, and the outputs between may differ from a run that met them in time), ``waited_s`` and
``timed_out`` (how long it waited for the last covering output after the heartbeats, and whether ``timeout``
ended the wait),
``alerts``, ``duplicate_alerts`` (alert records minus distinct ids), ``detectors``, ``key_shards``, ``sdk_workers``
(Prism's Python worker processes; see ``pipelines/sdk_workers.py``),
``event_time_speedup`` (event-time seconds per wall second: windows close that much sooner),
``cpu_s`` (CPU seconds from the first event offered to the last covering output, by part: ``pipeline`` the
``argus stream run`` process and its Python workers, ``runner`` Prism, ``broker`` a Kafka JVM on this machine,
``bench`` this process producing and reading; Linux only) and ``cpu_us_per_event`` (their sum per event): on a
shared machine these say what bounds ``events_per_s``.

``alerts`` are counted once no new alert id came for ``ALERTS_QUIET_S`` (alerts pass a stage after the feature
snapshots, so they trail them); the checks for the last covering output read the outputs seen so far in full
only once the newest snapshot of each detector has reached the last event, so the wait costs the machine little.

The replay runs event time far ahead of the wall clock (and months behind it), so the source's rule
for a source wholly at its log end (follow the wall clock minus ``--idle-slack``) is switched off
for it; a partition at its log end still stops holding the watermark, and the heartbeats end the run.

Interrupted (Ctrl-C, SIGTERM, SIGHUP), it stops what it started before exiting: the pipeline's
process group (its Prism runner with it), the scratch broker, the scratch topics and files. Further
signals are ignored while that runs (bounded: 20 s for the pipeline, 60 s for the broker).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from argus.infra.topics import ALERT_KINDS

__all__ = ["BenchStreamError", "bench_stream", "day_records"]

EVENT_TYPES = ("chat", "click", "payment", "account", "moderation")
DENSE_EVENTS_PER_USER_DAY = 100  # what a dense one-day world yields per user, measured
HEARTBEAT_AFTER_US = 2 * 3_600 * 1_000_000
ALERTS_QUIET_S = 5.0  # alerts are counted once none came for this long
NO_IDLE_SLACK_S = 1e9


class BenchStreamError(RuntimeError):
    """The benchmark could not run; the message says why."""


@dataclass
class DayRecords:
    """One generated day as Kafka records, in event-time order."""

    event_type: np.ndarray
    user_id: np.ndarray
    t_us: np.ndarray
    key: list[bytes]
    value: list[bytes]


def day_records(users: int, events: int, seed: int = 17) -> DayRecords:
    """The first ``events`` records (by event time) of one dense day of ``users`` users."""
    from argus.world.config import WorldConfig
    from argus.world.simulate import World
    from argus.world.sinks import to_json_lines

    world = World(WorldConfig(users=users, days=1, seed=seed, profile="dense"))
    parts = []
    for _, tables in world.days():
        for event_type, table in tables.items():
            if table.num_rows:
                parts.append(
                    pd.DataFrame(
                        {
                            "event_type": event_type,
                            "user_id": table["user_id"].to_numpy(zero_copy_only=False).astype(str),
                            "t_us": table["ts"].to_numpy().astype("datetime64[us]").astype(np.int64),
                            "value": to_json_lines(table),
                        }
                    )
                )
    frame = pd.concat(parts, ignore_index=True).sort_values("t_us", kind="stable").head(events)
    return DayRecords(
        frame["event_type"].to_numpy(),
        frame["user_id"].to_numpy(),
        frame["t_us"].to_numpy(),
        [u.encode() for u in frame["user_id"]],
        list(frame["value"]),
    )


def _publish_models(store: Path, detectors: Sequence[str], users: int, seed: int) -> None:
    """Fit the detectors on a separate small world (two days) and publish them."""
    from argus.detectors.registry import detector_class
    from argus.detectors.store import ModelStore
    from argus.evals.common import world_events
    from argus.world.config import WorldConfig
    from argus.world.simulate import World

    events = world_events(World(WorldConfig(users=users, days=2, seed=seed, profile="dense")))
    for name in detectors:
        detector = detector_class(name)()
        detector.fit(detector.features(events))
        ModelStore(store).publish(detector)


@dataclass
class _Visible:
    """Output records as they become visible: feature snapshots and alerts, with receive times."""

    snapshots: dict[str, list[tuple[str, int, float]]] = field(default_factory=dict)
    newest_at_us: dict[str, int] = field(default_factory=dict)  # per detector: its latest snapshot's point
    alert_ids: list[tuple[str, str]] = field(default_factory=list)  # (alert topic's kind, alert id)
    alert_seen: list[float] = field(default_factory=list)
    letters: int = 0
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _watch(bootstrap: str, topics: dict[str, str], visible: _Visible, stop: threading.Event) -> None:
    """Read the output topics from their start until ``stop``; topics: name -> role."""
    try:
        _read_outputs(bootstrap, topics, visible, stop)
    except Exception as exc:  # reported by the waiting loops
        visible.error = f"{type(exc).__name__}: {exc}"
        raise


def _read_outputs(bootstrap: str, topics: dict[str, str], visible: _Visible, stop: threading.Event) -> None:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "argus-bench-watch", "enable.auto.commit": False, "log_level": 3}
    )
    meta = consumer.list_topics(timeout=30)
    assignment = [TopicPartition(t, p, 0) for t in topics if t in meta.topics for p in meta.topics[t].partitions]
    consumer.assign(assignment)
    try:
        while not stop.is_set():
            messages = consumer.consume(num_messages=10_000, timeout=0.1)
            seen = time.time()
            with visible.lock:
                for message in messages:
                    if message.error() is not None:
                        continue
                    role = topics[str(message.topic())]
                    if role == "dlq":
                        visible.letters += 1
                    elif role == "alerts":
                        kind = str(message.topic()).rsplit(".", 1)[-1]
                        visible.alert_ids.append((kind, (message.key() or b"").decode()))
                        visible.alert_seen.append(seen)
                    else:
                        record = orjson.loads(message.value() or b"{}")
                        at_us = int(record["at_us"])
                        visible.snapshots.setdefault(role, []).append((str(record["user_id"]), at_us, seen))
                        visible.newest_at_us[role] = max(visible.newest_at_us.get(role, at_us), at_us)
    finally:
        consumer.close()


def _create_topics(bootstrap: str, partitions: dict[str, int]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(t, n, 1) for t, n in partitions.items()])
    for future in futures.values():
        future.result(timeout=60)
    # Clients that see a new topic before its leader is elected can wait minutes for fresh metadata.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        meta = admin.list_topics(timeout=30).topics
        if all(t in meta and all(p.leader >= 0 for p in meta[t].partitions.values()) for t in partitions):
            return
        time.sleep(0.2)
    raise BenchStreamError("the benchmark's topics got no leader within 60 s")


def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    futures = AdminClient({"bootstrap.servers": bootstrap}).delete_topics(topics)
    for future in futures.values():
        with contextlib.suppress(Exception):  # best effort: scratch topics
            future.result(timeout=60)


def _heartbeats(records: DayRecords, topics: dict[str, str], partitions: int) -> Iterator[tuple[str, int, bytes]]:
    """A valid record per topic and partition, ``HEARTBEAT_AFTER_US`` after the last event."""
    last_t = int(records.t_us.max())
    stamp = pd.Timestamp(last_t + HEARTBEAT_AFTER_US, unit="us", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    for event_type, topic in topics.items():
        where = np.flatnonzero(records.event_type == event_type)
        if not len(where):
            continue
        template = orjson.loads(records.value[int(where[-1])])
        for partition in range(partitions):
            yield (
                topic,
                partition,
                orjson.dumps({**template, "event_id": f"heartbeat-{topic}-{partition}", "ts": stamp}),
            )


@dataclass
class _Offered:
    """Per record: when it was produced, and where and when Kafka acknowledged it (-1 / NaN: not acknowledged)."""

    produced: np.ndarray
    partition: np.ndarray
    offset: np.ndarray
    acked: np.ndarray


def _offer(bootstrap: str, records: DayRecords, topics: dict[str, str], rate: float) -> _Offered:
    """Produce every record at ``rate`` per second, noting each one's produce time and its acknowledgement."""
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", "enable.idempotence": True, "log_level": 3}
    )
    produced = np.zeros(len(records.value))
    partition = np.full(len(records.value), -1, dtype=np.int64)
    offset = np.full(len(records.value), -1, dtype=np.int64)
    acked = np.full(len(records.value), np.nan)

    def delivered(index: int, err: Any, message: Any) -> None:
        if err is None:
            partition[index], offset[index], acked[index] = message.partition(), message.offset(), time.time()

    tick = 0.01
    chunk = max(1, int(rate * tick))
    started = time.time()
    for first in range(0, len(records.value), chunk):
        due = started + first / rate
        while (now := time.time()) < due:
            time.sleep(min(due - now, tick))
        for i in range(first, min(first + chunk, len(records.value))):
            while True:
                try:
                    producer.produce(
                        topics[str(records.event_type[i])],
                        records.value[i],
                        records.key[i],
                        on_delivery=functools.partial(delivered, i),
                    )
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
        produced[first : first + chunk] = time.time()
    producer.flush(120)
    return _Offered(produced, partition, offset, acked)


@contextmanager
def _pipeline(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``argus stream run`` in a session of its own; afterwards its whole process group (Prism too) is stopped."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "argus.cli", "stream", "run", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen[Any], grace_s: float = 20.0) -> None:
    """SIGTERM to ``process``'s group, SIGKILL after ``grace_s``; the group's other members (the runner
    the pipeline started) are stopped even when the pipeline itself has already exited."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # what ignored SIGTERM, or outlived the pipeline
    process.wait()


def _first_cover(
    events: pd.DataFrame, snapshots: list[tuple[str, int, float]], strictly_after: bool = False
) -> np.ndarray:
    """Per event (user_id, t_us), when the first snapshot of its user at or after its time was seen (NaN: never).

    ``strictly_after``: only snapshots after its time cover it (a fraud snapshot at a boundary covers the events
    before it; an event at the boundary itself belongs to the next one)."""
    if events.empty:
        return np.zeros(0)
    if not snapshots:
        return np.full(len(events), np.nan)
    seen = pd.DataFrame(snapshots, columns=["user_id", "at_us", "seen"])
    # The earliest sighting among snapshots at or after each point: a suffix minimum per user.
    seen = seen.sort_values(["user_id", "at_us"])
    seen["seen"] = seen.iloc[::-1].groupby("user_id")["seen"].cummin().iloc[::-1]
    order = events.reset_index(drop=True).reset_index().sort_values("t_us")
    merged = pd.merge_asof(
        order,
        seen.sort_values("at_us"),
        left_on="t_us",
        right_on="at_us",
        by="user_id",
        direction="forward",
        allow_exact_matches=not strictly_after,
    )
    return np.asarray(merged.sort_values("index")["seen"].to_numpy(dtype=float))


LOST_REASONS = (
    "not_acknowledged",  # Kafka never acknowledged the event: the bench's producer failed
    "no_output_after_its_point",  # nothing at or after its window end / boundary was ever seen: not flushed (yet)
    "arrived_after_its_point_was_output",  # in Kafka only after output for its point was out: late
    # In Kafka before output for its point was seen, but that output lacked its user: the pipeline read it after
    # scoring its point (the source let its partition fall behind: late) or left its user out.
    "not_in_output_at_its_point",
)


def lost_reasons(
    t_us: np.ndarray, acked: np.ndarray, snapshots: list[tuple[str, int, float]], step_us: int
) -> list[str]:
    """Why each lost event (event time, acknowledgement time) of one detector was never covered (``LOST_REASONS``).

    An event's *point* is the end of its ``step_us`` slot (its chat window, its fraud interval); output for the
    point exists once any snapshot at or after it was seen."""
    points = (t_us // step_us + 1) * step_us
    if snapshots:
        at = np.array([s[1] for s in snapshots], dtype=np.int64)
        seen = np.array([s[2] for s in snapshots], dtype=float)
        order = np.argsort(at, kind="stable")
        at, first_seen = at[order], np.minimum.accumulate(seen[order][::-1])[::-1]  # earliest sighting at or after
        where = np.searchsorted(at, points, side="left")
        output_at = np.where(where < len(at), first_seen[np.minimum(where, len(at) - 1)], np.nan)
    else:
        output_at = np.full(len(points), np.nan)
    reasons = []
    for ack, out in zip(acked, output_at, strict=True):
        if np.isnan(ack):
            reasons.append("not_acknowledged")
        elif np.isnan(out):
            reasons.append("no_output_after_its_point")
        elif ack > out:
            reasons.append("arrived_after_its_point_was_output")
        else:
            reasons.append("not_in_output_at_its_point")
    return reasons


@contextmanager
def _cleanup_on_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP end the block by an exception, so every ``finally`` below stops its child.

    Without it SIGTERM would end the process at once and leave the broker, the pipeline and Prism
    (each in its own session) running. The first signal raises (``KeyboardInterrupt`` for SIGINT,
    ``SystemExit(128 + signal)`` otherwise); later ones are ignored until the block has cleaned up.
    Outside the main thread (where handlers cannot be set) the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.getsignal(signum) for signum in caught}

    def stop(signum: int, frame: Any) -> None:
        for other in caught:
            signal.signal(other, signal.SIG_IGN)  # the cleanup is not interrupted in turn
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    for signum in caught:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def bench_stream(
    events: int = 200_000,
    rate: float = 25_000.0,
    detectors: Sequence[str] = ("trolls", "fraud"),
    key_shards: int = 1,
    bootstrap: str | None = None,
    timeout_s: float = 600.0,
    fraud_interval_s: int = 3_600,
    work_dir: Path | None = None,
    sdk_workers: int = 1,
) -> dict[str, Any]:
    """Run the benchmark (see the module doc) and return its figures."""
    from argus.bench import scratch_broker

    if "trolls" not in detectors and "fraud" not in detectors:
        raise BenchStreamError("bench stream needs the trolls or fraud detector: they publish feature snapshots")
    users = max(100, math.ceil(events / DENSE_EVENTS_PER_USER_DAY))
    records = day_records(users, events)
    while len(records.value) < events:  # small worlds fall short of the mean: grow until they have enough
        users = math.ceil(users * 1.25)
        records = day_records(users, events)
    with _cleanup_on_signals(), tempfile.TemporaryDirectory(prefix="argus-bench-stream-", dir=work_dir) as scratch:
        home = Path(scratch)
        _publish_models(home / "models", detectors, min(users, 1_000), seed=5)
        context = _given(bootstrap) if bootstrap else scratch_broker()
        with context as servers:
            return _measure(
                servers, records, rate, list(detectors), (key_shards, sdk_workers), timeout_s, fraud_interval_s, home
            )


@contextmanager
def _given(bootstrap: str) -> Iterator[str]:
    yield bootstrap


def _measure(
    bootstrap: str,
    records: DayRecords,
    rate: float,
    detectors: list[str],
    placement: tuple[int, int],  # key shards, Prism's Python worker processes
    timeout_s: float,
    fraud_interval_s: int,
    home: Path,
) -> dict[str, Any]:
    prefix = f"bench{os.getpid()}x{int(time.time()) % 100_000}"
    event_topics = {t: f"{prefix}.events.{t}" for t in EVENT_TYPES}
    outputs = {f"{prefix}.alerts.{k}": "alerts" for k in ALERT_KINDS}
    outputs |= {f"{prefix}.features.{d}": d for d in detectors} | {f"{prefix}.dlq": "dlq"}
    partitions = 3
    _create_topics(bootstrap, {t: partitions for t in event_topics.values()} | dict.fromkeys(outputs, 1))
    visible = _Visible()
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(bootstrap, outputs, visible, stop), daemon=True)
    args = [
        "--unbounded",
        "--start=earliest",
        f"--model-store={home / 'models'}",
        f"--detectors={','.join(detectors)}",
        f"--topics={','.join(event_topics.values())}",
        f"--bootstrap={bootstrap}",
        f"--alerts-prefix={prefix}.alerts",
        f"--features-prefix={prefix}.features",
        f"--dlq-topic={prefix}.dlq",
        f"--idle-slack={NO_IDLE_SLACK_S}",
        f"--key-shards={placement[0]}",
        f"--sdk-workers={placement[1]}",
        f"--fraud-interval={fraud_interval_s}",
    ]
    try:
        with _pipeline(args, home / "pipeline.log") as pipeline:
            watcher.start()
            _wait_until_reading(bootstrap, event_topics["chat"], visible, pipeline, home / "pipeline.log")
            cpu_before = cpu_by_part(pipeline.pid)
            offered = _offer(bootstrap, records, event_topics, rate)
            produced = offered.produced
            offered_s = float(produced.max() - produced.min()) or 1e-9
            _send_heartbeats(bootstrap, records, event_topics, partitions)
            frame = pd.DataFrame({"event_type": records.event_type, "user_id": records.user_id, "t_us": records.t_us})
            checked = {"trolls": frame["event_type"] == "chat", "fraud": frame["event_type"] == "payment"}
            checked = {d: mask for d, mask in checked.items() if d in detectors}
            covered = np.full(len(frame), np.nan)
            # The newest snapshot each detector must reach before every event can be covered: at or after the
            # last chat message, after the last payment (fraud snapshots cover the events before their boundary).
            last_point = {d: int(frame.loc[mask, "t_us"].max()) + (d == "fraud") for d, mask in checked.items()}
            wanted = np.zeros(len(frame), dtype=bool)
            for mask in checked.values():
                wanted |= mask.to_numpy()
            deadline = time.monotonic() + timeout_s
            waited = time.monotonic()
            missing = int(wanted.sum())
            while True:
                with visible.lock:
                    reached = all(visible.newest_at_us.get(d, -1) >= point for d, point in last_point.items())
                if reached:  # only then can every event be covered: read what was seen in full
                    _cover(covered, frame, checked, visible)
                    missing = int(np.isnan(covered[wanted]).sum())
                if missing == 0 or time.monotonic() > deadline or pipeline.poll() is not None:
                    break
                time.sleep(2.0)
            timed_out = missing > 0 and pipeline.poll() is None
            waited_s = time.monotonic() - waited
            cpu_s = _cpu_spent(cpu_before, cpu_by_part(pipeline.pid))
            _wait_for_quiet_alerts(visible, deadline)
            snapshots = _cover(covered, frame, checked, visible)  # what became visible meanwhile: the latest view
    finally:
        stop.set()
        watcher.join(30)
        _delete_topics(bootstrap, [*event_topics.values(), *outputs])
    latency = (covered - produced)[wanted & ~np.isnan(covered)]
    last_visible = float(np.nanmax(covered[wanted])) if (~np.isnan(covered[wanted])).any() else float("nan")
    span = last_visible - float(produced.min())
    with visible.lock:
        ids = list(visible.alert_ids)
    day_us = float(records.t_us.max() - records.t_us.min()) / 1e6
    return {
        "events": len(records.value),
        "offered_per_s": round(len(records.value) / offered_s),
        "events_per_s": round(len(records.value) / span) if span > 0 else None,
        "latency_p50_s": round(float(np.percentile(latency, 50)), 3) if len(latency) else None,
        "latency_p99_s": round(float(np.percentile(latency, 99)), 3) if len(latency) else None,
        "latency_max_s": round(float(latency.max()), 3) if len(latency) else None,
        "checked": int(wanted.sum()),
        "lost": int(np.isnan(covered[wanted]).sum()),
        **_lost_report(frame, covered, checked, snapshots, offered, fraud_interval_s),
        "waited_s": round(waited_s, 1),
        "timed_out": timed_out,
        "alerts": len(set(ids)),
        "alerts_by_kind": {kind: sum(1 for k, _ in set(ids) if k == kind) for kind in sorted({k for k, _ in ids})},
        "duplicate_alerts": len(ids) - len(set(ids)),
        "detectors": ",".join(detectors),
        "key_shards": placement[0],
        "sdk_workers": placement[1],
        "event_time_speedup": round(day_us / offered_s, 1),
        "cpu_s": {part: round(seconds, 1) for part, seconds in sorted(cpu_s.items())},
        "cpu_us_per_event": round(sum(cpu_s.values()) * 1e6 / len(records.value)) if cpu_s else None,
    }


def _cover(
    covered: np.ndarray, frame: pd.DataFrame, checked: dict[str, pd.Series], visible: _Visible
) -> dict[str, list[tuple[str, int, float]]]:
    """Fill ``covered`` (per event: when its first covering output was seen) from the snapshots seen so far."""
    with visible.lock:
        snapshots = {d: list(visible.snapshots.get(d, [])) for d in checked}
    for name, mask in checked.items():
        covered[mask.to_numpy()] = _first_cover(frame[mask], snapshots[name], name == "fraud")
    return snapshots


def _wait_for_quiet_alerts(visible: _Visible, deadline: float) -> None:
    """Until no new alert came for ``ALERTS_QUIET_S`` since the call (or ``deadline``): alerts trail the snapshots
    by a stage."""
    called = time.time()
    while time.monotonic() < deadline:
        with visible.lock:
            latest = max(visible.alert_seen[-1] if visible.alert_seen else called, called)
        quiet_for = time.time() - latest
        if quiet_for >= ALERTS_QUIET_S:
            return
        time.sleep(ALERTS_QUIET_S - quiet_for)


def cpu_by_part(pipeline_pid: int) -> dict[tuple[int, int], tuple[str, float]]:
    """CPU seconds so far of the processes the measurement involves, by (pid, start): ``(part, seconds)`` with part
    ``pipeline`` (the pipeline's process group but Prism), ``runner`` (Prism), ``broker`` (a Kafka JVM on this
    machine) or ``bench`` (this process). Empty without ``/proc``."""
    from argus.infra.procfs import PROC, process_stats

    if not PROC.is_dir():
        return {}
    found = {}
    for stat in process_stats():
        part = "bench" if stat.pid == os.getpid() else _part_of(stat.pid, stat.group, pipeline_pid)
        if part is not None:
            found[(stat.pid, stat.started)] = (part, stat.cpu_s)
    return found


def _part_of(pid: int, group: int, pipeline_pid: int) -> str | None:
    from argus.infra.procfs import PROC

    try:
        program = (PROC / str(pid) / "comm").read_text().strip()
        if group == pipeline_pid:
            return "runner" if program == "prism" else "pipeline"
        if program == "java" and b"kafka.Kafka" in (PROC / str(pid) / "cmdline").read_bytes():
            return "broker"
    except OSError:  # it ended meanwhile
        pass
    return None


def _cpu_spent(
    before: dict[tuple[int, int], tuple[str, float]], after: dict[tuple[int, int], tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds per part between two ``cpu_by_part`` readings (a process started between them counts whole)."""
    spent: dict[str, float] = {}
    for key, (part, seconds) in after.items():
        spent[part] = spent.get(part, 0.0) + seconds - before.get(key, (part, 0.0))[1]
    return spent


def _lost_report(
    frame: pd.DataFrame,
    covered: np.ndarray,
    checked: dict[str, pd.Series],
    snapshots: dict[str, list[tuple[str, int, float]]],
    offered: _Offered,
    fraud_interval_s: int,
    sample: int = 5,
) -> dict[str, Any]:
    """``lost_by_reason`` (``detector:reason`` -> events), ``lost_sample`` (a few lost events, where they were) and
    ``arrived_late`` (per detector: events, lost or not, Kafka acknowledged only after output for their point was
    visible, so the pipeline met them late)."""
    from argus.detectors.chat_features import CONTEXT_WINDOW_S

    steps_us = {"trolls": CONTEXT_WINDOW_S * 1_000_000, "fraud": fraud_interval_s * 1_000_000}
    by_reason: dict[str, int] = {}
    lost_sample: list[dict[str, Any]] = []
    arrived_late: dict[str, int] = {}
    for name, mask in checked.items():
        rows = np.flatnonzero(mask.to_numpy())
        reasons = lost_reasons(frame["t_us"].to_numpy()[rows], offered.acked[rows], snapshots[name], steps_us[name])
        arrived_late[name] = reasons.count("arrived_after_its_point_was_output")
        lost = np.flatnonzero(mask.to_numpy() & np.isnan(covered))
        if not len(lost):
            continue
        t_us = frame["t_us"].to_numpy()[lost]
        reasons = lost_reasons(t_us, offered.acked[lost], snapshots[name], steps_us[name])
        for reason in reasons:
            by_reason[f"{name}:{reason}"] = by_reason.get(f"{name}:{reason}", 0) + 1
        for i, reason in list(zip(lost, reasons, strict=True))[:sample]:
            lost_sample.append(
                {
                    "event_type": str(frame["event_type"].iat[i]),
                    "user": str(frame["user_id"].iat[i]),
                    "ts": pd.Timestamp(int(frame["t_us"].iat[i]), unit="us", tz="UTC").isoformat(),
                    "partition": int(offered.partition[i]),
                    "offset": int(offered.offset[i]),
                    "reason": reason,
                }
            )
    return {"lost_by_reason": by_reason, "lost_sample": lost_sample, "arrived_late": arrived_late}


def _wait_until_reading(
    bootstrap: str, topic: str, visible: _Visible, pipeline: subprocess.Popen[bytes], log: Path, timeout: float = 300
) -> None:
    """Send one malformed record; the pipeline reads once its dead letter is out. (Stamped now by Kafka, months
    after the replayed day: a rejected record has no event time and does not move the watermark.)"""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 3})
    producer.produce(topic, b"{not json: the benchmark's readiness probe", b"probe")
    producer.flush(30)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with visible.lock:
            if visible.letters:
                return
        if visible.error:
            raise BenchStreamError(f"reading the output topics failed: {visible.error}")
        if pipeline.poll() is not None:
            raise BenchStreamError(f"the pipeline exited with code {pipeline.returncode}: {_tail(log)}")
        time.sleep(0.2)
    raise BenchStreamError(f"the pipeline did not start reading within {timeout:.0f}s: {_tail(log)}")


def _send_heartbeats(bootstrap: str, records: DayRecords, topics: dict[str, str], partitions: int) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 3})
    for topic, partition, value in _heartbeats(records, topics, partitions):
        producer.produce(topic, value, b"heartbeat", partition=partition)
    producer.flush(30)


def _tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
