"""Pipeline checkpoints on runners that keep state in memory (Prism): state snapshots plus committed offsets.

A restarted pipeline must neither lose an event nor reread the whole log, and its per-user and
per-channel state must survive. On Flink and Dataflow the runner's own checkpoints do that; on
Prism state lives in the runner's memory, so the pipeline checkpoints itself:

1. **What is recorded.** Every source batch names the offsets ``[start, end)`` it covers
   (``SourceBatch``). A stateful stage that reads the source (trolls' channel windows, fraud's
   payment graph) records, per key shard, which ranges it has taken in (``ReceivedLog``). After
   every firing that changes its state, each stateful stage emits a ``StageSnapshot`` of that
   shard, labelled with the firing's event time: the stages run by ``StageFn``
   (``pipelines/stage.py``: the trolls' channel windows and users, the adapters of
   ``stream_adapters.py``) a *delta*, only the parts of their state the firing changed (per user,
   per channel, per account, per message; see ``part_delta``) and numbered (``seq``); the payment
   graph its whole state.
2. **A consistent cut by watermark.** One ``_CheckpointFn`` (a single key) collects the snapshots
   and sets a timer just after each label ``X``. It fires once the watermark of *all* its inputs
   has passed ``X``: every snapshot labelled ``<= X`` has arrived, and every sink (alerts, dead
   letters, feature snapshots) has completed every bundle with elements up to ``X`` (a sink
   bundle completes only after ``finish_bundle`` flushed it to Kafka; the sinks' empty outputs are
   inputs of the checkpoint stage, so their watermarks hold it back). The state of each stage
   shard after its latest firing labelled ``<= X`` then forms a consistent state: what the channel
   stage emitted up to its snapshot is exactly what the per-user stage had applied in its own.
   That state is the previous cut's (``bases``, held apart and read only when a cut is written)
   with the deltas up to that firing folded on in firing order (``fold_snapshots``): exactly the
   shard's state then, parts and order, as a whole snapshot would have carried it. Only the newest
   snapshot per shard would not do: a shard firing again before the watermark reaches ``X`` would
   have lost its state at ``X``. Between cuts the held deltas of a shard up to the newest label
   passed are merged into one, so what the stage holds is the last cut plus what changed since.
3. **Offsets.** The checkpoint's offsets are, per partition, the end of the contiguous prefix that
   *every* source-reading stage shard has taken in, counting only batches timestamped before
   ``X`` (their dead letters are flushed). The checkpoint is written (atomically, a file in
   ``--checkpoint-dir``), *then* the offsets are committed to the consumer group ``--group``.
   At most one checkpoint is written per ``--checkpoint-interval``: a sooner cut is deferred (a
   later one supersedes it), and the input's end writes the last, so a bounded run ends committed.
4. **Restart.** The launcher reads the group's committed offsets and picks the checkpoint file
   with exactly those offsets (a crash between writing and committing leaves the previous one in
   force). The source resumes at the committed offsets; each stage shard gets its complete
   snapshot back as a first element (state and timers restored), and the checkpoint stage takes
   them as the base of its next cut; batches a shard had already taken in are not given to it
   again: the source cuts its batches at the recorded range boundaries, so each is wholly seen or
   wholly new. Outputs the replay repeats carry the same deterministic ids and are
   skipped by the sinks (``skip_published``): effectively once on the compacted alert topics.

Limit: a message later than ``--allowed-lateness`` is applied by a timer behind the watermark, so
the cut in (2) does not order it; a crash right after such a message can lose its contribution
to the restored per-user sums (it is still counted in ``late_events``).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import time
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics.metric import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Duration, Timestamp

from argus.pipelines.kafka_io import Cuts, KafkaClient, Offsets, librdkafka_settings, watermark_offsets

__all__ = [
    "CHECKPOINT_STAGE",
    "Checkpoint",
    "CheckpointError",
    "Parts",
    "ReceivedLog",
    "Restore",
    "ResumePlan",
    "StageSnapshot",
    "apply_parts",
    "committed_offsets",
    "fold_snapshots",
    "load_checkpoints",
    "merge_snapshots",
    "part_delta",
    "part_section",
    "plan_resume",
    "restore_elements",
    "restore_input",
    "write_checkpoints",
]

FORMAT = 1
KEEP_FILES = 3
# (topic, partition) -> sorted, merged [start, end) offset ranges
Ranges = dict[tuple[str, int], list[tuple[int, int]]]


class CheckpointError(ValueError):
    """Checkpoints and committed offsets that do not fit together; one line that says what to do."""


def add_range(ranges: Ranges, key: tuple[str, int], start: int, end: int) -> None:
    """Add ``[start, end)`` to ``ranges[key]``, merging touching and overlapping ranges."""
    if end <= start:
        return
    merged: list[tuple[int, int]] = []
    for lo, hi in ranges.get(key, []):
        if hi < start or lo > end:
            merged.append((lo, hi))
        else:
            start, end = min(lo, start), max(hi, end)
    merged.append((start, end))
    ranges[key] = sorted(merged)


def covers(ranges: Ranges, key: tuple[str, int], start: int, end: int) -> bool:
    """Whether ``[start, end)`` lies inside one recorded range."""
    return any(lo <= start and end <= hi for lo, hi in ranges.get(key, []))


def prefix_end(ranges: Ranges, key: tuple[str, int], start: int) -> int:
    """Where the contiguous run of recorded offsets from ``start`` ends (``start`` when none)."""
    for lo, hi in ranges.get(key, []):
        if lo <= start <= hi:
            return hi
    return start


@dataclass
class ReceivedLog:
    """The source ranges one stage shard took in: merged once settled, raw with their batch time while recent."""

    settled: Ranges = field(default_factory=dict)
    recent: list[tuple[str, int, int, int, int]] = field(default_factory=list)  # topic, partition, start, end, t_us

    def add(self, topic: str, partition: int, start: int, end: int, t_us: int) -> None:
        self.recent.append((topic, partition, start, end, t_us))

    def absorb(self, other: ReceivedLog) -> None:
        for key, spans in other.settled.items():
            for lo, hi in spans:
                add_range(self.settled, key, lo, hi)
        self.recent += other.recent

    def settle(self, before_us: int) -> None:
        """Merge the ranges of batches timestamped before ``before_us``; keep the others raw."""
        keep = []
        for topic, partition, start, end, t_us in self.recent:
            if t_us < before_us:
                add_range(self.settled, (topic, partition), start, end)
            else:
                keep.append((topic, partition, start, end, t_us))
        self.recent = keep

    def ranges(self, before_us: int | None = None) -> Ranges:
        """Settled ranges plus the recent ones timestamped before ``before_us`` (all when None)."""
        out: Ranges = {k: list(v) for k, v in self.settled.items()}
        for topic, partition, start, end, t_us in self.recent:
            if before_us is None or t_us < before_us:
                add_range(out, (topic, partition), start, end)
        return out


# A stage shard's state as parts: a key (a tuple whose first item names its section, e.g. ("daily", user))
# -> the part, pickled. Parts let a snapshot carry only what a firing changed.
Parts = dict[Hashable, bytes]


@dataclass(frozen=True)
class StageSnapshot:
    """One stage shard's state after a firing at event time ``at_us`` (``received``: source stages only).

    Either the whole state pickled (``state``), or part-wise (``parts``): with ``base_seq`` None the
    complete parts, otherwise a *delta*, the parts the firings after ``base_seq`` up to ``seq`` changed
    (``removed``: dropped first, then ``parts`` written). ``seq`` counts the shard's firings; the
    checkpoint stage folds deltas in that order, so a restore gets exactly the state the shard had.
    """

    stage: str
    shard: str
    at_us: int
    state: bytes = b""
    received: ReceivedLog | None = None
    restored: bool = False
    parts: Parts | None = None
    removed: tuple[Hashable, ...] = ()
    seq: int = 0
    base_seq: int | None = None

    @property
    def complete(self) -> bool:
        """Whether it holds the whole state (not a delta)."""
        return self.parts is None or self.base_seq is None


def part_section(key: Hashable) -> Hashable:
    """The section of a part's key: its first item."""
    return key[0] if isinstance(key, tuple) and key else key


def part_delta(old: Parts, new: Parts) -> tuple[Parts, tuple[Hashable, ...]]:
    """What turns ``old`` into ``new``: ``(parts to write, keys to drop first)``; ``apply_parts`` does it.

    Parts compare by their pickled bytes (equal bytes: equal parts). Applying keeps a surviving part in
    its place and appends new ones, so in each section (a key's first item) the longest head of ``new``
    that keeps ``old``'s order stays, and the parts after it that moved (a dict's pop and re-insert, a
    key inserted in the middle) are dropped and written again: every section comes back in ``new``'s
    order, so a dict rebuilt from it iterates as the live one did.
    """
    position = {key: i for i, key in enumerate(old)}
    new_keys: dict[Hashable, list[Hashable]] = {}
    for key in new:
        new_keys.setdefault(part_section(key), []).append(key)
    changed: Parts = {}
    removed = [key for key in old if key not in new]
    for keys in new_keys.values():
        last, head = -1, len(keys)
        for i, key in enumerate(keys):
            at = position.get(key, -1)
            if at <= last:  # new, or out of old's order: from here on everything is appended
                head = i
                break
            last = at
        for key in keys[:head]:
            if old[key] != new[key]:
                changed[key] = new[key]
        for key in keys[head:]:
            if key in position:
                removed.append(key)
            changed[key] = new[key]
    return changed, tuple(removed)


def apply_parts(parts: Parts, changed: Parts, removed: Iterable[Hashable]) -> None:
    """Apply a delta to ``parts`` in place: drop ``removed``, then write ``changed`` (new keys appended)."""
    for key in removed:
        parts.pop(key, None)
    parts.update(changed)


def merge_snapshots(first: StageSnapshot, then: StageSnapshot) -> StageSnapshot:
    """One snapshot equal to ``first`` followed by ``then`` (part-wise, ``then.base_seq == first.seq``)."""
    assert first.parts is not None and then.parts is not None and then.base_seq == first.seq
    if first.base_seq is None:  # complete, then a delta: complete
        parts = dict(first.parts)
        apply_parts(parts, then.parts, then.removed)
        return dataclasses.replace(then, parts=parts, removed=(), base_seq=None)
    dropped = set(then.removed)
    parts = {k: v for k, v in first.parts.items() if k not in dropped}
    parts.update(then.parts)
    removed = tuple(dict.fromkeys([*first.removed, *then.removed]))
    return dataclasses.replace(then, parts=parts, removed=removed, base_seq=first.base_seq)


@dataclass(frozen=True)
class Restore:
    """The first element a stage shard gets after a restart: its snapshot from the checkpoint."""

    snapshot: StageSnapshot


@dataclass
class Checkpoint:
    """A consistent cut: every stage shard's latest snapshot at or before ``at_us``, and the offsets to resume at."""

    group: str
    at_us: int
    offsets: Offsets
    snapshots: dict[tuple[str, str], StageSnapshot]
    written_ns: int = 0
    format: int = FORMAT

    def received(self, stage: str) -> dict[str, Ranges]:
        """Per shard of ``stage``: every range it had taken in (what a replay must not give it again)."""
        return {
            s.shard: s.received.ranges() for s in self.snapshots.values() if s.stage == stage and s.received is not None
        }

    def cuts(self) -> Cuts:
        """Every range boundary of every source stage: a replay's batches must not straddle one."""
        out: dict[str, dict[int, set[int]]] = {}
        for snapshot in self.snapshots.values():
            if snapshot.received is None:
                continue
            for (topic, partition), spans in snapshot.received.ranges().items():
                bounds = out.setdefault(topic, {}).setdefault(partition, set())
                for lo, hi in spans:
                    bounds |= {lo, hi}
        return {t: {p: sorted(b) for p, b in parts.items()} for t, parts in out.items()}


def _files(directory: Path) -> list[Path]:
    return sorted(directory.glob("checkpoint-*.pkl"), reverse=True)  # newest first (names carry the write time)


def save_checkpoint(directory: Path, checkpoint: Checkpoint, keep: int = KEEP_FILES) -> Path:
    """Write ``checkpoint`` atomically (temporary file, fsync, rename); keep the newest ``keep`` files."""
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint.written_ns = time.time_ns()
    path = directory / f"checkpoint-{checkpoint.written_ns:020d}.pkl"
    partial = path.with_suffix(".partial")
    with partial.open("wb") as out:
        pickle.dump(checkpoint, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
    for old in _files(directory)[keep:]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoints(directory: Path) -> Iterator[tuple[Path, Checkpoint]]:
    """The checkpoints in ``directory``, newest first."""
    for path in _files(directory):
        with path.open("rb") as source:
            checkpoint = pickle.load(source)
        if isinstance(checkpoint, Checkpoint) and checkpoint.format == FORMAT:
            yield path, checkpoint


def committed_offsets(client: KafkaClient, group: str, topics: Sequence[str], attempts: int = 20) -> Offsets:
    """The offsets ``group`` has committed on ``topics`` (partitions without a commit left out).

    Retries what the broker reports as retriable (a fresh broker's group coordinator is not ready for
    a few seconds: ``NOT_COORDINATOR``, ``COORDINATOR_LOAD_IN_PROGRESS``), up to ``attempts`` times.
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    not_ready = {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    }
    consumer = Consumer({**librdkafka_settings(client), "group.id": group, "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(timeout=30)
        wanted = [TopicPartition(t, p) for t in topics if t in meta.topics for p in meta.topics[t].partitions]
        for attempt in range(attempts):
            try:
                committed = consumer.committed(wanted, timeout=30) if wanted else []
                break
            except KafkaException as exc:
                error = exc.args[0]
                if attempt == attempts - 1 or not (error.retriable() or error.code() in not_ready):
                    raise
                time.sleep(0.5)
        out: Offsets = {}
        for tp in committed:
            if tp.offset >= 0:
                out.setdefault(tp.topic, {})[tp.partition] = int(tp.offset)
        return out
    finally:
        consumer.close()


def _log_offsets(client: KafkaClient, topics: Sequence[str], start: str) -> Offsets:
    """Every partition's first (``earliest``) or next (``latest``) offset now."""
    from confluent_kafka import Consumer

    consumer = Consumer({**librdkafka_settings(client), "group.id": "argus-stream-offsets"})
    try:
        meta = consumer.list_topics(timeout=30)
        out: Offsets = {}
        for topic in topics:
            info = meta.topics.get(topic)
            if info is None or info.error is not None:
                continue
            for partition in sorted(info.partitions):
                low, high = watermark_offsets(consumer, topic, partition)
                out.setdefault(topic, {})[partition] = low if start == "earliest" else high
        return out
    finally:
        consumer.close()


@dataclass
class ResumePlan:
    """Where a run starts: the source's offsets, and the checkpoint its stages restore (None: a fresh start)."""

    start_offsets: Offsets
    checkpoint_file: Path | None = None
    checkpoint: Checkpoint | None = None

    def received(self, stage: str) -> dict[str, Ranges]:
        return self.checkpoint.received(stage) if self.checkpoint is not None else {}

    def cuts(self) -> Cuts:
        return self.checkpoint.cuts() if self.checkpoint is not None else {}


def plan_resume(directory: Path, client: KafkaClient, group: str, topics: Sequence[str], start: str) -> ResumePlan:
    """Resume at ``group``'s committed offsets with the checkpoint recorded for exactly them.

    No commit yet: a fresh start at ``start`` (earliest/latest) on every partition. Partitions the
    checkpoint does not know (a topic added since) also start at ``start``.
    """
    fresh = _log_offsets(client, topics, start)
    committed = committed_offsets(client, group, topics)
    if not committed:
        return ResumePlan(fresh)
    for path, checkpoint in load_checkpoints(directory):
        if checkpoint.group != group:
            continue
        recorded = {t: dict(parts) for t, parts in checkpoint.offsets.items() if t in committed}
        if recorded == committed:
            offsets = {t: {**fresh.get(t, {}), **checkpoint.offsets.get(t, {})} for t in topics}
            return ResumePlan(offsets, path, checkpoint)
    raise CheckpointError(
        f"consumer group {group!r} has committed offsets but no checkpoint in {directory} records them; "
        "point --checkpoint-dir at that group's checkpoints, or start a new --group"
    )


CHECKPOINT_STAGE = "checkpoint"


def restore_elements(path: str, stage: str) -> Iterator[tuple[str, Restore]]:
    """Read in the worker: ``(shard, Restore)`` for every shard of ``stage`` in the checkpoint at ``path``.

    The checkpoint stage itself (``CHECKPOINT_STAGE``) gets every snapshot, marked as restored.
    """
    with open(path, "rb") as source:
        checkpoint: Checkpoint = pickle.load(source)
    for snapshot in checkpoint.snapshots.values():
        if stage == CHECKPOINT_STAGE:
            yield CHECKPOINT_STAGE, Restore(dataclasses.replace(snapshot, restored=True))
        elif snapshot.stage == stage:
            yield snapshot.shard, Restore(snapshot)


def restore_input(pipeline: beam.Pipeline, plan: ResumePlan | None, stage: str) -> Any | None:
    """The PCollection of ``stage``'s restore elements, or None on a fresh start."""
    if plan is None or plan.checkpoint_file is None:
        return None
    return (
        pipeline
        | f"Checkpoint{stage}" >> beam.Create([str(plan.checkpoint_file)])
        | f"Restore{stage}" >> beam.FlatMap(restore_elements, stage)
    )


StageKey = tuple[str, str]  # (stage, shard)


def fold_snapshots(
    bases: dict[StageKey, StageSnapshot], held: Iterable[StageSnapshot], at_us: int, partial: bool = False
) -> tuple[dict[StageKey, StageSnapshot], list[StageSnapshot], bool]:
    """The cut at ``at_us``: every stage shard's state after its latest firing labelled ``<= at_us``.

    ``bases``: the shards' complete snapshots of the previous cut; ``held``: the snapshots since, in
    arrival order. Whole states: the latest arrival labelled ``<= at_us`` wins (a restored one never
    supersedes a fresh one). Part-wise: the deltas up to the newest firing labelled ``<= at_us`` are
    folded onto the base in firing order (``seq``), so the result is exactly the shard's state then.
    Returns ``(latest, later, complete)``: the shards' snapshots at the cut, the held ones after it,
    and whether every part-wise shard reached its firing (False while a delta before it is in flight).
    With ``partial`` a chain may start from a delta (compacting held deltas into one per shard).
    """
    latest = dict(bases)
    later: list[StageSnapshot] = []
    complete = True
    by_shard: dict[StageKey, list[StageSnapshot]] = {}
    for snapshot in held:
        by_shard.setdefault((snapshot.stage, snapshot.shard), []).append(snapshot)
    for key, snapshots in by_shard.items():
        current = latest.get(key)
        if all(s.parts is None for s in snapshots):
            for snapshot in snapshots:  # in arrival order: a later firing of a shard supersedes an earlier one
                if snapshot.at_us > at_us:
                    later.append(snapshot)
                elif not (snapshot.restored and current is not None and not current.restored):
                    current = snapshot
        else:
            target = max((s.seq for s in snapshots if s.at_us <= at_us), default=-1)
            for snapshot in sorted(snapshots, key=lambda s: (s.seq, not s.complete)):
                if current is not None and snapshot.seq <= current.seq:
                    continue  # already folded in (a restored or merged snapshot covers it)
                if snapshot.seq > target:
                    later.append(snapshot)
                elif snapshot.complete or (current is None and partial):
                    current = snapshot
                elif current is not None and snapshot.base_seq == current.seq:
                    current = merge_snapshots(current, snapshot)
                else:
                    later.append(snapshot)  # a delta before it is still in flight
            if target >= 0 and (current is None or current.seq < target):
                complete = False
        if current is not None:
            latest[key] = current
    return latest, later, complete


def _compact(snapshots: Any, held: list[StageSnapshot], at_us: int) -> None:
    """Keep in the bag one snapshot per shard up to ``at_us`` (deltas merged) and the later ones."""
    latest, later, _ = fold_snapshots({}, held, at_us, partial=True)
    if len(latest) + len(later) < len(held):
        snapshots.clear()
        for snapshot in [*latest.values(), *later]:
            snapshots.add(snapshot)


@dataclass
class _Progress:
    """The checkpoint stage's bookkeeping: the newest label the watermark has passed, the newest cut written."""

    newest_us: int = -1  # cuts at labels up to here are complete; the next write takes this one
    written_us: int = -1  # the cut of the newest checkpoint written: a cut never moves back
    written_at: float = float("-inf")  # time.monotonic() of that write (for the interval)


class _CheckpointFn(beam.DoFn):  # type: ignore[misc]
    """One key: collects stage snapshots; after the watermark passes a label, writes a checkpoint and commits.

    At most one checkpoint per ``interval_s``: a cut that comes sooner is deferred, not dropped. It is
    written by the next label's timer once the interval is over, by a processing-time timer at the
    interval's end (a stream gone quiet), or when the input ends (a bounded run's last cut), whichever
    comes first; a deferred cut is superseded by any later one.
    """

    # Snapshots since the last cut (deltas, mostly: small); the last cut's complete snapshots apart, read
    # only when a cut is written, not at every label's timer.
    SNAPSHOTS = BagStateSpec("snapshots", PickleCoder())
    BASES = ReadModifyWriteStateSpec("bases", PickleCoder())
    PROGRESS = ReadModifyWriteStateSpec("progress", PickleCoder())
    WRITE = TimerSpec("write", TimeDomain.WATERMARK)
    DEFERRED = TimerSpec("deferred", TimeDomain.REAL_TIME)
    END = TimerSpec("end", TimeDomain.WATERMARK)

    def __init__(
        self,
        directory: Path,
        client: KafkaClient,
        group: str,
        start_offsets: Offsets,
        source_stages: Sequence[tuple[str, str]],
        interval_s: float,
        resumed_at_us: int = -1,
    ) -> None:
        self.directory, self.client, self.group = Path(directory), client, group
        self.start_offsets = start_offsets
        self.source_stages = list(source_stages)
        self.interval_s = interval_s
        # After a restart: the restored checkpoint's cut. Cuts up to it would miss restored snapshots
        # labelled after them; the first cut written is a later one.
        self.resumed_at_us = resumed_at_us
        self._consumer: Any = None
        self.written = Metrics.counter("stream", "checkpoints")

    def setup(self) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer({**librdkafka_settings(self.client), "group.id": self.group, "log_level": 3})

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def process(
        self,
        element: tuple[str, Any],
        snapshots: Any = beam.DoFn.StateParam(SNAPSHOTS),  # noqa: B008
        timer: Any = beam.DoFn.TimerParam(WRITE),  # noqa: B008
        end: Any = beam.DoFn.TimerParam(END),  # noqa: B008
        bases: Any = beam.DoFn.StateParam(BASES),  # noqa: B008
    ) -> None:
        end.set(GlobalWindow().max_timestamp())  # fires only when the input ends: a bounded run's last cut
        item = element[1]
        if isinstance(item, Restore):  # the previous checkpoint's snapshots: the base the next cut builds on
            held = bases.read() or {}
            held[(item.snapshot.stage, item.snapshot.shard)] = item.snapshot
            bases.write(held)
            return
        snapshots.add(item)
        # Just after the label: by then the sinks have flushed every output up to and at it.
        timer.set(Timestamp(micros=item.at_us + 1), dynamic_timer_tag=str(item.at_us))

    @on_timer(WRITE)
    def write(
        self,
        fired: Any = beam.DoFn.TimestampParam,
        snapshots: Any = beam.DoFn.StateParam(SNAPSHOTS),  # noqa: B008
        progress_state: Any = beam.DoFn.StateParam(PROGRESS),  # noqa: B008
        deferred: Any = beam.DoFn.TimerParam(DEFERRED),  # noqa: B008
        bases: Any = beam.DoFn.StateParam(BASES),  # noqa: B008
    ) -> None:
        progress = progress_state.read() or self._fresh_progress()
        # Timers of several labels can fire out of order: the watermark has passed the newest of them, so
        # the cut is always taken there (an earlier label's cut, taken after a later one, would miss the
        # snapshots that one superseded).
        progress.newest_us = max(progress.newest_us, fired.micros - 1)
        wait_s = progress.written_at + self.interval_s - time.monotonic()
        if wait_s <= 0:
            self._write_cut(snapshots, bases, progress, progress.newest_us)
        elif progress.newest_us > progress.written_us:
            _compact(snapshots, list(snapshots.read()), progress.newest_us)
            deferred.set(Timestamp.now() + Duration(micros=int(wait_s * 1e6) + 1))
        progress_state.write(progress)

    @on_timer(DEFERRED)
    def write_deferred(
        self,
        snapshots: Any = beam.DoFn.StateParam(SNAPSHOTS),  # noqa: B008
        progress_state: Any = beam.DoFn.StateParam(PROGRESS),  # noqa: B008
        bases: Any = beam.DoFn.StateParam(BASES),  # noqa: B008
    ) -> None:
        progress = progress_state.read() or self._fresh_progress()
        self._write_cut(snapshots, bases, progress, progress.newest_us)
        progress_state.write(progress)

    @on_timer(END)
    def write_last(
        self,
        snapshots: Any = beam.DoFn.StateParam(SNAPSHOTS),  # noqa: B008
        progress_state: Any = beam.DoFn.StateParam(PROGRESS),  # noqa: B008
        deferred: Any = beam.DoFn.TimerParam(DEFERRED),  # noqa: B008
        bases: Any = beam.DoFn.StateParam(BASES),  # noqa: B008
    ) -> None:
        """The input has ended: every snapshot is in, so the cut goes to the newest label (however soon)."""
        progress = progress_state.read() or self._fresh_progress()
        labels = [s.at_us for s in snapshots.read() if not s.restored]
        progress.newest_us = max([progress.newest_us, *labels])
        self._write_cut(snapshots, bases, progress, progress.newest_us)
        progress_state.write(progress)
        deferred.clear()  # nothing left to defer: the run need not wait for it

    def _fresh_progress(self) -> _Progress:
        return _Progress(newest_us=self.resumed_at_us, written_us=self.resumed_at_us)

    def _write_cut(self, snapshots: Any, bases: Any, progress: _Progress, at_us: int) -> None:
        """Write and commit the cut at ``at_us`` unless it is empty, not past the newest written, or a
        part-wise shard's delta before it is still in flight (a later cut then takes it)."""
        held = list(snapshots.read())
        latest, later, complete = fold_snapshots(bases.read() or {}, held, at_us)
        if not latest or at_us <= progress.written_us or not complete:
            _compact(snapshots, held, at_us)
            return
        checkpoint = Checkpoint(self.group, at_us, self._resume_offsets(latest, at_us), latest)
        save_checkpoint(self.directory, checkpoint)
        self._commit(checkpoint.offsets)
        bases.write(latest)
        snapshots.clear()
        for snapshot in later:
            snapshots.add(snapshot)
        progress.written_us, progress.written_at = at_us, time.monotonic()
        self.written.inc()

    def _resume_offsets(self, latest: dict[tuple[str, str], StageSnapshot], at_us: int) -> Offsets:
        """Per partition, the end of the prefix every source stage shard took in from batches before ``at_us``."""
        offsets: Offsets = {}
        for topic, parts in self.start_offsets.items():
            for partition, start in parts.items():
                ends = []
                for key in self.source_stages:
                    snapshot = latest.get(key)
                    received = snapshot.received if snapshot is not None else None
                    ranges = received.ranges(before_us=at_us) if received is not None else {}
                    ends.append(prefix_end(ranges, (topic, partition), start))
                offsets.setdefault(topic, {})[partition] = min(ends, default=start)
        return offsets

    def _commit(self, offsets: Offsets) -> None:
        from confluent_kafka import TopicPartition

        positions = [TopicPartition(t, p, o) for t, parts in offsets.items() for p, o in parts.items()]
        if positions:
            self._consumer.commit(offsets=positions, asynchronous=False)


def write_checkpoints(
    snapshots: Iterable[Any],
    sink_outputs: Iterable[Any],
    plan: ResumePlan,
    directory: Path,
    client: KafkaClient,
    group: str,
    source_stages: Sequence[tuple[str, str]],
    interval_s: float,
) -> Any:
    """The checkpoint stage: stage snapshots and the sinks' (empty) outputs in, checkpoint files and commits out."""
    inputs = [*snapshots, *sink_outputs]
    pipeline = inputs[0].pipeline
    restored = restore_input(pipeline, plan, CHECKPOINT_STAGE)
    merged = tuple(inputs) | "AllSnapshots" >> beam.Flatten()
    keyed = merged | "OneCheckpointKey" >> beam.Map(lambda s: (CHECKPOINT_STAGE, s))
    if restored is not None:
        keyed = (keyed, restored) | "WithRestoredSnapshots" >> beam.Flatten()
    resumed_at_us = plan.checkpoint.at_us if plan.checkpoint is not None else -1
    fn = _CheckpointFn(directory, client, group, plan.start_offsets, source_stages, interval_s, resumed_at_us)
    return keyed | "WriteCheckpoints" >> beam.ParDo(fn).with_input_types(beam.typehints.Tuple[str, Any])
