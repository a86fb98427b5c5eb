"""Personal fields stored salted-hashed, by configuration, and the keyed digests erasure records.

Fields that the detectors only compare for equality (device and network fingerprints, payment
instruments) or that a site prefers not to keep in clear (usernames) can be replaced, where
events are written to the lake, by an HMAC-SHA256 of their value under a secret salt:

    [privacy]                          # argus.toml (the file named by ARGUS_CONFIG)
    hash_fields = ["username", "previous_username", "device_fp", "network_fp"]
    salt_env = "ARGUS_HASH_SALT"       # the variable that holds the salt (this is the default)

Equal values give equal digests under one salt, so every comparison by equality still matches;
similarity between different values is lost (see README "Erasure and privacy" for what each
detector loses). Digests are 32 lowercase hex characters: they fit the fingerprint pattern and
the username length of the event contract, so hashed events still validate.

The hashing applies where Argus stores events (``argus generate --out``, ``argus import --out``
and the nightly ingest), once per event; the event topics carry what producers sent, and dead
letters keep their original bytes (that is their contract), so both are covered by retention
and by ``argus forget`` rather than by hashing. Keep the salt stable: a new salt gives new
digests, and old and new lake partitions would no longer match each other.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

import pyarrow as pa
from pydantic import BaseModel

from argus.schemas.config_file import config_stamp, read_config_table

HASHABLE_FIELDS = ("username", "previous_username", "device_fp", "network_fp", "instrument_id")
DEFAULT_SALT_ENV = "ARGUS_HASH_SALT"
DIGEST_HEX_CHARS = 32
MIN_SALT_BYTES = 16
ERASURE_LOG = Path("_audit") / "forget.jsonl"
LAKE_KEY_FILE = Path("_audit") / "subject.key"
PSEUDONYM_PREFIX = "forgotten-"
# Fields that name another user: an erased user's id there becomes their pseudonym.
REFERENCE_FIELDS = ("counterparty_id", "actor_id")
_FIELD_DOMAIN = b"argus-field-v1\x00"
_SUBJECT_DOMAIN = b"argus-subject-v1\x00"

EventT = TypeVar("EventT", bound=BaseModel)


class PrivacyError(ValueError):
    """A malformed ``[privacy]`` setting or a missing salt; the message says what to fix."""


def keyed_digest(salt: bytes, value: str, domain: bytes = _FIELD_DOMAIN) -> str:
    """HMAC-SHA256 of ``value`` under ``salt``, as 32 lowercase hex characters (128 bits)."""
    return hmac.new(salt, domain + value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[
        :DIGEST_HEX_CHARS
    ]


def subject_digest(salt: bytes, user_id: str) -> str:
    """How an audit record names a user: keyed, so the log alone does not reveal who was erased."""
    return keyed_digest(salt, user_id, _SUBJECT_DOMAIN)


@dataclass(frozen=True)
class Pseudonymizer:
    """Replaces the configured fields of events by their keyed digests; a no-op without fields."""

    hash_fields: frozenset[str] = frozenset()
    salt: bytes = field(default=b"", repr=False)

    @property
    def active(self) -> bool:
        return bool(self.hash_fields)

    def value(self, text: str) -> str:
        return keyed_digest(self.salt, text)

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with its configured fields hashed (None stays None); the same dict is returned."""
        for name in self.hash_fields:
            value = row.get(name)
            if isinstance(value, str):
                row[name] = self.value(value)
        return row

    def event(self, event: EventT) -> EventT:
        """``event`` with its configured fields hashed (a copy; events are immutable)."""
        if not self.active:
            return event
        update = {n: self.value(v) for n in self.hash_fields if isinstance(v := getattr(event, n, None), str)}
        return event.model_copy(update=update) if update else event

    def table(self, table: pa.Table) -> pa.Table:
        """``table`` with its configured string columns hashed; other columns untouched."""
        for name in sorted(self.hash_fields & set(table.column_names)):
            index = table.column_names.index(name)
            column = table.column(index)
            if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
                continue
            digests = {v: self.value(v) for v in column.unique().to_pylist() if v is not None}
            hashed = pa.array([None if v is None else digests[v] for v in column.to_pylist()], column.type)
            table = table.set_column(index, table.field(index), hashed)
        return table


def load_privacy(environ: Mapping[str, str] | None = None, config: Mapping[str, Any] | None = None) -> Pseudonymizer:
    """The configured pseudonymizer: ``[privacy]`` of argus.toml, the salt from its environment variable."""
    environ = os.environ if environ is None else environ
    table = dict((_config_file_table(environ) if config is None else config).get("privacy", {}))
    unknown = sorted(set(table) - {"hash_fields", "salt_env"})
    if unknown:
        raise PrivacyError(f"[privacy]: unknown key {unknown[0]!r}; the keys are hash_fields and salt_env")
    fields = table.get("hash_fields", [])
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise PrivacyError('[privacy] hash_fields: expected a list of field names, e.g. ["username", "device_fp"]')
    bad = sorted(set(fields) - set(HASHABLE_FIELDS))
    if bad:
        raise PrivacyError(
            f"[privacy] hash_fields: {bad[0]!r} cannot be hashed; the fields are {', '.join(HASHABLE_FIELDS)}"
        )
    if not fields:
        return Pseudonymizer()
    salt_env = table.get("salt_env", DEFAULT_SALT_ENV)
    if not isinstance(salt_env, str) or not salt_env:
        raise PrivacyError("[privacy] salt_env: expected the name of an environment variable")
    return Pseudonymizer(frozenset(fields), configured_salt(environ, salt_env))


def configured_salt(environ: Mapping[str, str] | None = None, salt_env: str = DEFAULT_SALT_ENV) -> bytes:
    """The salt in ``salt_env``; a one-line error when it is missing or too short to be secret."""
    environ = os.environ if environ is None else environ
    salt = environ.get(salt_env, "")
    if not salt:
        raise PrivacyError(
            f"{salt_env} is not set; export a secret of at least {MIN_SALT_BYTES} characters"
            " (the same value everywhere events are written, or hashes stop matching)"
        )
    if len(salt.encode()) < MIN_SALT_BYTES:
        raise PrivacyError(f"{salt_env} is shorter than {MIN_SALT_BYTES} characters; use a longer random secret")
    return salt.encode()


_cache: dict[tuple[object, ...], Pseudonymizer] = {}


def current_privacy() -> Pseudonymizer:
    """``load_privacy()``, cached until the environment or the config file changes."""
    path, stamp = config_stamp()
    table = _config_file_table(os.environ) if stamp is not None else {}
    salt_env = str(table.get("privacy", {}).get("salt_env", DEFAULT_SALT_ENV))
    key = (path, stamp, os.environ.get("ARGUS_CONFIG"), salt_env, os.environ.get(salt_env))
    pseudonymizer = _cache.get(key)
    if pseudonymizer is None:
        _cache.clear()
        pseudonymizer = _cache[key] = load_privacy(config=table)
    return pseudonymizer


def _config_file_table(environ: Mapping[str, str]) -> dict[str, Any]:
    return read_config_table(environ, PrivacyError)


# --- erased subjects --------------------------------------------------------------------------------


def subject_key(lake: Path, create: bool = True) -> tuple[bytes, str]:
    """The key of erasure digests and pseudonyms, and where it came from.

    ``ARGUS_HASH_SALT`` when set; otherwise the lake's own key file, created once (owner-only,
    when ``create``) so the digests of every erasure of a lake agree.
    """
    if os.environ.get(DEFAULT_SALT_ENV):
        return configured_salt(salt_env=DEFAULT_SALT_ENV), DEFAULT_SALT_ENV
    path = Path(lake) / LAKE_KEY_FILE
    if not path.is_file():
        if not create:
            return b"", LAKE_KEY_FILE.as_posix()
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.partial")
        descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        os.replace(staging, path)
    return path.read_text().strip().encode(), LAKE_KEY_FILE.as_posix()


def pseudonym(salt: bytes, user_id: str) -> str:
    """What an erased user's id becomes where another user's record names them."""
    return PSEUDONYM_PREFIX + keyed_digest(salt, user_id)[:16]


@dataclass(frozen=True)
class ErasedSubjects:
    """The users ``argus forget`` erased from a lake, as keyed digests, so replays cannot bring them back."""

    salt: bytes = field(default=b"", repr=False)
    digests: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.digests)

    def is_erased(self, user_id: object) -> TypeGuard[str]:
        return bool(self.digests) and isinstance(user_id, str) and subject_digest(self.salt, user_id) in self.digests

    def row(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """None for an erased user's row; otherwise the row, references to erased users pseudonymised."""
        if not self.digests:
            return row
        if self.is_erased(row.get("user_id")):
            return None
        for name in REFERENCE_FIELDS:
            if self.is_erased(value := row.get(name)):
                row[name] = pseudonym(self.salt, value)
        return row

    def event(self, event: EventT) -> EventT | None:
        """``row`` for an event model (a copy when a reference changes)."""
        if not self.digests:
            return event
        if self.is_erased(getattr(event, "user_id", None)):
            return None
        update = {
            name: pseudonym(self.salt, value)
            for name in REFERENCE_FIELDS
            if self.is_erased(value := getattr(event, name, None))
        }
        return event.model_copy(update=update) if update else event


def erased_subjects(lake: Path) -> ErasedSubjects:
    """The subjects of every ``argus forget`` record of ``lake`` (none when it has no erasure log)."""
    log = Path(lake) / ERASURE_LOG
    if not log.is_file():
        return ErasedSubjects()
    salt, _ = subject_key(lake, create=False)
    digests: set[str] = set()
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line of a crashed run: its subjects are in the rerun's record
        if isinstance(record, dict):
            digests.update(d for d in record.get("subjects", []) if isinstance(d, str))
    return ErasedSubjects(salt, frozenset(digests)) if salt else ErasedSubjects()
