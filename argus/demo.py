"""``make demo``: the story so far on embedded defaults, against a real broker of its own."""

from __future__ import annotations

import base64
import json
import shutil
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table

from argus.progress import progress_bar
from infra.broker import LocalBroker, argus_home, free_port
from infra.clients import consumer
from infra.topics import DLQ_TOPIC, EVENT_TOPICS, ensure_topics
from pipelines.topic_validator import validate_topics
from world.generate import World, config, expected_events, produce_world, write_world
from world.truth import truth_summary

BAD_RECORDS = 20


def run_demo(out: Console, users: int, days: int, keep_broker: bool = False) -> None:
    home = argus_home() / "demo"
    shutil.rmtree(home, ignore_errors=True)  # each demo starts from an empty broker and lake
    broker = LocalBroker(home=home / "kafka", port=free_port())
    out.rule("[bold]1. Apache Kafka (KRaft, single node)")
    with out.status("starting the broker (the first run fetches its jars from Maven Central)..."):
        broker.up()
        ensure_topics(broker.bootstrap)
    out.print(f"broker up at {broker.bootstrap}, pid {broker.pid()}, data in {broker.data_dir}")
    try:
        _story(out, broker.bootstrap, users, days, home)
    finally:
        if keep_broker:
            out.print(f"broker left running at {broker.bootstrap}; stop it with: kill {broker.pid()}")
        else:
            broker.down()
            out.print("broker stopped")


def _story(out: Console, bootstrap: str, users: int, days: int, home: Path) -> None:
    world = World(config(users=users, days=days, seed=7, start=date(2026, 10, 1), events_per_user_day=118.0))
    lake = home / "lake"

    out.rule(f"[bold]2. A synthetic world: {users} users, {days} days, seed 7")
    with progress_bar("writing the lake", total=expected_events(world)) as advance:
        manifest = write_world(world, lake, "parquet", advance)
    out.print(f"lake: {lake}/events/event_type=*/date=*/part-00000.parquet; truth: {lake}/truth/")
    truth = truth_summary(world)
    out.print("injected ground truth: " + ", ".join(f"{k}={v}" for k, v in truth["counts"].items()))

    out.rule(f"[bold]3. Streaming it into Kafka, with {BAD_RECORDS} malformed records mixed in")
    with progress_bar("producing", total=expected_events(world)) as advance:
        sent = produce_world(world, bootstrap, advance, bad_records=BAD_RECORDS)
    out.print(f"produced {sum(sent.values()):,} records")

    out.rule("[bold]4. Reading it back: validate, dead-letter the rejects")
    with progress_bar("validating", total=sum(sent.values())) as advance:
        report = validate_topics(bootstrap=bootstrap, group_id="argus-demo", progress=advance)
    table = Table("topic", "generated", "produced (with malformed)", "valid read back", "dead-lettered")
    rejected_by_topic = report.rejected_by_topic
    for event_type, by_day in sorted(manifest["events"].items()):
        topic = f"events.{event_type}"
        table.add_row(
            topic,
            f"{sum(by_day.values()):,}",
            f"{sent[topic]:,}",
            f"{report.valid.get(topic, 0):,}",
            f"{rejected_by_topic.get(topic, 0):,}",
        )
    out.print(table)
    out.print(f"dead-lettered: {report.dead_lettered} -> {DLQ_TOPIC}  {dict(report.rejected)}")
    example = _first_dead_letter(bootstrap)
    if example:
        original = base64.b64decode(example["original_b64"])[:60]
        reason = f"{example['reason_code']!r} ({example['reason']})"
        out.print(f"example dead letter: reason={reason}; original bytes {original!r}...")
    _nightly(out, bootstrap, home / "nightly", world.dates()[-1])


def _nightly(out: Console, bootstrap: str, lake: Path, day: date) -> None:
    """The nightly Spark chain on what just went into Kafka."""
    from infra.spark import local_session
    from jobs.embed import run_embed
    from jobs.ingest import run_ingest
    from jobs.profiles import run_profile
    from jobs.quality import run_quality

    out.rule(f"[bold]5. The nightly Spark jobs for {day} (local[2])")
    with out.status("starting Spark (the first run fetches the Kafka connector's jars)..."):
        spark = local_session("argus-demo", **{"spark.sql.shuffle.partitions": "4"})
    try:
        with out.status("ingest: Kafka -> lake..."):
            run = run_ingest(spark, bootstrap, lake, list(EVENT_TOPICS))
        out.print(f"ingest run {run.run_id}: {run.valid:,} events to {lake}/events, {run.rejected} dead letters")
        with out.status("quality gate..."):
            report = run_quality(spark, lake, day)
        out.print(report.summary())
        if not report.passed:
            return
        with out.status("profiles..."):
            profiles = run_profile(spark, lake, day)
        out.print(f"profiles: {profiles['users']:,} users x {profiles['columns']} columns in {profiles['path']}")
        with out.status("embeddings..."):
            embeddings = run_embed(spark, lake, day)
        out.print(f"embeddings: {embeddings['users']:,} users x {embeddings['dim']} dims in {embeddings['path']}")
    finally:
        spark.stop()


def _first_dead_letter(bootstrap: str) -> dict[str, str] | None:
    client = consumer(DLQ_TOPIC, bootstrap=bootstrap, consumer_timeout_ms=5000)
    try:
        for record in client:
            return json.loads(record.value)  # type: ignore[no-any-return]
    finally:
        client.close()
    return None
