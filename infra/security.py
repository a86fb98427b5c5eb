"""The secure local broker's material: a private CA, the broker's certificate, principals, ACLs, client files.

``argus kafka up --secure`` keeps everything under the broker's home (``$ARGUS_HOME/kafka``):

- ``tls/ca.pem`` (the CA certificate clients trust), ``tls/ca.key`` (the CA's private key),
  ``tls/broker.pem`` (the broker's private key and certificate chain, a PEM keystore for Java);
- ``credentials/<principal>.password``: one random SCRAM-SHA-512 password per principal;
- ``clients/<principal>.toml`` and ``clients/<principal>.env``: the client settings for that principal
  (they point at the password file and never contain the password).

Folders are 0700 and files 0600. The broker's clients listener is SASL_SSL with SCRAM-SHA-512; the
controller and inter-broker listeners are TLS with client certificates that only this CA issues, so
nothing on the machine reaches the broker without a credential. ACLs (StandardAuthorizer, deny when no
ACL matches) give each principal only what its job needs; see ``ACL_GRANTS``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argus.infra.topics import DLQ_TOPIC

SASL_MECHANISM = "SCRAM-SHA-512"
BROKER_CN = "argus-broker"
# Super users: the admin principal, and the broker itself on its certificate-authenticated listeners.
ADMIN = "admin"
PIPELINE = "pipeline"
ALERTS_READER = "alerts-reader"
PRINCIPALS = (ADMIN, PIPELINE, ALERTS_READER)
CERT_DAYS = 825  # the longest validity clients such as browsers and macOS accept for a server certificate


@dataclass(frozen=True)
class Grant:
    """Allow ``principal`` the ``operations`` on every resource of ``resource_type`` named ``name``
    (``prefixed``: every name starting with it)."""

    principal: str
    resource_type: str  # "topic", "group" or "transactional_id"
    name: str
    prefixed: bool
    operations: tuple[str, ...]


# What each principal may do. The pipeline produces and ingests events (generate, import), validates
# them, dead-letters rejects and publishes alerts; it also reads its own outputs (dlq.events, alerts.*)
# because the streaming pipeline skips what it already published when it restarts, and it reads the
# alert topics' settings (publishing checks they are compacted). It creates no topics and changes no
# settings or ACLs: that is the admin's. Alert consumers read alerts.* and nothing else.
ACL_GRANTS = (
    Grant(PIPELINE, "topic", "events.", True, ("READ", "WRITE", "DESCRIBE")),
    Grant(PIPELINE, "topic", DLQ_TOPIC, False, ("READ", "WRITE", "DESCRIBE")),
    Grant(PIPELINE, "topic", "alerts.", True, ("READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS")),
    Grant(PIPELINE, "group", "argus-", True, ("READ", "DESCRIBE")),
    Grant(PIPELINE, "transactional_id", "argus-alerts-", True, ("WRITE", "DESCRIBE")),  # a night in one transaction
    Grant(ALERTS_READER, "topic", "alerts.", True, ("READ", "DESCRIBE")),
    Grant(ALERTS_READER, "group", "alerts-", True, ("READ", "DESCRIBE")),
)


class SecretFileError(ValueError):
    """A secret file is missing or empty; the message says which and what to do."""


@dataclass(frozen=True)
class SecureMaterial:
    """Paths of the secure broker's CA, keystore, passwords and client files under ``home``."""

    home: Path

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.tls_dir / "ca.key"

    @property
    def keystore(self) -> Path:
        return self.tls_dir / "broker.pem"

    def password_file(self, principal: str) -> Path:
        return self.home / "credentials" / f"{principal}.password"

    def client_toml(self, principal: str) -> Path:
        return self.home / "clients" / f"{principal}.toml"

    def client_env(self, principal: str) -> Path:
        return self.home / "clients" / f"{principal}.env"

    def password(self, principal: str) -> str:
        return read_secret_file(self.password_file(principal))

    def ensure(self, hosts: list[str]) -> None:
        """Create what is missing: the CA, the broker's certificate for ``hosts``, one password per principal."""
        for folder in (self.home, self.tls_dir, self.home / "credentials", self.home / "clients"):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
        if not (self.ca_cert.exists() and self.ca_key.exists()):
            _write_ca(self.ca_cert, self.ca_key)
        if not self.keystore.exists():
            _write_broker_keystore(self.keystore, self.ca_cert, self.ca_key, hosts)
        for principal in PRINCIPALS:
            path = self.password_file(principal)
            if not path.exists():
                write_private(path, secrets.token_urlsafe(24) + "\n")

    def client_settings(self, principal: str, bootstrap: str) -> dict[str, str]:
        """The ``[kafka]`` settings a client needs to connect as ``principal`` (the password stays in its file)."""
        return {
            "bootstrap": bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": SASL_MECHANISM,
            "sasl_plain_username": principal,
            "sasl_password_file": str(self.password_file(principal)),
            "ssl_cafile": str(self.ca_cert),
        }

    def write_client_files(self, bootstrap: str) -> None:
        """``clients/<principal>.toml`` (a ``[kafka]`` table) and ``.env`` (export lines) for every principal."""
        for principal in PRINCIPALS:
            settings = self.client_settings(principal, bootstrap)
            table = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
            write_private(
                self.client_toml(principal), f"# argus.toml settings for principal {principal}\n[kafka]\n{table}"
            )
            write_private(
                self.client_env(principal), "".join(f"export {line}\n" for line in client_env_lines(settings))
            )

    def server_properties(self, host: str, port: int, controller_port: int, internal_port: int) -> dict[str, str]:
        """The broker settings of the secure mode (listeners, TLS, SASL, authorizer)."""
        return {
            "listeners": (
                f"SASL_SSL://{host}:{port},CONTROLLER://{host}:{controller_port},INTERNAL://{host}:{internal_port}"
            ),
            "advertised.listeners": f"SASL_SSL://{host}:{port},INTERNAL://{host}:{internal_port}",
            "listener.security.protocol.map": "CONTROLLER:SSL,INTERNAL:SSL,SASL_SSL:SASL_SSL",
            "inter.broker.listener.name": "INTERNAL",
            "sasl.enabled.mechanisms": SASL_MECHANISM,
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": SASL_MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "listener.name.controller.ssl.client.auth": "required",
            "listener.name.internal.ssl.client.auth": "required",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_cert),
            "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{ADMIN};User:CN={BROKER_CN}",
        }

    def scram_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that create every principal's SCRAM credential."""
        args = []
        for principal in PRINCIPALS:
            args += ["--add-scram", f"{SASL_MECHANISM}=[name={principal},password={self.password(principal)}]"]
        return args


def secure_broker_summary(material: SecureMaterial, bootstrap: str) -> str:
    """What a user needs to connect to the secure local broker (paths only, never a password)."""
    clients = material.home / "clients"
    return "\n".join(
        [
            f"secure: clients connect over SASL_SSL ({SASL_MECHANISM}) at {bootstrap}; CA {material.ca_cert}",
            f"principals: {ADMIN} (super user), {PIPELINE} (events.* -> dlq.events, alerts.*), "
            f"{ALERTS_READER} (reads alerts.*); passwords in {material.home / 'credentials'} (0600)",
            f"to connect as {PIPELINE}: source {material.client_env(PIPELINE)}",
            f"  or copy the [kafka] table of {material.client_toml(PIPELINE)} into argus.toml",
            f"alert consumers: {clients / (ALERTS_READER + '.env')}; administration: {clients / (ADMIN + '.env')}",
        ]
    )


def client_env_lines(settings: dict[str, str]) -> list[str]:
    """``NAME=value`` lines for the environment variables ``argus.infra.clients`` reads."""
    names = {
        "bootstrap": "KAFKA_BOOTSTRAP",
        "security_protocol": "KAFKA_SECURITY_PROTOCOL",
        "sasl_mechanism": "KAFKA_SASL_MECHANISM",
        "sasl_plain_username": "KAFKA_SASL_USERNAME",
        "sasl_password_file": "KAFKA_SASL_PASSWORD_FILE",
        "ssl_cafile": "KAFKA_SSL_CAFILE",
    }
    return [f"{names[key]}={value}" for key, value in settings.items()]


def apply_acls(admin_client: Any) -> int:
    """Create the ACLs of ``ACL_GRANTS`` (the broker ignores ones it already has); return how many bindings."""
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    types = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "transactional_id": ResourceType.TRANSACTIONAL_ID,
    }
    acls = [
        ACL(
            principal=f"User:{grant.principal}",
            host="*",
            operation=getattr(ACLOperation, operation),
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(
                types[grant.resource_type],
                grant.name,
                ACLResourcePatternType.PREFIXED if grant.prefixed else ACLResourcePatternType.LITERAL,
            ),
        )
        for grant in ACL_GRANTS
        for operation in grant.operations
    ]
    result = admin_client.create_acls(acls)
    failed = result.get("failed", [])
    if failed:
        raise RuntimeError(f"creating ACLs failed: {failed[0]}")
    return len(acls)


# --- files with secrets -------------------------------------------------------------------


def write_private(path: Path, text: str | bytes) -> None:
    """Write ``path`` readable by its owner only (created 0600, never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    path.chmod(0o600)


def loose_permissions(path: Path) -> str | None:
    """``"group"``/``"others"`` when ``path`` is readable by more than its owner, else None."""
    mode = path.stat().st_mode
    if mode & stat.S_IROTH:
        return "others"
    if mode & stat.S_IRGRP:
        return "group"
    return None


# Loggers of the Kafka clients that print their settings: kafka-python's admin client logs its whole
# configuration, the password included, at DEBUG. Every secret read through this module is blanked out
# of their records, whatever handler a host application attaches.
LOGGERS_PRINTING_SETTINGS = ("kafka.admin.client",)
_SECRETS_READ: set[str] = set()


class _SecretRedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in _SECRETS_READ):
            for secret in _SECRETS_READ:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


_REDACTING_FILTER = _SecretRedactingFilter()


def redact_in_client_logs(secret: str) -> None:
    """Blank ``secret`` out of what the Kafka clients' loggers (``LOGGERS_PRINTING_SETTINGS``) record."""
    _SECRETS_READ.add(secret)
    for name in LOGGERS_PRINTING_SETTINGS:
        logger = logging.getLogger(name)
        if _REDACTING_FILTER not in logger.filters:
            logger.addFilter(_REDACTING_FILTER)


def read_secret_file(path: Path) -> str:
    """The secret in ``path`` (first line, stripped)."""
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise SecretFileError(f"the password file {path} does not exist") from exc
    except OSError as exc:
        raise SecretFileError(f"the password file {path} cannot be read ({exc.strerror})") from exc
    secret = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise SecretFileError(f"the password file {path} is empty")
    redact_in_client_logs(secret)
    return secret


# --- certificates ---------------------------------------------------------------------------


def _write_ca(cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "argus local CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(key_path, key_pem)
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _write_broker_keystore(keystore: Path, ca_cert_path: Path, ca_key_path: Path, hosts: list[str]) -> None:
    """The broker's key and certificate (server and client auth, for ``hosts``) as a Java PEM keystore."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, "localhost", "127.0.0.1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER_CN)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
    write_private(keystore, key_pem + chain)
