"""``argus detect``: score every user of an events file with one detector, to CSV (and alert topics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from argus.detectors.base import Detector, reasons_text, status_counts
from argus.detectors.events import Events, load_events
from argus.detectors.registry import detector_class
from argus.progress import step
from argus.schemas.models import Alert, AlertReason


def run_detect(
    name: str,
    events_path: Path,
    out: Path,
    model: Path | None = None,
    save_model: Path | None = None,
    params: dict[str, Any] | None = None,
    per: str = "user",
) -> tuple[dict[str, Any], list[Alert]]:
    """Load (or fit on the same events) the detector, score everyone, write ``out``; return summary and alerts.

    ``per="user"`` writes one row per user to ``out``; ``per`` = the detector's ``item_kind``
    ("message", "payment") writes one row per item to ``out`` and the users to ``OUT.users.csv``.
    """
    from argus.detectors.alerts import alerts_from_scores

    step(f"reading {events_path.name}")
    events = load_events(events_path)
    if events.rejected:
        rejected_out = _write_rejected(events, out)
    if events.count == 0:
        said = f"; all {len(events.rejected)} records were malformed (see {rejected_out})" if events.rejected else ""
        raise ValueError(f"{events_path}: no valid events to score{said}")
    cls = detector_class(name)
    if per != "user" and per != cls.item_kind:
        offered = f"user or {cls.item_kind}" if cls.item_kind else "user only"
        raise ValueError(f"--per {per}: the {name} detector scores {offered}")
    if name == "churn" and params and params.get("as_of"):
        _check_as_of_within(str(params["as_of"]), events)
    detector: Detector = cls.load(model) if model else cls(**(params or {}))
    if model and params and "as_of" in params:
        from argus.detectors.churn import ChurnDetector

        assert isinstance(detector, ChurnDetector)
        detector = detector.at(str(params["as_of"]))  # what was learnt, scored at another day
    step(f"features of {len(events.user_ids):,} users ({events.count:,} events)")
    features = detector.features(events)
    if model is None:
        step(f"fitting on {len(features):,} users")
        detector.fit(features)
    step(f"scoring {len(features):,} users")
    scores = detector.score(features)
    step("writing the scores")
    out.parent.mkdir(parents=True, exist_ok=True)
    users_out = out if per == "user" else out.with_suffix(".users.csv")
    table = scores.assign(reasons=scores["reasons"].map(reasons_text))
    table.to_csv(users_out, index=False, float_format="%.6f")
    items: pd.DataFrame | None = None
    if per != "user":
        items = detector.score_items(events, features)
        items.assign(reasons=items["reasons"].map(reasons_text)).to_csv(out, index=False, float_format="%.6f")
    if save_model:
        detector.save(save_model)
    start, end = _window(events)
    step(f"alerts and their evidence for {int(scores['flagged'].sum()):,} flagged users")
    alerts = alerts_from_scores(scores, detector, start, end, events=events, features=features)
    summary: dict[str, Any] = {
        "detector": name,
        "users": len(scores),
        "scored": int(scores["score"].notna().sum()),
        "flagged": int(scores["flagged"].sum()),
        "status_counts": status_counts(scores["status"]),
        "out": str(out),
        **({} if items is None else {f"{per}s": len(items), f"{per}s_flagged": int(items["flagged"].sum())}),
        **({} if per == "user" else {"users_out": str(users_out)}),
        "model_version": detector.model_version,
        "fitted": model is None,
        "rejected_events": len(events.rejected),
    }
    if events.rejected:
        summary["rejected_out"] = str(rejected_out)
    if name == "churn":
        from argus.detectors.churn import ChurnDetector

        assert isinstance(detector, ChurnDetector)
        summary.update(detector.run_summary())
        if summary.get("model") == "prior" and detector.metrics.get("why"):
            summary["model_why"] = detector.metrics["why"]
    if name == "trolls":
        raid_alerts = _raids(events, detector.model_version)
        raids_out = out.with_suffix(".raids.jsonl")
        raids_out.write_text("".join(a.model_dump_json() + "\n" for a in raid_alerts))
        summary["raids"] = len(raid_alerts)
        summary["raids_out"] = str(raids_out)
        alerts += raid_alerts
    return summary, alerts


def nothing_useful(summary: dict[str, Any]) -> str | None:
    """Why a finished run is of no use (nothing scored; churn with no horizon to learn from), or None."""
    if summary["users"] and not summary["scored"]:
        counts = ", ".join(f"{n} {status}" for status, n in summary["status_counts"].items())
        return f"nothing scored ({counts}); see the status column of {summary['out']}"
    if summary["detector"] == "churn" and summary.get("model") == "prior":
        why = summary.get("model_why") or "too few churners and stayers with an observed horizon"
        return (
            f"churn: no horizon to learn from ({why}); the scores are only the activity-rate prior."
            " Give more days of events, or a shorter --horizon"
        )
    return None


def _check_as_of_within(as_of: str, events: Events) -> None:
    """``--as-of`` must fall on a day the events cover: outside them nobody can be scored usefully."""
    times = [f["ts"] for f in events.frames.values() if len(f)]
    if not times:
        return
    first, last = (t.date() for t in (min(x.min() for x in times), max(x.max() for x in times)))
    day = pd.Timestamp(as_of).date()
    if not first <= day <= last:
        raise ValueError(
            f"--as-of {as_of} is outside the events, which run from {first} to {last}; give a day between them"
        )


def _write_rejected(events: Events, out: Path) -> Path:
    """Malformed records as dead letters (reason and original bytes) beside the scores."""
    path = out.with_suffix(".rejected.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as sink:
        for rejection in events.rejected:
            sink.write(rejection.to_dead_letter().model_dump_json().encode() + b"\n")
    return path


def _window(events: Events) -> tuple[pd.Timestamp, pd.Timestamp]:
    times = [f["ts"] for f in events.frames.values() if len(f)]
    if not times:
        now = pd.Timestamp(0, tz="UTC")
        return now, now
    joined = pd.concat(times)
    return joined.min().floor("D"), joined.max().floor("D") + pd.Timedelta(days=1)


def _raids(events: Events, model_version: str) -> list[Alert]:
    from argus.detectors.alerts import group_alert
    from argus.detectors.trolls import find_raids

    alerts = []
    for raid in find_raids(events["chat"]):
        text = f"{len(raid.members)} accounts posting the same messages at {raid.rate_vs_norm:.1f}x the window's norm"
        alerts.append(
            group_alert(
                "raids",
                f"raid:{raid.channel}:{raid.window_start:%Y%m%dT%H%M}",
                raid.members,
                1.0 - 1.0 / max(raid.rate_vs_norm, 1.0),
                [AlertReason(feature="rate_vs_norm", value=raid.rate_vs_norm, norm=1.0, text=text)],
                model_version,
                raid.window_start,
                raid.window_end,
                raid.evidence_event_ids,
            )
        )
    return alerts


def paper_mode(csv: Path, method: str, k: int, threshold: float) -> dict[str, Any]:
    """``argus trolls paper``: the paper's scores over a CSV with columns f1..f10 in that order."""
    import numpy as np

    from argus.detectors.trolls import paper_scores

    try:
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise ValueError(f"{csv}: empty file; expected a header naming f1..f10") from exc
    names = [f"f{i}" for i in range(1, 11)]
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise ValueError(
            f"{csv}: missing column {missing[0]}; the header must name f1..f10 (other columns are ignored)"
        )
    order = [c for c in frame.columns if c in names]
    if order != names:
        raise ValueError(f"{csv}: columns f1..f10 must appear in that order; found {', '.join(order)}")
    if frame.empty:
        raise ValueError(f"{csv}: no rows after the header")
    values = frame[names].apply(pd.to_numeric, errors="coerce")
    bad = values.isna() | ~np.isfinite(values.fillna(0))
    if bad.any().any():
        row, col = next((r, c) for r, c in zip(*np.nonzero(bad.to_numpy()), strict=True))
        raw = frame[names].iat[row, col]
        raise ValueError(f"{csv}: row {row + 2}, column {names[col]}: {raw!r} is not a number")
    scores = paper_scores(values.to_numpy(dtype=float), method, k)
    flagged = int((scores > threshold).sum())
    return {
        "users": len(scores),
        "flagged": flagged,
        "fraction": round(flagged / len(scores), 6),
        "threshold": threshold,
        "method": method,
    }
