"""``argus alerts publish``: a night's alerts from the lake to the ``alerts.*`` topics.

The scoring step writes each detector's alerts of a night to
``LAKE/alerts/detector=X/date=D/alerts.jsonl`` (one ``argus.schemas.Alert`` per line); this step
produces them, keyed by ``alert_id`` with an idempotent producer (``argus.infra.clients.publish_alerts``),
so publishing a night again writes the same keys and a compacted topic keeps one record per alert.
A scheduler runs it as its own task after every detector has scored (the Airflow DAG's ``alerts``).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from argus.schemas.models import Alert


class PublishError(ValueError):
    """The night's alert files are missing or unreadable; the message says which and what to run."""


def alerts_file(lake: Path, detector: str, day: date) -> Path:
    return lake / "alerts" / f"detector={detector}" / f"date={day.isoformat()}" / "alerts.jsonl"


def night_alerts(lake: Path, day: date, detectors: list[str]) -> list[Alert]:
    """Every alert of ``day`` for ``detectors``, sorted by alert id; each detector's file must exist."""
    alerts: list[Alert] = []
    for detector in detectors:
        path = alerts_file(lake, detector, day)
        if not path.is_file():
            raise PublishError(
                f"no {detector} alerts for {day} at {path}; score that night first "
                f"(`argus batch score --detector {detector} --date {day}` or `argus batch nightly --date {day}`)"
            )
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                alerts.append(Alert.model_validate_json(line))
            except ValueError as exc:
                raise PublishError(f"{path}:{number} is not an alert: {str(exc).splitlines()[0]}") from exc
    return sorted(alerts, key=lambda a: a.alert_id)
