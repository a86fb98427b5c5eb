"""The streaming pipeline: Kafka ``events.*`` -> validate -> per-key state -> detectors -> ``alerts.*``.

::

    ReadKafka(events.*)  --decode: schemas.validate-->  rejects --> dlq.events (reason, bytes, topic/partition/offset)
           |                                            event batches (timestamped by their earliest event)
           v                                                 |
       TrollStream (chat: channel windows -> user state)  FraudStream (payment graph)   ... pluggable
           \\__________________ alerts ______________________/
                                  |  keyed by alert_id: once per run
                                  v
                  WriteKafka(alerts.<kind>, skip ids already published)

    (with --features-prefix, every scored snapshot also goes to <prefix>.<detector>)

Engine-thin: validation is ``argus.schemas.validate``; features, scores and alert ids come from
``detectors/`` (see ``pipelines/stream_detectors.py``). Models come from the model store through
``LiveModel``, so a model published while the pipeline runs is used from its next batch on.

**Restart safety.** Nothing is acknowledged before it is durable: the sink flushes each bundle
to Kafka before the bundle completes. With ``checkpoint_dir`` the pipeline checkpoints itself
(``pipelines/checkpoint.py``): consistent state snapshots in that folder, offsets committed to
the consumer group ``group`` only once every output up to them is on Kafka; a restart restores
the state and resumes at the committed offsets. Without it a restart replays the retained log
(``start="earliest"``) and rebuilds its state from it. Either way the sinks skip alert ids and
dead letters already on their topics, so a crash, a ``kill -9`` or a redeploy loses no event and
publishes no alert twice. On Flink and Dataflow the runner's own checkpoints do the same.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from argus.detectors.store import store_location
from argus.infra.clients import PortableKafkaSettings, portable_kafka_settings, require_topic_access
from argus.infra.topics import ALERT_KINDS, DLQ_TOPIC, EVENT_TOPICS, event_topic
from argus.pipelines.checkpoint import CheckpointError, ResumePlan, plan_resume, write_checkpoints
from argus.pipelines.kafka_io import NO_EVENT_TIME, KafkaRecord, OutRecord, ReadKafka, SourceBatch, WriteKafka
from argus.pipelines.sdk_workers import detector_worker, process_worker_args
from argus.pipelines.stream_adapters import STREAMING_DETECTORS
from argus.pipelines.stream_detectors import StreamSettings, StrKeyed, epoch_us
from argus.schemas.bounds import EventTimeBounds, current_bounds
from argus.schemas.models import Alert
from argus.schemas.validate import Rejection, validate

__all__ = ["RUNNERS", "StreamConfig", "StreamError", "build_pipeline", "decode_event", "pipeline_options", "run_stream"]

RUNNERS = ("prism", "flink", "dataflow", "direct")


class StreamError(ValueError):
    """A configuration the pipeline cannot run with; one line that says what to fix."""


@dataclass
class StreamConfig:
    """Everything ``argus stream run`` sets; see its ``--help`` for each field."""

    model_store: Path | str  # a folder or a URI (argus.detectors.store)
    detectors: Sequence[str] = ("trolls", "fraud")
    topics: Sequence[str] = EVENT_TOPICS
    bootstrap: str | None = None
    runner: str = "prism"
    bounded: bool = False
    start: str = "earliest"
    parallelism: int = 2
    allowed_lateness_s: float = 60.0
    out_of_orderness_s: float = 5.0
    idle_slack_s: float = 10.0
    checkpoint_interval_s: float = 2.0
    fraud_interval_s: int = 3_600
    fraud_lookback_days: int = 30
    fraud_rescore_s: int = 86_400  # how far back from the last scored fraud boundary a late event rescores
    skip_published: bool = True
    alerts_prefix: str = "alerts"
    dlq_topic: str = DLQ_TOPIC
    key_shards: int | None = None  # None: 1 on Prism and direct, 4 x parallelism on Flink and Dataflow
    features_prefix: str | None = None
    checkpoint_dir: Path | None = None  # None: no checkpoints (a restart replays the retained log)
    group: str = "argus-stream"
    max_batch: int = 5_000
    sdk_workers: int = 1  # Python worker processes on Prism (pipelines/sdk_workers.py)
    beam_args: Sequence[str] = field(default_factory=list)

    def shards(self) -> int:
        """Key shards in use. On Prism each stage runs in one Python process (``workers``), so each extra
        shard only adds a per-firing fixed cost; a cluster spreads shards over workers."""
        if self.key_shards is not None:
            return self.key_shards
        return 4 * self.parallelism if self.runner in ("flink", "dataflow") else 1

    def workers(self) -> int:
        """Python worker processes Prism runs the pipeline on: the source on one, the detectors' keyed stages on
        the others (1: one thread of this process). Clusters size their workers themselves (--parallelism)."""
        return self.sdk_workers if self.runner == "prism" else 1

    def input_topics(self) -> list[str]:
        """The topics read: the event topics the chosen detectors need, and any non-standard topic given."""
        wanted = {event_topic(t) for name in self.detectors for t in STREAMING_DETECTORS[name].event_types}
        return [t for t in self.topics if t in wanted or t not in EVENT_TOPICS]

    def alert_topics(self) -> list[str]:
        return [f"{self.alerts_prefix}.{kind}" for kind in ALERT_KINDS]

    def check(self) -> None:
        unknown = [d for d in self.detectors if d not in STREAMING_DETECTORS]
        if unknown or not self.detectors:
            known = ", ".join(sorted(STREAMING_DETECTORS))
            raise StreamError(f"unknown streaming detector(s) {unknown or '(none given)'}; known: {known}")
        if self.runner not in RUNNERS:
            raise StreamError(f"unknown runner {self.runner!r}; use one of {', '.join(RUNNERS)}")
        if self.parallelism < 1 or self.checkpoint_interval_s <= 0 or self.fraud_interval_s < 60:
            raise StreamError("need --parallelism >= 1, --checkpoint-interval > 0 and --fraud-interval >= 60")
        if self.fraud_rescore_s < 0:
            raise StreamError(f"--fraud-rescore must be 0 or more seconds, not {self.fraud_rescore_s}")
        if self.key_shards is not None and self.key_shards < 1:
            raise StreamError(f"--key-shards must be at least 1, not {self.key_shards}")
        if self.max_batch < 1:
            raise StreamError(f"--max-batch must be at least 1, not {self.max_batch}")
        if self.sdk_workers < 1 or (self.sdk_workers > 1 and self.runner != "prism"):
            raise StreamError(
                f"--sdk-workers {self.sdk_workers}: give at least 1, and only with --runner prism "
                "(flink and dataflow size their workers with --parallelism)"
            )
        if self.checkpoint_dir is not None and self.runner in ("flink", "dataflow"):
            raise StreamError(
                "--checkpoint-dir is for runners that keep state in memory (prism, direct); "
                "on flink and dataflow the runner's own checkpoints hold the state: drop --checkpoint-dir"
            )
        if self.checkpoint_dir is not None and Path(self.checkpoint_dir).is_file():
            raise StreamError(f"--checkpoint-dir {self.checkpoint_dir} is a file; give a folder")
        from argus.detectors.base import ModelError
        from argus.detectors.store import ModelStore

        try:
            store = ModelStore(self.model_store)
        except ModelError as exc:  # a URI with an unknown scheme or no bucket
            raise StreamError(str(exc)) from None
        for adapter in self.detectors:
            name = STREAMING_DETECTORS[adapter].name  # the model it scores with
            if store.current_version(name) is None:
                raise StreamError(
                    f"no {name} model published in {self.model_store}; publish one with "
                    f"`argus batch score --detector {name}` (models in LAKE/models) or point --model-store at it"
                )
            problem = STREAMING_DETECTORS[adapter].model_problem(store.load(name))
            if problem:
                raise StreamError(f"--detectors {adapter}: {problem}")


def check_kafka_access(config: StreamConfig) -> None:
    """Before the runner starts: the input topics exist and this principal may read them, and it may write
    (and, to skip what is already published, read) the dead-letter and alert topics. A refusal is one line
    (``KafkaAccessError``), not a worker's stack trace minutes later."""
    missing = require_topic_access(config.input_topics(), "READ", config.bootstrap)
    if missing:
        raise StreamError(f"topic(s) {', '.join(missing)} do not exist; create the topic layout with `argus kafka up`")
    outputs = [config.dlq_topic, *config.alert_topics()]
    require_topic_access(outputs, "WRITE", config.bootstrap)
    if config.skip_published:
        require_topic_access(outputs, "READ", config.bootstrap)


# --- decode: validation at the source -------------------------------------------------------
def decode_event(record: KafkaRecord, bounds: EventTimeBounds | None = None) -> tuple[tuple[str, Any], float | None]:
    """Validate one record: ``("event", (type, row, t_us))`` with its event time, or ``("dlq", OutRecord)`` with
    ``NO_EVENT_TIME`` (a rejected record does not move the watermark).

    ``bounds`` is resolved where the pipeline is built, so workers without its argus.toml agree.
    """
    result = validate(record.value, bounds=bounds)
    if isinstance(result, Rejection):
        letter = result.to_dead_letter(record.topic, record.partition, record.offset)
        out = OutRecord(DLQ_TOPIC, record.key, letter.model_dump_json().encode(), _position(record))
        return ("dlq", out), NO_EVENT_TIME
    row = result.model_dump()
    t_us = epoch_us(row["ts"])
    return ("event", (str(row["event_type"]), row, t_us)), t_us / 1e6


def _position(record: KafkaRecord) -> str:
    return f"{record.topic}/{record.partition}/{record.offset}"


def _dead_letter_identity(topic: str, key: bytes | None, value: bytes) -> str | None:
    try:
        letter = json.loads(value)
        return f"{letter['source_topic']}/{letter['source_partition']}/{letter['source_offset']}"
    except (ValueError, KeyError, TypeError):
        return None


class _SplitFn(beam.DoFn):  # type: ignore[misc]
    """A source batch -> the batch of its valid events (same timestamp); dead letters to the ``dlq`` output."""

    def __init__(self, dlq_topic: str) -> None:
        self.dlq_topic = dlq_topic
        self.valid = Metrics.counter("stream", "events")
        self.rejected = Metrics.counter("stream", "rejected")

    def process(self, batch: SourceBatch) -> Iterator[Any]:
        events = []
        for kind, item in batch.items:
            if kind == "dlq":
                self.rejected.inc()
                if item.topic != self.dlq_topic:
                    item = OutRecord(self.dlq_topic, item.key, item.value, item.identity)
                yield beam.pvalue.TaggedOutput("dlq", item)
            else:
                events.append(item)
        self.valid.inc(len(events))
        # Even with no valid event: the batch's offset range counts for checkpoints. The source's
        # timestamp (the batch's earliest event time) stays.
        yield SourceBatch(batch.topic, batch.partition, batch.start, batch.end, events)


class _OncePerRunFn(beam.DoFn):  # type: ignore[misc]
    """Keyed by alert id: the first alert with an id goes on, later ones (same user, same day) do not."""

    SEEN = beam.transforms.userstate.ReadModifyWriteStateSpec("seen", beam.coders.BooleanCoder())

    def __init__(self, alerts_prefix: str) -> None:
        self.alerts_prefix = alerts_prefix
        self.alerts = Metrics.counter("stream", "alerts")

    def process(self, element: tuple[str, Alert], seen: Any = beam.DoFn.StateParam(SEEN)) -> Iterator[OutRecord]:  # noqa: B008
        if seen.read():
            return
        seen.write(True)
        alert = element[1]
        self.alerts.inc()
        topic = f"{self.alerts_prefix}.{'troll' if alert.kind == 'raid' else alert.kind}"
        yield OutRecord(topic, alert.alert_id.encode(), alert.model_dump_json().encode(), alert.alert_id)


def build_pipeline(pipeline: beam.Pipeline, config: StreamConfig, client: PortableKafkaSettings | None = None) -> None:
    """Add the streaming graph for ``config`` to ``pipeline``.

    ``client``: the Kafka settings every source and sink uses (default: the shared settings for
    ``config.bootstrap``), resolved here once; passwords travel by reference (see ``PortableKafkaSettings``).
    """
    client = client or portable_kafka_settings(config.bootstrap)
    chosen = [STREAMING_DETECTORS[name]() for name in config.detectors]
    plan = resume_plan(config, client)
    settings = StreamSettings(
        model_store=store_location(config.model_store),
        allowed_lateness_s=config.allowed_lateness_s,
        fraud_interval_s=config.fraud_interval_s,
        fraud_lookback_days=config.fraud_lookback_days,
        fraud_rescore_s=config.fraud_rescore_s,
        key_shards=config.shards(),
        publish_features=config.features_prefix is not None,
        checkpoints=plan is not None,
        resume=plan,
    )
    batches = pipeline | "ReadEvents" >> ReadKafka(
        config.input_topics(),
        client,
        decode=functools.partial(decode_event, bounds=current_bounds()),
        start=config.start,
        bounded=config.bounded,
        out_of_orderness_s=config.out_of_orderness_s,
        idle_slack_s=config.idle_slack_s,
        poll_budget_s=config.checkpoint_interval_s,
        max_batch=config.max_batch,
        start_offsets=plan.start_offsets if plan is not None else None,
        cut_at=plan.cuts() if plan is not None else None,
    )
    split = batches | "Validate" >> beam.ParDo(_SplitFn(config.dlq_topic)).with_outputs("dlq", main="events")
    skip = config.skip_published
    sinks = [
        split.dlq
        | "DeadLetters" >> WriteKafka(client, [config.dlq_topic] if skip else [], identify=_dead_letter_identity)
    ]
    # Labelled by the registry's name: two streaming forms of one model (trolls, troll-messages) may run together.
    # Each detector's keyed stages on a Python worker of their own where Prism runs several.
    placed = [
        dataclasses.replace(settings, keyed_worker=detector_worker(i, len(chosen), config.workers()))
        for i in range(len(chosen))
    ]
    outputs = [
        split.events | name >> _DetectorTransform(d, theirs)  # type: ignore[operator]
        for name, d, theirs in zip(config.detectors, chosen, placed, strict=True)
    ]
    alerts = [o.alerts for o in outputs]
    merged = alerts[0] if len(alerts) == 1 else tuple(alerts) | "AllAlerts" >> beam.Flatten()
    snapshots = [
        o.features | f"{name}FeatureRecords" >> beam.Map(_snapshot_record, f"{config.features_prefix}.{d.name}")
        for name, d, o in zip(config.detectors, chosen, outputs, strict=True)
        if o.features is not None
    ]
    if snapshots:
        sinks.append(
            (snapshots[0] if len(snapshots) == 1 else tuple(snapshots) | "AllFeatures" >> beam.Flatten())
            | "PublishFeatures" >> WriteKafka(client)
        )
    kinds = config.alert_topics()
    sinks.append(
        merged
        | "ById" >> beam.Map(lambda a: (a.alert_id, a))
        | "OncePerRun" >> beam.ParDo(_OncePerRunFn(config.alerts_prefix)).with_input_types(StrKeyed)
        | "PublishAlerts" >> WriteKafka(client, kinds if skip else [])
    )
    if plan is not None and config.checkpoint_dir is not None:
        write_checkpoints(
            [c for o in outputs for c in o.checkpoints],
            sinks,
            plan,
            Path(config.checkpoint_dir),
            client,
            config.group,
            [stage for d in chosen for stage in d.source_stages(settings)],
            config.checkpoint_interval_s,
        )


def resume_plan(config: StreamConfig, client: PortableKafkaSettings | None = None) -> ResumePlan | None:
    """With ``checkpoint_dir``: where this run starts (the group's committed offsets and their checkpoint)."""
    if config.checkpoint_dir is None:
        return None
    try:
        return plan_resume(
            Path(config.checkpoint_dir),
            client or portable_kafka_settings(config.bootstrap),
            config.group,
            config.input_topics(),
            config.start,
        )
    except CheckpointError as exc:
        raise StreamError(str(exc)) from exc


def _snapshot_record(snapshot: tuple[str, bytes], topic: str) -> OutRecord:
    return OutRecord(topic, snapshot[0].encode(), snapshot[1])


class _DetectorTransform(beam.PTransform):  # type: ignore[misc]
    def __init__(self, detector: Any, settings: StreamSettings) -> None:
        super().__init__()
        self.detector, self.settings = detector, settings

    def expand(self, events: Any) -> Any:
        return self.detector.expand(events, self.settings)


def pipeline_options(config: StreamConfig) -> PipelineOptions:
    """Beam options for the chosen runner; ``config.beam_args`` are appended and win."""
    args = ["--streaming"] if not config.bounded or config.runner == "prism" else []
    if config.runner == "prism":
        from argus.infra.prism import fetch_prism

        args += [
            "--runner=PrismRunner",
            f"--prism_location={fetch_prism()}",
            "--environment_type=LOOPBACK",
            "--job_server_timeout=86400",  # without it Prism ends the job after 300 s (DEADLINE_EXCEEDED)
            # Prism splits a slow bundle and frees the residual's keys while the primary still holds
            # them (apache/beam#35771): two bundles then update one key's state at once. The source
            # checkpoints itself, so nothing needs those splits.
            "--experiments=prism_disable_sdf_split",
        ]
        if config.workers() > 1:
            args += process_worker_args()
    elif config.runner == "flink":
        from argus.infra.flink import checkpointed_run_args

        args += [
            "--runner=FlinkRunner",
            f"--parallelism={config.parallelism}",
            *checkpointed_run_args(config.checkpoint_interval_s, config.bounded),
        ]
    elif config.runner == "dataflow":
        args += ["--runner=DataflowRunner", f"--max_num_workers={config.parallelism}", "--save_main_session"]
    else:
        args += ["--runner=DirectRunner", f"--direct_num_workers={config.parallelism}"]
    return PipelineOptions([*args, *config.beam_args])


def run_stream(config: StreamConfig, wait: bool = True) -> dict[str, Any]:
    """Build and run the pipeline; with ``wait`` (and ``bounded``) return its counters when it ends."""
    config.check()
    check_kafka_access(config)
    pipeline = beam.Pipeline(options=pipeline_options(config))
    build_pipeline(pipeline, config)
    result = pipeline.run()
    if not wait:
        return {"state": str(result.state)}
    result.wait_until_finish()
    return {"state": str(result.state), **_counters(result)}


def _counters(result: Any) -> dict[str, int]:
    wanted = {
        "records_read": "records_read",
        "events": "events",
        "rejected": "dead_letters",
        "late_events": "late_events",
        "duplicate_events": "duplicate_events",
        "alerts": "alerts",
        "already_published": "already_published",
        "checkpoints": "checkpoints",
    }
    counts = dict.fromkeys(wanted.values(), 0)
    try:
        query = result.metrics().query(MetricsFilter())
    except (NotImplementedError, AttributeError):  # runners without metrics
        return counts
    for counter in query.get("counters", []):
        name = counter.key.metric.name
        if name in wanted:
            value = counter.committed if counter.committed is not None else counter.attempted
            counts[wanted[name]] += int(value or 0)
    return counts
