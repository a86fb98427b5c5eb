"""``argus``: the command line. It parses arguments and calls the parts; nothing else lives here."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from argus.progress import progress_bar, working

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Argus: behaviour analytics over Kafka events (trolls, ban evaders, fraud rings, churn risk).",
)
kafka_app = typer.Typer(no_args_is_help=True, help="Run the local Apache Kafka broker (KRaft, single node).")
schemas_app = typer.Typer(no_args_is_help=True, help="The event, dead-letter and alert contracts.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; each prints one JSON line.")
batch_app = typer.Typer(
    no_args_is_help=True,
    help="Nightly Spark jobs, run with spark-submit (local[2] by default; --master for a cluster).",
)
app.add_typer(batch_app, name="batch")
eval_app = typer.Typer(no_args_is_help=True, help="Quality against the generator's ground truth; each prints JSON.")
app.add_typer(eval_app, name="eval")
trolls_app = typer.Typer(no_args_is_help=True, help="Troll detection tools (the paper's mode).")
app.add_typer(trolls_app, name="trolls")
explain_app = typer.Typer(no_args_is_help=True, help="Explain a detector's findings to an investigator.")
app.add_typer(explain_app, name="explain")
app.add_typer(kafka_app, name="kafka")
app.add_typer(schemas_app, name="schemas")
app.add_typer(bench_app, name="bench")

# soft_wrap: long lines (paths, ids, reasons) are never broken at the console's width, which is 80
# columns when output goes to a pipe or a file.
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

BootstrapOption = Annotated[
    str | None,
    typer.Option("--bootstrap", envvar="KAFKA_BOOTSTRAP", help="Kafka bootstrap servers; default: the local broker."),
]


LakeOption = Annotated[Path, typer.Option(help="The lake's root folder.")]
# Spark jobs' lakes may live on object storage: a URI stays a URI (argus.jobs.lake.lake_location).
LakeUriOption = Annotated[
    str, typer.Option("--lake", help="The lake: a folder, or a URI (s3a://bucket/lake, gs://..., hdfs://...).")
]
MasterOption = Annotated[str, typer.Option(help="Spark master: local[N], spark://..., yarn, k8s://...")]
PrintCommandOption = Annotated[bool, typer.Option(help="Print the spark-submit command instead of running it.")]
SparkConfOption = Annotated[
    list[str] | None,
    typer.Option(
        "--conf",
        help="A Spark setting for this run, KEY=VALUE (repeatable); wins over the config file's \\[spark] table.",
    ),
]


class UserError(Exception):
    """A mistake the user can fix; shown as one line, never a traceback."""


def main() -> None:
    """Console-script entry point: user errors become one line and exit code 2."""
    from argus.infra.broker import BrokerError
    from argus.infra.clients import ConfigError
    from argus.schemas.bounds import BoundsError
    from argus.schemas.privacy import PrivacyError

    try:
        app()
    except (UserError, ConfigError, BrokerError, BoundsError, PrivacyError) as exc:
        from rich.markup import escape

        # Escaped: a message may quote brackets, such as pip install -e '.[bench]'.
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        from kafka.errors import KafkaError
        from rich.markup import escape

        from argus.infra.clients import explain_failure

        said = explain_failure(exc)  # unreachable, wrong protocol, bad credentials, no ACL: what to do
        if said is not None:
            err.print(f"[bold red]error:[/] {escape(said)}", highlight=False, soft_wrap=True)
            sys.exit(2)
        if isinstance(exc, KafkaError):
            err.print(f"[bold red]error:[/] Kafka: {exc}")
            sys.exit(2)
        raise


# --- kafka ------------------------------------------------------------------------------


@kafka_app.command("up")
def kafka_up(
    port: Annotated[
        int | None,
        typer.Option(
            help="Client port (the controller uses port+1, and --secure's inter-broker listener port+2)."
            " Default: 9092, or the last port used."
        ),
    ] = None,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of each events.* topic.")] = 3,
    heap: Annotated[str, typer.Option(help="Broker JVM heap, e.g. 1g.")] = "1g",
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="Serve clients over SASL_SSL (SCRAM-SHA-512) only, with a private CA, principals admin, pipeline"
            " and alerts-reader, and ACLs; writes their client settings to $ARGUS_HOME/kafka/clients/.",
        ),
    ] = False,
) -> None:
    """Start the broker in the background (fetching its jars once), then create the topic layout.

    Data lives in $ARGUS_HOME/kafka (default ~/.argus/kafka) and survives `argus kafka down`.
    A broker set up with --secure stays secure on later `up`s.
    """
    from argus.infra.broker import LocalBroker
    from argus.infra.topics import ensure_topics

    broker = LocalBroker.default()
    if port is not None:
        broker.port = port
    broker.heap = heap
    broker.secure = broker.secure or secure
    was_running = broker.is_running()
    with err.status("starting Kafka (the first start fetches the broker's jars from Maven Central)..."):
        broker.up()
        admin_settings = broker.admin_settings() if broker.secure else None
        created = ensure_topics(broker.bootstrap, event_partitions=partitions, client_settings=admin_settings)
    state = "already running" if was_running else "started"
    out.print(f"Kafka {state} at {broker.bootstrap}; data in {broker.data_dir}")
    if created:
        out.print(f"created topics: {', '.join(created)}")
    if broker.secure:
        from argus.infra.security import secure_broker_summary

        summary = secure_broker_summary(broker.material, broker.bootstrap)
        out.print(summary, highlight=False, markup=False, soft_wrap=True)


@kafka_app.command("down")
def kafka_down() -> None:
    """Stop the local broker cleanly; its data stays for the next `up`."""
    from argus.infra.broker import LocalBroker

    broker = LocalBroker.default()
    out.print("Kafka stopped" if broker.down() else "Kafka was not running")


@kafka_app.command("status")
def kafka_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    bootstrap: BootstrapOption = None,
) -> None:
    """Is the broker up, where, and how many records each topic holds. Exits 1 when it does not answer."""
    from argus.infra.broker import LocalBroker
    from argus.infra.topics import topic_sizes
    from argus.preflight import PreflightError, require_broker

    status: dict[str, object] = {}
    client_settings = None
    if bootstrap is None:
        broker = LocalBroker.default()
        status = broker.status()
        reachable = bool(status["running"])
        client_settings = broker.admin_settings() if broker.secure and reachable else None
    else:
        status = {"bootstrap": bootstrap}
        try:
            require_broker(bootstrap)
            reachable = True
        except PreflightError:
            reachable = False
        status["reachable"] = reachable
    status["topics"] = topic_sizes(bootstrap, client_settings) if reachable else {}
    if as_json:
        print(json.dumps(status))
        if not reachable:
            raise typer.Exit(1)
        return
    for key, value in status.items():
        if key != "topics":
            out.print(f"{key}: {value}")
    for topic, size in status["topics"].items():  # type: ignore[attr-defined]
        out.print(f"  {topic:<20} partitions={size['partitions']:<3} records={size['records']}")
    if not reachable:
        raise typer.Exit(1)


@kafka_app.command("fetch")
def kafka_fetch() -> None:
    """Fetch the broker's jars from Maven Central into the cache (done by `up` when needed)."""
    from argus.infra.broker import fetch_jars

    with err.status("fetching Kafka jars..."):
        libs = fetch_jars()
    out.print(f"Kafka jars in {libs}")


# --- generate ---------------------------------------------------------------------------


@app.command()
def generate(
    users: Annotated[
        int, typer.Option(min=50, help="Accounts at the start (evaders' new accounts come on top).")
    ] = 2000,
    days: Annotated[int, typer.Option(min=1, help="Simulated days.")] = 7,
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 7,
    start: Annotated[str, typer.Option(help="First simulated day, YYYY-MM-DD (UTC).")] = "2026-10-01",
    profile: Annotated[
        str,
        typer.Option(
            help="realistic: heavy-tailed activity (most users visit a day or two a week, most never chat or pay),"
            " shared homes/cafés/carrier NAT, harmless look-alikes, late and partial labels."
            " dense: every user chats, clicks and pays every day (~100 events per user-day).",
        ),
    ] = "realistic",
    events_per_user_day: Annotated[
        float | None,
        typer.Option(
            help="Mean events per user on a day the user is active; default: the profile's"
            " (realistic 4, dense 118; dense at 118 gives ~10M events a day for 100k users).",
        ),
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write the lake layout and truth files here.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="parquet or jsonl (with --out).")] = "parquet",
    to_kafka: Annotated[bool, typer.Option("--kafka", help="Produce the events to the events.* topics.")] = False,
    bad_records: Annotated[int, typer.Option(min=0, help="Also send this many malformed records (with --kafka).")] = 0,
    bootstrap: BootstrapOption = None,
) -> None:
    """Generate a seeded synthetic world with ground truth (trolls, evaders, fraud rings, churners).

    --out DIR writes DIR/events/event_type=T/date=D/part-00000.parquet, DIR/truth/users.parquet,
    DIR/truth/truth.json and DIR/manifest.json; rerunning overwrites the same files. It holds DIR's
    writer lease meanwhile: refused while another run writes that lake.
    --kafka produces each event as JSON to events.<type>, keyed by user_id.
    """
    from argus.world import generate as gen

    if out_dir is None and not to_kafka:
        raise UserError("say where the events go: --out DIR, --kafka, or both")
    if fmt not in ("parquet", "jsonl"):
        raise UserError(f"--format must be parquet or jsonl, not {fmt!r}")
    from argus.preflight import PreflightError, iso_date

    try:
        iso_date(start, "--start")
    except PreflightError as exc:
        raise UserError(str(exc)) from exc
    try:
        config = gen.config(
            users=users,
            days=days,
            seed=seed,
            start=date.fromisoformat(start),
            events_per_user_day=events_per_user_day,
            profile=profile,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    world = gen.World(config)
    expected = gen.expected_events(world)
    summary: dict[str, object] = {"accounts": int(world.pop.n)}
    if out_dir is not None:
        with (
            _holding_lake(out_dir, "argus generate --out"),
            progress_bar("writing the lake", total=expected) as advance,
        ):
            manifest = gen.write_world(world, out_dir, fmt, advance)
        summary["events"] = sum(sum(d.values()) for d in manifest["events"].values())
        summary["out"] = str(out_dir)
    if to_kafka:
        with progress_bar("producing to Kafka", total=expected) as advance:
            sent = gen.produce_world(world, bootstrap, advance, bad_records=bad_records)
        summary["produced"] = sum(sent.values())
    print(json.dumps(summary))


# --- validate ---------------------------------------------------------------------------


@app.command()
def validate(
    group: Annotated[
        str, typer.Option(help="Consumer group; a new group reads from the beginning.")
    ] = "argus-validator",
    idle_timeout: Annotated[float, typer.Option(help="Stop after this many seconds without records.")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line.")] = False,
    bootstrap: BootstrapOption = None,
) -> None:
    """Read the events.* topics to their current end, validate every record, dead-letter the rejects.

    Rejected records go to dlq.events with the reason, the original bytes (base64) and their
    topic/partition/offset. Offsets are committed per consumer group, so a rerun continues.
    """
    from argus.pipelines.topic_validator import validate_topics
    from argus.preflight import PreflightError, require_broker
    from argus.progress import advance, step

    try:
        require_broker(bootstrap)
    except PreflightError as exc:
        raise UserError(str(exc)) from exc
    with working("validate"):
        step(f"reading the events.* topics in group {group} (ends {idle_timeout:g}s after the last record)")
        report = validate_topics(group_id=group, bootstrap=bootstrap, idle_timeout_s=idle_timeout, progress=advance)
    if as_json:
        print(json.dumps(report.to_json()))
    else:
        _print_report(report.to_json())


def _print_report(report: dict[str, object]) -> None:
    out.print("[bold]valid events per topic[/]")
    for topic, count in report["valid"].items():  # type: ignore[attr-defined]
        out.print(f"  {topic:<20} {count:>10,}")
    out.print(f"[bold]dead-lettered[/] {report['dead_lettered']:,} (to dlq.events)")
    for reason, count in report["rejected_by_reason"].items():  # type: ignore[attr-defined]
        out.print(f"  {reason:<20} {count:>10,}")


# --- import -----------------------------------------------------------------------------


@app.command("import")
def import_(
    source: Annotated[Path, typer.Argument(help="The file to import: .csv, .jsonl or .parquet.")],
    mapping: Annotated[Path, typer.Option(help="The mapping file (TOML): source columns -> event fields.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write the events into this lake folder.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Lake file format: parquet or jsonl (with --out).")] = "parquet",
    to_kafka: Annotated[bool, typer.Option("--kafka", help="Produce the events to the events.* topics.")] = False,
    rejects: Annotated[
        Path | None,
        typer.Option(help="Dead-letter file (JSONL); default OUT.rejected.jsonl, or SOURCE-NAME.rejected.jsonl here."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON line on stdout.")] = False,
    bootstrap: BootstrapOption = None,
) -> None:
    """Import your own chat log, payments export or order history, mapped by a TOML file.

    Every row is mapped, validated like any Kafka record and either written (lake layout
    events/event_type=T/date=D/import-SOURCE.parquet, replaced on re-import; or events.<type>
    keyed by user_id) or dead-lettered with its reason, row number and original row. --out holds
    the lake's writer lease meanwhile: refused while another run writes that lake.
    """
    from argus.imports import MappingError, SourceError, load_mapping, run_import
    from argus.imports.mapping import source_format
    from argus.imports.run import count_rows

    if out_dir is None and not to_kafka:
        raise UserError("say where the events go: --out LAKE_DIR, --kafka, or both")
    if fmt not in ("parquet", "jsonl"):
        raise UserError(f"--format must be parquet or jsonl, not {fmt!r}")
    try:
        rules = load_mapping(mapping)
        total = count_rows(source, source_format(source, rules)) if source.is_file() else None
        with (
            _holding_lake(out_dir, "argus import --out"),
            progress_bar(f"importing {source.name}", total=total) as advance,
        ):
            summary = run_import(
                source,
                rules,
                out=out_dir,
                out_format=fmt,
                kafka=to_kafka,
                bootstrap=bootstrap,
                rejects=rejects,
                progress=advance,
            )
    except (MappingError, SourceError) as exc:
        raise UserError(str(exc)) from exc
    report = summary.to_json()
    if as_json:
        print(json.dumps(report))
        return
    err.print(f"[bold]{source}[/]: {summary.rows:,} rows read", highlight=False)
    for event_type, count in report["imported"].items():
        err.print(f"  imported {event_type:<12} {count:>10,}", highlight=False)
    rejected = sum(summary.rejected.values())
    err.print(f"  rejected {'':<12} {rejected:>10,} (to {summary.rejects_file})", highlight=False)
    for reason, count in report["rejected"].items():
        err.print(f"    {reason:<20} {count:>10,}", highlight=False)
    if summary.out is not None:
        err.print(f"  lake: {summary.out} ({summary.files} files)", highlight=False)
    for topic, count in report.get("produced", {}).items():
        err.print(f"  produced {topic:<20} {count:>10,}", highlight=False)


# --- batch --------------------------------------------------------------------------------


@batch_app.command("ingest")
def batch_ingest(
    lake: LakeUriOption = "lake",
    master: MasterOption = "local[2]",
    conf: SparkConfOption = None,
    topics: Annotated[str | None, typer.Option(help="Comma-separated topics; default: every events.* topic.")] = None,
    rerun: Annotated[str | None, typer.Option(help="Read the offset range of this earlier run again.")] = None,
    print_command: PrintCommandOption = False,
    bootstrap: BootstrapOption = None,
) -> None:
    """Kafka event topics -> validated Delta tables of events (by event type and date) + dead letters.

    Each run continues from where the last one ended and records its offset range in
    LAKE/_offsets/RUN_ID.json; --rerun RUN_ID reads that range again, and the merge on event id
    (source offset for dead letters) stores nothing twice. The job runs
    through spark-submit with the Kafka connector's jars and a zip of Argus's code (--py-files),
    so the same command runs on a cluster with --master.
    """
    from argus.infra.topics import EVENT_TOPICS

    args = [
        "--bootstrap",
        _servers(bootstrap),
        "--lake",
        str(_lake(lake)),
        "--topics",
        topics or ",".join(EVENT_TOPICS),
    ]
    if rerun:
        args += ["--rerun", rerun]
    _spark_submit("ingest", args, master, lake, print_command, conf)


@batch_app.command("quality")
def batch_quality(
    date_: Annotated[str, typer.Option("--date", help="The lake date to check, YYYY-MM-DD.")],
    lake: LakeUriOption = "lake",
    master: MasterOption = "local[2]",
    conf: SparkConfOption = None,
    freshness_hours: Annotated[float, typer.Option(help="The newest event must be this close to the day's end.")] = 6.0,
    volume_tolerance: Annotated[float, typer.Option(help="Allowed change in rows against the previous day.")] = 0.5,
    print_command: PrintCommandOption = False,
) -> None:
    """great-expectations gate on one lake date: schema, nulls, values, unique event_id, freshness, volume.

    Exits 1 with a summary when a check fails (full results in LAKE/_quality/date=D/results.json),
    so a nightly chain stops before anything downstream is published.
    """
    _check_date(date_)
    args = ["--lake", str(_lake(lake)), "--date", date_]
    args += ["--freshness-hours", str(freshness_hours), "--volume-tolerance", str(volume_tolerance)]
    _spark_submit("quality", args, master, lake, print_command, conf)


@batch_app.command("profile")
def batch_profile(
    date_: Annotated[str, typer.Option("--date", help="Profile as of the end of this day, YYYY-MM-DD.")],
    lake: LakeUriOption = "lake",
    feature_days: Annotated[int, typer.Option(min=1, help="Days of events behind the behaviour features.")] = 30,
    master: MasterOption = "local[2]",
    conf: SparkConfOption = None,
    print_command: PrintCommandOption = False,
) -> None:
    """Per-user profiles: 1/7/30-day and lifetime activity, context-aware chat, click, payment, account.

    Replaces date D of the LAKE/profiles Delta table in one commit; see jobs/profiles.py for every column.
    """
    _check_date(date_)
    args = ["--lake", str(_lake(lake)), "--date", date_, "--feature-days", str(feature_days)]
    _spark_submit("profiles", args, master, lake, print_command, conf)


@batch_app.command("embed")
def batch_embed(
    date_: Annotated[str, typer.Option("--date", help="Embed behaviour up to the end of this day, YYYY-MM-DD.")],
    lake: LakeUriOption = "lake",
    days: Annotated[int, typer.Option(min=1, help="Days of events in each sequence.")] = 30,
    dim: Annotated[int, typer.Option(min=2, help="Embedding dimensions.")] = 32,
    word2vec_partitions: Annotated[
        int,
        typer.Option(
            min=1, help="Word2Vec training tasks: more train on more cores, with noisier vectors (jobs/embed.py)."
        ),
    ] = 1,
    master: MasterOption = "local[2]",
    conf: SparkConfOption = None,
    print_command: PrintCommandOption = False,
) -> None:
    """Time-aware behaviour-sequence embeddings: event and time-gap tokens, Word2Vec, time-decay pooling.

    Replaces date D of the LAKE/embeddings Delta table (user_id, embedding, tokens); see jobs/embed.py.
    """
    _check_date(date_)
    args = ["--lake", str(_lake(lake)), "--date", date_, "--days", str(days), "--dim", str(dim)]
    args += ["--word2vec-partitions", str(word2vec_partitions)]
    _spark_submit("embed", args, master, lake, print_command, conf)


@batch_app.command("score")
def batch_score(
    detector: Annotated[str, typer.Option(help="trolls, evaders, fraud or churn.")],
    date_: Annotated[str, typer.Option("--date", help="Score as of the end of this day, YYYY-MM-DD.")],
    lake: LakeUriOption = "lake",
    days: Annotated[int, typer.Option(min=1, help="Days of events behind the features.")] = 30,
    model: Annotated[
        str | None,
        typer.Option(help="A saved model's folder or URI (LAKE/models/X/VERSION); without it, fit on the same night."),
    ] = None,
    alerts: Annotated[bool, typer.Option(help="Produce the alerts to the alerts.* topics.")] = False,
    master: MasterOption = "local[2]",
    conf: SparkConfOption = None,
    print_command: PrintCommandOption = False,
    bootstrap: BootstrapOption = None,
) -> None:
    """Score one detector over the lake: date D of the LAKE/scores/detector=X Delta table, the model in LAKE/models/X/.

    trolls reads the nightly profile (run `batch profile` first); the others read the events.
    """

    _check_date(date_)
    if detector not in DETECTOR_NAMES:
        raise UserError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTOR_NAMES)}")
    args = ["--lake", str(_lake(lake)), "--date", date_, "--detector", detector, "--days", str(days)]
    if model is not None:
        args += ["--model", _saved_model(model)]
    if alerts:
        args += ["--bootstrap", _servers(bootstrap)]
    _spark_submit("score", args, master, lake, print_command, conf)


@batch_app.command("nightly")
def batch_nightly(
    date_: Annotated[str | None, typer.Option("--date", help="The day to process, YYYY-MM-DD.")] = None,
    from_: Annotated[
        str | None, typer.Option("--from", help="Backfill: the first day, YYYY-MM-DD (with --to).")
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="Backfill: the last day, YYYY-MM-DD (with --from).")] = None,
    lake: LakeUriOption = "lake",
    master: MasterOption = "local[2]",
    skip_ingest: Annotated[
        bool, typer.Option(help="The lake is already filled (e.g. by argus generate --out).")
    ] = False,
    detectors: Annotated[
        str, typer.Option(help="Detectors to fit and score after the embeddings, comma-separated; '' for none.")
    ] = "trolls,evaders,fraud,churn",
    fit: Annotated[
        bool, typer.Option(help="--no-fit scores with the model store's current models instead of refitting.")
    ] = True,
    alerts: Annotated[bool, typer.Option(help="Produce the detectors' alerts to the alerts.* topics.")] = False,
    word2vec_partitions: Annotated[
        int,
        typer.Option(
            min=1, help="The embed step's Word2Vec training tasks: more train on more cores, with noisier vectors."
        ),
    ] = 1,
    conf: SparkConfOption = None,
    print_command: PrintCommandOption = False,
    bootstrap: BootstrapOption = None,
) -> None:
    """The nightly chain in one Spark application: ingest -> quality gate -> profiles -> embeddings ->
    fit and score each detector -> alerts.

    Each date is published whole at its end (scores, models made current in LAKE/models, alerts in
    LAKE/alerts/ and, with --alerts, on the alerts.* topics): a crash leaves the previous night in
    place, and a rerun replaces the date's outputs with the same alert ids. A failing quality gate
    stops the chain (exit 1). Step results go to stdout as JSON lines; Spark's log to LAKE/_logs/.
    """
    from argus.nightly import NightlyError, NightlyRun, nightly_command, run_nightly_submit

    spark_conf = _spark_conf(conf)
    names = [d for d in detectors.split(",") if d]
    unknown = [d for d in names if d not in DETECTOR_NAMES]
    if unknown:
        raise UserError(f"--detectors: unknown detector {unknown[0]!r}; choose from {', '.join(DETECTOR_NAMES)}")
    if date_ is not None and (from_ or to):
        raise UserError("give either --date D or --from D1 --to D2, not both")
    if date_ is not None:
        dates = [_parse_date(date_, "--date")]
    elif from_ and to:
        first, last = _parse_date(from_, "--from"), _parse_date(to, "--to")
        if last < first:
            raise UserError(f"--to {last} is before --from {first}; give the earlier date first")
        dates = [date.fromordinal(n) for n in range(first.toordinal(), last.toordinal() + 1)]
    else:
        raise UserError("give --date YYYY-MM-DD, or --from and --to for a backfill")
    servers = _servers(bootstrap) if (alerts or not skip_ingest) else None
    run = NightlyRun(
        _lake(lake),
        dates,
        names,
        master,
        servers,
        ingest=not skip_ingest,
        alerts=alerts,
        fit=fit,
        word2vec_partitions=word2vec_partitions,
        spark_conf=spark_conf,
    )
    if print_command:
        print(shlex.join(nightly_command(run, err)))  # quoted: Java options hold spaces
        return
    _check_no_writer(lake)  # before Spark starts: the job itself would only refuse after it did
    try:
        code = run_nightly_submit(run, err)
    except NightlyError as exc:
        raise UserError(str(exc)) from exc
    if code:
        raise typer.Exit(code)


def _parse_date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise UserError(f"{option} must be YYYY-MM-DD, not {value!r}") from exc


def _servers(bootstrap: str | None) -> str:
    """The resolved bootstrap servers as one ``host:port,...`` argument for a spark-submit job."""
    from argus.infra.clients import kafka_settings

    servers = kafka_settings(bootstrap)["bootstrap_servers"]
    return servers if isinstance(servers, str) else ",".join(servers)


def _check_date(value: str) -> None:
    try:
        date.fromisoformat(value)
    except ValueError as exc:
        raise UserError(f"--date must be YYYY-MM-DD, not {value!r}") from exc


# The jobs that write the lake, each holding its writer lease for the run (jobs/entry.py).
_LAKE_WRITERS = frozenset({"ingest", "quality", "profiles", "embed", "score", "nightly"})


def _check_no_writer(lake: str | Path) -> None:
    """One line naming the writer that holds ``lake`` now, and what to do; nothing when it is free."""
    from argus.jobs.lake import LakeError, check_no_writer

    try:
        check_no_writer(_lake(str(lake)))
    except LakeError as exc:
        raise UserError(str(exc)) from exc


@contextmanager
def _holding_lake(lake: Path | None, command: str) -> Iterator[None]:
    """Hold ``lake``'s writer lease while this process writes it (no lake: nothing to hold); another
    writer holding it is one line naming that writer."""
    if lake is None:
        yield
        return
    import shutil

    from argus.jobs.lake import LEASES, LeaseHeld, WriterLease

    new = not lake.exists()
    lease = WriterLease(lake, command)
    try:
        lease.acquire()
    except LeaseHeld as exc:
        raise UserError(str(exc)) from exc
    try:
        yield
    except BaseException:
        lease.release()
        if new and [p.name for p in lake.iterdir()] == [LEASES]:
            shutil.rmtree(lake)  # failed before writing anything: no lake left behind for a mistake
        raise
    lease.release()


def _lake(value: str) -> Path | str:
    """``--lake`` as a folder or, for object storage, the URI itself (never resolved as a local path)."""
    from argus.jobs.lake import LakeError, lake_location

    try:
        return lake_location(value)
    except LakeError as exc:
        raise UserError(str(exc)) from exc


def _spark_conf(pairs: list[str] | None) -> dict[str, str]:
    """``--conf KEY=VALUE`` options as Spark settings; a malformed one is one line saying what to give."""
    from argus.infra.spark import parse_spark_conf

    try:
        return parse_spark_conf(pairs or [])
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def _spark_submit(
    job: str, args: list[str], master: str, lake: str, print_command: bool, conf: list[str] | None = None
) -> None:
    """Run ``jobs/<job>.py`` through spark-submit, with ``conf`` (``--conf KEY=VALUE``) over the configured
    Spark settings; its last stdout line (JSON) is the result."""
    import subprocess

    from argus.infra.spark import environment_for_submit, py_files_archive, submit_command

    extra = _spark_conf(conf)
    if job in _LAKE_WRITERS and not print_command:
        _check_no_writer(lake)  # before Spark starts: the job itself would only refuse after it did
    with err.status("fetching the Spark Kafka connector's jars (first run only)..."):
        cmd = submit_command(job, args, master=master, py_files=py_files_archive(), extra=extra)
    if print_command:
        print(shlex.join(cmd))
        return
    from argus.jobs.lake import logs_folder
    from argus.progress import step

    log = logs_folder(_lake(lake)) / f"{job}.log"  # Spark's own output: kept here, never on the terminal
    with working(f"batch {job}"):
        step(f"spark-submit on {master} (Spark's log: {log})")
        result = subprocess.run(cmd, env=environment_for_submit(master), capture_output=True, text=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(result.stdout + result.stderr)
    lines = (result.stdout + result.stderr).splitlines()
    if result.returncode != 0 and job == "quality" and '"passed": false' in result.stdout:
        summary = [line for line in result.stdout.splitlines() if line.startswith(("quality gate", "  "))]
        err.print("\n".join(summary), highlight=False)
        print(result.stdout.strip().splitlines()[-1])
        raise typer.Exit(1)
    if result.returncode != 0:
        said = next((line[len("error: ") :] for line in lines if line.startswith("error: ")), None)
        if said:
            raise UserError(said)
        last = next((line.strip() for line in reversed(lines) if "Error" in line), "see the log")
        raise UserError(f"{job} failed: {last} (full log: {log})")
    print(result.stdout.strip().splitlines()[-1])


@batch_app.command("runs")
def batch_runs(lake: LakeUriOption = "lake") -> None:
    """List the lake's ingest runs: id, records read, rejects, when (one JSON line each)."""
    from argus.jobs.ingest import ingest_runs

    runs = ingest_runs(_lake(lake))
    if not runs:
        raise UserError(f"no ingest runs in {lake}; run `argus batch ingest --lake {lake}` first")
    for run in runs:
        print(json.dumps({k: run[k] for k in ("run_id", "valid", "rejected", "finished_at")}))


# --- lake ---------------------------------------------------------------------------------

lake_app = typer.Typer(no_args_is_help=True, help="The lake's Delta tables: publication history, VACUUM.")
app.add_typer(lake_app, name="lake")


@lake_app.command("history")
def lake_history(lake: LakeUriOption = "lake") -> None:
    """List the lake's publications, oldest first: sequence, run, when, tables changed and every
    table's Delta version (one JSON line each). Each is a night readers can go back to (until VACUUM)."""
    from argus.jobs.lake import manifests

    published = manifests(_lake(lake))
    if not published:
        raise UserError(
            f"nothing published in {lake} yet; run `argus batch ingest --lake {lake}` or `argus batch nightly` first"
        )
    for manifest in published:
        print(json.dumps(manifest.to_json()))


@lake_app.command("vacuum")
def lake_vacuum(
    lake: LakeUriOption = "lake",
    retain_hours: Annotated[
        int, typer.Option(min=0, help="Keep every file a version of the last N hours needs (Delta's minimum: 168).")
    ] = 168,
    dry_run: Annotated[bool, typer.Option(help="--no-dry-run deletes; by default only counts.")] = True,
) -> None:
    """Delete files of the published tables that no version of the last --retain-hours needs.

    Nights older than that can no longer be read (time travel ends there). Prints the files and
    bytes per table it removed (would remove, by default) as one JSON line, and a summary on stderr.
    Deleting takes the lake's writer lease, so it refuses to run while a night or an ingest writes.
    The nightly schedule runs it after each night (`argus schedule install`, the Airflow DAG).
    """
    from argus.jobs.lake import LakeError, vacuum

    try:
        removed = vacuum(_lake(lake), retain_hours, dry_run=dry_run)
    except LakeError as exc:
        raise UserError(str(exc)) from exc
    print(json.dumps({"dry_run": dry_run, "retain_hours": retain_hours, **removed.to_json()}))
    total, size = sum(removed.files.values()), sum(removed.bytes.values())
    verb = "would remove" if dry_run else "removed"
    err.print(
        f"vacuum {verb} {total:,} files ({size / 1e6:,.1f} MB) from {len(removed.files)} tables; every version of"
        f" the last {retain_hours} h stays readable" + (" (--no-dry-run deletes them)" if dry_run and total else ""),
        highlight=False,
        soft_wrap=True,
    )


# --- forget -------------------------------------------------------------------------------


@app.command()
def forget(
    user: Annotated[list[str], typer.Option("--user", help="The user id to erase; repeat for several.")],
    reason: Annotated[str | None, typer.Option(help="Why (a ticket or request id); kept in the audit log.")] = None,
    lake: LakeOption = Path("lake"),
    no_kafka: Annotated[bool, typer.Option("--no-kafka", help="Erase from the lake only; no broker needed.")] = False,
    bootstrap: BootstrapOption = None,
) -> None:
    """Erase users: their rows from every lake table and date, tombstones on compacted topics, models.

    Mentions of the user in other users' rows become a pseudonym; dead letters mentioning them are
    removed. One JSON record per run goes to LAKE/_audit/forget.jsonl, with the users as keyed
    digests and counts, never the removed content. Rerunning is safe and reports 0 removed.
    """
    from argus.forget import ForgetError, summary
    from argus.forget import forget as run_forget
    from argus.jobs.lake import LakeError

    try:
        report = run_forget(lake, user, reason, bootstrap=bootstrap, kafka=not no_kafka)
    except (ForgetError, LakeError) as exc:
        raise UserError(str(exc)) from exc
    result = summary(report)
    print(json.dumps(result, sort_keys=True))
    if report.models_pending_refit:
        err.print(
            f"note: models in use still name the user: {', '.join(report.models_pending_refit)}; the next fit"
            " (argus batch nightly) replaces them, then rerun argus forget to delete them",
            highlight=False,
        )


# --- schemas ----------------------------------------------------------------------------


@schemas_app.command("export")
def schemas_export() -> None:
    """Rewrite schemas/json/*.schema.json from the models (after a deliberate contract change)."""
    from argus.schemas.export import export

    for path in export():
        out.print(str(path))


@schemas_app.command("check")
def schemas_check(path: Annotated[Path, typer.Argument(help="A file of records, one JSON document per line.")]) -> None:
    """Validate a JSON Lines file against the event contracts and count the rejects by reason."""
    from collections import Counter

    from argus.schemas import validate_batch
    from argus.schemas.validate import Rejection

    if not path.exists():
        raise UserError(f"{path} does not exist")
    reasons: Counter[str] = Counter()
    total = 0
    with path.open("rb") as lines:
        for result in validate_batch(line.rstrip(b"\n") for line in lines):
            total += 1
            if isinstance(result, Rejection):
                reasons[result.reason_code] += 1
                if sum(reasons.values()) <= 5:
                    err.print(f"line {total}: {result.reason_code}: {result.reason}", highlight=False)
    print(json.dumps({"records": total, "rejected": sum(reasons.values()), "by_reason": dict(reasons)}))
    if reasons:
        raise typer.Exit(1)


# --- bench and demo -----------------------------------------------------------------------


@bench_app.command("generate")
def bench_generate(
    users: Annotated[int, typer.Option(min=50, help="Accounts in the benchmark world.")] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Simulated days.")] = 1,
    skip_kafka: Annotated[bool, typer.Option(help="Measure file output only.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line (the default).")] = True,
    bootstrap: BootstrapOption = None,
) -> None:
    """Generator throughput to Parquet files and into Kafka (events_per_s_files, events_per_s_kafka)."""
    from argus.bench import bench_generate as run

    print(json.dumps(run(users=users, days=days, kafka=not skip_kafka, bootstrap=bootstrap)))


@bench_app.command("cluster")
def bench_cluster(
    n: Annotated[int, typer.Option("--n", min=2, help="Points in the generated blobs (5% uniform noise).")] = 50_000,
    dim: Annotated[int, typer.Option("--dim", min=1, help="Dimensions of the generated blobs.")] = 64,
    data: Annotated[
        Path | None, typer.Option("--data", help="Cluster this matrix instead of blobs: .npy, .csv or .parquet.")
    ] = None,
    min_cluster_size: Annotated[int, typer.Option(min=2)] = 50,
    min_samples: Annotated[int, typer.Option(min=1)] = 10,
    skip_hdbscan: Annotated[bool, typer.Option(help="Skip the hdbscan library (hours at large n).")] = False,
    skip_fast: Annotated[bool, typer.Option(help="Skip fast_hdbscan.")] = False,
    repeats: Annotated[int, typer.Option(min=1, help="Timed fits per library, round-robin; medians reported.")] = 1,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="Give up on a library after this many seconds per fit.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line (the default).")] = True,
) -> None:
    """pHDBSCAN against the hdbscan library and fast_hdbscan (warm) on the same data.

    Keys: n, dim, duplicate_rows, ours_s, hdbscan_s, fast_hdbscan_s (medians; *_runs_s: every run),
    speedup (hdbscan_s / ours_s), speedup_vs_fast, ari (ours vs hdbscan), ari_fast, peak_rss_mb
    (ours). Each library runs in its own process on the same float32 matrix; fast_hdbscan's first
    fit (JIT compilation) is fast_hdbscan_warmup_s. A library that fails gets {"error": ...} under
    its name, the others' figures stay, and the exit code is 1.
    """
    from argus.bench import BenchDataError
    from argus.bench import bench_cluster as run

    if data is not None and not data.is_file():
        raise UserError(f"--data: {data} is not a file")
    try:
        result = run(n, dim, min_cluster_size, min_samples, data, skip_hdbscan, skip_fast, 0, repeats, timeout)
    except (RuntimeError, BenchDataError) as exc:
        raise UserError(f"--data: {exc}" if isinstance(exc, BenchDataError) else str(exc)) from exc
    print(json.dumps(result))
    if any(isinstance(value, dict) and "error" in value for value in result.values()):
        raise typer.Exit(1)


@bench_app.command("profile")
def bench_profile(
    events: Annotated[
        int, typer.Option("--events", min=1000, help="Events to generate (one day, events/100 users).")
    ] = 1_000_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line (the default).")] = True,
) -> None:
    """The nightly profile job against a bare Spark groupBy-count over the same Parquet, in one session.

    Keys: events, users, seconds, events_per_s, baseline_groupby_s, ratio (seconds / baseline).
    """
    from argus.bench import bench_profile as run

    print(json.dumps(run(events)))


@bench_app.command("detect")
def bench_detect(
    users: Annotated[int, typer.Option(min=50, help="Accounts in the benchmark world.")] = 10_000,
    days: Annotated[int, typer.Option(min=1, help="Simulated days (118 events per user-day).")] = 1,
    detectors: Annotated[str, typer.Option(help="Comma-separated detectors to time.")] = "trolls,evaders,fraud,churn",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line (the default).")] = True,
) -> None:
    """Seconds for each detector's features, fit and score on one generated world, and peak memory."""
    from argus.bench import bench_detect as run

    names = [d for d in detectors.split(",") if d]
    unknown = [d for d in names if d not in DETECTOR_NAMES]
    if unknown:
        raise UserError(f"unknown detector {unknown[0]!r}; choose from {', '.join(DETECTOR_NAMES)}")
    print(json.dumps(run(users, days, names)))


@bench_app.command("nightly")
def bench_nightly(
    users: Annotated[int, typer.Option(min=50, help="Accounts in the benchmark world (realistic profile).")] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Simulated days; the chain runs on the last.")] = 1,
    master: Annotated[
        str, typer.Option(help="Spark master: local[N], spark://HOST:PORT, or 'standalone' to start one here.")
    ] = "local[2]",
    skip_local1: Annotated[bool, typer.Option(help="Skip the second run at local[1] (seconds_local1).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line (the default).")] = True,
) -> None:
    """The whole nightly chain (all four detectors) on a generated world, then again at local[1].

    Keys: seconds, steps (seconds per step), driver_peak_rss_mb, executor_peak_mb, rss_peak_mb (per
    part), seconds_local1, ratio_local1 (seconds_local1 / seconds), cpus_local1 (the one CPU the local[1]
    run and every process below it are held to), events, alerts, generate_s and the
    load average before and after (see argus/bench_nightly.py for what each figure measures).
    """
    from argus.bench_nightly import BenchNightlyError
    from argus.bench_nightly import bench_nightly as run
    from argus.infra.spark_cluster import ClusterError

    if master != "standalone" and not master.startswith(("local", "spark://", "yarn", "k8s://")):
        raise UserError(f"--master: {master!r} is not a Spark master; give local[N], spark://HOST:PORT or standalone")
    try:
        result = run(users, days, master=master, local1=not skip_local1, console=err)
    except (BenchNightlyError, ClusterError) as exc:
        raise UserError(str(exc)) from exc
    print(json.dumps(result))


@bench_app.command("stream")
def bench_stream(
    events: Annotated[
        int, typer.Option("--events", min=1000, help="Events to offer (one dense day, in order).")
    ] = 200_000,
    rate: Annotated[float, typer.Option(min=1.0, help="Events per second offered to Kafka.")] = 25_000.0,
    detectors: Annotated[str, typer.Option(help="Comma-separated streaming detectors to run.")] = "trolls,fraud",
    key_shards: Annotated[int, typer.Option(min=1, help="Shards of the pipeline's keyed state.")] = 1,
    sdk_workers: Annotated[
        int, typer.Option(min=1, help="Prism's Python worker processes (`argus stream run --sdk-workers`).")
    ] = 1,
    timeout: Annotated[float, typer.Option(min=10.0, help="Seconds to wait for the last outputs.")] = 600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line (the default).")] = True,
    bootstrap: BootstrapOption = None,
) -> None:
    """The streaming pipeline on Prism fed at a fixed rate: Kafka in to alert and feature topics out.

    Keys: events, offered_per_s, events_per_s, latency_p50_s, latency_p99_s, latency_max_s, checked,
    lost, lost_by_reason, lost_sample, waited_s, timed_out, alerts, duplicate_alerts, detectors, key_shards,
    sdk_workers, event_time_speedup, cpu_s (by part: pipeline, runner, broker, bench), cpu_us_per_event
    (see argus/bench_stream.py).
    Starts a scratch broker unless --bootstrap is given; needs the Prism runner (`argus stream fetch`).
    """
    from argus.bench_stream import BenchStreamError
    from argus.bench_stream import bench_stream as run
    from argus.infra.prism import PrismError, fetch_prism

    names = [d.strip() for d in detectors.split(",") if d.strip()]
    unknown = [d for d in names if d not in ("trolls", "fraud")]
    if unknown or not names:
        given = unknown[0] if unknown else detectors
        raise UserError(f"--detectors: unknown streaming detector {given!r}; use trolls and/or fraud")
    try:
        fetch_prism()
        result = run(events, rate, names, key_shards, bootstrap=bootstrap, timeout_s=timeout, sdk_workers=sdk_workers)
    except (BenchStreamError, PrismError) as exc:
        raise UserError(str(exc)) from exc
    print(json.dumps(result))


@bench_app.command("checkpoint")
def bench_checkpoint(
    users: Annotated[int, typer.Option(min=50, help="Accounts in the benchmark world (realistic profile).")] = 500,
    days: Annotated[int, typer.Option(min=2, help="Days of events in the world.")] = 30,
    first_days: Annotated[int, typer.Option(help="Days of the log the first run reads before the restart.")] = 10,
    detectors: Annotated[
        str, typer.Option(help="Comma-separated streaming detectors to run.")
    ] = "trolls,churn,evaders",
    skip_fresh: Annotated[
        bool, typer.Option("--skip-fresh", help="Leave out the fresh run over the whole log.")
    ] = False,
    kill: Annotated[
        bool, typer.Option("--kill", help="Run the first run unbounded and SIGKILL it after its first commit.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line (the default).")] = True,
    bootstrap: BootstrapOption = None,
) -> None:
    """What checkpoints cost on Prism: a fresh run, a first run and a restart from its checkpoint.

    Keys: events, users, days, first_days, detectors; per run (fresh, first, restart) wall_s,
    prism_peak_mib, records_read, checkpoints, alerts; checkpoint_file_kib (see argus/bench_checkpoint.py).
    Starts a scratch broker unless --bootstrap is given; needs the Prism runner (`argus stream fetch`).
    """
    from argus.bench_checkpoint import BenchCheckpointError, check_settings
    from argus.bench_checkpoint import bench_checkpoint as run
    from argus.infra.prism import PrismError, fetch_prism

    names = [d.strip() for d in detectors.split(",") if d.strip()]
    try:
        check_settings(days, first_days, names)
        fetch_prism()
        result = run(users, days, first_days, names, skip_fresh=skip_fresh, kill=kill, bootstrap=bootstrap)
    except (BenchCheckpointError, PrismError) as exc:
        raise UserError(str(exc)) from exc
    print(json.dumps(result))


@eval_app.command("embeddings")
def eval_embeddings(
    users: Annotated[int, typer.Option(min=100, help="Accounts in the evaluation world.")] = 1500,
    days: Annotated[int, typer.Option(min=1, help="Simulated days.")] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line (the default).")] = True,
) -> None:
    """Do fraud-ring members sit closer to each other than to normal users? (cosine distance, per ring)"""
    from argus.bench import eval_embeddings as run

    print(json.dumps(run(users, days)))


# --- detectors ----------------------------------------------------------------------------

DETECTOR_NAMES = ("trolls", "evaders", "fraud", "churn")
WorldOption = Annotated[
    Path | None,
    typer.Option("--world", help="A world written by `argus generate --out`; default: the seeded default world."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON line (the default).")]


@app.command()
def detect(
    detector: Annotated[str, typer.Argument(help="trolls, evaders, fraud or churn.")],
    events: Annotated[
        Path, typer.Option(help="Events: a lake/world folder, a .parquet (wide schema) or a .jsonl file.")
    ],
    out: Annotated[Path, typer.Option(help="Scores CSV: user_id, score (0..1), flagged, status, reasons.")],
    model: Annotated[Path | None, typer.Option(help="A saved model folder; without it, fit on these events.")] = None,
    save_model: Annotated[Path | None, typer.Option(help="Save the model fitted here to this folder.")] = None,
    as_of: Annotated[str | None, typer.Option(help="churn: score as of this day, YYYY-MM-DD.")] = None,
    horizon_days: Annotated[
        int | None, typer.Option(min=1, help="churn: no activity within N days (an alias of --horizon Nd).")
    ] = None,
    horizon: Annotated[
        str | None, typer.Option(help="churn: no activity within this long: days, weeks or months (14d, 39w, 3m).")
    ] = None,
    lookback: Annotated[
        str | None, typer.Option(help="churn: the recent window the features look at (30d, 26w, 6m).")
    ] = None,
    churn_mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="churn: daily (dense platforms), purchase (days to months between events) or auto (from the data).",
        ),
    ] = None,
    per: Annotated[
        str,
        typer.Option(
            help="user: one row per user in --out. message (trolls) or payment (fraud): one row per"
            " chat message or payment in --out, and the users in OUT.users.csv."
        ),
    ] = "user",
    alerts: Annotated[bool, typer.Option(help="Also produce the alerts to the alerts.* topics.")] = False,
    bootstrap: BootstrapOption = None,
) -> None:
    """Score every user of an events file; users that cannot be scored get a status saying why.

    Without --model the detector is fitted on the same events (unsupervised use) and
    --save-model keeps that model for later runs or for streaming. trolls also writes the
    raid groups it finds to OUT.raids.jsonl; malformed JSONL lines go to OUT.rejected.jsonl.
    """
    from argus.detect import nothing_useful, run_detect
    from argus.detectors.base import ModelError
    from argus.detectors.events import EventsError
    from argus.infra.clients import publish_alerts
    from argus.preflight import PreflightError, require_broker, writable_file

    if detector not in DETECTOR_NAMES:
        raise UserError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTOR_NAMES)}")
    params: dict[str, object] = {}
    churn_options = (as_of, horizon_days, horizon, lookback, churn_mode)
    if detector == "churn":
        params = _churn_params(as_of, horizon_days, horizon, lookback, churn_mode)
    elif any(option is not None for option in churn_options):
        raise UserError("--as-of, --horizon, --horizon-days, --lookback and --mode apply to churn only")
    if model is not None and {"horizon_days", "lookback_days", "mode"} & set(params):
        raise UserError(
            "a saved churn model answers for the horizon, lookback and mode it was fitted for;"
            " drop --horizon/--lookback/--mode or refit"
        )
    try:  # mistakes that would otherwise surface only after the whole fit
        writable_file(out, "--out")
        if save_model is not None and save_model.is_file():
            raise PreflightError(f"--save-model {save_model} is a file; give a folder to save the model into")
        if alerts:
            require_broker(bootstrap)
    except PreflightError as exc:
        raise UserError(str(exc)) from exc
    try:
        with working(f"detect {detector}"):
            summary, found = run_detect(detector, events, out, model, save_model, params, per=per)
    except (EventsError, ModelError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    if alerts:
        with err.status(f"publishing {len(found)} alerts..."):
            summary["alerts"] = publish_alerts(found, bootstrap, source=str(out))
    if summary.get("horizon_note"):
        err.print(f"churn: {summary['horizon_note']}", highlight=False, markup=False, soft_wrap=True)
    print(json.dumps(summary))
    warning = nothing_useful(summary)
    if warning:
        err.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _churn_params(
    as_of: str | None, horizon_days: int | None, horizon: str | None, lookback: str | None, mode: str | None
) -> dict[str, object]:
    """The churn detector's parameters from ``detect``'s options; a bad value is a one-line error naming it."""
    from argus.detectors.churn import MODES, parse_duration

    params: dict[str, object] = {}
    if as_of is not None:
        from argus.preflight import PreflightError, iso_date

        try:
            params["as_of"] = iso_date(as_of, "--as-of")
        except PreflightError as exc:
            raise UserError(str(exc)) from exc
    if horizon is not None and horizon_days is not None:
        raise UserError("give --horizon or --horizon-days, not both")
    try:
        if horizon is not None:
            params["horizon_days"] = parse_duration(horizon, "--horizon")
        if lookback is not None:
            params["lookback_days"] = parse_duration(lookback, "--lookback")
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if horizon_days is not None:
        params["horizon_days"] = horizon_days
    if mode is not None:
        if mode not in MODES:
            raise UserError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
        params["mode"] = mode
    return params


@trolls_app.command("paper")
def trolls_paper(
    features: Annotated[Path, typer.Argument(help="CSV with a header naming f1..f10 in that order.")],
    method: Annotated[str, typer.Option(help="centroid (k-means, k=1) or knn (k-th neighbour, FAISS).")] = "centroid",
    k: Annotated[int, typer.Option(min=1, help="knn: which neighbour.")] = 5,
    threshold: Annotated[float, typer.Option(help="Troll above this rescaled score (0..100).")] = 40.0,
    as_json: JsonFlag = True,
) -> None:
    """Haque's paper mode: distance of the unscaled f1..f10 to the k=1 centroid (or k-th neighbour),
    min-max rescaled to 0..100, troll above 40. f1-f3: shares on the top-1/2/3 goals; f4: spam
    ratio; f5: share in anarchy mode; f6: share of START; f7: share of anarchy votes; f8-f10:
    shares on the bottom-1/2/3 goals."""
    from argus.detect import paper_mode

    if method not in ("centroid", "knn"):
        raise UserError(f"--method must be centroid or knn, not {method!r}")
    if not features.is_file():
        raise UserError(f"no file at {features}")
    try:
        print(json.dumps(paper_mode(features, method, k, threshold)))
    except ValueError as exc:
        raise UserError(str(exc)) from exc


@explain_app.command("fraud")
def explain_fraud(
    cluster: Annotated[int, typer.Option(help="The cluster id named in a fraud alert.")],
    model: Annotated[Path | None, typer.Option(help="A saved fraud model (from detect --save-model).")] = None,
    events: Annotated[Path | None, typer.Option(help="Without --model: fit on these events first.")] = None,
) -> None:
    """A fraud cluster's rules (thresholds on expert features, with support and precision), members, evidence."""
    from argus.detectors.base import ModelError
    from argus.detectors.events import EventsError, load_events
    from argus.detectors.fraud import FraudDetector

    if (model is None) == (events is None):
        raise UserError("give exactly one of --model (a saved fraud model) or --events (fit on them first)")
    from argus.progress import step

    try:
        with working("explain fraud"):
            if model is not None:
                step(f"loading {model}")
                detector = FraudDetector.load(model)
            else:
                assert events is not None
                step(f"reading {events}")
                loaded = load_events(events)
                detector = FraudDetector()
                step(f"features of {len(loaded.user_ids):,} users")
                features = detector.features(loaded)
                step(f"clustering and fitting on {len(features):,} users")
                detector.fit(features)
            step(f"explaining cluster {cluster}")
            explained = detector.explain(cluster)
        print(json.dumps(explained, default=str))
    except (EventsError, ModelError) as exc:
        raise UserError(str(exc)) from exc
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from exc


EvalJsonFlag = Annotated[
    bool, typer.Option("--json/--text", help="One JSON line (the default), or a short readable report.")
]
ProfileOption = Annotated[
    str,
    typer.Option(
        help="The generated evaluation world: realistic (sparse, heavy-tailed activity) or dense"
        " (every user active every day; the earlier figures). Ignored with --world.",
    ),
]


@eval_app.command("trolls")
def eval_trolls(
    world: WorldOption = None,
    method: Annotated[str, typer.Option(help="centroid or knn.")] = "centroid",
    profile: ProfileOption = "realistic",
    as_json: EvalJsonFlag = True,
) -> None:
    """Troll scores (context mode), the paper's mode and raid groups against the truth file."""
    from argus.evals.trolls import run

    if method not in ("centroid", "knn"):
        raise UserError(f"--method must be centroid or knn, not {method!r}")
    _check_profile(profile)
    _print_eval(_evaluate(lambda: run(world, method, profile=profile), "eval trolls"), as_json)


@eval_app.command("evaders")
def eval_evaders(world: WorldOption = None, profile: ProfileOption = "realistic", as_json: EvalJsonFlag = True) -> None:
    """The ban-evasion paper's three tasks: detect (full and first 3 actions), match (MRR), predict."""
    from argus.evals.evaders import run

    _check_profile(profile)
    _print_eval(_evaluate(lambda: run(world, profile=profile), "eval evaders"), as_json)


@eval_app.command("fraud")
def eval_fraud(world: WorldOption = None, profile: ProfileOption = "realistic", as_json: EvalJsonFlag = True) -> None:
    """Fraud-ring members, rings found by risky clusters, and the rules extracted."""
    from argus.evals.fraud import run

    _check_profile(profile)
    _print_eval(_evaluate(lambda: run(world, profile=profile), "eval fraud"), as_json)


@eval_app.command("churn")
def eval_churn(
    world: WorldOption = None,
    horizon_days: Annotated[int, typer.Option(min=1, help="No activity within this many days.")] = 14,
    profile: ProfileOption = "realistic",
    as_json: EvalJsonFlag = True,
) -> None:
    """Churn risk at a horizon, with AUC by lookback length."""
    from argus.evals.churn import run

    _check_profile(profile)
    _print_eval(_evaluate(lambda: run(world, horizon_days=horizon_days, profile=profile), "eval churn"), as_json)


def _check_profile(profile: str) -> None:
    from argus.world.config import PROFILES

    if profile not in PROFILES:
        raise UserError(f"--profile must be {' or '.join(PROFILES)}, not {profile!r}")


def _print_eval(result: dict[str, object], as_json: bool) -> None:
    """One JSON line, or the readable report: coverage, per-status counts and quality per population."""
    if as_json:
        print(json.dumps(result, default=str))
        return
    from argus.evals.common import text_report

    for line in text_report(result):
        out.print(line, highlight=False, markup=False, soft_wrap=True)


def _evaluate(run: Callable[[], dict[str, object]], title: str = "eval") -> dict[str, object]:
    """An evaluation; a world that is missing, has no truth or is too short is the user's to fix."""
    try:
        with working(title):
            return run()
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc


@app.command()
def demo(
    users: Annotated[int, typer.Option(min=200, help="Accounts in the demo world.")] = 2000,
    days: Annotated[
        int, typer.Option(min=15, help="Days streamed in before the night (churn learns from 14-day horizons).")
    ] = 21,
    live_hours: Annotated[int, typer.Option(min=1, max=24, help="Hours of the next day the streaming run scores.")] = 3,
) -> None:
    """The whole story on embedded defaults, in a few minutes on two cores.

    Starts a broker of its own, streams a synthetic world's first weeks into Kafka (malformed records
    mixed in), runs the nightly chain in one Spark application (all four detectors, alerts to Kafka),
    streams the following hours through the Beam pipeline, reads the alerts back, writes the HTML
    report and prints precision and recall against the injected truth. Engine logs go to
    ~/.argus/demo/demo.log; the broker stays up afterwards (the last lines say how to stop it).
    """
    from argus.demo import run_demo

    run_demo(users=users, days=days, live_hours=live_hours)


# --- alerts -------------------------------------------------------------------------------
alerts_app = typer.Typer(no_args_is_help=True, help="Read the alert topics (alerts.troll, .evader, .fraud, .churn).")
app.add_typer(alerts_app, name="alerts")


@alerts_app.command("tail")
def alerts_tail(
    kind: Annotated[
        list[str] | None, typer.Option("--kind", help="troll, evader, fraud, churn or raid; repeat for several.")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep waiting for new alerts (Ctrl-C stops).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line (the Alert contract).")] = False,
    max_alerts: Annotated[int | None, typer.Option("--max", min=1, help="Stop after this many alerts.")] = None,
    group: Annotated[
        str | None,
        typer.Option(help="Consumer group: commit what was shown, so a tail started again resumes after it."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only alerts published since then: an ISO time (2026-10-03T12:00Z) or a duration (2h, 7d)."),
    ] = None,
    bootstrap: BootstrapOption = None,
) -> None:
    """Alerts as they are published, each alert id once (replays and reruns are not shown twice).

    Without --follow it stops at the topics' current end. Reasons and evidence ids under each alert,
    coloured by severity; --json prints the alerts themselves, one per line, for jq or another program.
    """
    from argus.alerts_tail import TailStats, parse_since, render, summary, tail_alerts, write_json_line
    from argus.preflight import PreflightError

    stats = TailStats()
    if follow and err.is_terminal:
        err.print("[dim]following the alert topics; Ctrl-C stops[/]")
    try:
        start = parse_since(since) if since is not None else None
        for tailed in tail_alerts(kind, group, start, follow, max_alerts, bootstrap, stats):
            if as_json:
                write_json_line(tailed)
            else:
                for line in render(tailed):
                    out.print(line, highlight=False)
    except PreflightError as exc:
        raise UserError(str(exc)) from exc
    except KeyboardInterrupt:
        pass  # following ends with Ctrl-C; what was shown is committed
    for problem in stats.problems:
        err.print(f"skipped {problem}", highlight=False, markup=False, soft_wrap=True)
    if not as_json:
        err.print(json.dumps(summary(stats)), highlight=False, markup=False, soft_wrap=True)


@alerts_app.command("publish")
def alerts_publish(
    date_: Annotated[str, typer.Option("--date", help="The night whose alerts to produce, YYYY-MM-DD.")],
    lake: LakeUriOption = "lake",
    detectors: Annotated[str, typer.Option(help="Comma-separated detectors whose alerts to produce.")] = (
        "trolls,evaders,fraud,churn"
    ),
    bootstrap: BootstrapOption = None,
) -> None:
    """Produce a night's alerts from LAKE/alerts/ (a folder or a URI) to the alerts.* topics, keyed by
    alert id (a rerun writes the same keys). The scheduler's step after scoring; prints the records
    per topic as JSON."""
    from argus.jobs.alert_blocks import AlertFileError
    from argus.preflight import PreflightError
    from argus.publish_alerts import publish_night

    day = _parse_date(date_, "--date")
    names = [d for d in detectors.split(",") if d]
    unknown = [d for d in names if d not in DETECTOR_NAMES]
    if unknown or not names:
        named = unknown[0] if unknown else ""
        raise UserError(f"--detectors: unknown detector {named!r}; choose from {', '.join(DETECTOR_NAMES)}")
    try:
        produced = publish_night(_lake(lake), day, names, bootstrap)  # each line read once, straight to the producer
    except (AlertFileError, PreflightError) as exc:
        raise UserError(str(exc)) from exc
    print(json.dumps({"date": day.isoformat(), "produced": produced}))


# --- report and schedule ------------------------------------------------------------------


@app.command()
def report(
    date_: Annotated[str, typer.Option("--date", help="The night to report on, YYYY-MM-DD.")],
    out_file: Annotated[Path, typer.Option("--out", help="The HTML file to write (one self-contained page).")],
    lake: LakeUriOption = "lake",
    truth: Annotated[
        Path | None,
        typer.Option(
            help="Truth to evaluate against: users.parquet or a folder of `argus generate --out`; "
            "default: LAKE/truth/ when it exists."
        ),
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Nights of alerts to plot, up to --date.")] = 30,
    max_points: Annotated[int, typer.Option(min=100, help="Most users drawn on the behaviour map.")] = 5_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON line.")] = False,
) -> None:
    """One HTML page about a night: alerts over time, a map of behaviour embeddings, top reasons,
    data quality and, with a truth file, precision and recall. Opens offline (plotly.js is inlined).

    A part the lake lacks becomes a sentence on the page saying what to run.
    """
    from argus.preflight import PreflightError, writable_file
    from argus.report import ReportError, write_report

    day = _parse_date(date_, "--date")
    if out_file.is_dir():
        raise UserError(f"--out {out_file} is a folder; give a file name, e.g. --out {out_file / f'report-{day}.html'}")
    try:
        writable_file(out_file, "--out")
        with err.status(f"writing the report for {day}..."):
            summary = write_report(_lake(lake), day, out_file, truth, days=days, max_points=max_points)
    except (ReportError, PreflightError) as exc:
        raise UserError(str(exc)) from exc
    if as_json:
        print(json.dumps(summary.to_json()))
        return
    alerts = ", ".join(f"{kind} {n:,}" for kind, n in sorted(summary.alerts.items())) or "none"
    out.print(f"report for {day}: {summary.out} (alerts: {alerts})", highlight=False, soft_wrap=True)
    for key, state in summary.sections.items():
        if state != "ok":
            err.print(f"  {key}: {state}", highlight=False, soft_wrap=True)


schedule_app = typer.Typer(
    no_args_is_help=True, help="Run the nightly chain from cron (the Airflow DAG is in infra/schedule/)."
)
app.add_typer(schedule_app, name="schedule")


@schedule_app.command("install")
def schedule_install(
    lake: LakeOption = Path("lake"),
    master: MasterOption = "local[2]",
    at: Annotated[str, typer.Option(help="When, as a cron schedule in the machine's time zone.")] = "30 1 * * *",
    log: Annotated[
        Path | None, typer.Option(help="Append each night's output here; default LAKE/_logs/cron-nightly.log.")
    ] = None,
    report_dir: Annotated[
        Path | None, typer.Option(help="Also write each night's HTML report here (argus-report-DATE.html).")
    ] = None,
    skip_ingest: Annotated[bool, typer.Option(help="The lake is filled some other way; do not read Kafka.")] = False,
    alerts: Annotated[bool, typer.Option(help="Produce the night's alerts to the alerts.* topics.")] = False,
    vacuum: Annotated[
        bool, typer.Option(help="After a night that succeeded, delete Delta files older than the retention.")
    ] = True,
    vacuum_retain_hours: Annotated[
        int, typer.Option(help="The vacuum step keeps every version of the last N hours (at least 168, a week).")
    ] = 168,
    bootstrap: BootstrapOption = None,
) -> None:
    """Add (or replace) the crontab entry that runs `argus batch nightly` for yesterday (UTC) every night.

    After a night that succeeded, `argus lake vacuum --no-dry-run` deletes Delta files no version of the
    last --vacuum-retain-hours needs (default 168: the previous seven nights stay readable).
    The entry sits between two marker comments; other crontab lines are left alone. KAFKA_BOOTSTRAP and
    ARGUS_CONFIG, when set, are written into it (cron starts commands without your environment).
    """
    import os

    from argus.schedule import NightlyCron, ScheduleError, install

    try:
        config = os.environ.get("ARGUS_CONFIG")
        entry = NightlyCron(
            lake,
            master,
            at,
            log,
            report_dir,
            skip_ingest,
            alerts,
            bootstrap,
            Path(config) if config else None,
            vacuum_retain_hours=vacuum_retain_hours if vacuum else None,
        )
        block, replaced = install(entry)
    except ScheduleError as exc:
        raise UserError(str(exc)) from exc
    err.print("replaced the argus-nightly crontab entry:" if replaced else "installed the crontab entry:")
    out.print("\n".join(block), highlight=False, markup=False, soft_wrap=True)
    err.print(f"each night's output is appended to {entry.log}", highlight=False, soft_wrap=True)


@schedule_app.command("show")
def schedule_show() -> None:
    """Print the installed argus-nightly crontab entry (exit 1 when there is none)."""
    from argus.schedule import ScheduleError, show

    try:
        block = show()
    except ScheduleError as exc:
        raise UserError(str(exc)) from exc
    if block is None:
        err.print("no argus-nightly entry in the crontab; add one with `argus schedule install`")
        raise typer.Exit(1)
    out.print("\n".join(block), highlight=False, markup=False, soft_wrap=True)


@schedule_app.command("remove")
def schedule_remove() -> None:
    """Delete the argus-nightly crontab entry; the crontab's other lines stay."""
    from argus.schedule import ScheduleError, remove

    try:
        removed = remove()
    except ScheduleError as exc:
        raise UserError(str(exc)) from exc
    err.print("removed the argus-nightly crontab entry" if removed else "no argus-nightly entry in the crontab")


# --- stream -------------------------------------------------------------------------------
stream_app = typer.Typer(
    no_args_is_help=True,
    help="The streaming pipeline (Beam): Kafka events -> validation -> per-user state -> alert topics.",
)
app.add_typer(stream_app, name="stream")


@stream_app.command("fetch")
def stream_fetch() -> None:
    """Build the Beam Prism runner once (go install, 2-8 minutes) into $ARGUS_HOME/cache; idempotent."""
    from argus.infra.prism import PrismError, fetch_prism, prism_path

    try:
        if prism_path().is_file():
            path = fetch_prism()
        else:
            with err.status("building the Beam Prism runner with Go (once; 2-8 minutes)..."):
                path = fetch_prism()
    except PrismError as exc:
        raise UserError(str(exc)) from exc
    out.print(f"Prism runner at {path}")


def _saved_model(value: str) -> str:
    """``batch score --model``: a folder (made absolute for the job) or a URI of a known scheme, kept as given."""
    from argus.detectors.base import ModelError
    from argus.detectors.store import store_location

    try:
        location = store_location(value)
    except ModelError as exc:
        raise UserError(str(exc).replace("--model-store", "--model")) from exc
    return str(location.resolve()) if isinstance(location, Path) else location


def _model_store_option(value: str) -> str:
    """``--model-store``: a folder or a URI of a known scheme (``argus.detectors.store``)."""
    from argus.detectors.base import ModelError
    from argus.detectors.store import store_location

    try:
        return str(store_location(value))
    except ModelError as exc:
        raise typer.BadParameter(str(exc).removeprefix(f"--model-store {value}: ")) from None


@stream_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def stream_run(
    ctx: typer.Context,
    model_store: Annotated[
        str,
        typer.Option(
            help="Model store (ROOT/<detector>/CURRENT): a folder, or a URI (s3a://bucket/models, gs://..., "
            "hdfs://...); `argus batch score` publishes to LAKE/models. "
            "A model published while the pipeline runs is used from its next batch on.",
            callback=_model_store_option,
        ),
    ] = "lake/models",
    detectors: Annotated[
        str,
        typer.Option(
            help="Comma-separated streaming detectors: trolls (chat context), fraud (payment graph), churn (alert "
            "when a user's silence crosses what the model flags), evaders (new accounts scored at sign-up), "
            "troll-messages (every message scored in its channel's context; one-message users alerted)."
        ),
    ] = "trolls,fraud",
    topics: Annotated[
        str | None,
        typer.Option(help="Comma-separated topics to read; default: the events.* topics the detectors need."),
    ] = None,
    runner: Annotated[
        str,
        typer.Option(
            help="prism (local, no Docker; built by `argus stream fetch`), flink (--flink_master=HOST:PORT after --), "
            "dataflow (--project, --region, --temp_location after --), or direct."
        ),
    ] = "prism",
    bounded: Annotated[
        bool,
        typer.Option(
            "--bounded/--unbounded",
            help="--bounded reads to the end offsets seen at start, then stops (replays, backfills, tests); "
            "--unbounded (default) runs until stopped.",
        ),
    ] = False,
    start: Annotated[
        str,
        typer.Option(
            help="earliest: replay the retained log, rebuilding state (restart-safe: alerts and dead letters already "
            "published are skipped); latest: only new records."
        ),
    ] = "earliest",
    parallelism: Annotated[int, typer.Option(min=1, help="Workers or task slots on Flink and Dataflow.")] = 2,
    allowed_lateness: Annotated[
        float, typer.Option(help="Seconds a chat window stays open after the watermark passes its end.")
    ] = 60.0,
    out_of_orderness: Annotated[
        float,
        typer.Option(
            help="Seconds a record may trail the newest event of the least advanced busy partition before it is late."
        ),
    ] = 5.0,
    idle_slack: Annotated[
        float,
        typer.Option(help="With every partition at its log end, the watermark follows the wall clock minus this."),
    ] = 10.0,
    checkpoint_interval: Annotated[
        float,
        typer.Option(
            help="Seconds between source checkpoints (Prism) and at least between --checkpoint-dir checkpoints; "
            "Flink's checkpointing interval."
        ),
    ] = 2.0,
    fraud_interval: Annotated[
        int, typer.Option(help="Event-time seconds between fraud scorings of the users with new payments.")
    ] = 3_600,
    fraud_lookback_days: Annotated[int, typer.Option(help="Days of payment graph the fraud features see.")] = 30,
    fraud_rescore: Annotated[
        int,
        typer.Option(
            min=0,
            help="How far back (event-time seconds) from the last scored fraud boundary a late payment, account or "
            "moderation event still has its boundary and the later ones scored again; older boundaries keep their "
            "scores. The fraud stage holds this much more than --fraud-lookback-days in memory.",
        ),
    ] = 86_400,
    alerts_prefix: Annotated[str, typer.Option(help="Alerts go to PREFIX.<kind> (e.g. a staging prefix).")] = "alerts",
    dlq_topic: Annotated[str, typer.Option(help="Topic for rejected records.")] = "dlq.events",
    key_shards: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Shards of the keyed state (channels, users), spread over workers on clusters; "
            "default 1 on prism and direct (each stage runs in one Python process), "
            "4 x --parallelism on flink and dataflow.",
        ),
    ] = None,
    features_prefix: Annotated[
        str | None,
        typer.Option(help="Also publish every scored feature snapshot to PREFIX.<detector> (topics must exist)."),
    ] = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            help="Prism/direct: keep state snapshots here and commit offsets to --group once outputs are on Kafka; "
            "a restart restores the state and resumes at the committed offsets (default: replay the retained log)."
        ),
    ] = None,
    group: Annotated[
        str, typer.Option(help="Consumer group the checkpointed offsets are committed to (with --checkpoint-dir).")
    ] = "argus-stream",
    max_batch: Annotated[int, typer.Option(min=1, help="Records per source poll (one batch per partition).")] = 5_000,
    sdk_workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Prism: Python worker processes, so the pipeline can use more than one core. 1 (default): one "
            "thread of this process. N > 1: the source, validation and sinks on the first; each detector's keyed "
            "stages on one of the others while there are enough, else shared (2: source and trolls on one, "
            "fraud on the other). Each extra process costs its start-up (imports, model load).",
        ),
    ] = 1,
    bootstrap: BootstrapOption = None,
) -> None:
    """Run the streaming pipeline: events.* -> validate (rejects to dlq.events) -> detectors -> alerts.<kind>.

    Alerts cover the event-time day of their evidence, with ids that replays reproduce. Beam pipeline
    options go after `--`, for example:

      argus stream run --runner flink -- --flink_master=flink-jm:8081 --environment_type=DOCKER

    Prints the run's counters as JSON when a --bounded run ends.
    """
    from argus.pipelines.stream import StreamConfig, StreamError, run_stream

    names = [d.strip() for d in detectors.split(",") if d.strip()]
    config = StreamConfig(
        model_store=model_store,
        detectors=names,
        bootstrap=bootstrap,
        runner=runner,
        bounded=bounded,
        start=start,
        parallelism=parallelism,
        allowed_lateness_s=allowed_lateness,
        out_of_orderness_s=out_of_orderness,
        idle_slack_s=idle_slack,
        checkpoint_interval_s=checkpoint_interval,
        fraud_interval_s=fraud_interval,
        fraud_lookback_days=fraud_lookback_days,
        fraud_rescore_s=fraud_rescore,
        alerts_prefix=alerts_prefix,
        dlq_topic=dlq_topic,
        key_shards=key_shards,
        features_prefix=features_prefix,
        checkpoint_dir=checkpoint_dir,
        group=group,
        max_batch=max_batch,
        sdk_workers=sdk_workers,
        beam_args=list(ctx.args),
    )
    if topics:
        config.topics = [t.strip() for t in topics.split(",") if t.strip()]
    if start not in ("earliest", "latest"):
        raise UserError(f"--start must be earliest or latest, not {start!r}")
    from argus.infra.prism import PrismError

    try:
        result = run_stream(config)
    except (StreamError, PrismError) as exc:
        raise UserError(str(exc)) from exc
    print(json.dumps(result))


if __name__ == "__main__":
    main()
