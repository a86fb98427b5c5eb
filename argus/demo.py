"""``make demo``: the whole story on embedded defaults, against a real broker of its own.

A broker starts, a synthetic world with injected trolls, ban evaders, fraud rings and churners
streams its first weeks into Kafka (malformed records mixed in), the nightly chain runs as one
Spark application (ingest, quality gate, profiles, embeddings, all four detectors, alerts), the
streaming pipeline scores the hours that follow with the models the night published, the alerts
are read back as `argus alerts tail` reads them, the HTML report is written, and each detector's
precision and recall against the injected truth closes the story.

Everything the engines print (Spark, the JVMs, Beam, BLAS, library warnings) goes to
``~/.argus/demo/demo.log``; the terminal shows the story only. The broker is left running so
that the alert topics can be read afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from argus.infra.broker import LocalBroker, argus_home, free_port
from argus.infra.topics import DLQ_TOPIC, event_topic

BAD_RECORDS = 20
START = date(2026, 10, 1)
FUTURE_DAYS = 14  # simulated past the night, never streamed: the truth churn is judged against
LIVE_PREFIX = "live"  # the following hours go to live.events.*, so a bounded streaming run reads only them
STREAM_DETECTORS = ("trolls", "fraud")
DETECTORS = ("trolls", "evaders", "fraud", "churn")


def demo_home() -> Path:
    return argus_home() / "demo"


def run_demo(users: int, days: int, live_hours: int) -> None:
    """The story, printed to the terminal; engine output to the demo's log file."""
    home = demo_home()
    _stop_previous_broker(home)
    shutil.rmtree(home, ignore_errors=True)  # each demo starts from an empty broker and lake
    home.mkdir(parents=True)
    log = home / "demo.log"
    with _engine_output_to(log) as terminal:
        out = Console(file=terminal, soft_wrap=True)  # soft wrap: piped output never breaks a path
        started = time.monotonic()
        broker = LocalBroker(home=home / "kafka", port=free_port())
        out.rule("[bold]1. Apache Kafka (KRaft, single node)")
        with out.status("starting the broker (the first run fetches its jars from Maven Central)..."):
            from argus.infra.topics import ensure_topics

            broker.up()
            ensure_topics(broker.bootstrap)
        out.print(f"broker up at {broker.bootstrap}, data in {broker.data_dir}; engine logs in {log}")
        try:
            _story(out, broker.bootstrap, users, days, live_hours, home, log)
        finally:
            out.rule()
            out.print(f"demo took {time.monotonic() - started:.0f} s. The broker is still up at {broker.bootstrap}:")
            out.print(f"  argus alerts tail --bootstrap {broker.bootstrap}          # the alerts again")
            out.print(f"  ARGUS_HOME={home} argus kafka down   # stop it (its data stays in {broker.data_dir})")


def _story(out: Console, bootstrap: str, users: int, days: int, live_hours: int, home: Path, log: Path) -> None:
    from argus.world.generate import World, config
    from argus.world.sinks import write_truth
    from argus.world.truth import truth_summary

    lake = home / "lake"
    world = World(config(users=users, days=days + FUTURE_DAYS, seed=7, start=START, profile="realistic"))
    night = START + timedelta(days=days - 1)

    out.rule(f"[bold]2. A synthetic world: {users:,} users, seed 7, realistic activity")
    truth = truth_summary(world)
    write_truth(world, lake)
    out.print("injected ground truth: " + ", ".join(f"{k}={v}" for k, v in truth["counts"].items()))
    out.print(
        f"days {START} .. {night} stream in now; {night + timedelta(days=1)} brings the live hours; "
        f"{FUTURE_DAYS} more days are simulated only to know who really churns. truth: {lake}/truth/"
    )

    out.rule(f"[bold]3. Streaming {days} days into Kafka, with {BAD_RECORDS} malformed records mixed in")
    with out.status("producing..."):
        sent = _produce(world, bootstrap, range(days), bad_records=BAD_RECORDS)
    out.print(f"produced {sum(sent.values()):,} records: " + ", ".join(f"{t} {n:,}" for t, n in sorted(sent.items())))

    out.rule(f"[bold]4. The nightly chain for {night}: one Spark application, all four detectors")
    if not _nightly(out, bootstrap, lake, night):
        return
    example = _first_dead_letter(bootstrap)
    if example:
        original = base64.b64decode(example["original_b64"])[:60]
        out.print(f"a dead letter: reason {example['reason_code']!r} ({example['reason']}); bytes {original!r}...")

    following = night + timedelta(days=1)
    out.rule(f"[bold]5. The streaming pipeline over the first {live_hours} hours of {following}")
    _stream(out, world, bootstrap, lake, days, live_hours)

    out.rule("[bold]6. The alerts, read back as `argus alerts tail` reads them (each alert id once)")
    _tail(out, bootstrap, following)

    out.rule("[bold]7. The report")
    from argus.report import write_report

    with out.status("writing the HTML report..."):
        report = write_report(lake, night, home / f"report-{night}.html")
    out.print(f"report: {report.out}  (open it in a browser: alerts over time, embeddings map, reasons, quality)")

    out.rule("[bold]8. Precision and recall against the injected truth")
    _evaluate(out, lake, night)


def _nightly(out: Console, bootstrap: str, lake: Path, night: date) -> bool:
    from argus.nightly import NightlyError, NightlyRun, run_nightly_submit

    run = NightlyRun(lake, [night], list(DETECTORS), bootstrap=bootstrap, ingest=True, alerts=True)
    out.print(f"argus batch nightly --date {night} --lake {lake} --alerts   (one spark-submit)", highlight=False)
    try:
        code = run_nightly_submit(run, out, emit=lambda line: None)
    except NightlyError as exc:
        out.print(f"[bold red]the nightly chain failed:[/] {exc}")
        return False
    return code == 0


def _stream(out: Console, world: Any, bootstrap: str, lake: Path, days: int, live_hours: int) -> int:
    """Produce the following hours to live.events.* and run the streaming pipeline over them (bounded)."""
    from argus.infra.prism import prism_path
    from argus.pipelines.stream import StreamConfig, StreamError, run_stream

    if not prism_path().is_file():
        out.print("skipped: the Beam Prism runner is not built; `argus stream fetch` builds it once (make demo does)")
        return 0
    with out.status(f"producing the first {live_hours} hours of the next day..."):
        sent = _produce(world, bootstrap, [days], hours=live_hours, prefix=LIVE_PREFIX)
    out.print(f"produced {sum(sent.values()):,} live events to {LIVE_PREFIX}.events.*")
    config = StreamConfig(
        model_store=lake / "models",
        detectors=STREAM_DETECTORS,
        topics=sorted(sent),
        bootstrap=bootstrap,
        bounded=True,
        start="earliest",
    )
    out.print(
        f"argus stream run --bounded --model-store {lake}/models --topics {','.join(sorted(sent))}  "
        "(models: the ones the night just published)",
        highlight=False,
    )
    with out.status("streaming (Beam on Prism): validate -> per-user state -> trolls and fraud -> alerts..."):
        try:
            counters = run_stream(config)
        except StreamError as exc:
            out.print(f"[bold red]the streaming pipeline failed:[/] {exc}")
            return 0
        finally:
            logging.getLogger("apache_beam").setLevel(logging.ERROR)  # its shutdown notes come after our log
    shown = {k: v for k, v in counters.items() if isinstance(v, int) and v}
    out.print("streaming counters: " + ", ".join(f"{k}={v:,}" for k, v in sorted(shown.items())), highlight=False)
    return sum(sent.values())


def _tail(out: Console, bootstrap: str, following: date) -> None:
    from argus.alerts_tail import TailStats, render, tail_alerts

    stats = TailStats()
    with out.status("reading alerts.*..."):
        alerts = list(tail_alerts(bootstrap=bootstrap, stats=stats))
    by_kind = Counter(t.alert.kind for t in alerts)
    live = sum(t.alert.window_start.date() >= following for t in alerts)  # streaming: the evidence's own day
    out.print(
        f"argus alerts tail: {len(alerts):,} alerts ("
        + ", ".join(f"{k} {n:,}" for k, n in sorted(by_kind.items()))
        + f"); {len(alerts) - live:,} from the nightly chain, {live:,} from the streaming pipeline; "
        f"{stats.duplicates} duplicate records skipped. The strongest of each kind:"
    )
    for tailed in _examples(alerts):
        for line in render(tailed):
            out.print(line, highlight=False)


def _examples(alerts: list[Any]) -> list[Any]:
    """The highest-scoring alert of each kind, for a taste of what a consumer sees."""
    best: dict[str, Any] = {}
    for tailed in alerts:
        kind = tailed.alert.kind
        if kind not in best or tailed.alert.score > best[kind].alert.score:
            best[kind] = tailed
    return [best[k] for k in sorted(best)]


def _evaluate(out: Console, lake: Path, night: date) -> None:
    from argus.report import evaluate_night, load_scores

    truth = pd.read_parquet(lake / "truth" / "users.parquet").set_index("user_id")
    scores = load_scores(lake, night, 1)
    table = Table("detector", "scored", "positives", "alerts", "true", "precision", "recall", "AUC")
    for row in evaluate_night(scores, truth).itertuples(index=False):
        table.add_row(
            str(row.detector),
            f"{row.users:,}",
            f"{row.positives:,}",
            f"{row.alerts:,}",
            f"{row.true_positives:,}",
            _share(row.precision),
            _share(row.recall),
            _share(row.roc_auc),
        )
    out.print(table)
    out.print(
        "Why these differ from `argus eval`: the evaluation world is larger (10,000 users x 14 days; churn 75 "
        "days) and eval reports quality over all of it, where this one night of 2,000 users holds few positives "
        "(a handful of evaders: one miss moves recall a lot). Troll and fraud alerts fire only above thresholds "
        "set for precision, so they catch the surest cases; AUC, which ignores the threshold, is the figure to "
        "compare. Churn alerts on everyone likely to stay silent for the next 14 days, which in a realistic "
        "world is most occasional visitors, while the truth counts only accounts that leave for good.",
        highlight=False,
    )


def _share(value: Any) -> str:
    return "-" if value is None or value != value else f"{float(value):.2f}"


def _produce(
    world: Any, bootstrap: str, days: Any, hours: int | None = None, prefix: str | None = None, bad_records: int = 0
) -> Counter[str]:
    """Produce the world's ``days`` (only their first ``hours`` when given) to events.* (or PREFIX.events.*)."""
    from argus.infra.clients import BulkProducer
    from argus.world.bad_records import malformed_records
    from argus.world.sinks import to_json_lines

    producer = BulkProducer(bootstrap)
    sent: Counter[str] = Counter()
    topics = set()
    for day in days:
        for event_type, table in world.day(day).items():
            if hours is not None and table.num_rows:
                start = pd.Timestamp(world.dates()[day], tz="UTC") + pd.Timedelta(hours=hours)
                ts = table["ts"].to_pandas()
                ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts
                table = table.filter((ts < start).to_numpy())
            if not table.num_rows:
                continue
            topic = event_topic(event_type) if prefix is None else f"{prefix}.{event_topic(event_type)}"
            if prefix is not None and topic not in topics:
                _create_topic(bootstrap, topic)
                topics.add(topic)
            keys = [k.encode() for k in table["user_id"].to_pylist()]
            producer.send_many(topic, keys, to_json_lines(table))
            sent[topic] += table.num_rows
    for topic, key, value, _ in malformed_records(bad_records):
        producer.send_many(topic, [key], [value])
        sent[topic] += 1
    producer.flush()
    return sent


def _create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="argus-demo")
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def _first_dead_letter(bootstrap: str) -> dict[str, str] | None:
    from argus.infra.clients import consumer

    client = consumer(DLQ_TOPIC, bootstrap=bootstrap, consumer_timeout_ms=5000)
    try:
        for record in client:
            return json.loads(record.value)  # type: ignore[no-any-return]
    finally:
        client.close()
    return None


def _stop_previous_broker(home: Path) -> None:
    """A broker an earlier demo left running is stopped before its data is wiped."""
    saved = home / "kafka" / "broker.json"
    if saved.is_file():
        state = json.loads(saved.read_text())
        LocalBroker(home=home / "kafka", port=int(state.get("port", 0))).down()


@contextlib.contextmanager
def _engine_output_to(log: Path) -> Iterator[IO[str]]:
    """Send file descriptors 1 and 2 (every process and library below us) to ``log``; yield the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    with log.open("a") as sink, warnings.catch_warnings():
        warnings.simplefilter("default")
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        sink.write(f"--- argus demo {datetime.now().isoformat(timespec='seconds')}\n")
        try:
            yield terminal
        finally:
            terminal.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            terminal.close()
