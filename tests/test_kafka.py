"""Against the real Apache Kafka broker: round trips, dead-lettering, durability across down/up."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from argus.infra.broker import LocalBroker, free_port
from argus.infra.clients import BulkProducer
from argus.infra.procfs import process_stat
from argus.infra.topics import TOPICS, ensure_topics, topic_sizes
from argus.pipelines.topic_validator import validate_topics
from argus.schemas import EVENT_MODELS, EventBase, validate
from argus.world.bad_records import malformed_records
from argus.world.simulate import World
from argus.world.sinks import to_json_lines

pytestmark = pytest.mark.kafka


def _create(bootstrap: str, *names: str, partitions: int = 2) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    admin.close()


def _read_all(bootstrap: str, topic: str, expected: int, timeout_ms: int = 20_000) -> list:  # type: ignore[type-arg]
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=timeout_ms
    )
    records = []
    for record in consumer:
        records.append(record)
        if len(records) >= expected:
            break
    consumer.close()
    return records


def test_topic_layout_is_created_once(kafka_bootstrap: str) -> None:
    first = ensure_topics(kafka_bootstrap, event_partitions=3)
    assert ensure_topics(kafka_bootstrap) == []  # idempotent
    sizes = topic_sizes(kafka_bootstrap)
    assert set(first) <= {t.name for t in TOPICS} <= set(sizes)
    assert sizes["events.chat"]["partitions"] == 3 and sizes["dlq.events"]["partitions"] == 1


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_every_event_type_round_trips_through_the_broker(
    event_type: str, kafka_bootstrap: str, small_world: World, unique_name: str
) -> None:
    table = small_world.day(1)[event_type]
    values = to_json_lines(table)[:300]
    keys = [u.encode() for u in table["user_id"].to_pylist()[: len(values)]]
    _create(kafka_bootstrap, unique_name, partitions=3)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for key, value in zip(keys, values, strict=True):
        producer.send(unique_name, key=key, value=value)
    producer.flush()
    producer.close()
    records = _read_all(kafka_bootstrap, unique_name, len(values))
    assert sorted(r.value for r in records) == sorted(values)
    events = [validate(r.value) for r in records]
    assert all(isinstance(e, EVENT_MODELS[event_type]) for e in events)
    # Keyed by user: every user's events sit in one partition, in event-time order.
    partitions: dict[bytes, set[int]] = {}
    for r in records:
        partitions.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in partitions.values())


def test_bulk_producer_partitions_like_the_java_client(kafka_bootstrap: str, unique_name: str) -> None:
    _create(kafka_bootstrap, unique_name, f"{unique_name}.ref", partitions=4)
    keys = [f"u{i:07d}".encode() for i in range(200)]
    bulk = BulkProducer(kafka_bootstrap)
    bulk.send_many(unique_name, keys, keys)
    bulk.flush()
    reference = KafkaProducer(bootstrap_servers=kafka_bootstrap)  # murmur2, as Java does
    for key in keys:
        reference.send(f"{unique_name}.ref", key=key, value=key)
    reference.flush()
    reference.close()
    bulk_parts = {r.key: r.partition for r in _read_all(kafka_bootstrap, unique_name, len(keys))}
    ref_parts = {r.key: r.partition for r in _read_all(kafka_bootstrap, f"{unique_name}.ref", len(keys))}
    assert bulk_parts == ref_parts and len(bulk_parts) == len(keys)


def test_bad_records_land_in_the_dead_letter_topic_with_reason_and_bytes(
    kafka_bootstrap: str, small_world: World, unique_name: str
) -> None:
    events_topic, dlq_topic = f"{unique_name}.events", f"{unique_name}.dlq"
    _create(kafka_bootstrap, events_topic, partitions=2)
    _create(kafka_bootstrap, dlq_topic, partitions=1)
    good = to_json_lines(small_world.day(0)["payment"])[:500]
    bad = malformed_records(30)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=2**20)
    for value in good:
        producer.send(events_topic, key=b"k", value=value)
    for _, key, value, _ in bad:
        producer.send(events_topic, key=key, value=value)
    producer.flush()
    producer.close()

    report = validate_topics(
        [events_topic], group_id=unique_name, bootstrap=kafka_bootstrap, dlq_topic=dlq_topic, idle_timeout_s=20
    )
    expected_rejects = [reason for *_, reason in bad if reason is not None]
    assert report.valid[events_topic] == len(good) + sum(reason is None for *_, reason in bad)
    assert report.dead_lettered == len(expected_rejects)
    assert sorted(report.rejected.elements()) == sorted(expected_rejects)

    letters = [json.loads(r.value) for r in _read_all(kafka_bootstrap, dlq_topic, len(expected_rejects))]
    assert sorted(letter["reason_code"] for letter in letters) == sorted(expected_rejects)
    sent = {value for _, _, value, reason in bad if reason is not None}
    source = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    for letter in letters:
        original = base64.b64decode(letter["original_b64"])
        assert original in sent
        assert letter["source_topic"] == events_topic and letter["reason"]
        # The recorded offset points at exactly those bytes.
        tp = TopicPartition(events_topic, letter["source_partition"])
        source.assign([tp])
        source.seek(tp, letter["source_offset"])
        fetched = source.poll(timeout_ms=5000, max_records=1)[tp][0]
        assert fetched.value == original
    source.close()

    # A rerun of the same group continues from its committed offsets: nothing is read twice.
    again = validate_topics(
        [events_topic], group_id=unique_name, bootstrap=kafka_bootstrap, dlq_topic=dlq_topic, idle_timeout_s=5
    )
    assert again.dead_lettered == 0 and sum(again.valid.values()) == 0


def test_broker_data_survives_down_and_up(tmp_path: Path) -> None:
    broker = LocalBroker(home=tmp_path / "kafka", port=free_port(), heap="256m")
    broker.up()
    try:
        ensure_topics(broker.bootstrap)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        for i in range(100):
            producer.send("events.click", key=b"u1", value=f"record-{i}".encode())
        producer.flush()
        producer.close()
        assert broker.down() is True
        assert not broker.is_running()
        broker.up()
        values = [r.value for r in _read_all(broker.bootstrap, "events.click", 100)]
        assert values == [f"record-{i}".encode() for i in range(100)]
        assert topic_sizes(broker.bootstrap)["events.click"]["records"] == 100
    finally:
        broker.down()
    assert broker.down() is False  # stopping a stopped broker is harmless


def test_the_pid_file_names_the_broker_only_while_that_process_runs(tmp_path: Path) -> None:
    broker = LocalBroker(home=tmp_path)
    child = subprocess.Popen(["sleep", "60"])
    try:
        stat = process_stat(child.pid)
        assert stat is not None
        broker.pid_file.write_text(f"{child.pid} {stat.started}")
        assert broker.pid() == child.pid
        broker.pid_file.write_text(f"{child.pid} {stat.started - 1}")  # the pid once named an earlier process
        assert broker.pid() is None
        broker.pid_file.write_text(f"{child.pid} {stat.started}")
        child.kill()
        while process_stat(child.pid).state != "Z":  # type: ignore[union-attr]  # exited, not reaped yet
            time.sleep(0.01)
        assert broker.pid() is None
    finally:
        child.kill()
        child.wait()


def test_valid_events_are_not_changed_by_the_trip(kafka_bootstrap: str, small_world: World, unique_name: str) -> None:
    table = small_world.day(2)["chat"]
    raw = to_json_lines(table)[0]
    _create(kafka_bootstrap, unique_name, partitions=1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(unique_name, value=raw)
    producer.flush()
    producer.close()
    (record,) = _read_all(kafka_bootstrap, unique_name, 1)
    event = validate(record.value)
    assert isinstance(event, EventBase)
    assert event.event_id == table["event_id"][0].as_py() and event.ts == table["ts"][0].as_py()
