"""The streaming pipeline on a Beam Flink job server (embedded Flink) against the real broker.

Optional: runs with ``-m flink`` once ``make flink-jobserver`` has built the job server and its Python
environment (``make test-flink`` does both); skipped otherwise, so ``make test`` never waits on it.
The pipeline is submitted from that environment (apache-beam at the job server's version, see
``argus.infra.flink``) with Flink checkpointing on, as ``argus stream run --runner flink`` runs it
(``checkpointed_run_args``; without ``--finish_bundle_before_checkpointing`` the source stalls, infra/README.md).
"""

from __future__ import annotations

import json
import random
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from argus.infra.broker import free_port
from argus.infra.flink import FlinkJobServer, checkpointed_run_args, job_server_libs, python_env
from argus.infra.topics import ALERT_KINDS
from argus.pipelines.kafka_io import published_identities
from argus.pipelines.stream import StreamConfig, pipeline_options
from tests.test_stream import (  # noqa: F401  (module fixtures shared with the Prism tests)
    _output_topics,
    _run,
    published,
    stream_topics,
    world_and_events,
)


def _built() -> bool:
    return (job_server_libs() / ".complete").exists() and (python_env() / ".argus-complete").exists()


FLINK_GROUP = [
    pytest.mark.flink,
    pytest.mark.skipif(
        "'flink' not in config.getoption('markexpr')",
        reason="optional Flink group: `make test-flink` (or pytest -m flink) runs it",
    ),
    pytest.mark.skipif(not _built(), reason="the Flink job server is not built: make flink-jobserver"),
]


def flink_group(test: Callable[..., None]) -> Callable[..., None]:
    """Mark a test of the optional Flink group (it needs the job server)."""
    for mark in FLINK_GROUP:
        test = mark(test)
    return test


REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 600
# Flink checkpoints while the source reads: the runner keeps its Impulse sources up this long, then lets the job
# end; bundles end only at checkpoints (or at 1,000 elements), so the Impulse's bundle, the one that starts the
# source, always ends at a checkpoint: the case that stalled the source without --finish_bundle_before_checkpointing.
CHECKPOINTED_RUN = ["--shutdown_sources_after_idle_ms=15000", "--max_bundle_time_mills=60000"]


def test_flink_options_finish_bundles_before_checkpoints_and_end_bounded_runs(tmp_path: Path) -> None:
    """`argus stream run --runner flink` passes the checkpoint options the source needs; options after `--` win."""

    def flink_options(bounded: bool, *beam_args: str) -> dict:  # type: ignore[type-arg]
        config = StreamConfig(tmp_path, runner="flink", bounded=bounded, beam_args=list(beam_args))
        return pipeline_options(config).get_all_options(retain_unknown_options=True)

    unbounded = flink_options(False)
    assert unbounded["checkpointing_interval"] == "2000" and unbounded["finish_bundle_before_checkpointing"]
    assert unbounded.get("shutdown_sources_after_idle_ms") is None  # a live job's sources stay up: checkpoints go on
    bounded = flink_options(True)
    assert bounded["finish_bundle_before_checkpointing"] and bounded["shutdown_sources_after_idle_ms"] == "0"
    assert flink_options(False, "--checkpointing_interval=-1")["checkpointing_interval"] == "-1"


@pytest.fixture(scope="module")
def job_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlinkJobServer]:
    server = FlinkJobServer(port=free_port(), log=tmp_path_factory.mktemp("flink") / "jobserver.log")
    with server:
        yield server


def _completed_checkpoints(server: FlinkJobServer) -> int:
    return server.log.read_text(errors="replace").count("Completed checkpoint")


def _submit(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a command of the Flink environment from the checkout; fail with its output's tail."""
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


@flink_group
def test_windowed_counts_through_the_kafka_source_and_sink_are_exact_with_flink_checkpoints(
    job_server: FlinkJobServer, kafka_bootstrap: str, unique_name: str
) -> None:
    """The source reads through its self-checkpoints while Flink takes checkpoints: every window count exact."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from argus.infra.clients import BulkProducer

    topic, out = f"{unique_name}.in", f"{unique_name}.out"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 3, 1), NewTopic(out, 1, 1)])
    admin.close()
    rng = random.Random(5)
    events = [(f"u{rng.randrange(50)}", 1_780_000_000 + rng.randrange(600) + rng.random()) for _ in range(20_000)]
    producer = BulkProducer(kafka_bootstrap)
    producer.send_many(
        topic, [u.encode() for u, _ in events], [json.dumps({"user": u, "ts": t}).encode() for u, t in events]
    )
    producer.flush()
    expected = Counter(f"{user}|{int(ts) // 10 * 10}" for user, ts in events)

    python = str(python_env() / "bin" / "python")
    checkpoints_before = _completed_checkpoints(job_server)
    _submit(
        [
            python, "-m", "tests.flink_window_counts", kafka_bootstrap, topic, out, job_server.endpoint, "--streaming",
            *checkpointed_run_args(1.0, bounded=False), *CHECKPOINTED_RUN,
        ]
    )  # fmt: skip
    assert _completed_checkpoints(job_server) > checkpoints_before

    written = list(published_identities(kafka_bootstrap, [out], lambda t, k, v: f"{k.decode()}={v.decode()}"))
    keys = [w.split("=")[0] for w in written]
    assert len(keys) == len(set(keys))  # one result per (user, window)
    assert {k: int(v) for k, v in (w.split("=") for w in written)} == dict(expected)


def _alerts(bootstrap: str, prefix: str) -> dict[str, dict]:  # type: ignore[type-arg]
    values = published_identities(bootstrap, [f"{prefix}.alerts.{k}" for k in ALERT_KINDS], lambda t, k, v: v.decode())
    alerts = [json.loads(v) for v in values]
    by_id = {a["alert_id"]: a for a in alerts}
    assert len(by_id) == len(alerts), f"duplicate alert ids on {prefix}.alerts.*"
    return by_id


def _dead_letters(bootstrap: str, prefix: str) -> list[dict]:  # type: ignore[type-arg]
    values = published_identities(bootstrap, [f"{prefix}.dlq"], lambda t, k, v: v.decode())
    letters = [{k: v for k, v in json.loads(v).items() if k != "rejected_at"} for v in values]
    return sorted(letters, key=lambda letter: json.dumps(letter, sort_keys=True))


@flink_group
def test_stream_run_on_flink_equals_prism(
    job_server: FlinkJobServer,
    kafka_bootstrap: str,
    stream_topics: dict,  # type: ignore[type-arg]  # noqa: F811
    published: dict,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """`argus stream run --bounded --runner flink` (Flink checkpoints every 2 s) through the job server: the same
    alerts and dead letters as Prism."""
    flink_out, prism_out = f"{stream_topics['prefix']}-flink", f"{stream_topics['prefix']}-prism"
    _output_topics(kafka_bootstrap, flink_out)
    argus = str(python_env() / "bin" / "argus")
    result = _submit(
        [
            argus, "stream", "run", "--bounded", "--runner", "flink", "--parallelism", "2",
            "--model-store", str(published["store"]), "--topics", ",".join(stream_topics["topics"]),
            "--bootstrap", kafka_bootstrap, "--alerts-prefix", f"{flink_out}.alerts", "--dlq-topic", f"{flink_out}.dlq",
            "--", "--runner=PortableRunner", f"--job_endpoint={job_server.endpoint}", "--environment_type=LOOPBACK",
        ]
    )  # fmt: skip
    flink = json.loads(result.stdout.strip().splitlines()[-1])
    prism = _run(kafka_bootstrap, stream_topics, published, prism_out)

    assert flink["state"].endswith("DONE")
    assert flink["late_events"] == 0
    for counter in ("records_read", "events", "dead_letters", "duplicate_events", "alerts"):
        assert flink[counter] == prism[counter], counter
    assert flink["dead_letters"] == len(stream_topics["bad"])

    on_flink, on_prism = _alerts(kafka_bootstrap, flink_out), _alerts(kafka_bootstrap, prism_out)
    assert on_flink and set(on_flink) == set(on_prism)
    for alert_id, alert in on_flink.items():
        other = on_prism[alert_id]
        # Sums over a user's windows may add in another order on two workers: the last bits of a float differ.
        assert alert["score"] == pytest.approx(other["score"], rel=1e-9)
        for a, b in zip(alert["reasons"], other["reasons"], strict=True):
            assert (a["feature"], a["norm"]) == (b["feature"], b["norm"])
            assert a["value"] == pytest.approx(b["value"], rel=1e-9)
        assert set(alert["evidence_event_ids"]) == set(other["evidence_event_ids"])
        ignored = ("score", "reasons", "evidence_event_ids")
        assert {k: v for k, v in alert.items() if k not in ignored} == {
            k: v for k, v in other.items() if k not in ignored
        }
    flagged = {kind: {a["user_id"] for a in on_flink.values() if a["kind"] == kind} for kind in ("troll", "fraud")}
    for kind in ("troll", "fraud"):
        assert published["flagged"][kind] <= flagged[kind], kind

    assert _dead_letters(kafka_bootstrap, flink_out) == _dead_letters(kafka_bootstrap, prism_out)
