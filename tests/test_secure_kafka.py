"""Against a real secure broker (SASL_SSL, SCRAM-SHA-512, ACLs): every client path, every refusal, no leaked secret.

One broker for the module, started like ``argus kafka up --secure`` does. Commands run as the
``argus`` console script in a subprocess with the client settings the broker wrote, so that what a
user sees (one line, exit code 2) and what lands in logs is what is checked. One world travels every
path as ``pipeline``: generate -> validate (dead letters) -> Spark ingest -> detect --alerts -> the
streaming pipeline (Beam on Prism, logging at debug level) -> alerts read as ``alerts-reader``.
Every output and log (Spark's, Beam's, Prism's, the broker's) is kept for the last test, which looks
for the passwords and private keys in all of it; the process list is watched while Spark and Prism run.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from argus.infra.broker import LocalBroker, free_port
from argus.infra.clients import ConfigError, java_client_properties, kafka_settings, spark_kafka_options
from argus.infra.security import ADMIN, ALERTS_READER, PIPELINE, PRINCIPALS
from argus.infra.topics import ALERT_KINDS, DLQ_TOPIC, ensure_topics

pytestmark = pytest.mark.kafka

ARGUS = str(Path(sys.executable).parent / "argus")
OUTPUTS: list[str] = []  # every stdout/stderr of the module's commands and every log they wrote, for the leak check
BAD_RECORDS = 5
# One world for every path: produced to events.* as pipeline, and written to a folder for the batch detectors.
WORLD_ARGS = ["--users", "300", "--days", "3", "--profile", "dense", "--events-per-user-day", "20", "--seed", "5"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    secure = LocalBroker(home=tmp_path_factory.mktemp("secure-kafka"), port=free_port(), heap="512m", secure=True)
    secure.up()
    ensure_topics(secure.bootstrap, client_settings=secure.admin_settings())
    try:
        yield secure
    finally:
        secure.down()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("secure-world")
    result = subprocess.run([ARGUS, "generate", *WORLD_ARGS, "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


def _client_env(broker: LocalBroker, principal: str | None) -> dict[str, str]:
    """The environment of a command run as ``principal`` (None: no security settings at all)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    env["KAFKA_BOOTSTRAP"] = broker.bootstrap
    if principal is not None:
        for line in broker.material.client_env(principal).read_text().splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value
    return env


def _argus(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([ARGUS, *args], env=env, capture_output=True, text=True, timeout=timeout)
    OUTPUTS.extend([result.stdout, result.stderr])
    return result


def _last_json(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr[-2000:]
    parsed: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The refusal: exit code 2, no traceback, exactly one ``error:`` line on stderr."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@dataclass
class ProcessListWatch:
    """What a watch of the process list saw: how many command lines, those of interest, any with a secret."""

    looked_at: int = 0
    matching: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _watching_process_list(secrets: list[str], interest: str) -> Iterator[ProcessListWatch]:
    """Read every process's command line (what ``ps`` shows anyone) five times a second while the block runs."""
    watch, stop = ProcessListWatch(), threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for proc in Path("/proc").iterdir():
                try:
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:  # gone, or not a process
                    continue
                watch.looked_at += 1
                if interest in cmdline and cmdline not in watch.matching:
                    watch.matching.append(cmdline)
                if any(secret in cmdline for secret in secrets):
                    watch.leaks.append(cmdline[:300])
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield watch
    finally:
        stop.set()
        sampler.join()


def _passwords(broker: LocalBroker) -> list[str]:
    return [broker.material.password(p) for p in PRINCIPALS]


def _collect_logs(*folders: Path) -> int:
    """Add every log file under ``folders`` to the leak check's haystack; return how many."""
    logs = [p for folder in folders for p in folder.rglob("*") if p.is_file() and ".log" in p.name]
    OUTPUTS.extend(p.read_text(errors="replace") for p in logs)
    return len(logs)


# --- the material --------------------------------------------------------------------------------


def test_keys_passwords_and_client_files_are_owner_only(broker: LocalBroker) -> None:
    material = broker.material
    secrets = [material.ca_key, material.keystore, *(material.password_file(p) for p in PRINCIPALS)]
    secrets += [broker.home / "server.properties", *(material.client_toml(p) for p in PRINCIPALS)]
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for folder in (
        broker.home,
        material.tls_dir,
        material.password_file(ADMIN).parent,
        material.client_toml(ADMIN).parent,
    ):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert "PRIVATE KEY" in material.keystore.read_text() and "PRIVATE KEY" in material.ca_key.read_text()
    assert len({material.password(p) for p in PRINCIPALS}) == len(PRINCIPALS)  # one password each
    # The format step's argument file (with the SCRAM passwords) does not outlive it.
    assert not (broker.home / "format.args").exists()
    # The broker's own command line carries no secret.
    cmdline = Path(f"/proc/{broker.pid()}/cmdline").read_bytes().decode(errors="replace")
    assert not any(material.password(p) in cmdline for p in PRINCIPALS)


def test_a_secure_home_is_not_started_plaintext(broker: LocalBroker) -> None:
    from argus.infra.broker import BrokerError

    with pytest.raises(BrokerError, match="was created with --secure; start it the same way"):
        LocalBroker(home=broker.home, port=broker.port, secure=False).up()


def test_clients_get_only_the_sasl_ssl_listener(broker: LocalBroker) -> None:
    from kafka import KafkaAdminClient

    client = KafkaAdminClient(**broker.admin_settings())
    try:
        brokers = client.describe_cluster()["brokers"]
    finally:
        client.close()
    assert [(b["host"], b["port"]) for b in brokers] == [(broker.host, broker.port)]
    properties = (broker.home / "server.properties").read_text()
    assert "allow.everyone.if.no.acl.found=false" in properties and "PLAINTEXT" not in properties


# --- settings from one place ---------------------------------------------------------------------


def test_password_file_precedence_and_translations(
    broker: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password_file = broker.material.password_file(PIPELINE)
    config = tmp_path / "argus.toml"
    config.write_text(
        "[kafka]\n"
        + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in broker.material.client_settings(PIPELINE, broker.bootstrap).items()
        )
    )
    config.chmod(0o600)
    monkeypatch.setenv("ARGUS_CONFIG", str(config))
    settings = kafka_settings()
    assert settings["sasl_plain_password"] == broker.material.password(PIPELINE)
    assert "sasl_password_file" not in settings and settings["bootstrap_servers"] == broker.bootstrap
    options = spark_kafka_options()
    assert options["kafka.security.protocol"] == "SASL_SSL" and options["kafka.ssl.truststore.type"] == "PEM"
    assert options["kafka.sasl.jaas.config"].startswith("org.apache.kafka.common.security.scram.ScramLoginModule")
    # The environment's password wins over the configured file; both in the environment is a mistake.
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "from-the-environment")
    assert kafka_settings()["sasl_plain_password"] == "from-the-environment"
    assert 'password="from-the-environment"' in java_client_properties()["sasl.jaas.config"]
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(password_file))
    with pytest.raises(ConfigError, match="KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both"):
        kafka_settings()
    monkeypatch.delenv("KAFKA_SASL_PASSWORD")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="does not exist"):
        kafka_settings()


def _pickled(obj: object) -> tuple[bytes, object]:
    """``obj`` pickled the way Beam ships a DoFn to its workers: (the raw pickle, the copy a worker gets)."""
    import base64
    import bz2
    import zlib

    from apache_beam.internal import pickler

    packed = base64.b64decode(pickler.dumps(obj))
    try:
        raw = bz2.decompress(packed)
    except OSError:
        raw = zlib.decompress(packed)
    return raw, pickler.loads(pickler.dumps(obj))


def test_beam_kafka_io_carries_the_settings_and_only_a_reference_to_the_password(
    broker: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from argus.pipelines.kafka_io import ReadKafka, WriteKafka

    password = broker.material.password(PIPELINE)
    for name, value in _client_env(broker, PIPELINE).items():
        if name.startswith("KAFKA_"):
            monkeypatch.setenv(name, value)
    for fn in (ReadKafka(["events.chat"]).fn, WriteKafka().fn):
        raw, shipped = _pickled(fn)
        assert password.encode() not in raw and str(broker.material.password_file(PIPELINE)).encode() in raw
        assert password not in repr(shipped.client)  # type: ignore[attr-defined]
        # A worker with none of the launcher's variables connects as pipeline: the file is all it needs.
        with monkeypatch.context() as worker:
            for name in [n for n in os.environ if n.startswith("KAFKA_")]:
                worker.delenv(name)
            worker.setenv("ARGUS_CONFIG", str(tmp_path / "absent.toml"))
            resolved = shipped.client.resolve()  # type: ignore[attr-defined]
        assert resolved["sasl_plain_password"] == password and resolved["sasl_plain_username"] == PIPELINE
        assert resolved["bootstrap_servers"] == broker.bootstrap and resolved["security_protocol"] == "SASL_SSL"
    # A password given in the environment travels as the variable's name; a worker without it says so.
    monkeypatch.delenv("KAFKA_SASL_PASSWORD_FILE")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", password)
    raw, shipped = _pickled(WriteKafka().fn)
    assert password.encode() not in raw
    monkeypatch.delenv("KAFKA_SASL_PASSWORD")
    with pytest.raises(ConfigError, match="KAFKA_SASL_PASSWORD is not set in this process"):
        shipped.client.resolve()  # type: ignore[attr-defined]


def test_client_debug_logs_print_the_settings_without_the_password(
    broker: LocalBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from argus.infra.clients import admin

    for name, value in _client_env(broker, PIPELINE).items():
        if name.startswith("KAFKA_"):
            monkeypatch.setenv(name, value)
    with caplog.at_level("DEBUG", logger="kafka"):
        admin().close()
    assert "Starting KafkaAdminClient with configuration" in caplog.text  # kafka-python prints every setting...
    assert "'sasl_plain_password': '***'" in caplog.text  # ...but the password is blanked out
    assert broker.material.password(PIPELINE) not in caplog.text


def test_a_password_readable_by_others_draws_a_warning(
    broker: LocalBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from argus.infra.clients import read_password_file

    shared = tmp_path / "shared.password"
    shared.write_text(broker.material.password(PIPELINE) + "\n")
    shared.chmod(0o644)
    assert read_password_file(shared) == broker.material.password(PIPELINE)
    warning = capsys.readouterr().err
    OUTPUTS.append(warning)
    assert f"warning: {shared} holds a Kafka password and is readable by others; run chmod 600 {shared}" in warning


# --- every path as pipeline ------------------------------------------------------------------------


def test_generate_produces_and_validate_dead_letters_as_pipeline(broker: LocalBroker) -> None:
    env = _client_env(broker, PIPELINE)
    produced = _last_json(_argus(env, "generate", "--kafka", *WORLD_ARGS, "--bad-records", str(BAD_RECORDS)))
    report = _last_json(_argus(env, "validate", "--json", "--idle-timeout", "5"))
    assert report["dead_lettered"] == BAD_RECORDS
    assert report["valid_total"] == int(produced["produced"]) - BAD_RECORDS  # type: ignore[call-overload]
    from argus.infra.clients import consumer

    settings = broker.material.client_settings(PIPELINE, broker.bootstrap)
    reader = consumer(
        DLQ_TOPIC,
        bootstrap=broker.bootstrap,
        security_protocol="SASL_SSL",
        sasl_mechanism=settings["sasl_mechanism"],
        sasl_plain_username=PIPELINE,
        sasl_plain_password=broker.material.password(PIPELINE),
        ssl_cafile=settings["ssl_cafile"],
        consumer_timeout_ms=10_000,
    )
    try:
        letters = [json.loads(record.value) for record in reader]
    finally:
        reader.close()
    assert len(letters) == BAD_RECORDS and all(letter["reason"] for letter in letters)


def test_spark_submit_arguments_carry_no_secret(broker: LocalBroker, tmp_path: Path) -> None:
    env = _client_env(broker, PIPELINE)
    command = _argus(env, "batch", "ingest", "--lake", str(tmp_path), "--print-command")
    assert command.returncode == 0 and f"--bootstrap {broker.bootstrap}" in command.stdout
    assert not any(password in command.stdout for password in _passwords(broker))
    # The job gets the password where kafka_settings reads it: the password file named in its environment.
    assert env["KAFKA_SASL_PASSWORD_FILE"] == str(broker.material.password_file(PIPELINE))
    assert "KAFKA_SASL_PASSWORD" not in env


def test_spark_ingest_reads_through_the_connector_over_sasl_ssl(broker: LocalBroker, tmp_path: Path) -> None:
    env = _client_env(broker, PIPELINE)
    lake = tmp_path / "lake"
    with _watching_process_list(_passwords(broker), "org.apache.spark.deploy.SparkSubmit") as watch:
        result = _last_json(_argus(env, "batch", "ingest", "--lake", str(lake), timeout=600))
    assert result["valid"] > 0 and result["rejected"] == BAD_RECORDS  # type: ignore[operator]
    assert watch.matching, "the Spark JVM was never seen in the process list"
    assert watch.leaks == []
    assert _collect_logs(lake, Path(env["ARGUS_HOME"])) >= 1  # at least Spark's own log, LAKE/_logs/ingest.log


def test_detect_alerts_are_published_and_alert_readers_read_them(
    broker: LocalBroker, world: Path, tmp_path: Path
) -> None:
    summary = _last_json(
        _argus(
            _client_env(broker, PIPELINE),
            "detect",
            "fraud",
            "--events",
            str(world),
            "--out",
            str(tmp_path / "f.csv"),
            "--alerts",
        )
    )
    published = summary["alerts"]
    assert isinstance(published, dict) and published.get("alerts.fraud", 0) > 0
    tail = _argus(_client_env(broker, ALERTS_READER), "alerts", "tail", "--json", "--kind", "fraud")
    assert tail.returncode == 0, tail.stderr
    alerts = [json.loads(line) for line in tail.stdout.splitlines() if line.strip()]
    assert len(alerts) == published["alerts.fraud"] and {a["kind"] for a in alerts} == {"fraud"}


def _read_to_end(broker: LocalBroker, principal: str, topics: list[str]) -> list[Any]:
    """Every record on ``topics`` up to their current ends, read as ``principal`` with its client file's settings."""
    from kafka import TopicPartition

    from argus.infra.clients import consumer

    settings = broker.material.client_settings(principal, broker.bootstrap)
    reader = consumer(
        bootstrap=broker.bootstrap,
        security_protocol="SASL_SSL",
        sasl_mechanism=settings["sasl_mechanism"],
        sasl_plain_username=principal,
        sasl_plain_password=broker.material.password(principal),
        ssl_cafile=settings["ssl_cafile"],
    )
    records: list[Any] = []
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(reader.partitions_for_topic(t) or [])]
        reader.assign(partitions)
        reader.seek_to_beginning(*partitions)
        ends = reader.end_offsets(partitions)
        while any(reader.position(tp) < ends[tp] for tp in partitions):
            for batch in reader.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        reader.close()
    return records


def _latest_by_key(broker: LocalBroker, topic: str, principal: str) -> dict[str, bytes | None]:
    """The newest value of every key on ``topic`` (None: a tombstone), read as ``principal``."""
    return {record.key.decode(): record.value for record in _read_to_end(broker, principal, [topic])}


def test_forget_as_admin_tombstones_the_users_alerts_and_a_rerun_is_a_no_op(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """Runs after detect --alerts: erasing one flagged user leaves a tombstone for each of their alerts."""
    before = _latest_by_key(broker, "alerts.fraud", ALERTS_READER)
    alerts = {key: json.loads(value) for key, value in before.items() if value is not None}
    user = sorted(alert["user_id"] for alert in alerts.values())[0]
    theirs = {key for key, alert in alerts.items() if alert["user_id"] == user}
    lake = tmp_path / "lake"
    lake.mkdir()
    forget = ["forget", "--user", user, "--reason", "erasure request 16", "--lake", str(lake)]
    first = _last_json(_argus(_client_env(broker, ADMIN), *forget))
    assert first["alerts_tombstoned"] == len(theirs) >= 1
    after = _latest_by_key(broker, "alerts.fraud", ALERTS_READER)
    assert {key for key, value in after.items() if value is None} >= theirs
    assert {key for key, value in after.items() if value is not None} == set(alerts) - theirs
    # Until the log cleaner runs, the erased alerts are still on the topic, before their tombstones: not shown.
    tail = _argus(_client_env(broker, ALERTS_READER), "alerts", "tail", "--json", "--kind", "fraud")
    assert tail.returncode == 0, tail.stderr
    assert {json.loads(line)["alert_id"] for line in tail.stdout.splitlines() if line.strip()} == set(alerts) - theirs
    assert _last_json(_argus(_client_env(broker, ADMIN), *forget))["alerts_tombstoned"] == 0
    audit = (lake / "_audit" / "forget.jsonl").read_text()
    assert user not in audit and "erasure request 16" in audit  # the subject as a keyed digest only


@pytest.fixture(scope="module")
def fraud_model(world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A fraud model fitted on the world and published; the users it flags on all of the world's events."""
    from argus.detectors.events import load_events
    from argus.detectors.fraud import FraudDetector
    from argus.detectors.store import ModelStore

    events = load_events(world)
    detector = FraudDetector()
    features = detector.features(events)
    detector.fit(features)
    store = ModelStore(tmp_path_factory.mktemp("secure-models"))
    store.publish(detector)
    scores = detector.score(features)
    return {"store": store.root, "flagged": set(scores.loc[scores["flagged"], "user_id"]), "events": events.count}


STREAM_ALERTS = "alerts.stream"  # under alerts.*: the pipeline may write it, alert readers may read it


def test_streaming_pipeline_runs_as_pipeline_and_alert_readers_read_its_alerts(
    broker: LocalBroker, fraud_model: dict[str, object]
) -> None:
    """events.* -> `argus stream run` (Beam on Prism) as pipeline -> alerts.stream.* -> read as alerts-reader.

    Beam and Prism log at debug level into the command's output, which the last test searches for secrets;
    the process list is watched while the pipeline runs.
    """
    from kafka.admin import NewTopic

    from argus.infra.clients import admin

    client = admin(settings=broker.admin_settings())
    try:
        client.create_topics([NewTopic(f"{STREAM_ALERTS}.{kind}", 1, 1) for kind in ALERT_KINDS])
    finally:
        client.close()
    debug_logging = "import logging, sys; logging.basicConfig(level=logging.DEBUG); from argus.cli import main; main()"
    command = [sys.executable, "-c", debug_logging, "stream", "run", "--bounded", "--detectors", "fraud"]
    command += ["--model-store", str(fraud_model["store"]), "--alerts-prefix", STREAM_ALERTS]
    command += ["--", "--prism_log_level=debug"]
    with _watching_process_list(_passwords(broker), "prism") as watch:
        run = subprocess.run(command, env=_client_env(broker, PIPELINE), capture_output=True, text=True, timeout=600)
    OUTPUTS.extend([run.stdout, run.stderr])
    counters = _last_json(run)
    assert str(counters["state"]).endswith("DONE")
    assert counters["events"] == fraud_model["events"] and counters["dead_letters"] == BAD_RECORDS
    assert any("--job_port" in cmdline for cmdline in watch.matching), "the Prism runner was never seen"
    assert watch.leaks == []
    assert "prism" in run.stderr.lower()  # Prism's own log lines reached the output that is searched
    # The alert reader reads what the pipeline published.
    records = _read_to_end(broker, ALERTS_READER, [f"{STREAM_ALERTS}.{kind}" for kind in ALERT_KINDS])
    alerts = [json.loads(record.value) for record in records]
    assert len(alerts) == counters["alerts"] and len({a["alert_id"] for a in alerts}) == len(alerts)
    flagged = fraud_model["flagged"]
    assert isinstance(flagged, set) and flagged  # the world has fraud the batch model flags...
    assert flagged <= {a["user_id"] for a in alerts if a["kind"] == "fraud"}  # ...and the stream alerts on it


# --- refusals -------------------------------------------------------------------------------------


def test_streaming_pipeline_as_alerts_reader_is_refused_before_it_starts(
    broker: LocalBroker, fraud_model: dict[str, object]
) -> None:
    args = ["stream", "run", "--bounded", "--detectors", "fraud", "--model-store", str(fraud_model["store"])]
    line = _one_line_error(_argus(_client_env(broker, ALERTS_READER), *args))
    assert "denied principal 'alerts-reader'" in line and "events.payment" in line


def test_alerts_reader_is_refused_the_event_topics(broker: LocalBroker) -> None:
    line = _one_line_error(_argus(_client_env(broker, ALERTS_READER), "validate", "--json", "--group", "alerts-check"))
    assert "denied principal 'alerts-reader'" in line and "events.chat" in line


def test_alerts_reader_cannot_write_events(broker: LocalBroker) -> None:
    line = _one_line_error(
        _argus(_client_env(broker, ALERTS_READER), "generate", "--kafka", "--users", "50", "--days", "1")
    )
    assert "denied principal 'alerts-reader'" in line and "writing to events." in line


def test_plaintext_client_is_refused_with_one_line(broker: LocalBroker) -> None:
    # No bootstrap_timeout_ms configured: the clients' factories notice the refusal within seconds on their own.
    for args in (["validate", "--json"], ["generate", "--kafka", "--users", "50", "--days", "1"]):
        line = _one_line_error(_argus(_client_env(broker, None), *args))
        assert f"the Kafka broker at {broker.bootstrap} requires TLS and authentication" in line
        assert "connects with PLAINTEXT" in line


def test_tls_client_without_a_login_is_refused_with_one_line(broker: LocalBroker) -> None:
    env = {k: v for k, v in _client_env(broker, PIPELINE).items() if not k.startswith("KAFKA_SASL_")}
    line = _one_line_error(_argus({**env, "KAFKA_SECURITY_PROTOCOL": "SSL"}, "validate", "--json"))
    assert f"the Kafka broker at {broker.bootstrap} requires authentication" in line
    assert "connects with SSL and no login" in line


def test_wrong_password_is_refused_without_repeating_it(broker: LocalBroker, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password-Zq81\n")
    wrong.chmod(0o600)
    env = {**_client_env(broker, PIPELINE), "KAFKA_SASL_PASSWORD_FILE": str(wrong)}
    result = _argus(env, "validate", "--json")
    line = _one_line_error(result)
    assert "rejected the credentials of 'pipeline' (SCRAM-SHA-512)" in line
    assert "not-the-password-Zq81" not in result.stdout + result.stderr


def test_untrusted_certificate_is_named(broker: LocalBroker, tmp_path: Path) -> None:
    env = {**_client_env(broker, PIPELINE), "KAFKA_SSL_CAFILE": str(_other_ca(tmp_path))}
    line = _one_line_error(_argus(env, "validate", "--json"))
    assert "certificate" in line and "not trusted" in line and "KAFKA_SSL_CAFILE" in line


def _other_ca(tmp_path: Path) -> Path:
    """A CA that did not sign the broker's certificate."""
    from argus.infra.security import SecureMaterial

    other = SecureMaterial(tmp_path / "other")
    other.ensure(["127.0.0.1"])
    return other.ca_cert


# --- nothing secret anywhere ------------------------------------------------------------------------


def test_no_password_or_private_key_in_any_log_output_or_help(broker: LocalBroker) -> None:
    """Runs last: every broker log, every command's output and the help texts, searched for every secret."""
    material = broker.material
    secrets = {f"password of {p}": material.password(p) for p in PRINCIPALS}
    for name, path in (("CA key", material.ca_key), ("broker key", material.keystore)):
        pem = path.read_text().split("-----END PRIVATE KEY-----")[0]
        body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
        secrets.update({f"{name} line {i}": line for i, line in enumerate(body)})
    help_texts = [
        _argus(dict(os.environ), *cmd, "--help").stdout
        for cmd in (["kafka", "up"], ["batch", "ingest"], ["stream", "run"])
    ]
    logs = [p.read_text(errors="replace") for p in broker.home.rglob("*.log")] + [
        p.read_text(errors="replace") for p in (broker.home / "logs").rglob("*") if p.is_file()
    ]
    assert logs and len(OUTPUTS) > 10  # the module's commands ran before this test
    haystacks = {"broker logs": "\n".join(logs), "command output": "\n".join(OUTPUTS), "help": "\n".join(help_texts)}
    leaks = [
        (what, where, _context(text, secret))
        for what, secret in secrets.items()
        for where, text in haystacks.items()
        if secret in text
    ]
    assert leaks == []


def _context(text: str, secret: str, width: int = 160) -> str:
    """Where ``secret`` first appears in ``text``, with the secret itself blanked out."""
    at = text.index(secret)
    return text[max(0, at - width) : at + len(secret) + width].replace(secret, "<SECRET>")


@pytest.mark.parametrize("first_signal", ["produce raises", "error callback"])
def test_a_refused_idempotent_start_up_names_the_topic_however_it_arrives(
    monkeypatch: pytest.MonkeyPatch, first_signal: str
) -> None:
    """librdkafka reports a refused producer id either at produce() or on the error callback first."""
    from confluent_kafka import KafkaError, KafkaException

    from argus.infra.clients import BulkProducer, KafkaAccessError

    monkeypatch.setenv("KAFKA_SASL_USERNAME", ALERTS_READER)
    fatal = KafkaError(KafkaError._FATAL, "127.0.0.1:9093/1: Broker: Cluster authorization failed", fatal=True)
    producer = BulkProducer("127.0.0.1:9")

    class _RefusingProducer:
        def produce(self, *args: Any, **kwargs: Any) -> None:
            raise KafkaException(fatal)

        def poll(self, timeout: float) -> int:
            return 0

    producer._producer = _RefusingProducer()  # type: ignore[assignment]
    if first_signal == "error callback":
        producer._on_error(fatal)
    with pytest.raises(KafkaAccessError) as refused:
        producer.send_many("events.chat", [b"u1"], [b"{}"])
    assert "denied principal 'alerts-reader'" in str(refused.value)
    assert "writing to events.chat" in str(refused.value)
