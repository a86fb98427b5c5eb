"""``argus alerts publish``: a night's alerts from the lake to the ``alerts.*`` topics.

The scoring step writes each detector's alerts of a night to
``LAKE/alerts/detector=X/date=D/alerts.jsonl`` (one ``argus.schemas.Alert`` per line); this step
produces them, keyed by ``alert_id`` with an idempotent producer (``argus.infra.clients.publish_alerts``),
so publishing a night again writes the same keys and a compacted topic keeps one record per alert.
A scheduler runs it as its own task after every detector has scored (the Airflow DAG's ``alerts``).

Memory stays flat however many alerts a night holds: ``check_night`` reads every file once, a line
at a time, so a broken file is refused before anything is produced, and ``night_alerts`` streams the
alerts to the producer a line at a time on a second read. Nothing holds the whole night.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

from argus.schemas.models import Alert


class PublishError(ValueError):
    """The night's alert files are missing or unreadable; the message says which and what to run."""


def alerts_file(lake: Path, detector: str, day: date) -> Path:
    return lake / "alerts" / f"detector={detector}" / f"date={day.isoformat()}" / "alerts.jsonl"


def night_files(lake: Path, day: date, detectors: list[str]) -> list[Path]:
    """Each detector's alert file of ``day``; every one must exist."""
    files = []
    for detector in detectors:
        path = alerts_file(lake, detector, day)
        if not path.is_file():
            raise PublishError(
                f"no {detector} alerts for {day} at {path}; score that night first "
                f"(`argus batch score --detector {detector} --date {day}` or `argus batch nightly --date {day}`)"
            )
        files.append(path)
    return files


def check_night(lake: Path, day: date, detectors: list[str]) -> int:
    """The number of alerts of ``day`` for ``detectors``, after reading every line of every file as an
    alert (one at a time): a missing file or a line that is not an alert raises ``PublishError``."""
    return sum(1 for _ in night_alerts(lake, day, detectors))


def night_alerts(lake: Path, day: date, detectors: list[str]) -> Iterator[Alert]:
    """Every alert of ``day`` for ``detectors``, detector by detector in file order, one line at a time."""
    for path in night_files(lake, day, detectors):
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield Alert.model_validate_json(line)
                except ValueError as exc:
                    raise PublishError(f"{path}:{number} is not an alert: {str(exc).splitlines()[0]}") from exc
