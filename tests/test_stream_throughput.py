"""What keeps the streaming pipeline's per-event cost down, checked by behaviour (never by timing)."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
from typing import Any

import numpy as np
import pandas as pd
import pytest

from argus.detectors.chat_features import _goal_ranks, chat_context_features
from argus.pipelines.kafka_io import (
    NO_EVENT_TIME,
    KafkaRecord,
    SourceBatch,
    SourceRestriction,
    _raw_record,
    _ReadTopicsFn,
)
from argus.pipelines.stream_detectors import _alert_runs, one_native_thread, window_sums


def test_scoring_blocks_run_openmp_on_one_thread_and_restore_it() -> None:
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    before = _openmp_effective_n_threads()
    seen: list[int] = []

    def in_a_worker_thread() -> None:  # the runner calls DoFns from its own threads
        with one_native_thread():
            seen.append(_openmp_effective_n_threads())
        seen.append(_openmp_effective_n_threads())

    worker = threading.Thread(target=in_a_worker_thread)
    worker.start()
    worker.join()
    assert seen == [1, before]
    assert _openmp_effective_n_threads() == before


@pytest.mark.parametrize(
    ("detectors", "workers", "expected"),
    [
        (2, 1, [None, None]),  # one worker: everything on it
        (2, 2, [None, "1"]),  # trolls with the source, fraud on its own
        (2, 3, ["1", "2"]),  # each detector on a worker of its own, the source alone
        (3, 2, [None, "1", None]),
    ],
)
def test_each_detector_gets_a_python_worker(detectors: int, workers: int, expected: list[str | None]) -> None:
    from argus.pipelines.sdk_workers import detector_worker

    assert [detector_worker(i, detectors, workers) for i in range(detectors)] == expected


def test_a_placed_transform_runs_in_an_environment_of_its_own_and_the_rest_in_the_default() -> None:
    """Prism starts one worker per environment: the hint must give the placed stage its own, and nothing else."""
    import apache_beam as beam

    from argus.pipelines.sdk_workers import on_worker

    pipeline = beam.Pipeline()
    source = pipeline | "Source" >> beam.Create([("a", 1)]) | "Parse" >> beam.Map(lambda kv: kv)
    _ = source | "Placed" >> on_worker(beam.Map(lambda kv: kv), "1") | "Sink" >> beam.Map(print)
    _ = source | "Unplaced" >> on_worker(beam.Map(print), None)
    proto = pipeline.to_runner_api()
    env_of = {t.unique_name: t.environment_id for t in proto.components.transforms.values() if t.environment_id}
    assert env_of["Parse"] == env_of["Sink"] == env_of["Unplaced"]
    assert env_of["Placed"] != env_of["Parse"]
    assert set(env_of.values()) == {env_of["Placed"], env_of["Parse"]} <= set(proto.components.environments)


def test_worker_processes_number_their_metrics_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prism keeps one metric id table per job: each SDK worker process numbers its short ids from its own offset."""
    from apache_beam.portability.api import metrics_pb2
    from apache_beam.runners.worker import sdk_worker

    from argus.pipelines.sdk_workers import unique_metric_short_ids

    info = metrics_pb2.MonitoringInfo(urn="beam:metric:element_count:v1", type="beam:metrics:sum_int64:v1")
    ids = []
    for _ in range(2):  # two worker processes, each with its cache
        monkeypatch.setattr(sdk_worker, "SHORT_ID_CACHE", sdk_worker.ShortIdCache())
        unique_metric_short_ids()
        unique_metric_short_ids()  # once per process: a second call changes nothing
        ids.append(sdk_worker.SHORT_ID_CACHE.get_short_id(info))
    assert ids[0] != ids[1]
    assert all(int(i, 16) > 2**24 for i in ids)  # not the 1, 2, ... every unpatched process gives


# A process that has Beam's SDK worker loaded, then the placement module: what an SDK worker does.
LOAD_PLACED_STAGES = (
    "from apache_beam.runners.worker import sdk_worker; import argus.pipelines.sdk_workers; "
    "print(sdk_worker.SHORT_ID_CACHE._last_short_id)"
)


def test_only_the_worker_processes_of_several_sdk_workers_renumber_their_metrics() -> None:
    import subprocess
    import sys

    from argus.pipelines.sdk_workers import PROCESS_WORKERS_ENV

    def last_short_id(**env: str) -> int:
        run = subprocess.run([sys.executable, "-c", LOAD_PLACED_STAGES], env={**os.environ, **env}, capture_output=True)
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    assert last_short_id() == 0  # one worker (--sdk-workers 1), or the submitting process: Beam left as it is
    assert last_short_id(**{PROCESS_WORKERS_ENV: "1"}) >= 2**24


def test_a_beam_without_the_short_id_cache_is_warned_of_and_left_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from apache_beam.runners.worker import sdk_worker

    from argus.pipelines import sdk_workers

    monkeypatch.delattr(sdk_worker, "SHORT_ID_CACHE")
    monkeypatch.delenv(sdk_workers.PROCESS_WORKERS_ENV, raising=False)
    monkeypatch.setenv("PATH", os.environ["PATH"])  # process_worker_args puts this interpreter first
    with caplog.at_level(logging.WARNING, logger="argus.pipelines.sdk_workers"):
        sdk_workers.unique_metric_short_ids()
        assert sdk_workers.process_worker_args() == ["--experiments=use_loopback_process_worker"]
    assert sdk_workers.PROCESS_WORKERS_ENV not in os.environ  # the workers are not asked to patch
    assert len(caplog.messages) == 2
    assert "has no SHORT_ID_CACHE._last_short_id" in caplog.messages[0] and "--sdk-workers 1" in caplog.messages[0]


def test_goal_ranks_by_hand() -> None:
    """Window A: "go" in 3 messages, "left" in 2, "up" in 1 (twice in one message counts once);
    window B is ranked on its own. Ties go to the term (alphabetical), as in the profile job."""
    contexts = ["a", "a", "a", "a", "b", "b"]
    slots = [0, 0, 0, 0, 0, 0]
    terms = [["go", "left"], ["go", "up", "up"], ["go", "left", "x"], ["the"], ["zz"], ["yy"]]
    top, bottom = _goal_ranks(contexts, slots, terms)
    # a: top go=1 left=2 up=3; bottom up=1 left=2 go=3; "x" (one letter) and "the" (stopword) are no goals.
    # b: yy and zz tie at 1: yy first.
    assert top.tolist() == [1, 1, 1, np.inf, 2, 1]
    assert bottom.tolist() == [2, 1, 2, np.inf, 2, 1]


def test_chat_indicators_by_hand() -> None:
    """Copies count per (user, channel, window); links are case-sensitive; caps need three letters."""
    ts = pd.Timestamp("2026-03-01T12:00:00Z")
    rows = [
        ("e1", "u1", "c", ts, "GG EZ", None),
        ("e2", "u1", "c", ts + pd.Timedelta(seconds=5), "GG EZ", None),  # a copy
        ("e3", "u1", "d", ts + pd.Timedelta(seconds=9), "GG EZ", None),  # other channel: not a copy
        ("e4", "u2", "c", ts, "see www.x.io @u1", "anarchy"),
        ("e5", "u2", "c", ts + pd.Timedelta(seconds=1), "  Start ", "democracy"),
    ]
    chat = pd.DataFrame(rows, columns=["event_id", "user_id", "context", "ts", "text", "channel_mode"])
    f = chat_context_features(chat)
    assert f.loc["u1", "chat_spam_ratio"] == pytest.approx(1 / 3)
    assert f.loc["u1", "chat_caps_ratio"] == 1.0  # "GGEZ": four letters, all capitals
    assert f.loc["u2", "chat_link_ratio"] == 0.5 and f.loc["u2", "chat_mention_ratio"] == 0.5
    assert f.loc["u2", "chat_start_share"] == 0.5 and f.loc["u2", "chat_anarchy_mode_share"] == 0.5


def test_window_sums_by_hand() -> None:
    """Per (user, channel, window) rows without a DataFrame: copies, plays-mode counts and the rate
    against the window's norm (channel c: 4 messages from 2 users, norm 2; channel d: 1 from 1)."""
    t0 = 1_772_366_400_000_000  # 2026-03-01T12:00:00Z in epoch microseconds, a window start
    messages = [
        ("e1", "u1", t0, "GG EZ", None, "c"),
        ("e2", "u1", t0 + 5_000_000, "GG EZ", None, "c"),
        ("e3", "u1", t0 + 9_000_000, "GG EZ", None, "d"),
        ("e4", "u2", t0, "see www.x.io @u1", "anarchy", "c"),
        ("e5", "u2", t0 + 1_000_000, "  Start ", "democracy", "c"),
        ("e6", "u2", t0 + 700_000_000, "later", None, "c"),  # the next window
    ]
    rows = window_sums(messages, 600)
    assert [(user, part.slot) for user, part in rows] == [
        ("u1", 2_953_944),
        ("u1", 2_953_944),
        ("u2", 2_953_944),
        ("u2", 2_953_945),
    ]
    u1_c, u1_d, u2_c, u2_next = (part.sums for _, part in rows)
    assert (u1_c["messages"], u1_c["chat_spam_ratio"], u1_c["rate_vs_window_sum"]) == (2.0, 1.0, 1.0)
    assert (u1_d["messages"], u1_d["chat_spam_ratio"], u1_d["rate_vs_window_sum"]) == (1.0, 0.0, 1.0)
    assert (u2_c["anarchy_num"], u2_c["anarchy_den"], u2_c["chat_link_ratio"], u2_c["chat_start_share"]) == (1, 2, 1, 1)
    assert u2_next["windows"] == 1.0 and u2_next["anarchy_den"] == 0.0
    assert [t for t, _ in rows[0][1].times] == [t0, t0 + 5_000_000] and len(rows[0][1].texts) == 1


def test_alert_runs_take_each_user_once_and_one_day() -> None:
    """Flagged snapshots go to one alert call per run: a user seen again or a new day starts the next run."""
    day = 86_400 * 1_000_000
    batch = [(u, {}, set(), [], t) for u, t in [("a", 5), ("b", 6), ("a", 7), ("c", day + 1), ("d", day + 2)]]
    assert list(_alert_runs(batch, [0, 1, 2, 3, 4])) == [[0, 1], [2], [3, 4]]
    assert list(_alert_runs(batch, [1, 3])) == [[1], [3]]
    assert list(_alert_runs(batch, [])) == []


class _Tracker:
    def __init__(self, restriction: SourceRestriction) -> None:
        self.restriction, self.deferred = restriction, None

    def current_restriction(self) -> SourceRestriction:
        return self.restriction

    def try_claim(self, position: tuple[str, int, int]) -> bool:
        return True

    def defer_remainder(self, delay: Any) -> None:
        self.deferred = delay


class _Estimator:
    def __init__(self) -> None:
        self.watermark = None

    def current_watermark(self) -> Any:
        return self.watermark

    def set_watermark(self, value: Any) -> None:
        self.watermark = value


class _CountingConsumer:
    def __init__(self, consumer: Any) -> None:
        self.consumer, self.polls = consumer, 0

    def consume(self, *args: Any, **kwargs: Any) -> Any:
        self.polls += 1
        return self.consumer.consume(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.consumer, name)


@pytest.mark.kafka
def test_a_caught_up_read_returns_its_batches_and_watermark_before_the_poll_budget(kafka_bootstrap: str) -> None:
    """The runner sees an SDF's watermark only when the call returns: a read that reached the log end
    of every partition returns at once, not after the rest of its (here 30-second) budget."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    topic = f"caught-up-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(60)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(10):
        producer.produce(topic, f"v{i}".encode(), partition=i % 2, timestamp=1_700_000_000_000 + i * 1000)
    producer.flush(30)
    source = _ReadTopicsFn(kafka_bootstrap, "earliest", False, _raw_record, 5.0, 1e9, 30.0, 1_000)
    source.setup()
    source._consumer = _CountingConsumer(source._consumer)
    try:
        tracker = _Tracker(SourceRestriction({(topic, 0): 0, (topic, 1): 0}, {(topic, 0): None, (topic, 1): None}))
        estimator = _Estimator()
        out = [v.value for v in source._read(tracker, estimator)]
        polls = source._consumer.polls
        first_watermark = estimator.watermark
        # The runner resumes the residual: nothing new, every partition still at its end.
        resumed = _Tracker(SourceRestriction({(topic, 0): 5, (topic, 1): 5}, {(topic, 0): None, (topic, 1): None}))
        assert list(source._read(resumed, estimator)) == []
    finally:
        source.teardown()
    batches: list[SourceBatch] = out
    records: list[KafkaRecord] = [r for b in batches for r in b.items]
    assert sorted(r.value for r in records) == [f"v{i}".encode() for i in range(10)]
    for partition in (0, 1):  # each partition's batches tile its five offsets
        ranges = sorted((b.start, b.end) for b in batches if b.partition == partition)
        assert ranges[0][0] == 0 and ranges[-1][1] == 5
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert tracker.deferred is not None  # returned to be resumed, the topic not finished
    assert polls <= 10  # a read that kept polling until its 30-second budget ran out polls ~150 times
    # The first call returns with the watermark no later than the earliest record it output (1_700_000_000 s):
    # a runner that takes the watermark from the residual would otherwise see those records late.
    assert first_watermark is not None and first_watermark.micros == 1_700_000_000 * 1_000_000
    # Both partitions read to their end (newest 1_700_000_008 and 1_700_000_009 s): nothing is left to deliver,
    # so the watermark is the newest event time minus the 5 s out-of-orderness.
    assert estimator.watermark is not None and estimator.watermark.micros == (1_700_000_009 - 5) * 1_000_000


def _event_time_or_none(record: KafkaRecord) -> tuple[Any, float | None]:
    """A decoder: the value is the event time in seconds; ``bad`` is a record without one (rejected)."""
    return record, NO_EVENT_TIME if record.value == b"bad" else float(record.value)


@pytest.mark.kafka
def test_a_rejected_record_appended_now_does_not_move_the_watermark_of_a_replay(kafka_bootstrap: str) -> None:
    """Replaying events months old, a malformed record appended now (its Kafka timestamp the wall clock) neither
    moves the watermark nor times a batch past the events after it: they are not late."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    topic = f"replay-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})  # held until the topic exists
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(60)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, b"bad", partition=0)  # stamped now by the producer
    producer.flush(30)
    old = 1_700_000_000
    source = _ReadTopicsFn(kafka_bootstrap, "earliest", False, _event_time_or_none, 5.0, 1e9, 30.0, 1_000)
    source.setup()
    try:
        estimator = _Estimator()
        alone = list(source._read(_Tracker(SourceRestriction({(topic, 0): 0}, {(topic, 0): None})), estimator))
        # Only a record without an event time so far: the watermark is at most the idle rule's (wall clock - slack).
        assert estimator.watermark is None or estimator.watermark.micros < old * 1_000_000
        for i in range(3):
            producer.produce(topic, str(old + i).encode(), partition=0)
        producer.flush(30)
        after = list(source._read(_Tracker(SourceRestriction({(topic, 0): 1}, {(topic, 0): None})), estimator))
    finally:
        source.teardown()
    assert [r.value for b in alone for r in b.value.items] == [b"bad"]
    assert [r.value for b in after for r in b.value.items] == [str(old + i).encode() for i in range(3)]
    assert all(b.timestamp.micros == old * 1_000_000 for b in after)
    assert estimator.watermark is not None and estimator.watermark.micros == (old + 2 - 5) * 1_000_000


def test_a_rejected_record_decodes_to_a_dead_letter_without_an_event_time() -> None:
    from argus.pipelines.stream import decode_event

    (kind, letter), event_time = decode_event(KafkaRecord("events.chat", 2, 41, b"k", b"{not json", 1_800_000_000_000))
    assert kind == "dlq" and letter.identity == "events.chat/2/41"
    assert event_time == NO_EVENT_TIME


def _source(idle_slack_s: float = 1e9) -> _ReadTopicsFn:
    return _ReadTopicsFn("localhost:9", "earliest", False, _raw_record, 5.0, idle_slack_s, 30.0, 1_000)


def test_an_idle_partition_does_not_hold_the_watermark_but_an_unheard_one_does() -> None:
    """Partitions at their log end are left out of the minimum (a sparse topic's last record is hours
    behind the busy ones); a partition that has neither delivered nor reported its end holds it."""
    chat, moderation = ("chat", 0), ("moderation", 0)
    busy, hour_behind = 1_700_000_000.0, 1_699_996_400.0
    estimator = _Estimator()
    source = _source()
    source._advance_watermark(estimator, {chat: busy, moderation: None}, {chat: False, moderation: False})
    assert estimator.watermark is None  # moderation not heard from yet
    source._advance_watermark(estimator, {chat: busy, moderation: hour_behind}, {chat: False, moderation: False})
    assert estimator.watermark.micros == hour_behind * 1_000_000  # moderation has a backlog: it is not late
    source._advance_watermark(estimator, {chat: busy, moderation: hour_behind}, {chat: False, moderation: True})
    assert estimator.watermark.micros == busy * 1_000_000  # moderation at its log end: chat decides
    source._advance_watermark(estimator, {chat: busy - 60, moderation: hour_behind}, {chat: False, moderation: True})
    assert estimator.watermark.micros == busy * 1_000_000  # never back
    # Never past the earliest timestamp the call output (a batch of chat spanning ten minutes).
    source._advance_watermark(estimator, {chat: busy + 600, moderation: hour_behind}, {moderation: True}, busy + 1)
    assert estimator.watermark.micros == (busy + 1) * 1_000_000


def test_a_source_at_its_log_end_follows_the_newest_partition_or_the_wall_clock() -> None:
    chat, moderation, click = ("chat", 0), ("moderation", 0), ("click", 0)
    everything_read = {chat: True, moderation: True, click: True}
    replay = _Estimator()  # event time far behind the wall clock, idle slack switched off
    delivered = {chat: 1_700_000_000.0, moderation: 1_699_990_000.0, click: None}
    _source(1e9)._advance_watermark(replay, delivered, everything_read)
    assert replay.watermark.micros == 1_700_000_000 * 1_000_000
    live = _Estimator()  # the wall clock minus the slack is later than anything delivered
    before = time.time()
    _source(10.0)._advance_watermark(live, delivered, everything_read)
    assert before - 10.0 <= live.watermark.micros / 1e6 <= time.time() - 10.0


@pytest.mark.kafka
def test_a_quiet_topic_does_not_hold_back_a_busy_one(kafka_bootstrap: str) -> None:
    """Two topics in one restriction: a busy one, and a sparse one whose only record is an hour older.
    Once the sparse topic is read to its end, the busy topic's event time alone sets the watermark."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    busy, sparse = f"busy-{uuid.uuid4().hex[:8]}", f"sparse-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(busy, 2, 1), NewTopic(sparse, 2, 1)]).values():
        future.result(60)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    base_ms = 1_700_000_000_000
    producer.produce(sparse, b"old", partition=0, timestamp=base_ms - 3_600_000)
    for i in range(10):
        producer.produce(busy, f"v{i}".encode(), partition=i % 2, timestamp=base_ms + i * 1000)
    producer.flush(30)
    source = _ReadTopicsFn(kafka_bootstrap, "earliest", False, _raw_record, 5.0, 1e9, 30.0, 1_000)
    source.setup()
    start = {(t, p): 0 for t in (busy, sparse) for p in (0, 1)}
    tracker = _Tracker(SourceRestriction(start, dict.fromkeys(start)))
    estimator = _Estimator()
    try:
        out: list[SourceBatch] = [v.value for v in source._read(tracker, estimator)]
        ends = {(b.topic, b.partition): b.end for b in out}
        resumed = _Tracker(SourceRestriction({**start, **ends}, dict.fromkeys(start)))
        assert list(source._read(resumed, estimator)) == []
    finally:
        source.teardown()
    assert sorted(r.value for b in out for r in b.items) == [b"old", *(f"v{i}".encode() for i in range(10))]
    assert tracker.deferred is not None
    # Resumed with every partition at its log end: the newest delivered (busy, 1_700_000_009 s) less the 5 s
    # out-of-orderness, held back neither by the sparse topic's hour-old record nor by its empty partition.
    assert estimator.watermark is not None and estimator.watermark.micros == (1_700_000_009 - 5) * 1_000_000


# --- the payment graph stage: rows that come after their boundary was scored ----------------------------------
HOUR_US = 3_600 * 1_000_000


class _ScoredUsers:
    """A fraud detector stand-in for ``_PaymentGraphFn``'s live model: records whom each boundary scores."""

    def __init__(self) -> None:
        self.users: list[set[str]] = []

    def get(self) -> Any:
        from argus.detectors.fraud import FraudDetector

        scored = self.users

        class Recording(FraudDetector):
            def features_for(self, events: Any, users: Any, rolling: Any = None) -> pd.DataFrame:
                scored.append({str(u) for u in users})
                return pd.DataFrame()  # nothing to score: whom the stage asks for is the point

        return Recording()

    def model_version(self) -> str:
        return "test"


class _Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


def _graph_stage(small_world_events: Any) -> tuple[Any, _ScoredUsers, list[tuple[str, dict[str, Any]]], Any]:
    """The fraud stage on hand-driven state, hourly boundaries; payments of distinct payers without payees."""
    from pathlib import Path

    from argus.pipelines.stream_detectors import StreamSettings, _PaymentGraphFn
    from tests.beam_state import FakeBag, FakeTimer, FakeValue

    stage = _PaymentGraphFn(StreamSettings(model_store=Path("unused"), fraud_interval_s=3_600), "fraud")
    stage._live, stage.late = _ScoredUsers(), _Count()
    payments = small_world_events["payment"].drop_duplicates("user_id").head(3).to_dict("records")
    rows = [("payment", {**row, "counterparty_id": None}) for row in payments]
    state = {"rows": FakeBag(), "ranges": FakeBag(), "done": FakeValue(), "timer": FakeTimer()}
    return stage, stage._live, rows, state


def _deliver(stage: Any, state: dict[str, Any], offset: int, items: list[tuple[str, dict[str, Any], int]]) -> None:
    from argus.pipelines.stream_detectors import _graph_batch

    for key, element in _graph_batch(SourceBatch("events.payment", 0, offset, offset + 1, items), HOUR_US):
        stage.process((key, element), ts=None, **state)


def _fire(stage: Any, state: dict[str, Any], boundary_us: int) -> None:
    state["timer"].tags.discard(str(boundary_us))
    list(stage.score(tag=str(boundary_us), fired=None, rows=state["rows"], ranges=state["ranges"], done=state["done"]))


@pytest.mark.parametrize("own_first", [True, False], ids=["its boundary fires first", "the next fires first"])
def test_a_payment_after_its_boundary_was_scored_is_counted_late_and_its_boundary_scored_again(
    small_world_events: Any, own_first: bool
) -> None:
    """Its user is scored at its own boundary, with the users that boundary scored (as if it had come in time),
    whichever of the two due firings the runner takes first; the next boundary scores only its own users."""
    stage, live, rows, state = _graph_stage(small_world_events)
    (_, first), (_, second), (_, late) = rows
    t0 = 1_790_812_800_000_000  # a whole hour
    _deliver(stage, state, 0, [("payment", first, t0 + 600_000_000), ("payment", second, t0 + HOUR_US + 1)])
    _fire(stage, state, t0 + HOUR_US)
    assert live.users == [{first["user_id"]}]
    # The source let this payment's partition fall behind: it comes after its boundary (t0 + 1 h) was scored.
    _deliver(stage, state, 1, [("payment", late, t0 + 1_800_000_000)])
    assert stage.late.value == 1
    assert state["timer"].tags == {str(t0 + HOUR_US), str(t0 + 2 * HOUR_US)}  # its own boundary again
    for boundary in [t0 + HOUR_US, t0 + 2 * HOUR_US][:: 1 if own_first else -1]:
        _fire(stage, state, boundary)
    assert live.users[1:] == [{first["user_id"], late["user_id"]}, {second["user_id"]}]
    assert state["done"].value == t0 + 2 * HOUR_US


def test_a_boundary_firing_after_a_later_one_has_its_users_scored_with_that_one(small_world_events: Any) -> None:
    stage, live, rows, state = _graph_stage(small_world_events)
    (_, first), (_, second), _ = rows
    t0 = 1_790_812_800_000_000
    _deliver(stage, state, 0, [("payment", first, t0 + 600_000_000), ("payment", second, t0 + HOUR_US + 1)])
    assert state["timer"].tags == {str(t0 + HOUR_US), str(t0 + 2 * HOUR_US)}
    _fire(stage, state, t0 + 2 * HOUR_US)  # both due at once; the runner fires the later one first
    _fire(stage, state, t0 + HOUR_US)
    assert live.users == [{first["user_id"], second["user_id"]}]
    assert stage.late.value == 0
