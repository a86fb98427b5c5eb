"""Alerts from score frames: the contract of ``argus.schemas.Alert``, with ids that replays reproduce.

Every alert cites the events an investigator should open first (``evidence_event_ids``), most
telling first (``evidence_ids``): for detectors that score items (troll messages, fraud payments)
the user's items that drove the score, highest item score first; for ban evaders the new account's
own account events, the matched banned account's ban, then the new account's first actions; for
churn the user's last events before the silence, newest first. Each list is topped up with the
user's latest events so that no flagged user's alert is without evidence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pandas as pd

from argus.detectors.base import Detector, Reason
from argus.detectors.events import Events
from argus.schemas.models import Alert, AlertReason

SEVERITY_FLOORS = ((0.9, "critical"), (0.75, "high"), (0.6, "medium"))
EVIDENCE_LIMIT = 20  # event ids per alert: enough to investigate, small enough for a Kafka record


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
    events: Events | None = None,
    features: pd.DataFrame | None = None,
    model_version: str | None = None,
) -> list[Alert]:
    """One alert per flagged row of ``detector.score(...)``, its reasons as the alert's reasons.

    Evidence ids come from ``evidence`` (user -> event ids) when given, else are found in ``events``
    (with the ``features`` the scores came from) by ``evidence_ids``. ``model_version``: the
    detector's, when the caller already has it (computing it hashes the whole model).
    """
    if evidence is None and events is not None:
        evidence = evidence_ids(detector, events, features, scores)
    out = []
    flagged = scores[scores["flagged"]]
    version = (model_version or detector.model_version) if len(flagged) else ""  # a hash: once per call
    start, end = window_start.to_pydatetime(), window_end.to_pydatetime()
    # Columns zipped, not itertuples (which builds a namedtuple class per call: a streaming cost).
    for user_id, score, reasons in zip(flagged["user_id"], flagged["score"], flagged["reasons"], strict=True):
        out.append(
            Alert(
                alert_id=alert_id(detector.name, str(user_id), window_start, window_end),
                kind=detector.alert_kind,  # type: ignore[arg-type]
                user_id=str(user_id),
                score=round(float(score), 6),
                severity=severity(float(score)),  # type: ignore[arg-type]
                reasons=[_reason(r) for r in reasons],
                model_version=version,
                window_start=start,
                window_end=end,
                evidence_event_ids=(evidence or {}).get(str(user_id), [])[:EVIDENCE_LIMIT],
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


def evidence_ids(
    detector: Detector,
    events: Events,
    features: pd.DataFrame | None,
    scores: pd.DataFrame,
    limit: int = EVIDENCE_LIMIT,
) -> dict[str, list[str]]:
    """Per flagged user of ``scores``, up to ``limit`` event ids, most telling first (see the module doc)."""
    flagged = pd.Index(scores.loc[scores["flagged"].astype(bool), "user_id"].astype(str).unique())
    if flagged.empty:
        return {}
    timeline = _timeline(events, flagged, _until(detector))
    first: dict[str, list[str]] = {}
    if detector.item_kind is not None and features is not None:
        first = _top_items(detector, events, features, flagged)
    if detector.name == "fraud" and features is not None and "evidence" in features.columns:
        # Declines, the largest payments, and for an account that only receives, the transfers it got.
        extra = features["evidence"].reindex(flagged).fillna("")
        first = {u: [*first.get(u, []), *str(extra[u]).split()] for u in flagged}
    if detector.name == "evaders":
        first = _evader_evidence(detector, events, features, flagged, timeline)
    newest = timeline.sort_values(["ts", "event_id"], ascending=False, kind="stable")
    if detector.name == "churn":
        # The user's own last actions, not what others did about them (reports, bans).
        own = newest[(newest["event_type"] != "moderation") & ~newest["action"].isin(["ban", "unban"])]
        first = {str(u): list(ids) for u, ids in own.groupby("user_id", sort=False)["event_id"].agg(list).items()}
    latest = newest.groupby("user_id", sort=False)["event_id"].agg(list)
    out: dict[str, list[str]] = {}
    for user in flagged:
        ids = list(dict.fromkeys([*first.get(user, []), *latest.get(user, [])]))  # in order, once each
        out[user] = ids[:limit]
    return out


def _until(detector: Detector) -> pd.Timestamp | None:
    """The end of the data a detector looked at (churn scores ``as_of``; later events are not its evidence)."""
    as_of = detector.params.get("as_of")
    return pd.Timestamp(as_of, tz="UTC") + pd.Timedelta(days=1) if as_of else None


def _timeline(events: Events, users: pd.Index, until: pd.Timestamp | None) -> pd.DataFrame:
    """``event_id, user_id, ts, event_type, action`` of the users' events (before ``until``)."""
    parts = []
    for event_type, frame in events.frames.items():
        if frame.empty:
            continue
        mine = frame[frame["user_id"].astype(str).isin(users)]
        if until is not None:
            mine = mine[mine["ts"] < until]
        action = mine["action"].astype(str) if "action" in mine.columns else pd.Series("", index=mine.index)
        parts.append(
            pd.DataFrame(
                {
                    "event_id": mine["event_id"].astype(str),
                    "user_id": mine["user_id"].astype(str),
                    "ts": mine["ts"],
                    "event_type": event_type,
                    "action": action,
                }
            )
        )
    if not parts:
        return pd.DataFrame(columns=["event_id", "user_id", "ts", "event_type", "action"])
    return pd.concat(parts, ignore_index=True)


def _top_items(detector: Detector, events: Events, features: pd.DataFrame, users: pd.Index) -> dict[str, list[str]]:
    """The users' scored items (messages, payments), flagged ones first, then by item score."""
    items = detector.score_items(events, features)
    items = items[items["user_id"].astype(str).isin(users) & items["score"].notna()]
    ranked = items.sort_values(["flagged", "score", "event_id"], ascending=[False, False, True], kind="stable")
    grouped: pd.Series = ranked.groupby(ranked["user_id"].astype(str), sort=False)["event_id"].agg(list)
    return {str(u): [str(e) for e in ids] for u, ids in grouped.items()}


def _evader_evidence(
    detector: Detector, events: Events, features: pd.DataFrame | None, users: pd.Index, timeline: pd.DataFrame
) -> dict[str, list[str]]:
    """A new account's account events (sign-up, renames), its matched parent's ban, then its first actions."""
    parents: dict[str, str] = {}
    if features is not None and hasattr(detector, "match"):
        matches = detector.match(features, children=users)  # the flagged accounts' pairs only
        best = matches[(matches["rank"] == 1) & matches["child"].astype(str).isin(users)]
        parents = dict(zip(best["child"].astype(str), best["parent"].astype(str), strict=True))
    bans = _bans(events, set(parents.values()))
    oldest = timeline.sort_values(["ts", "event_id"], kind="stable")
    own_account = oldest[oldest["event_type"] == "account"].groupby("user_id")["event_id"].agg(list)
    first_actions = oldest[oldest["event_type"] != "account"].groupby("user_id")["event_id"].agg(list)
    return {
        user: [*own_account.get(user, []), *bans.get(parents.get(user, ""), []), *first_actions.get(user, [])]
        for user in users
    }


def _bans(events: Events, users: set[str]) -> dict[str, list[str]]:
    """Per user, the ban events about them: the account's ``ban`` and moderators' ``ban`` actions."""
    found: dict[str, list[str]] = {}
    for event_type in ("account", "moderation"):
        frame = events[event_type]
        if frame.empty:
            continue
        hits = frame[(frame["action"] == "ban") & frame["user_id"].astype(str).isin(users)]
        for user, event_id in zip(hits["user_id"].astype(str), hits["event_id"].astype(str), strict=True):
            found.setdefault(user, []).append(event_id)
    return found
