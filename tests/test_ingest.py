"""The Spark ingest job against the real broker: Delta tables of events and dead letters, offsets,
idempotent reruns, the readers of ingested events, and the lake's history."""

from __future__ import annotations

import base64
import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from typer.testing import CliRunner

from argus.cli import app
from argus.detectors.events import load_events
from argus.jobs import lake as tables
from argus.schemas.arrow import ARROW_SCHEMAS
from argus.world.bad_records import malformed_records
from argus.world.config import WorldConfig
from argus.world.simulate import World
from argus.world.sinks import to_json_lines

pytestmark = pytest.mark.kafka


def _produce(bootstrap: str, records: list[tuple[str, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=2**20)
    for topic, value in records:
        producer.send(topic, key=b"k", value=value)
    producer.flush()
    producer.close()


def _stored(lake: Path, event_type: str) -> pd.DataFrame:
    frame = tables.read_pandas(lake, tables.events_table(event_type))
    return pd.DataFrame() if frame is None else frame


def test_ingest_lake_dead_letters_and_idempotent_reruns(
    spark: object, kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    from argus.jobs.ingest import run_ingest
    from argus.jobs.profiles import read_events
    from argus.jobs.quality import day_events

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
    assert first.valid == first.stored == day0["chat"].num_rows + day0["payment"].num_rows + originals_of_duplicates
    assert first.rejected == len(expected_rejects)

    chats, payments = _stored(lake, "chat"), _stored(lake, "payment")
    assert len(chats) + len(payments) == first.valid
    assert chats.event_id.is_unique and payments.event_id.is_unique
    assert set(chats.columns) >= {"event_id", "ts", "user_id", "text", "channel_mode", "date"}
    assert "amount" not in chats.columns  # each type keeps its own columns
    assert not (lake / "events").exists()  # ingest writes Delta tables only; plain files are what import lands
    letters = tables.read_pandas(lake, tables.DEAD_LETTER)
    assert letters is not None
    assert sorted(letters.reason_code) == expected_rejects
    assert set(letters.source_topic) == {chat} and letters.reason.str.len().min() > 0
    rejected_bytes = sorted(value for _, _, value, reason in bad if reason is not None)
    assert sorted(base64.b64decode(b) for b in letters.original_b64) == rejected_bytes  # byte for byte
    day = date.fromisoformat(chats.date.min())
    in_spark = read_events(spark, lake, "chat", day)  # type: ignore[arg-type]
    assert in_spark is not None and in_spark.count() == (chats.date <= day.isoformat()).sum()
    gated = day_events(spark, lake, "chat", day)  # type: ignore[arg-type]
    assert gated is not None and set(gated.columns) == set(ARROW_SCHEMAS["chat"].names)
    assert load_events(lake).count == first.valid  # the detectors' reader of a lake folder

    versions = tables.latest_manifest(lake)
    assert versions is not None and versions.name == f"ingest-{first.run_id}"
    assert set(versions.tables) == {tables.events_table("chat"), tables.events_table("payment"), tables.DEAD_LETTER}

    again = run_ingest(spark, kafka_bootstrap, lake, [chat, payment], rerun=first.run_id)  # type: ignore[arg-type]
    assert (again.run_id, again.valid, again.rejected, again.stored) == (first.run_id, first.valid, first.rejected, 0)
    assert len(_stored(lake, "chat")) == len(chats) and len(_stored(lake, "payment")) == len(payments)
    assert len(tables.read_pandas(lake, tables.DEAD_LETTER)) == len(letters)  # type: ignore[arg-type]

    # The next run reads only what arrived since: nothing skipped, nothing twice; an event re-sent with
    # its time moved to the next day is valid, and not stored again.
    resent = json.loads(to_json_lines(day0["chat"])[0])
    resent["ts"] = (pd.Timestamp(resent["ts"]) + pd.Timedelta(days=1)).isoformat()
    _produce(kafka_bootstrap, [(chat, v) for v in [*to_json_lines(day1["chat"]), json.dumps(resent).encode()]])
    second = run_ingest(spark, kafka_bootstrap, lake, [chat, payment])  # type: ignore[arg-type]
    assert second.valid == second.stored + 1 == day1["chat"].num_rows + 1 and second.rejected == 0
    assert second.start[chat] == first.end[chat]
    total = _stored(lake, "chat")
    assert len(total) == len(chats) + second.stored and total.event_id.is_unique
    assert set(total.date) == {"2026-10-01", "2026-10-02"}

    # `argus lake history` lists every run's publication with the events tables' versions.
    result = CliRunner().invoke(app, ["lake", "history", "--lake", str(lake)])
    assert result.exit_code == 0, result.output
    history = [json.loads(line) for line in result.output.splitlines()]
    chat_table = tables.events_table("chat")
    assert [h["name"] for h in history] == [
        f"ingest-{first.run_id}",
        f"ingest-{second.run_id}",
    ]  # the rerun changed nothing
    assert [h["tables"][chat_table] for h in history] == [0, 1]
    # The first night's events stay readable (time travel) at the version its manifest names.
    assert len(tables.read_pandas(lake, chat_table, version=history[0]["tables"][chat_table])) == len(chats)  # type: ignore[arg-type]


def test_ingest_into_a_uri_lake_keeps_its_offsets_there(
    spark: object, kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    from argus.jobs.ingest import logged_run, previous_end, run_ingest

    chat = f"{unique_name}.chat"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(chat, 1, 1)])
    admin.close()
    events = World(WorldConfig(users=50, days=1, seed=6, events_per_user_day=3.0, profile="dense")).day(0)["chat"]
    _produce(kafka_bootstrap, [(chat, v) for v in to_json_lines(events)])
    lake = f"file://{tmp_path}/lake"  # a URI: the tables and the offsets logs go through the lake's file systems

    first = run_ingest(spark, kafka_bootstrap, lake, [chat])  # type: ignore[arg-type]
    assert first.stored == events.num_rows > 0
    assert (tmp_path / "lake" / "_offsets" / f"{first.run_id}.json").is_file()
    assert logged_run(lake, first.run_id) == first.to_json()
    assert previous_end(lake, [chat]) == first.end == {chat: {"0": events.num_rows}}
    again = run_ingest(spark, kafka_bootstrap, lake, [chat], rerun=first.run_id)  # type: ignore[arg-type]
    assert (again.run_id, again.valid, again.stored) == (first.run_id, first.valid, 0)
    assert len(_stored(lake, "chat")) == events.num_rows  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"no ingest run nope in {lake}/_offsets"):
        run_ingest(spark, kafka_bootstrap, lake, [chat], rerun="nope")  # type: ignore[arg-type]
    listed = CliRunner().invoke(app, ["batch", "runs", "--lake", lake])
    assert listed.exit_code == 0, listed.output
    assert [json.loads(line)["run_id"] for line in listed.output.splitlines()] == [first.run_id]  # a rerun logs over it


def test_unknown_rerun_and_missing_topic_are_clear(spark: object, kafka_bootstrap: str, tmp_path: Path) -> None:
    from argus.jobs.ingest import run_ingest

    with pytest.raises(ValueError, match="no ingest run nope"):
        run_ingest(spark, kafka_bootstrap, tmp_path, ["x"], rerun="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="do not exist"):
        run_ingest(spark, kafka_bootstrap, tmp_path, ["no.such.topic"])  # type: ignore[arg-type]
