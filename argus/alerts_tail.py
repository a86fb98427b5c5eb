"""``argus alerts tail``: read the ``alerts.*`` topics, each alert once, on a terminal or as JSON lines.

Alert topics are compacted and keyed by ``alert_id`` (``infra/topics.py``), but the log cleaner
only reaches closed segments: until it runs, a replayed night sits on the topic next to the
first one. The tail therefore remembers the alert ids it has passed (the last two million),
including those before its starting point (read as keys only), and shows each alert once. An alert
whose latest record is a tombstone (erased by ``argus forget``) is not shown either.

With ``group`` the offsets of what was shown are committed to that consumer group, so a tail
started again with the same group resumes after the last alert it showed. Without a group
nothing is committed and the tail starts at the beginning (or at ``since``).

The tail reads committed records only: a night's alerts are published in one Kafka transaction, so
a publish that failed half-way shows nothing, and one in progress shows once it is committed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from argus.infra.topics import ALERT_KINDS, alert_topic
from argus.preflight import PreflightError, require_broker
from argus.schemas.models import Alert

TAIL_KINDS = (*ALERT_KINDS, "raid")  # raid groups travel on alerts.troll
SEVERITY_STYLES = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$")
_UNITS = {"s": "seconds", "sec": "seconds", "m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}
POLL_MS = 500
END_WAIT_S = 60.0  # without --follow: longest wait for records known to exist
REMEMBERED_IDS = 2_000_000  # alert ids a long-running follower remembers (about 200 MB at most)
COMMITTED = "read_committed"  # a batch publish shows whole or not at all (infra.clients.publish_alerts)


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """An ISO time (``2026-10-03``, ``2026-10-03T12:00``, with or without offset; naive means UTC) or a
    duration back from ``now`` (``90s``, ``30m``, ``2h``, ``7d``, ``1w``)."""
    match = _DURATION.match(value)
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise PreflightError(
            f"--since must be an ISO time (2026-10-03 or 2026-10-03T12:00Z) or a duration back from now"
            f" (30m, 2h, 7d), not {value!r}"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def topics_for(kinds: list[str]) -> list[str]:
    """The alert topics that carry ``kinds`` (every alert topic when none is given)."""
    unknown = [k for k in kinds if k not in TAIL_KINDS]
    if unknown:
        raise PreflightError(f"--kind must be one of {', '.join(TAIL_KINDS)}, not {unknown[0]!r}")
    wanted = kinds or list(ALERT_KINDS)
    return sorted({alert_topic("troll" if k == "raid" else k) for k in wanted})


@dataclass
class TailedAlert:
    """One alert as read: the record's topic, partition, offset and publish time beside it."""

    alert: Alert
    topic: str
    partition: int
    offset: int
    published: datetime


@dataclass
class TailStats:
    shown: int = 0
    duplicates: int = 0
    malformed: int = 0
    other_kinds: int = 0
    erased: int = 0  # alerts whose latest record is a tombstone (``argus forget``), not yet compacted away
    problems: list[str] = field(default_factory=list)  # the first few malformed records, why


def tail_alerts(
    kinds: list[str] | None = None,
    group: str | None = None,
    since: datetime | None = None,
    follow: bool = False,
    max_alerts: int | None = None,
    bootstrap: str | None = None,
    stats: TailStats | None = None,
    idle_stop_s: float | None = None,
) -> Iterator[TailedAlert]:
    """Alerts of ``kinds`` in log order, each ``alert_id`` once.

    Without ``follow`` it stops at the end offsets seen when it started; with ``follow`` it waits
    for new alerts until ``max_alerts`` are shown, the caller stops iterating, or nothing arrives
    for ``idle_stop_s`` seconds (if given). With ``group`` it commits what it has shown.
    """
    from kafka.structs import OffsetAndMetadata

    from argus.infra.clients import consumer as make_consumer

    kinds = list(kinds or [])
    topics = topics_for(kinds)
    stats = stats if stats is not None else TailStats()
    require_broker(bootstrap)
    reader = make_consumer(
        bootstrap=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=COMMITTED,
        client_id="argus-tail",
    )
    done: dict[Any, int] = {}  # partition -> the next offset to commit (after what was shown or skipped)
    try:
        partitions = _partitions(reader, topics)
        reader.assign(partitions)
        begins, ends = reader.beginning_offsets(partitions), reader.end_offsets(partitions)
        starts = _start_offsets(reader, partitions, group, since, begins, ends)
        for tp in partitions:
            reader.seek(tp, starts[tp])
        seen = _RecentIds(_ids_before(bootstrap, begins, starts))
        erased = _erased_ids(bootstrap, starts, ends)
        idle_s = 0.0
        while True:
            if not follow and all(reader.position(tp) >= ends[tp] for tp in partitions):
                break
            batches = reader.poll(timeout_ms=POLL_MS)
            if not batches:
                idle_s += POLL_MS / 1000
                if follow and idle_stop_s is not None and idle_s >= idle_stop_s:
                    break
                if not follow and idle_s >= END_WAIT_S:
                    raise PreflightError(f"the alert topics stopped answering before their end ({END_WAIT_S:.0f}s)")
                continue
            idle_s = 0.0
            for tp, records in sorted(batches.items(), key=lambda item: (item[0].topic, item[0].partition)):
                for record in records:
                    done[tp] = record.offset + 1
                    tailed = _read(record, stats)
                    if tailed is None:
                        continue
                    if kinds and tailed.alert.kind not in kinds:
                        stats.other_kinds += 1
                        continue
                    if tailed.alert.alert_id in seen:
                        stats.duplicates += 1
                        continue
                    if tailed.alert.alert_id in erased:
                        stats.erased += 1
                        continue
                    seen.add(tailed.alert.alert_id)
                    stats.shown += 1
                    yield tailed
                    if max_alerts is not None and stats.shown >= max_alerts:
                        return
            if group:
                reader.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in done.items()})
    finally:
        if group and done:
            reader.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in done.items()})
        reader.close()


def _partitions(reader: Any, topics: list[str]) -> list[Any]:
    from kafka import TopicPartition

    available = reader.topics()
    missing = [t for t in topics if t not in available]
    if len(missing) == len(topics):
        raise PreflightError(
            f"no alert topics ({', '.join(missing)}) on this cluster yet; create them with `argus kafka up`"
            " or publish alerts with `argus detect ... --alerts`"
        )
    return [
        TopicPartition(topic, p)
        for topic in topics
        if topic in available
        for p in sorted(reader.partitions_for_topic(topic) or [])
    ]


def _start_offsets(
    reader: Any,
    partitions: list[Any],
    group: str | None,
    since: datetime | None,
    begins: dict[Any, int],
    ends: dict[Any, int],
) -> dict[Any, int]:
    """Where to start: the first record published at or after ``since``; else the group's committed
    offset; else the beginning."""
    if since is not None:
        found = reader.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
        return {tp: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in partitions}
    starts = {}
    for tp in partitions:
        committed = reader.committed(tp) if group else None
        starts[tp] = max(committed, begins[tp]) if committed is not None else begins[tp]
    return starts


class _RecentIds:
    """A set of the most recent ``limit`` alert ids: the oldest are forgotten first."""

    def __init__(self, ids: set[str], limit: int = REMEMBERED_IDS) -> None:
        self._ids: dict[str, None] = dict.fromkeys(ids)
        self.limit = limit

    def __contains__(self, alert_id: object) -> bool:
        return alert_id in self._ids

    def add(self, alert_id: str) -> None:
        self._ids[alert_id] = None
        if len(self._ids) > self.limit:
            del self._ids[next(iter(self._ids))]


def _ids_before(bootstrap: str | None, begins: dict[Any, int], starts: dict[Any, int]) -> set[str]:
    """The alert ids (record keys) before each partition's starting offset: alerts already passed."""
    from argus.infra.clients import consumer as make_consumer

    todo = {tp: start for tp, start in starts.items() if start > begins[tp]}
    if not todo:
        return set()
    keys = make_consumer(
        bootstrap=bootstrap, enable_auto_commit=False, isolation_level=COMMITTED, client_id="argus-tail-keys"
    )
    seen: set[str] = set()
    try:
        keys.assign(list(todo))
        for tp in todo:
            keys.seek(tp, begins[tp])
        while any(keys.position(tp) < stop for tp, stop in todo.items()):
            for tp, records in keys.poll(timeout_ms=POLL_MS).items():
                seen.update(r.key.decode(errors="replace") for r in records if r.offset < todo[tp] and r.key)
    finally:
        keys.close()
    return seen


def _erased_ids(bootstrap: str | None, starts: dict[Any, int], ends: dict[Any, int]) -> set[str]:
    """Alert ids whose latest record up to the end offsets seen at start is a tombstone.

    ``argus forget`` erases an alert with a tombstone; until the log cleaner compacts the topic, the
    alert itself is still on it, before the tombstone. A tail must not show it again.
    """
    from argus.infra.clients import consumer as make_consumer

    todo = {tp: end for tp, end in ends.items() if end > starts[tp]}
    if not todo:
        return set()
    reader = make_consumer(
        bootstrap=bootstrap, enable_auto_commit=False, isolation_level=COMMITTED, client_id="argus-tail-tombstones"
    )
    latest_is_tombstone: dict[str, bool] = {}
    try:
        reader.assign(list(todo))
        for tp in todo:
            reader.seek(tp, starts[tp])
        while any(reader.position(tp) < stop for tp, stop in todo.items()):
            for tp, records in reader.poll(timeout_ms=POLL_MS).items():
                for r in records:
                    if r.offset < todo[tp] and r.key:
                        latest_is_tombstone[r.key.decode(errors="replace")] = r.value is None
    finally:
        reader.close()
    return {alert_id for alert_id, erased in latest_is_tombstone.items() if erased}


def _read(record: Any, stats: TailStats) -> TailedAlert | None:
    """The record as an alert; a record that is not one is counted and skipped (never fatal)."""
    if record.value is None:  # a tombstone: the alert was erased (``argus forget``), nothing to show
        return None
    try:
        alert = Alert.model_validate_json(record.value)
    except ValidationError as exc:
        stats.malformed += 1
        if len(stats.problems) < 5:
            why = exc.errors()[0].get("msg", "invalid") if exc.errors() else "invalid"
            stats.problems.append(f"{record.topic}[{record.partition}]@{record.offset}: not an alert ({why})")
        return None
    published = datetime.fromtimestamp(record.timestamp / 1000, tz=UTC)
    return TailedAlert(alert, record.topic, record.partition, record.offset, published)


# --- output -----------------------------------------------------------------------------------


def alert_json(tailed: TailedAlert) -> str:
    """One line: the alert exactly as published (``argus.schemas.Alert``)."""
    return tailed.alert.model_dump_json()


def render(tailed: TailedAlert) -> list[str]:
    """Rich markup lines for a terminal: severity, kind, subject, score, window, then reasons and evidence."""
    from rich.markup import escape

    alert = tailed.alert
    style = SEVERITY_STYLES[alert.severity]
    window = f"{alert.window_start:%Y-%m-%d %H:%M}..{alert.window_end:%Y-%m-%d %H:%M}"
    head = (
        f"[{style}]{alert.severity.upper():<8}[/] [bold]{alert.kind:<6}[/] {escape(alert.user_id)}"
        f"  score {alert.score:.2f}  [dim]{window}  {escape(alert.alert_id)}[/]"
    )
    lines = [head]
    if alert.members:
        shown = ", ".join(alert.members[:8]) + (f" (+{len(alert.members) - 8})" if len(alert.members) > 8 else "")
        lines.append(f"    members: {escape(shown)}")
    lines += [f"    - {escape(reason.text)}" for reason in alert.reasons]
    if alert.evidence_event_ids:
        more = len(alert.evidence_event_ids) - 3
        ids = ", ".join(alert.evidence_event_ids[:3]) + (f" (+{more})" if more > 0 else "")
        lines.append(f"    [dim]evidence: {escape(ids)}[/]")
    return lines


def write_json_line(tailed: TailedAlert) -> None:
    sys.stdout.write(alert_json(tailed) + "\n")
    sys.stdout.flush()  # a follower piped into another program sees each alert at once


def summary(stats: TailStats) -> dict[str, Any]:
    return {
        "shown": stats.shown,
        "duplicates_skipped": stats.duplicates,
        "malformed_skipped": stats.malformed,
        "other_kinds_skipped": stats.other_kinds,
        "erased_skipped": stats.erased,
    }
