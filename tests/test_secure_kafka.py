"""Against a real secure broker (SASL_SSL, SCRAM-SHA-512, ACLs): every client path, every refusal, no leaked secret.

One broker for the module, started like ``argus kafka up --secure`` does. Commands run as the
``argus`` console script in a subprocess with the client settings the broker wrote, so that what a
user sees (one line, exit code 2) and what lands in logs is what is checked. Every output is kept
for the last test, which looks for the passwords and private keys in all of it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.broker import LocalBroker, free_port
from infra.clients import ConfigError, java_client_properties, kafka_settings, spark_kafka_options
from infra.security import ADMIN, ALERTS_READER, PIPELINE, PRINCIPALS
from infra.topics import DLQ_TOPIC, ensure_topics

pytestmark = pytest.mark.kafka

ARGUS = str(Path(sys.executable).parent / "argus")
OUTPUTS: list[str] = []  # every stdout/stderr of the module's commands, for the leak check
BAD_RECORDS = 5


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
    args = ["--users", "300", "--days", "3", "--profile", "dense", "--events-per-user-day", "20", "--seed", "5"]
    result = subprocess.run([ARGUS, "generate", *args, "--out", str(out)], capture_output=True, text=True)
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


def _fast_fail_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An argus.toml whose kafka-python clients give up bootstrapping after 5s instead of 30s."""
    config = tmp_path / "argus.toml"
    config.write_text("[kafka]\nbootstrap_timeout_ms = 5000\n")
    monkeypatch.setenv("ARGUS_CONFIG", str(config))


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
    from infra.broker import BrokerError

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


def test_a_password_readable_by_others_draws_a_warning(
    broker: LocalBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from infra.clients import read_password_file

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
    produced = _last_json(
        _argus(env, "generate", "--kafka", "--users", "60", "--days", "1", "--bad-records", str(BAD_RECORDS))
    )
    report = _last_json(_argus(env, "validate", "--json", "--idle-timeout", "5"))
    assert report["dead_lettered"] == BAD_RECORDS
    assert report["valid_total"] == int(produced["produced"]) - BAD_RECORDS  # type: ignore[call-overload]
    from infra.clients import consumer

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
    command = _argus(_client_env(broker, PIPELINE), "batch", "ingest", "--lake", str(tmp_path), "--print-command")
    assert command.returncode == 0 and f"--bootstrap {broker.bootstrap}" in command.stdout
    assert broker.material.password(PIPELINE) not in command.stdout  # secrets reach spark-submit by environment


@pytest.mark.skipif(
    not os.environ.get("ARGUS_SLOW_TESTS"),
    reason="a spark-submit run (1-2 minutes on 2 cores); set ARGUS_SLOW_TESTS=1 to run it",
)
def test_spark_ingest_reads_through_the_connector_over_sasl_ssl(broker: LocalBroker, tmp_path: Path) -> None:
    env = _client_env(broker, PIPELINE)
    lake = tmp_path / "lake"
    result = _last_json(_argus(env, "batch", "ingest", "--lake", str(lake), timeout=400))
    assert result["valid"] > 0 and result["rejected"] == BAD_RECORDS  # type: ignore[operator]
    for log in lake.rglob("*.log"):
        OUTPUTS.append(log.read_text(errors="replace"))


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


# --- refusals -------------------------------------------------------------------------------------


def test_alerts_reader_is_refused_the_event_topics(broker: LocalBroker) -> None:
    line = _one_line_error(_argus(_client_env(broker, ALERTS_READER), "validate", "--json", "--group", "alerts-check"))
    assert "denied principal 'alerts-reader'" in line and "events.chat" in line


def test_alerts_reader_cannot_write_events(broker: LocalBroker) -> None:
    line = _one_line_error(
        _argus(_client_env(broker, ALERTS_READER), "generate", "--kafka", "--users", "50", "--days", "1")
    )
    assert "denied principal 'alerts-reader'" in line and "writing to events." in line


def test_plaintext_client_is_refused_with_one_line(
    broker: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fast_fail_config(tmp_path, monkeypatch)
    for args in (["validate", "--json"], ["generate", "--kafka", "--users", "50", "--days", "1"]):
        line = _one_line_error(_argus(_client_env(broker, None), *args))
        assert f"the Kafka broker at {broker.bootstrap} requires TLS and authentication" in line
        assert "connects with PLAINTEXT" in line


def test_wrong_password_is_refused_without_repeating_it(
    broker: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fast_fail_config(tmp_path, monkeypatch)
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password-Zq81\n")
    wrong.chmod(0o600)
    env = {**_client_env(broker, PIPELINE), "KAFKA_SASL_PASSWORD_FILE": str(wrong)}
    result = _argus(env, "validate", "--json")
    line = _one_line_error(result)
    assert "rejected the credentials of 'pipeline' (SCRAM-SHA-512)" in line
    assert "not-the-password-Zq81" not in result.stdout + result.stderr


def test_untrusted_certificate_is_named(broker: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fast_fail_config(tmp_path, monkeypatch)
    env = {**_client_env(broker, PIPELINE), "KAFKA_SSL_CAFILE": str(_other_ca(tmp_path))}
    line = _one_line_error(_argus(env, "validate", "--json"))
    assert "certificate" in line and "not trusted" in line and "KAFKA_SSL_CAFILE" in line


def _other_ca(tmp_path: Path) -> Path:
    """A CA that did not sign the broker's certificate."""
    from infra.security import SecureMaterial

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
    help_texts = [_argus(dict(os.environ), *cmd, "--help").stdout for cmd in (["kafka", "up"], ["batch", "ingest"])]
    logs = [p.read_text(errors="replace") for p in broker.home.rglob("*.log")] + [
        p.read_text(errors="replace") for p in (broker.home / "logs").rglob("*") if p.is_file()
    ]
    assert logs and len(OUTPUTS) > 10  # the module's commands ran before this test
    haystacks = {"broker logs": "\n".join(logs), "command output": "\n".join(OUTPUTS), "help": "\n".join(help_texts)}
    leaks = [(what, where) for what, secret in secrets.items() for where, text in haystacks.items() if secret in text]
    assert leaks == []
