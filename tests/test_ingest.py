"""The Spark ingest job against the real broker: lake, dead letters, offsets, idempotent reruns."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from argus.world.bad_records import malformed_records
from argus.world.config import WorldConfig
from argus.world.simulate import World
from argus.world.sinks import to_json_lines

pytestmark = pytest.mark.kafka


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.parquet"))
    }


def _produce(bootstrap: str, records: list[tuple[str, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=2**20)
    for topic, value in records:
        producer.send(topic, key=b"k", value=value)
    producer.flush()
    producer.close()


def test_ingest_lake_dead_letters_and_idempotent_reruns(
    spark: object, kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    from argus.jobs.ingest import run_ingest

    chat, payment = f"{unique_name}.chat", f"{unique_name}.payment"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(chat, 2, 1), NewTopic(payment, 2, 1)])
    admin.close()
    world = World(WorldConfig(users=80, days=2, seed=4, events_per_user_day=15.0, profile="dense"))
    day0, day1 = world.day(0), world.day(1)
    bad = malformed_records(20)
    _produce(kafka_bootstrap, [(chat, v) for v in to_json_lines(day0["chat"])] + [(chat, v) for _, _, v, _ in bad])
    _produce(kafka_bootstrap, [(payment, v) for v in to_json_lines(day0["payment"])])
    lake = tmp_path / "lake"

    first = run_ingest(spark, kafka_bootstrap, lake, [chat, payment])  # type: ignore[arg-type]
    originals_of_duplicates = sum(reason is None for *_, reason in bad)
    expected_rejects = sorted(reason for *_, reason in bad if reason is not None)
    assert first.valid == day0["chat"].num_rows + day0["payment"].num_rows + originals_of_duplicates
    assert first.rejected == len(expected_rejects)

    events = ds.dataset(lake / "events", partitioning="hive").to_table()
    assert events.num_rows == first.valid
    assert len(set(events["event_id"].to_pylist())) == events.num_rows
    chat_lake = pq.read_table(next((lake / "events" / "event_type=chat").rglob("*.parquet")))
    assert set(chat_lake.column_names) >= {"event_id", "ts", "user_id", "text", "channel_mode"}
    assert "amount" not in chat_lake.column_names  # each type keeps its own columns
    letters = pq.read_table(lake / "dead_letter").to_pandas()
    assert sorted(letters.reason_code) == expected_rejects
    assert set(letters.source_topic) == {chat} and letters.reason.str.len().min() > 0

    before = _digest(lake)
    again = run_ingest(spark, kafka_bootstrap, lake, [chat, payment], rerun=first.run_id)  # type: ignore[arg-type]
    assert (again.run_id, again.valid, again.rejected) == (first.run_id, first.valid, first.rejected)
    assert _digest(lake) == before  # same range, same files, no duplicates

    # The next run reads only what arrived since: nothing skipped, nothing twice.
    _produce(kafka_bootstrap, [(chat, v) for v in to_json_lines(day1["chat"])])
    second = run_ingest(spark, kafka_bootstrap, lake, [chat, payment])  # type: ignore[arg-type]
    assert second.valid == day1["chat"].num_rows and second.rejected == 0
    assert second.start[chat] == first.end[chat]
    total = ds.dataset(lake / "events", partitioning="hive").to_table()
    assert total.num_rows == first.valid + second.valid
    assert len(set(total["event_id"].to_pylist())) == total.num_rows
    dates = set(ds.dataset(lake / "events" / "event_type=chat", partitioning="hive").to_table()["date"].to_pylist())
    assert dates == {"2026-10-01", "2026-10-02"}


def test_unknown_rerun_and_missing_topic_are_clear(spark: object, kafka_bootstrap: str, tmp_path: Path) -> None:
    from argus.jobs.ingest import run_ingest

    with pytest.raises(ValueError, match="no ingest run nope"):
        run_ingest(spark, kafka_bootstrap, tmp_path, ["x"], rerun="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="do not exist"):
        run_ingest(spark, kafka_bootstrap, tmp_path, ["no.such.topic"])  # type: ignore[arg-type]
