"""Kafka for Beam in Python: a splittable-DoFn source and a sink that acknowledges per bundle.

**Source** (``ReadKafka``). One restriction holds every partition of every topic read: its next
offset and stop offset (``SourceRestriction``), read by one consumer. Prism takes an SDF's output
watermark from the last bundle's residual only: with one restriction per partition, an idle
partition's jump to "now" made the other partitions' backlog late (records lost), and one
restriction per topic does the same across topics; the source is the unit that resumes together.
(The cost: one reader per source; on a cluster the keyed stages downstream carry the parallelism.)
The watermark is the minimum over the partitions that have records to deliver: a partition
contributes the latest event time it delivered minus ``out_of_orderness``, and a partition idle at
its log end (reported so, and its high watermark as of the consumer's latest fetch agreeing) is
left out: whatever it gets next is written after what the others delivered, so a sparse topic does
not hold back event-time timers (cross-partition skew beyond ``out_of_orderness`` counts as late).
When every partition is at its log end the watermark is the newest of them, or the wall clock
minus ``idle_slack`` if that is later. A partition that has neither delivered nor reported its log
end holds the watermark where it is, and a call never reports a watermark past the earliest record
it output (Prism would otherwise see that record behind the watermark it arrived with).
Progress is reported as a fraction only (a byte-based ``completed`` can be NaN, which the SDK's
split arithmetic cannot take). Records go out in batches (``SourceBatch``), one output element per
partition and poll, timestamped with the batch's earliest event time, so per-element overhead
stays low. A batch names the offset range it covers, from where the previous batch of its
partition ended: consecutive batches tile the partition, which is what checkpoints record
(``pipelines/checkpoint.py``). ``start_offsets`` resumes a topic at given offsets, and
``cut_at`` keeps batches from straddling given offsets, so a replay after a restore hands each
stateful stage whole batches it either has or has not seen.

*Bounded* mode reads up to the end offsets seen when the restriction was created, then finishes
(tests, replays, backfills); *unbounded* mode never finishes and checkpoints itself every
``poll_budget_s`` (``defer_remainder``), which is where a runner takes its checkpoints. A runner sees
a call's outputs and new watermark only when it returns, so a call also returns as soon as every
partition is at its log end, and after ``bundle_s`` of delivering records: under a steady stream
the partitions rarely are all at their end at once, and one call would otherwise hold a whole
``poll_budget_s`` of records and event time back from the stages downstream.

**Sink** (``WriteKafka``). Produces with librdkafka (idempotent, ``acks=all``) and flushes in
``finish_bundle``: a bundle completes only after Kafka acknowledged every record of it, so a
runner that retries a failed bundle re-sends rather than loses. With ``skip_published`` it first
reads the identities already on its topics (an alert's id, a dead letter's source position) and
never writes one twice, which makes replays and restarts idempotent on the topics.

**Security.** Source and sink take the shared Kafka settings (``argus.infra.clients``: SASL, TLS, the
principal) resolved once where the pipeline is built, as ``PortableKafkaSettings`` pickled into
the DoFns, so every worker connects to the same cluster as the same principal. Passwords are not
in them: they travel as references (the password file's path, the variable's name) and are read in
``setup`` on the worker, so no password is in the pickled pipeline, its options or argv.
"""

from __future__ import annotations

import functools
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics.metric import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Duration, Timestamp

from argus.infra.clients import PortableKafkaSettings, librdkafka_conf, portable_kafka_settings

__all__ = [
    "KafkaRecord",
    "OutRecord",
    "ReadKafka",
    "SourceBatch",
    "SourceRestriction",
    "WriteKafka",
    "client_settings",
    "librdkafka_settings",
    "watermark_offsets",
]

START_POSITIONS = ("earliest", "latest")
# How long the sink keeps retrying a record (a broker restart, a leader election) before it fails the bundle.
DELIVERY_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """One consumed record; ``timestamp_ms`` is Kafka's record timestamp."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to produce; ``identity`` names it for ``skip_published`` (None: always write)."""

    topic: str
    key: bytes | None
    value: bytes
    identity: str | None = None


@dataclass(frozen=True, slots=True)
class SourceBatch:
    """Decoded records of one partition covering ``[start, end)``; ``start`` is where its previous batch ended."""

    topic: str
    partition: int
    start: int
    end: int
    items: list[Any]


# topic -> partition -> offset
Offsets = dict[str, dict[int, int]]
# topic -> partition -> offsets no batch may straddle
Cuts = dict[str, dict[int, list[int]]]

# decode(record) -> (element to emit, event time in seconds, None to use Kafka's timestamp, or NO_EVENT_TIME)
Decoder = Callable[[KafkaRecord], tuple[Any, float | None]]
# What ``decode`` gives a record that has no event time (a rejected one): it neither moves its partition's
# watermark nor times its batch. Its Kafka timestamp would: the wall clock's, for a record appended during a
# replay of older events, would put the watermark past the events after it and make them all late.
NO_EVENT_TIME = -math.inf


def _raw_record(record: KafkaRecord) -> tuple[Any, float | None]:
    return record, None


# Where a Beam Kafka client connects and as whom: settings resolved where the pipeline is built (the secrets
# by reference, read in the worker from their file or variable), or a bootstrap to resolve here.
KafkaClient = PortableKafkaSettings | str | None


def client_settings(client: KafkaClient) -> PortableKafkaSettings:
    """``client`` as portable settings (a bootstrap or None resolves the shared settings now)."""
    return client if isinstance(client, PortableKafkaSettings) else portable_kafka_settings(client)


def librdkafka_settings(client: KafkaClient) -> dict[str, Any]:
    """The shared Kafka settings (``argus.infra.clients``) in librdkafka's names, secrets read now."""
    return librdkafka_conf(client_settings(client).resolve(), client="the streaming Kafka clients")


# --- the restriction -------------------------------------------------------------------------
# (topic, partition)
Partition = tuple[str, int]


@dataclass
class SourceRestriction:
    """Every partition the source reads: the next offset to read and the stop offset (None: unbounded)."""

    start: dict[Partition, int]
    stop: dict[Partition, int | None] = field(default_factory=dict)

    def remaining(self) -> int | None:
        """Records left in a bounded restriction (None when unbounded)."""
        if any(s is None for s in self.stop.values()):
            return None
        return sum(max(0, int(self.stop[p] or 0) - o) for p, o in self.start.items())

    def is_done(self, next_offsets: dict[Partition, int]) -> bool:
        return all(s is not None and next_offsets[p] >= s for p, s in self.stop.items())


class SourceTracker(RestrictionTracker):  # type: ignore[misc]
    """Claims ``(topic, partition, offset)``: every record of that partition up to ``offset`` is consumed.

    Splits only at the claimed position (``fraction_of_remainder == 0``, a checkpoint): the
    primary keeps what was claimed, the residual resumes every partition where it stopped.
    """

    def __init__(self, restriction: SourceRestriction) -> None:
        self._restriction = restriction
        self._next = dict(restriction.start)
        self._initial_remaining = restriction.remaining()

    def current_restriction(self) -> SourceRestriction:
        return self._restriction

    def try_claim(self, position: tuple[str, int, int]) -> bool:
        topic, partition, offset = position
        where = (topic, partition)
        stop = self._restriction.stop.get(where)
        if where not in self._next or offset < self._next[where]:
            raise ValueError(f"claim of {position} behind {topic}/{partition}'s next offset {self._next.get(where)}")
        if stop is not None and offset >= stop:
            return False
        self._next[where] = offset + 1
        return True

    def try_split(self, fraction_of_remainder: float) -> tuple[SourceRestriction, SourceRestriction] | None:
        if fraction_of_remainder != 0:
            return None
        current = self._restriction
        if current.is_done(self._next):
            return None
        primary = SourceRestriction(dict(current.start), dict(self._next))
        residual = SourceRestriction(dict(self._next), dict(current.stop))
        self._restriction = primary
        return primary, residual

    def check_done(self) -> None:
        if not self._restriction.is_done(self._next):
            left = {f"{t}/{p}": (self._next[(t, p)], s) for (t, p), s in self._restriction.stop.items()}
            raise ValueError(f"restriction not fully claimed (next, stop): {left}")

    def current_progress(self) -> RestrictionProgress:
        total = self._initial_remaining
        if not total:
            return RestrictionProgress(fraction=0.0)
        done = sum(self._next[p] - o for p, o in self._restriction.start.items())
        return RestrictionProgress(fraction=min(1.0, max(0.0, done / total)))

    def is_bounded(self) -> bool:
        return self._restriction.remaining() is not None

    def next_offsets(self) -> dict[Partition, int]:
        return dict(self._next)


class SourceRestrictionProvider(RestrictionProvider):  # type: ignore[misc]
    """Builds the initial restriction of the topics from the broker's offsets when the element arrives."""

    def __init__(
        self, client: PortableKafkaSettings, start: str, bounded: bool, start_offsets: Offsets | None = None
    ) -> None:
        self.client, self.start, self.bounded = client, start, bounded
        self.start_offsets = start_offsets or {}

    def initial_restriction(self, topics: Sequence[str]) -> SourceRestriction:
        from confluent_kafka import Consumer

        consumer = Consumer({**librdkafka_settings(self.client), "group.id": "argus-stream-offsets"})
        try:
            start: dict[Partition, int] = {}
            stop: dict[Partition, int | None] = {}
            for topic in topics:
                meta = consumer.list_topics(topic, timeout=30)
                info = meta.topics.get(topic)
                if info is None or info.error is not None or not info.partitions:
                    raise ValueError(f"topic {topic} does not exist; create the topic layout with `argus kafka up`")
                given = self.start_offsets.get(topic, {})
                for partition in sorted(info.partitions):
                    low, high = watermark_offsets(consumer, topic, partition)
                    if partition in given:  # resumed (a checkpoint): never before what the log still holds
                        start[(topic, partition)] = max(int(low), int(given[partition]))
                    else:
                        start[(topic, partition)] = int(low if self.start == "earliest" else high)
                    stop[(topic, partition)] = int(high) if self.bounded else None
            return SourceRestriction(start, stop)
        finally:
            consumer.close()

    def create_tracker(self, restriction: SourceRestriction) -> SourceTracker:
        return SourceTracker(restriction)

    def split(self, topics: Sequence[str], restriction: SourceRestriction) -> Iterator[SourceRestriction]:
        yield restriction  # one restriction for the whole source (see the module doc)

    def restriction_size(self, topics: Sequence[str], restriction: SourceRestriction) -> float:
        remaining = restriction.remaining()
        return float(remaining) if remaining is not None else 1.0

    def truncate(self, topics: Sequence[str], restriction: SourceRestriction) -> SourceRestriction | None:
        # On drain, a bounded restriction is read to its end; an unbounded one stops where it is.
        return restriction if restriction.remaining() is not None else None


# --- the source DoFn ------------------------------------------------------------------------
class _ReadTopicsFn(beam.DoFn, SourceRestrictionProvider):  # type: ignore[misc]
    """The splittable DoFn; it is its own restriction provider (``RestrictionParam()`` binds to it)."""

    def __init__(
        self,
        client: PortableKafkaSettings,
        start: str,
        bounded: bool,
        decode: Decoder,
        out_of_orderness_s: float,
        idle_slack_s: float,
        poll_budget_s: float,
        max_batch: int,
        start_offsets: Offsets | None = None,
        cut_at: Cuts | None = None,
        bundle_s: float = 0.25,
    ) -> None:
        SourceRestrictionProvider.__init__(self, client, start, bounded, start_offsets)
        self.cut_at = {t: {p: sorted(set(c)) for p, c in parts.items()} for t, parts in (cut_at or {}).items()}
        self.decode = decode
        self.out_of_orderness_s = out_of_orderness_s
        self.idle_slack_s = idle_slack_s
        self.poll_budget_s = poll_budget_s
        self.bundle_s = bundle_s
        self.max_batch = max_batch
        self._consumer: Any = None
        # Partition -> the offset at which this consumer last reported its log end. Under a steady stream a call
        # ends (``bundle_s``) before a quiet partition's new end report gets through the busy partitions' records,
        # so the end is remembered across calls (and confirmed by the high watermark, ``_idle``).
        self._ends: dict[Partition, int] = {}
        # Partition -> (next offset, latest event time delivered less the out-of-orderness), kept across calls
        # so that a source at its log end can follow its newest partition; used only where the restriction
        # resumes at that offset. Lost with the worker: then the watermark waits for the partition.
        self._latest: dict[Partition, tuple[int, float]] = {}
        self.records = Metrics.counter("kafka", "records_read")
        self.transient = Metrics.counter("kafka", "transient_errors")
        self.refetched = Metrics.counter("kafka", "records_refetched")

    def setup(self) -> None:
        from confluent_kafka import Consumer

        settings = librdkafka_settings(self.client)
        self._ends, self._latest = {}, {}
        self._consumer = Consumer(
            {
                **settings,
                "group.id": "argus-stream",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,
                "log_level": 3,
            }
        )

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        topics: Sequence[str],
        tracker: Any = beam.DoFn.RestrictionParam(),  # noqa: B008
        estimator: Any = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),  # noqa: B008
    ) -> Iterator[Any]:
        yield from self._read(tracker, estimator)

    def _read(self, tracker: Any, estimator: Any) -> Iterator[Any]:
        from confluent_kafka import KafkaError, TopicPartition

        restriction: SourceRestriction = tracker.current_restriction()
        next_offsets = dict(restriction.start)
        live = {p for p, o in next_offsets.items() if (stop := restriction.stop.get(p)) is None or o < stop}
        if not live:
            return  # nothing left: the restriction is done as given
        consumer = self._consumer
        consumer.assign([TopicPartition(t, p, next_offsets[(t, p)]) for t, p in sorted(live)])
        current = estimator.current_watermark()
        floor = current.micros / 1e6 if current is not None and current > MIN_TIMESTAMP else None
        partition_wm: dict[Partition, float | None] = dict.fromkeys(live, floor)
        for resumed in live:
            resumed_at, latest_s = self._latest.get(resumed, (-1, 0.0))
            if resumed_at == next_offsets[resumed]:
                partition_wm[resumed] = latest_s if floor is None else max(floor, latest_s)
        # At its log end: reported so by this consumer, and nothing delivered since (an idle partition).
        at_end: dict[Partition, bool] = {p: self._ends.get(p) == next_offsets[p] for p in live}
        started = time.monotonic()
        deadline = started + self.poll_budget_s
        read_any = False  # records delivered in this call: resume soon; none: the source is idle
        earliest_out: float | None = None  # the earliest timestamp this call output
        expected = dict(next_offsets)  # the next offset each partition may deliver
        try:
            while live:
                messages = consumer.consume(num_messages=self.max_batch, timeout=0.2)
                batches: dict[Partition, list[KafkaRecord]] = {}
                for message in messages:
                    error = message.error()
                    where: Partition = (str(message.topic()), int(message.partition() or 0))
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            if where in expected:
                                at_end[where] = True
                                self._ends[where] = expected[where]
                            continue
                        if _transient(error):  # e.g. the broker restarting: librdkafka reconnects and resumes
                            self.transient.inc()
                            continue
                        raise RuntimeError(f"Kafka error reading {where[0]}: {error}")
                    if where not in live:
                        continue
                    offset = int(message.offset() or 0)
                    stop = restriction.stop.get(where)
                    if stop is not None and offset >= stop:
                        continue
                    if offset < expected[where]:
                        # Delivered before: librdkafka re-fetches from an older position after some
                        # broker restarts (offset reset); re-emitting would apply events twice.
                        self.refetched.inc()
                        continue
                    expected[where] = offset + 1
                    at_end[where] = False
                    self._ends.pop(where, None)
                    _, stamp = message.timestamp()
                    batches.setdefault(where, []).append(
                        KafkaRecord(where[0], where[1], offset, message.key(), message.value(), int(stamp))
                    )
                for where, records in batches.items():
                    topic, partition = where
                    for piece, end in _cut(records, self.cut_at.get(topic, {}).get(partition, ())):
                        if not tracker.try_claim((topic, partition, end - 1)):
                            return
                        first, next_offsets[where] = next_offsets[where], end
                        decoded = [self.decode(r) for r in piece]
                        times = [
                            t if t is not None else r.timestamp_ms / 1e3
                            for (_, t), r in zip(decoded, piece, strict=True)
                            if t != NO_EVENT_TIME
                        ]
                        self.records.inc(len(piece))
                        previous = partition_wm[where]
                        if times:
                            latest = max(times) - self.out_of_orderness_s
                            latest = latest if previous is None else max(previous, latest)
                            partition_wm[where] = latest
                            self._latest[where] = (end, latest)
                            stamp_s = min(times)
                        else:  # nothing with an event time: the watermark stays, the batch is timed where it stands
                            known = [v for v in (previous, floor) if v is not None]
                            stamp_s = max(known) if known else min(r.timestamp_ms / 1e3 for r in piece)
                            if previous is not None:
                                self._latest[where] = (end, previous)
                        batch = SourceBatch(topic, partition, first, end, [i for i, _ in decoded])
                        earliest_out = stamp_s if earliest_out is None else min(earliest_out, stamp_s)
                        yield TimestampedValue(batch, Timestamp(stamp_s))
                # Bounded partitions that reached their stop offset are finished.
                for where in list(live):
                    stop = restriction.stop.get(where)
                    if stop is not None and next_offsets[where] >= stop:
                        live.discard(where)
                        partition_wm.pop(where, None)
                    elif stop is not None and at_end[where]:
                        # The log ends before the stop offset (e.g. transaction markers): claim up to it.
                        if not tracker.try_claim((*where, stop - 1)):
                            return
                        next_offsets[where] = stop
                        live.discard(where)
                        partition_wm.pop(where, None)
                idle = self._idle(at_end, expected)
                self._advance_watermark(estimator, partition_wm, idle, earliest_out)
                read_any = read_any or bool(batches)
                # Caught up (every partition at its log end), or records delivered for ``bundle_s``: end the
                # bundle now, so its outputs and the new watermark reach the runner at once instead of after
                # the rest of the budget (a runner sees an SDF's watermark only when the bundle returns its
                # residual). With records still waiting the residual resumes at once.
                now = time.monotonic()
                caught_up = all(idle.get(p, False) for p in live)
                delivered_enough = read_any and now - started >= self.bundle_s
                if live and (caught_up or delivered_enough or now >= deadline):
                    delay = 0.5 if not read_any else 0.05 if caught_up else 0.0
                    tracker.defer_remainder(Duration(seconds=delay))
                    return
        finally:
            consumer.unassign()

    def _idle(self, at_end: dict[Partition, bool], expected: dict[Partition, int]) -> dict[Partition, bool]:
        """Partitions at their log end whose high watermark (as of the consumer's latest fetch) confirms it.

        A partition's end was reported at some fetch; records written to it since may still sit behind the
        records of other partitions in the consumer's queue, and must not become late when those advance the
        watermark. The fetch that brought the other partitions' records also brought this one's high watermark.
        """
        from confluent_kafka import TopicPartition

        idle = {}
        for where, reported in at_end.items():
            if reported and where in expected:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(*where), cached=True)
                reported = high is not None and 0 <= high <= expected[where]
            idle[where] = reported
        return idle

    def _advance_watermark(
        self,
        estimator: Any,
        partition_wm: dict[Partition, float | None],
        at_end: dict[Partition, bool],
        earliest_out: float | None = None,
    ) -> None:
        """The minimum over partitions with records to deliver; idle ones (at their log end) are left out.

        Never past ``earliest_out``, the earliest timestamp output in this call: Prism takes the stage's
        output watermark from the residual alone, so a batch output behind the watermark it returns with
        would reach the stages downstream late (its event-time timers behind their watermark).
        """
        if not partition_wm:
            return
        active = [value for where, value in partition_wm.items() if not at_end.get(where)]
        if any(value is None for value in active):
            return  # a partition that has neither delivered nor reported its log end holds the watermark
        if active:
            candidate = min(v for v in active if v is not None)
        else:  # the whole source is at its log end: the newest it delivered, or the wall clock minus the slack
            delivered = [value for value in partition_wm.values() if value is not None]
            candidate = max([*delivered, time.time() - self.idle_slack_s])
        if earliest_out is not None:
            candidate = min(candidate, earliest_out)
        watermark = Timestamp(candidate)
        current = estimator.current_watermark()
        if (current is None or watermark > current) and watermark < MAX_TIMESTAMP:
            estimator.set_watermark(watermark)


def _cut(records: list[KafkaRecord], cuts: Sequence[int]) -> Iterator[tuple[list[KafkaRecord], int]]:
    """``records`` (ascending offsets) as (piece, end offset) pairs that never straddle a cut.

    A piece cut at ``c`` ends at ``c`` (not after its last record), so the next piece starts at ``c``
    even where the log has no record at ``c`` (a transaction marker).
    """
    inner = [c for c in cuts if records[0].offset < c <= records[-1].offset]
    piece: list[KafkaRecord] = []
    index = 0
    for record in records:
        if index < len(inner) and record.offset >= inner[index]:
            while index + 1 < len(inner) and record.offset >= inner[index + 1]:
                index += 1
            yield piece, inner[index]
            piece = []
            index += 1
        piece.append(record)
    yield piece, records[-1].offset + 1


def watermark_offsets(consumer: Any, topic: str, partition: int, attempts: int = 20) -> tuple[int, int]:
    """(low, high) offsets of a partition; retried while a new topic's leader is still being elected."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    for attempt in range(attempts):
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0]
            leaderless = error.code() in (
                KafkaError.NOT_LEADER_FOR_PARTITION,
                KafkaError.LEADER_NOT_AVAILABLE,
                KafkaError.UNKNOWN_TOPIC_OR_PART,
            )
            if attempt == attempts - 1 or not (leaderless or _transient(error)):
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _transient(error: Any) -> bool:
    """Connection-level errors librdkafka recovers from by itself; a fatal or topic error is not one."""
    from confluent_kafka import KafkaError

    if error.fatal():
        return False
    return bool(error.retriable()) or error.code() in (
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._RESOLVE,
    )


class ReadKafka(beam.PTransform):  # type: ignore[misc]
    """Read ``topics`` as ``SourceBatch``es of ``decode(record)`` elements, timestamped by event time.

    Args:
        topics: topic names; one restriction covers every partition of all of them.
        bootstrap: Kafka bootstrap servers (None: ``KAFKA_BOOTSTRAP`` / argus.toml / the local broker), or the
            client settings (``argus.infra.clients.portable_kafka_settings``), resolved here in either case.
        decode: ``record -> (element, event time in seconds or None)``; None uses Kafka's timestamp,
            ``NO_EVENT_TIME`` (a rejected record) leaves the watermark where it is.
        start: ``earliest`` (replay the retained log) or ``latest`` (only what arrives from now on).
        bounded: stop at the end offsets seen at start.
        out_of_orderness_s: how far a record may trail the newest event of the least advanced busy partition
            without being late.
        idle_slack_s: with every partition at its log end, the watermark follows the wall clock minus this.
        poll_budget_s: an unbounded read checkpoints itself this often.
        bundle_s: a read that is delivering records returns (its outputs and watermark to the runner) after
            this long.
        max_batch: records per poll.
        start_offsets: topic -> partition -> offset to resume at (others: ``start``).
        cut_at: topic -> partition -> offsets no batch may straddle.
    """

    def __init__(
        self,
        topics: Sequence[str],
        bootstrap: KafkaClient = None,
        decode: Decoder = _raw_record,
        start: str = "earliest",
        bounded: bool = False,
        out_of_orderness_s: float = 5.0,
        idle_slack_s: float = 10.0,
        poll_budget_s: float = 2.0,
        max_batch: int = 5_000,
        start_offsets: Offsets | None = None,
        cut_at: Cuts | None = None,
        bundle_s: float = 0.25,
    ) -> None:
        super().__init__()
        if start not in START_POSITIONS:
            raise ValueError(f"start must be one of {', '.join(START_POSITIONS)}, not {start!r}")
        if not topics:
            raise ValueError("give at least one topic to read")
        self.topics = list(topics)
        self.fn = _ReadTopicsFn(
            client_settings(bootstrap),
            start,
            bounded,
            decode,
            out_of_orderness_s,
            idle_slack_s,
            poll_budget_s,
            max_batch,
            start_offsets,
            cut_at,
            min(bundle_s, poll_budget_s),
        )

    def expand(self, pbegin: Any) -> Any:
        return pbegin | "Topics" >> beam.Create([tuple(self.topics)]) | "Read" >> beam.ParDo(self.fn)


# --- the sink --------------------------------------------------------------------------------
# identify(topic, key, value) -> the identity of a record already on a topic (see OutRecord).
Identifier = Callable[[str, bytes | None, bytes], str | None]


def _key_identity(topic: str, key: bytes | None, value: bytes) -> str | None:
    return key.decode() if key else None


# Identities written per sink, shared by every instance of that sink in a worker process: a
# runner may run one sink in several instances at once, and each must skip what another wrote.
_PUBLISHED: dict[str, set[str]] = {}
_PUBLISHED_LOCK = threading.Lock()


class _WriteFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, client: PortableKafkaSettings, skip_published: Sequence[str], identify: Identifier) -> None:
        self.client = client
        self.skip_topics = list(skip_published)
        self.identify = identify
        self.sink_id = uuid.uuid4().hex  # travels with the pickled DoFn: the same for all its instances
        self._producer: Any = None
        self._published: set[str] = set()
        self._errors: list[str] = []
        self.written = Metrics.counter("kafka", "records_written")
        self.skipped = Metrics.counter("kafka", "already_published")

    def setup(self) -> None:
        from confluent_kafka import Producer

        settings = librdkafka_settings(self.client)
        conf = {
            **settings,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "log_level": 3,
            # A failed bundle fails the whole job on some runners (Prism): ride out broker restarts.
            "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000),
        }
        self._producer = Producer(conf)
        with _PUBLISHED_LOCK:
            if self.sink_id not in _PUBLISHED:
                _PUBLISHED[self.sink_id] = set(published_identities(self.client, self.skip_topics, self.identify))
            self._published = _PUBLISHED[self.sink_id]

    def _on_delivery(self, err: Any, _msg: Any, identity: str | None = None) -> None:
        if err is not None:
            self._errors.append(str(err))
            if identity is not None:  # not written after all: a retried bundle must write it
                with _PUBLISHED_LOCK:
                    self._published.discard(identity)

    def process(self, record: OutRecord) -> None:
        if record.identity is not None:
            with _PUBLISHED_LOCK:
                if record.identity in self._published:
                    self.skipped.inc()
                    return
                self._published.add(record.identity)
        callback = functools.partial(self._on_delivery, identity=record.identity)
        while True:
            try:
                self._producer.produce(record.topic, record.value, record.key, on_delivery=callback)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)
        self.written.inc()

    def finish_bundle(self) -> None:
        remaining = self._producer.flush(DELIVERY_TIMEOUT_S + 30)
        if remaining or self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError(f"{remaining} records undelivered, {len(errors)} failed; first error: {errors[:1]}")

    def teardown(self) -> None:
        if self._producer is not None:
            self._producer.flush(30)
            self._producer = None


class WriteKafka(beam.PTransform):  # type: ignore[misc]
    """Produce ``OutRecord``s; each bundle is flushed (acknowledged) before it completes.

    ``skip_published``: topics whose existing records' identities (``identify``) are read at
    start-up; records with an identity already there are not written again. ``bootstrap`` as for ``ReadKafka``.
    """

    def __init__(
        self,
        bootstrap: KafkaClient = None,
        skip_published: Sequence[str] = (),
        identify: Identifier = _key_identity,
    ) -> None:
        super().__init__()
        self.fn = _WriteFn(client_settings(bootstrap), skip_published, identify)

    def expand(self, records: Any) -> Any:
        return records | beam.ParDo(self.fn)


def published_identities(bootstrap: KafkaClient, topics: Iterable[str], identify: Identifier) -> Iterator[str]:
    """The identities of every record on ``topics`` now (read to the end offsets at call time)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    topics = list(topics)
    if not topics:
        return
    consumer = Consumer(
        {
            **librdkafka_settings(bootstrap),
            "group.id": "argus-stream-published",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "log_level": 3,
        }
    )
    try:
        assignment: list[Any] = []
        stops: dict[tuple[str, int], int] = {}
        meta = consumer.list_topics(timeout=30)
        for topic in topics:
            info = meta.topics.get(topic)
            if info is None or info.error is not None:
                continue
            for partition in info.partitions:
                low, high = watermark_offsets(consumer, topic, partition)
                if high > low:
                    assignment.append(TopicPartition(topic, partition, low))
                    stops[(topic, partition)] = high
        if not assignment:
            return
        consumer.assign(assignment)
        open_parts = set(stops)
        while open_parts:
            for message in consumer.consume(num_messages=10_000, timeout=1.0):
                error = message.error()
                where: tuple[str, int] = (str(message.topic()), int(message.partition() or 0))
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(f"Kafka error reading {where[0]}: {error}")
                    open_parts.discard(where)
                    continue
                if int(message.offset() or 0) >= stops[where] - 1:
                    open_parts.discard(where)
                identity = identify(where[0], message.key(), message.value() or b"")
                if identity is not None:
                    yield identity
    finally:
        consumer.close()
