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
    world = World(config(users=users, days=days, seed=7, start=date(2026, 10, 1), profile="dense"))
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
    if _nightly(out, bootstrap, home / "nightly", world.dates()[-1]):
        _detect(out, bootstrap, home / "nightly", home / "alerts", world)


def _nightly(out: Console, bootstrap: str, lake: Path, day: date) -> bool:
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
            return False
        with out.status("profiles..."):
            profiles = run_profile(spark, lake, day)
        out.print(f"profiles: {profiles['users']:,} users x {profiles['columns']} columns in {profiles['path']}")
        with out.status("embeddings..."):
            embeddings = run_embed(spark, lake, day)
        out.print(f"embeddings: {embeddings['users']:,} users x {embeddings['dim']} dims in {embeddings['path']}")
    finally:
        spark.stop()
    return True


def _detect(out: Console, bootstrap: str, lake: Path, scores_dir: Path, world: World) -> None:
    """The detectors on the lake the nightly ingest wrote, alerts to the alert topics, checked against the truth."""
    from argus.detect import run_detect
    from infra.clients import publish_alerts
    from world.truth import truth_table

    out.rule("[bold]6. Detectors on the ingested lake: scores, alerts to Kafka, checked against the truth")
    truth = truth_table(world).to_pandas().set_index("user_id")
    positives = {
        "trolls": set(truth.index[truth["is_troll"]]),
        "evaders": set(truth.index[truth["is_evader"]]),
        "fraud": set(truth.index[truth["fraud_ring"].notna()]),
    }
    table = Table("detector", "users", "scored", "flagged", "truly positive", "alerts")
    tops = []
    for name, positive in positives.items():
        with out.status(f"{name}: fit on the lake and score everyone..."):
            summary, alerts = run_detect(name, lake, scores_dir / f"{name}.csv")
            published = publish_alerts(alerts, bootstrap)
        flagged = [a.user_id for a in alerts if a.kind != "raid"]
        top = max((a for a in alerts if a.kind != "raid"), key=lambda a: a.score, default=None)
        table.add_row(
            name,
            f"{summary['users']:,}",
            f"{summary['scored']:,}",
            f"{summary['flagged']:,}",
            f"{sum(u in positive for u in flagged)} of {len(positive)}",
            ", ".join(f"{n} -> {t}" for t, n in published.items()) or "0",
        )
        if top is not None:
            tops.append(
                f"{name}: top alert {top.user_id} (score {top.score:.2f}): "
                + "; ".join(r.text for r in top.reasons[:3])
            )
        if name == "trolls" and summary.get("raids"):
            out.print(f"raid groups: {summary['raids']} (in {summary['raids_out']})")
    out.print(table)
    for line in tops:
        out.print(line, highlight=False)
    out.print(f"scores: {scores_dir}/*.csv; consume alerts with any Kafka client from alerts.*")


def _first_dead_letter(bootstrap: str) -> dict[str, str] | None:
    client = consumer(DLQ_TOPIC, bootstrap=bootstrap, consumer_timeout_ms=5000)
    try:
        for record in client:
            return json.loads(record.value)  # type: ignore[no-any-return]
    finally:
        client.close()
    return None
