"""Alerts from score frames: the contract of ``schemas.Alert``, with ids that replays reproduce."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pandas as pd

from detectors.base import Detector, Reason
from schemas.models import Alert, AlertReason

SEVERITY_FLOORS = ((0.9, "critical"), (0.75, "high"), (0.6, "medium"))


def alert_id(detector: str, subject: str, window_start: pd.Timestamp, window_end: pd.Timestamp) -> str:
    """Deterministic: the same detector, subject and event-time window give the same id on every replay."""
    key = f"{detector}|{subject}|{window_start.isoformat()}|{window_end.isoformat()}"
    return f"{detector}-{hashlib.sha256(key.encode()).hexdigest()[:24]}"


def severity(score: float) -> str:
    return next((name for floor, name in SEVERITY_FLOORS if score >= floor), "low")


def alerts_from_scores(
    scores: pd.DataFrame,
    detector: Detector,
    window_start: pd.Timestamp,
    window_end: pd.Timestamp,
    evidence: dict[str, list[str]] | None = None,
) -> list[Alert]:
    """One alert per flagged row of ``detector.score(...)``, its reasons as the alert's reasons."""
    out = []
    for row in scores[scores["flagged"]].itertuples(index=False):
        out.append(
            Alert(
                alert_id=alert_id(detector.name, str(row.user_id), window_start, window_end),
                kind=detector.alert_kind,  # type: ignore[arg-type]
                user_id=str(row.user_id),
                score=round(float(row.score), 6),
                severity=severity(float(row.score)),  # type: ignore[arg-type]
                reasons=[_reason(r) for r in row.reasons],
                model_version=detector.model_version,
                window_start=window_start.to_pydatetime(),
                window_end=window_end.to_pydatetime(),
                evidence_event_ids=(evidence or {}).get(str(row.user_id), [])[:50],
            )
        )
    return out


def group_alert(
    detector: str,
    subject: str,
    members: Iterable[str],
    score: float,
    reasons: list[AlertReason],
    model_version: str,
    window_start: pd.Timestamp,
    window_end: pd.Timestamp,
    evidence_event_ids: list[str],
) -> Alert:
    """One alert for a group (a raid): ``user_id`` names the group, ``members`` lists its accounts."""
    return Alert(
        alert_id=alert_id(detector, subject, window_start, window_end),
        kind="raid",
        user_id=subject,
        score=round(score, 6),
        severity=severity(score),  # type: ignore[arg-type]
        reasons=reasons,
        model_version=model_version,
        window_start=window_start.to_pydatetime(),
        window_end=window_end.to_pydatetime(),
        evidence_event_ids=evidence_event_ids[:50],
        members=sorted(members),
    )


def _reason(reason: Reason) -> AlertReason:
    finite = reason.value == reason.value  # NaN never equals itself
    norm = reason.norm if reason.norm is not None and reason.norm == reason.norm else None
    return AlertReason(feature=reason.feature, value=reason.value if finite else 0.0, norm=norm, text=reason.text)
