"""``argus forget``: erase users from the lake, the compacted topics and the model store, with an audit record.

What happens to each place a user's data lives:

* **Lake rows about the user** (``user_id`` is theirs) are removed from every Parquet and JSON Lines
  file under the lake, all dates: events, a generated world's truth, every run's alert files
  (published or left by a crashed run).
  Each file is rewritten to a temporary file and swapped in with ``os.replace``, so a reader sees
  the old file or the new one, never half of one. The Delta tables (profiles, embeddings, scores:
  ``argus.jobs.lake``) are rewritten through Delta instead: the published version without the
  users' rows becomes a new version, published by a manifest of its own, and every older version's
  files are deleted (VACUUM with no retention), so time travel can no longer reach the users' rows.
* **Mentions of the user in other rows** (a payment's ``counterparty_id``, a moderation's
  ``actor_id``, an alert reason that names a matched parent, a raid's members) are replaced by a
  pseudonym, ``forgotten-<keyed digest>``: the other users' records stay usable and consistent with
  each other, and no longer name the user. A mention is the id as a whole token.
* **Dead letters** whose original bytes mention the user are removed whole: their bytes are the
  record of what arrived and cannot be edited without breaking the round trip.
* **Kafka**: alert topics are compacted and keyed by ``alert_id``; the user's alerts get a tombstone
  (a null value) and alerts that mention the user (a raid's members) are republished with the
  pseudonym. Any other compacted topic of the layout keyed by user id gets a tombstone for the
  user's key. Topics with a delete policy (the event topics, the dead-letter topic) cannot drop
  one key; their records expire with the topic's retention, which the report gives.
* **Models** that name the user (fraud keeps the fitted users and its clusters' members): versions
  not in use are deleted; the version in use is left as it is (its version is a hash of its
  contents and alerts cite it) and reported as pending until the next fit on the erased lake
  replaces it, after which a rerun deletes it.

Every run appends one JSON line to ``LAKE/_audit/forget.jsonl``: the time, the reason, the users
as keyed digests (never the ids), and what was removed where (counts per table and file, alert
ids, tombstones, models). The removed content itself is never written anywhere. A rerun finds
nothing left, changes nothing and still appends its (empty) record.
"""

from __future__ import annotations

import base64
import os
import pickle
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from argus.schemas.privacy import (
    ERASURE_LOG,
    PrivacyError,
    pseudonym,
    subject_digest,
    subject_key,
)

AUDIT_LOG = ERASURE_LOG
# Folders of the lake that hold no per-user rows (offset ranges, the audit itself) or are handled apart.
_SKIPPED_FOLDERS = frozenset({"_audit", "_offsets", "_lease", "models"})
_TOKEN_EDGE = r"A-Za-z0-9_\-"
_USER_ID_COLUMNS = ("user_id",)
_DEAD_LETTER_COLUMN = "original_b64"


class ForgetError(ValueError):
    """A user's mistake (no such lake, an empty id); one line that says what to do."""


@dataclass
class ForgetReport:
    """What one run removed; ``audit_record`` is what the audit log keeps of it."""

    subjects: list[str]
    reason: str | None
    at: str
    subject_key: str
    tables: dict[str, int] = field(default_factory=dict)  # table -> rows removed
    redacted: dict[str, int] = field(default_factory=dict)  # table -> rows whose mentions were replaced
    files: dict[str, dict[str, int]] = field(default_factory=dict)  # lake-relative path -> counts
    alert_ids: list[str] = field(default_factory=list)
    kafka: dict[str, Any] = field(default_factory=dict)
    models_deleted: list[str] = field(default_factory=list)
    models_pending_refit: list[str] = field(default_factory=list)

    @property
    def rows_removed(self) -> int:
        return sum(self.tables.values())

    def audit_record(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "action": "forget",
            "subjects": self.subjects,
            "subject_key": self.subject_key,
            "reason": self.reason,
            "rows_removed": self.rows_removed,
            "tables": dict(sorted(self.tables.items())),
            "rows_redacted": dict(sorted(self.redacted.items())),
            "files": dict(sorted(self.files.items())),
            "alert_ids": sorted(self.alert_ids),
            "kafka": self.kafka,
            "models_deleted": sorted(self.models_deleted),
            "models_pending_refit": sorted(self.models_pending_refit),
        }


@dataclass(frozen=True)
class UserMatcher:
    """Recognises the users' rows and mentions; ``pseudonym`` is what a mention becomes."""

    users: frozenset[str]
    pseudonyms: dict[str, str]

    @classmethod
    def build(cls, users: Iterable[str], salt: bytes) -> UserMatcher:
        ids = frozenset(users)
        return cls(ids, {u: pseudonym(salt, u) for u in ids})

    @cached_property
    def _token(self) -> re.Pattern[str]:
        alternatives = "|".join(re.escape(u) for u in sorted(self.users, key=len, reverse=True))
        return re.compile(rf"(?<![{_TOKEN_EDGE}])(?:{alternatives})(?![{_TOKEN_EDGE}])")

    @cached_property
    def _token_bytes(self) -> re.Pattern[bytes]:
        alternatives = b"|".join(re.escape(u.encode("utf-8", "surrogatepass")) for u in self.users)
        return re.compile(
            rb"(?<![" + _TOKEN_EDGE.encode() + rb"])(?:" + alternatives + rb")(?![" + _TOKEN_EDGE.encode() + rb"])"
        )

    def mentions(self, text: str) -> bool:
        return any(u in text for u in self.users) and self._token.search(text) is not None

    def mentions_bytes(self, raw: bytes) -> bool:
        return self._token_bytes.search(raw) is not None

    def redact(self, text: str) -> str:
        return self._token.sub(lambda m: self.pseudonyms[m.group(0)], text)

    def redact_value(self, value: Any) -> Any:
        """A JSON-like value with every mention in its strings (and keys) replaced."""
        if isinstance(value, str):
            return self.redact(value) if self.mentions(value) else value
        if isinstance(value, list):
            return [self.redact_value(v) for v in value]
        if isinstance(value, dict):
            return {self.redact_value(k): self.redact_value(v) for k, v in value.items()}
        return value


def forget(
    lake: Path,
    users: Sequence[str],
    reason: str | None = None,
    *,
    bootstrap: str | None = None,
    kafka: bool = True,
    alert_topics: Sequence[str] | None = None,
    keyed_topics: Sequence[str] | None = None,
    now: datetime | None = None,
) -> ForgetReport:
    """Erase ``users`` from ``lake`` (and Kafka unless ``kafka`` is false); append and return the record.

    ``alert_topics`` (compacted, keyed by alert id) and ``keyed_topics`` (keyed by user id) default
    to the layout's alert topics and its event and dead-letter topics.
    """
    lake = Path(lake)
    ids = list(dict.fromkeys(users))
    if not ids or any(not u.strip() for u in ids):
        raise ForgetError("--user: give the id of the user to forget (repeat --user for several)")
    if not lake.is_dir():
        raise ForgetError(f"--lake: {lake} is not a folder; give the lake's root folder")
    from argus.jobs.lake import WriterLease

    # Rewriting tables under a night that is publishing would interleave manifests and rollbacks.
    with WriterLease(lake, "argus forget"):
        return _forget(lake, ids, reason, bootstrap, kafka, alert_topics, keyed_topics, now)


def _forget(
    lake: Path,
    ids: list[str],
    reason: str | None,
    bootstrap: str | None,
    kafka: bool,
    alert_topics: Sequence[str] | None,
    keyed_topics: Sequence[str] | None,
    now: datetime | None,
) -> ForgetReport:
    salt, key_source = subject_salt(lake)
    matcher = UserMatcher.build(ids, salt)
    report = ForgetReport(
        subjects=sorted(subject_digest(salt, u) for u in ids),
        reason=reason,
        at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        subject_key=key_source,
    )
    alert_ids: set[str] = set()
    for folder in delta_tables(lake):
        counts = scrub_delta_table(lake, folder, matcher, alert_ids)
        if counts["removed"] or counts["redacted"]:
            relative = _relative(folder, lake)
            table = table_name(Path(relative) / "table")
            report.files[relative] = counts
            report.tables[table] = report.tables.get(table, 0) + counts["removed"]
            if counts["redacted"]:
                report.redacted[table] = report.redacted.get(table, 0) + counts["redacted"]
    for path in lake_files(lake):
        counts = scrub_file(path, matcher, alert_ids)
        if counts["removed"] or counts["redacted"]:
            relative = _relative(path, lake)
            table = table_name(Path(relative))
            report.files[relative] = counts
            report.tables[table] = report.tables.get(table, 0) + counts["removed"]
            if counts["redacted"]:
                report.redacted[table] = report.redacted.get(table, 0) + counts["redacted"]
    report.tables = {t: n for t, n in report.tables.items() if n}
    deleted, pending = forget_in_models(lake / "models", matcher)
    report.models_deleted, report.models_pending_refit = deleted, pending
    if kafka:
        from argus.infra.topics import ALERT_TOPICS, DLQ_TOPIC, EVENT_TOPICS

        erasure = erase_from_kafka(
            matcher,
            bootstrap,
            alert_topics=list(alert_topics if alert_topics is not None else ALERT_TOPICS),
            keyed_topics=list(keyed_topics if keyed_topics is not None else (*EVENT_TOPICS, DLQ_TOPIC)),
            lake_alert_ids=alert_ids,
        )
        alert_ids |= set(erasure.pop("alert_ids"))
        report.kafka = erasure
    else:
        report.kafka = {"skipped": "--no-kafka"}
    report.alert_ids = sorted(alert_ids)
    append_audit(lake, report.audit_record())
    return report


# --- the subject key -------------------------------------------------------------------------------


def subject_salt(lake: Path) -> tuple[bytes, str]:
    """The key of audit digests and pseudonyms (``argus.schemas.privacy.subject_key``), a one-line error if unusable."""
    try:
        return subject_key(lake)
    except PrivacyError as exc:
        raise ForgetError(str(exc)) from None


def append_audit(lake: Path, record: dict[str, Any]) -> Path:
    """One JSON line per run, flushed to disk before returning."""
    path = lake / AUDIT_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        handle.write(orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return path


# --- lake files ------------------------------------------------------------------------------------


def delta_tables(lake: Path) -> list[Path]:
    """The lake's Delta tables (folders holding a ``_delta_log``), in a stable order."""
    return sorted(log.parent for log in lake.rglob("_delta_log") if log.is_dir())


def lake_files(lake: Path) -> list[Path]:
    """Every data file of the lake that can hold per-user rows, in a stable order (Delta tables apart)."""
    found = []
    tables = delta_tables(lake)
    for path in sorted(lake.rglob("*")):
        relative = path.relative_to(lake)
        if not path.is_file() or relative.parts[0] in _SKIPPED_FOLDERS or path.name.startswith("."):
            continue
        if any(path.is_relative_to(table) for table in tables):
            continue
        if path.suffix in (".parquet", ".jsonl", ".json", ".log") or _is_alert_file(relative):
            found.append(path)
    # `argus import --out LAKE` keeps its dead letters beside the lake, as LAKE.rejected.jsonl.
    beside = lake.with_name(f"{lake.name}.rejected.jsonl")
    if beside.is_file():
        found.append(beside)
    return found


def _is_alert_file(relative: Path) -> bool:
    """A night's alert file as Spark writes it, ``alerts/detector=X/date=D/run=R/part-*.txt``: JSON lines."""
    return relative.parts[0] == "alerts" and relative.name.startswith("part-") and relative.suffix == ".txt"


def _relative(path: Path, lake: Path) -> str:
    """The path as the audit names it: inside the lake, or ``../NAME`` for a file beside it."""
    try:
        return path.relative_to(lake).as_posix()
    except ValueError:
        return f"../{path.name}"


def table_name(relative: Path) -> str:
    """``events/event_type=chat/date=D/part.parquet`` -> ``events/chat``; ``profiles/date=D/x`` -> ``profiles``."""
    if relative.name.endswith(".rejected.jsonl"):
        return "import_dead_letters"
    parts = [p.split("=", 1)[-1] for p in relative.parts[:-1] if not p.startswith(("date=", "run="))]
    return "/".join(parts) or relative.stem


def scrub_file(path: Path, matcher: UserMatcher, alert_ids: set[str]) -> dict[str, int]:
    """Remove the users' rows from one file and redact their mentions; {"removed": n, "redacted": m}."""
    if path.suffix == ".parquet":
        return _scrub_parquet(path, matcher, alert_ids)
    if path.suffix in (".jsonl", ".txt"):  # .txt: the alert files (lake_files picks no other)
        return _scrub_json_lines(path, matcher, alert_ids)
    return _scrub_text(path, matcher)


def _string_columns(schema: pa.Schema) -> list[str]:
    def stringy(t: pa.DataType) -> bool:
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return True
        return (pa.types.is_list(t) or pa.types.is_large_list(t)) and stringy(t.value_type)

    return [f.name for f in schema if stringy(f.type)]


def _flat_strings(column: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    while pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        column = pc.list_flatten(column)
    return column


def _touches(table: pa.Table, columns: list[str], matcher: UserMatcher) -> bool:
    """Cheap pre-check: does any string cell contain a user id as a substring, or a dead letter mention one?"""
    for name in columns:
        if name == _DEAD_LETTER_COLUMN:
            if any(v is not None and matcher.mentions_bytes(_b64(v)) for v in table.column(name).to_pylist()):
                return True
            continue
        values = _flat_strings(table.column(name))
        for user in matcher.users:
            if len(values) and pc.any(pc.match_substring(values, user)).as_py():
                return True
    return False


def _row_mask(table: pa.Table, matcher: UserMatcher) -> np.ndarray:
    """True for the rows to remove: the users' own rows, and dead letters that mention them."""
    drop = np.zeros(table.num_rows, dtype=bool)
    users = pa.array(sorted(matcher.users), pa.string())
    for name in _USER_ID_COLUMNS:
        if name in table.column_names and pa.types.is_string(table.schema.field(name).type):
            drop |= pc.fill_null(pc.is_in(table.column(name), value_set=users), False).to_numpy(zero_copy_only=False)
    if _DEAD_LETTER_COLUMN in table.column_names:
        for i, encoded in enumerate(table.column(_DEAD_LETTER_COLUMN).to_pylist()):
            if encoded is not None and not drop[i]:
                drop[i] = matcher.mentions_bytes(_b64(encoded))
    return drop


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=False)
    except ValueError:
        return text.encode()


def _redact_table(table: pa.Table, columns: list[str], matcher: UserMatcher) -> tuple[pa.Table, int]:
    """Mentions in string (and list-of-string) columns replaced; (table, rows changed)."""
    changed = np.zeros(table.num_rows, dtype=bool)
    for name in columns:
        if name in _USER_ID_COLUMNS or name == _DEAD_LETTER_COLUMN:
            continue
        index = table.column_names.index(name)
        values = table.column(index).to_pylist()
        new_values = [matcher.redact_value(v) for v in values]
        differs = np.array([a != b for a, b in zip(values, new_values, strict=True)], dtype=bool)
        if differs.any():
            changed |= differs
            table = table.set_column(index, table.field(index), pa.array(new_values, table.field(index).type))
    return table, int(changed.sum())


def _scrub_parquet(path: Path, matcher: UserMatcher, alert_ids: set[str]) -> dict[str, int]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError):
        return {"removed": 0, "redacted": 0}  # not Parquet after all: nothing this command can read
    schema = parquet.schema_arrow
    columns = _string_columns(schema)
    if not any(
        _touches(parquet.read_row_group(i, columns=columns), columns, matcher) for i in range(parquet.num_row_groups)
    ):
        return {"removed": 0, "redacted": 0}
    compression = _compression(parquet)
    staging = path.with_name(f".{path.name}.forget-partial")
    removed = redacted = 0
    with pq.ParquetWriter(staging, schema, compression=compression) as writer:
        for i in range(parquet.num_row_groups):
            table = parquet.read_row_group(i)
            drop = _row_mask(table, matcher)
            _collect_alert_ids(table, drop, alert_ids)
            kept = table.filter(pa.array(~drop)) if drop.any() else table
            kept, changed = _redact_table(kept, columns, matcher)
            removed += int(drop.sum())
            redacted += changed
            writer.write_table(kept.cast(schema))
    if removed or redacted:
        os.replace(staging, path)
        _drop_checksum(path)
    else:
        staging.unlink()
    return {"removed": removed, "redacted": redacted}


def scrub_delta_table(lake: Path, folder: Path, matcher: UserMatcher, alert_ids: set[str]) -> dict[str, int]:
    """The published version of one Delta table without the users' rows and with their mentions
    redacted, as a new version the lake's manifest then publishes; every other version's files are
    deleted. {"removed": n, "redacted": m}; a table that never mentions the users is left as it is."""
    from deltalake import DeltaTable, write_deltalake

    from argus.jobs.lake import commit_manifest, published_version

    table = folder.relative_to(lake).as_posix()
    published = published_version(lake, table)
    delta = DeltaTable(str(folder), version=published)
    data = delta.to_pyarrow_table()
    columns = _string_columns(data.schema)
    if not data.num_rows or not _touches(data, columns, matcher):
        return {"removed": 0, "redacted": 0}
    drop = _row_mask(data, matcher)
    _collect_alert_ids(data, drop, alert_ids)
    kept, redacted = _redact_table(data.filter(pa.array(~drop)), columns, matcher)
    partitions = delta.metadata().partition_columns
    write_deltalake(str(folder), kept, mode="overwrite", partition_by=partitions or None)
    written = DeltaTable(str(folder))
    if published is not None:
        commit_manifest(lake, {table: int(written.version())}, "forget")
    written.vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False)
    return {"removed": int(drop.sum()), "redacted": redacted}


def _compression(parquet: pq.ParquetFile) -> str:
    metadata = parquet.metadata
    if metadata.num_row_groups and metadata.num_columns:
        codec = str(metadata.row_group(0).column(0).compression).lower()
        if codec in ("snappy", "gzip", "brotli", "lz4", "zstd", "none"):
            return codec
    return "zstd"


def _collect_alert_ids(table: pa.Table, drop: np.ndarray, alert_ids: set[str]) -> None:
    """Score tables that carry the alert id of a flagged row: the removed rows' ids, for tombstones."""
    if "alert_id" in table.column_names and drop.any():
        alert_ids.update(a for a in table.filter(pa.array(drop)).column("alert_id").to_pylist() if a)


def _scrub_json_lines(path: Path, matcher: UserMatcher, alert_ids: set[str]) -> dict[str, int]:
    data = path.read_bytes()
    if not _worth_parsing(data, matcher):
        return {"removed": 0, "redacted": 0}
    out: list[bytes] = []
    removed = redacted = 0
    for line in data.splitlines(keepends=True):
        if not _worth_parsing(line, matcher):
            out.append(line)
            continue
        body = line.rstrip(b"\r\n")
        try:
            record = orjson.loads(body)
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            drop = matcher.mentions_bytes(line)  # not a record at all, and it names a user
        elif record.get("user_id") in matcher.users:
            drop = True
            if isinstance(record.get("alert_id"), str):
                alert_ids.add(record["alert_id"])
        elif isinstance(record.get(_DEAD_LETTER_COLUMN), str):  # its bytes cannot be edited
            drop = matcher.mentions_bytes(line) or matcher.mentions_bytes(_b64(record[_DEAD_LETTER_COLUMN]))
        else:
            drop = False
        if drop:
            removed += 1
            continue
        cleaned = matcher.redact_value(record) if isinstance(record, dict) else record
        if cleaned == record:
            out.append(line)
            continue
        out.append(orjson.dumps(cleaned) + line[len(body) :])
        redacted += 1
    if removed or redacted:
        _replace_bytes(path, b"".join(out))
    return {"removed": removed, "redacted": redacted}


def _worth_parsing(raw: bytes, matcher: UserMatcher) -> bool:
    """Could ``raw`` hold a user: a mention in clear, an escaped string, or a dead letter's base64?"""
    return matcher.mentions_bytes(raw) or b"\\" in raw or b'"original_b64"' in raw


def _scrub_text(path: Path, matcher: UserMatcher) -> dict[str, int]:
    """JSON reports and logs: mentions replaced in place (they hold no rows of their own)."""
    data = path.read_bytes()
    if not matcher.mentions_bytes(data):
        return {"removed": 0, "redacted": 0}
    text = data.decode("utf-8", errors="surrogateescape")
    redacted = sum(1 for line in text.splitlines() if matcher.mentions(line))
    _replace_bytes(path, matcher.redact(text).encode("utf-8", errors="surrogateescape"))
    return {"removed": 0, "redacted": redacted}


def _replace_bytes(path: Path, data: bytes) -> None:
    staging = path.with_name(f".{path.name}.forget-partial")
    staging.write_bytes(data)
    os.replace(staging, path)
    _drop_checksum(path)


def _drop_checksum(path: Path) -> None:
    """Spark's local file system checks a ``.NAME.crc`` sibling on read; a stale one fails the read."""
    path.with_name(f".{path.name}.crc").unlink(missing_ok=True)


# --- the model store -------------------------------------------------------------------------------


def forget_in_models(store_root: Path, matcher: UserMatcher) -> tuple[list[str], list[str]]:
    """Versions naming a user: (deleted because not in use, left in use until the next fit)."""
    import shutil

    deleted: list[str] = []
    pending: list[str] = []
    if not store_root.is_dir():
        return deleted, pending
    for state in sorted(store_root.glob("*/*/state.pkl")):
        folder = state.parent
        if not _state_names_user(state, matcher):
            continue
        name = f"{folder.parent.name}/{folder.name}"
        pointer = folder.parent / "CURRENT"
        in_use = pointer.is_file() and pointer.read_text().strip() == folder.name
        if in_use:
            pending.append(name)
        else:
            shutil.rmtree(folder)
            deleted.append(name)
    return deleted, pending


def _state_names_user(state: Path, matcher: UserMatcher) -> bool:
    data = state.read_bytes()
    if not any(u.encode("utf-8", "surrogatepass") in data for u in matcher.users):
        return False
    try:
        loaded = pickle.loads(data)  # the store's own artefact, as Detector.load reads it
    except Exception:  # unreadable state: the byte match above decides
        return True
    return _holds(loaded, matcher.users, depth=0)


def _holds(value: Any, users: frozenset[str], depth: int) -> bool:
    """Does ``value`` hold one of ``users`` as a string, in its containers, arrays or attributes?"""
    if depth > 12:
        return False
    if isinstance(value, str):
        return value in users
    if isinstance(value, bytes):
        return any(u.encode() in value for u in users)
    if isinstance(value, dict):
        return any(_holds(k, users, depth + 1) or _holds(v, users, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_holds(v, users, depth + 1) for v in value)
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "OUS" and any(_holds(v, users, depth + 1) for v in value.ravel().tolist())
    if isinstance(value, pd.DataFrame):
        frames = [list(value.index), list(value.columns)]
        frames += [value[c].tolist() for c in value.columns if value[c].dtype == object]
        return any(_holds(part, users, depth + 1) for part in frames)
    if isinstance(value, pd.Series):
        return _holds(value.tolist(), users, depth + 1) or _holds(list(value.index), users, depth + 1)
    if isinstance(value, pd.Index):
        return _holds(value.tolist(), users, depth + 1)
    attributes = getattr(value, "__dict__", None)
    return isinstance(attributes, dict) and _holds(attributes, users, depth + 1)


# --- Kafka -----------------------------------------------------------------------------------------


def erase_from_kafka(
    matcher: UserMatcher,
    bootstrap: str | None,
    alert_topics: list[str],
    keyed_topics: list[str],
    lake_alert_ids: set[str],
) -> dict[str, Any]:
    """Tombstones on compacted topics; the retention of the others. Returns the Kafka part of the report."""
    from argus.infra import clients
    from argus.infra.topics import topic_configs

    probe = clients.consumer(bootstrap=bootstrap)
    try:
        existing = probe.topics()
    finally:
        probe.close()
    topics = [t for t in dict.fromkeys([*alert_topics, *keyed_topics]) if t in existing]
    configs = topic_configs(topics, bootstrap)
    compacted = {t for t in topics if "compact" in configs.get(t, {}).get("cleanup.policy", "")}
    result: dict[str, Any] = {"tombstones": {}, "redacted_alerts": {}, "alert_ids": [], "expires_by_retention": {}}
    sink = clients.producer(bootstrap, enable_idempotence=True)
    try:
        for topic in topics:
            if topic not in compacted:
                retention = configs.get(topic, {}).get("retention.ms", "unknown")
                result["expires_by_retention"][topic] = {"retention_ms": retention}
                continue
            latest = _latest_values(topic, bootstrap)
            tombstones, redacted = 0, 0
            for key, value in latest.items():
                if value is None:
                    continue  # already deleted: a rerun writes nothing
                if topic in alert_topics:
                    action, new_value = _alert_action(key, value, matcher, lake_alert_ids)
                else:
                    action, new_value = (
                        ("tombstone", None) if key.decode(errors="replace") in matcher.users else ("", None)
                    )
                if action == "tombstone":
                    sink.send(topic, key=key, value=None)
                    tombstones += 1
                    if topic in alert_topics:
                        result["alert_ids"].append(key.decode(errors="replace"))
                elif action == "redact":
                    sink.send(topic, key=key, value=new_value)
                    redacted += 1
            sink.flush()
            if tombstones:
                result["tombstones"][topic] = tombstones
            if redacted:
                result["redacted_alerts"][topic] = redacted
    finally:
        sink.close()
    return result


def _alert_action(key: bytes, value: bytes, matcher: UserMatcher, lake_alert_ids: set[str]) -> tuple[str, bytes | None]:
    """("tombstone" | "redact" | "", new value) for the latest record of one alert id."""
    if key.decode(errors="replace") in lake_alert_ids:
        return "tombstone", None
    try:
        alert = orjson.loads(value)
    except orjson.JSONDecodeError:
        return ("tombstone", None) if matcher.mentions_bytes(value) else ("", None)
    if not isinstance(alert, dict):
        return "", None
    if alert.get("user_id") in matcher.users:
        return "tombstone", None
    if not matcher.mentions_bytes(value):
        return "", None
    return "redact", orjson.dumps(matcher.redact_value(alert))


def _latest_values(topic: str, bootstrap: str | None) -> dict[bytes, bytes | None]:
    """The newest value of every key on ``topic``, read from the beginning to the current end."""
    from kafka import TopicPartition

    from argus.infra import clients

    consumer = clients.consumer(bootstrap=bootstrap, group_id=None, enable_auto_commit=False)
    latest: dict[bytes, bytes | None] = {}
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            return latest
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        idle = 0
        while any(consumer.position(tp) < end for tp, end in ends.items()) and idle < 40:
            batch = consumer.poll(timeout_ms=500)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                for record in records:
                    if record.key is not None:
                        latest[record.key] = record.value
    finally:
        consumer.close()
    return latest


def summary(report: ForgetReport) -> dict[str, Any]:
    """What the command prints: the audit record plus the totals a person checks first."""
    record = report.audit_record()
    record["alerts_tombstoned"] = sum(report.kafka.get("tombstones", {}).values())
    return record
