"""The nightly report: one self-contained HTML page about a lake date, for the people on call.

It reads what ``argus batch nightly`` leaves in the lake and draws five sections:

- **Alerts over time** per kind, over the ``days`` nights up to the date: each night's published alert
  file (``argus.jobs.alert_blocks.read_alerts``, one ``argus.schemas.Alert`` per line), or, for nights
  scored without it, the flagged rows of ``LAKE/scores/detector=X/date=D/`` (one alert each, as the
  chain raises them).
- **Behaviour map**: ``LAKE/embeddings/date=D/`` projected on its first two principal components
  (cosine geometry: rows are L2-normalised first), coloured by pHDBSCAN cluster and by risk (a
  user's highest score of the night over every detector). At most ``max_points`` users are drawn,
  a seeded sample, so the page stays light on a large lake.
- **Top reasons** per detector: the reasons of the night's alerts, counted by feature (numbers and
  ids stripped from the text where only the scores table has them).
- **Data quality**: the quality gate's results (``LAKE/_quality/date=D/results.json``), the day's
  rows per event type, the dead letters of the day by reason and the gate's outcome on earlier nights.
- **Evaluation** against a truth file (``argus generate --out`` writes ``LAKE/truth/users.parquet``):
  precision, recall and ROC AUC of each detector's scores for the night.

Plots are plotly figures with plotly.js inlined once, so the page opens offline, attached to a mail
or archived. A part the lake lacks becomes a sentence that says what to run; the report fails only
when the lake holds nothing at all for the date.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from argus.detectors.lake_tables import Lake, is_folder, is_uri, lake_location, read_file

DETECTORS = ("trolls", "evaders", "fraud", "churn")
SEVERITIES = ("low", "medium", "high", "critical")
# Churn truth: the world's churn date within this many days after the night (the detector's default horizon).
CHURN_HORIZON_DAYS = 14
TOP_REASONS = 8
KIND_COLOURS = {"troll": "#d62728", "evader": "#9467bd", "fraud": "#ff7f0e", "churn": "#1f77b4", "raid": "#8c564b"}


class ReportError(ValueError):
    """The report cannot be written; the message names the option and what to do."""


@dataclass
class Section:
    """One part of the page: its figures and tables as HTML, or the sentence that says why it is empty."""

    key: str
    title: str
    body: str = ""
    missing: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class ReportSummary:
    out: Path
    day: str
    sections: dict[str, str]  # section key -> "ok" or the sentence saying what is missing
    alerts: dict[str, int]  # alerts of the night per kind

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "date": self.day, "sections": self.sections, "alerts": self.alerts}


def write_report(
    lake: Lake,
    day: date,
    out: Path,
    truth: Path | None = None,
    days: int = 30,
    max_points: int = 5_000,
) -> ReportSummary:
    """Write the report for ``day`` to ``out``; ``ReportError`` when the lake has nothing for that date."""
    lake = lake_location(lake)
    if not is_folder(lake, ""):
        raise ReportError(f"--lake {lake} is not a folder; point it at the lake `argus batch nightly` writes")
    truth_file = _truth_file(lake, truth)
    scores = load_scores(lake, day, days)
    alerts = load_alerts(lake, day, days, scores)
    tonight_scores = scores[scores["date"] == day.isoformat()] if len(scores) else scores
    sections = [
        alerts_section(alerts, day, days),
        embedding_section(lake, day, tonight_scores, max_points),
        reasons_section(alerts[alerts["date"] == day.isoformat()] if len(alerts) else alerts),
        quality_section(lake, day, days),
        evaluation_section(tonight_scores, truth_file, day),
    ]
    if all(s.missing for s in sections[:4]):
        raise ReportError(
            f"{lake} has no nightly outputs for {day} (no alerts, scores, embeddings or quality results); "
            f"run `argus batch nightly --date {day} --lake {lake}` first, or check --date"
        )
    page = render_page(lake, day, sections)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial")
    staging.write_text(page, encoding="utf-8")
    staging.replace(out)
    tonight = alerts[alerts["date"] == day.isoformat()] if len(alerts) else alerts
    per_kind = {str(k): int(n) for k, n in tonight.groupby("kind").size().items()} if len(tonight) else {}
    return ReportSummary(out, day.isoformat(), {s.key: s.missing or "ok" for s in sections}, per_kind)


# --- reading the lake ---------------------------------------------------------------------


def _dates(day: date, days: int) -> list[str]:
    return [(day - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]


def load_scores(lake: Lake, day: date, days: int) -> pd.DataFrame:
    """Every detector's scores for the ``days`` nights up to ``day``: detector, date and the score columns
    (the versions the lake's newest manifest publishes)."""
    from argus.jobs.lake import read_pandas

    frames = []
    for detector in DETECTORS:
        for night in _dates(day, days):
            columns = ["user_id", "score", "flagged", "status", "reasons"]
            frame = read_pandas(lake, f"scores/detector={detector}", date.fromisoformat(night), columns=columns)
            if frame is not None:
                frames.append(frame.assign(detector=detector, date=night))
    if not frames:
        return pd.DataFrame(columns=["user_id", "score", "flagged", "status", "reasons", "detector", "date"])
    return pd.concat(frames, ignore_index=True)


def alert_kinds() -> dict[str, str]:
    """Detector name -> the kind of its alerts (``alerts.<kind>`` topics)."""
    from argus.detectors.registry import detector_class

    return {name: detector_class(name).alert_kind for name in DETECTORS}


def load_alerts(lake: Lake, day: date, days: int, scores: pd.DataFrame) -> pd.DataFrame:
    """One row per alert of the ``days`` nights up to ``day``: date, detector, kind, user_id, score,
    severity, reasons (a list of (feature label, text) pairs), source (``alerts`` or ``scores``)."""
    from argus.detectors.alerts import severity
    from argus.jobs.alert_blocks import alerts_file, read_alerts
    from argus.jobs.lake import latest_manifest

    kinds = alert_kinds()
    rows: list[dict[str, Any]] = []
    from_files: set[tuple[str, str]] = set()
    manifest = latest_manifest(lake)
    for detector in DETECTORS:
        for night in _dates(day, days):
            if alerts_file(lake, detector, date.fromisoformat(night), manifest) is None:
                continue  # no alert file for the night: its flagged scores stand in below
            from_files.add((detector, night))
            for alert in read_alerts(lake, [(detector, date.fromisoformat(night))], manifest):
                rows.append(
                    {
                        "date": night,
                        "detector": detector,
                        "kind": alert.kind,
                        "user_id": alert.user_id,
                        "score": alert.score,
                        "severity": alert.severity,
                        "reasons": [(_feature_label(r.feature, r.text), r.text) for r in alert.reasons],
                        "source": "alerts",
                    }
                )
    if len(scores):
        flagged = scores[scores["flagged"].astype(bool)]
        for row in flagged.itertuples(index=False):
            if (row.detector, row.date) in from_files:
                continue
            texts = [t.strip() for t in str(row.reasons or "").split("; ") if t.strip()]
            rows.append(
                {
                    "date": row.date,
                    "detector": row.detector,
                    "kind": kinds[str(row.detector)],
                    "user_id": row.user_id,
                    "score": float(row.score),
                    "severity": severity(float(row.score)),
                    "reasons": [(_feature_label(None, t), t) for t in texts],
                    "source": "scores",
                }
            )
    columns = ["date", "detector", "kind", "user_id", "score", "severity", "reasons", "source"]
    return pd.DataFrame(rows, columns=columns)


_PARENTHESISED_NUMBER = re.compile(r"\s*\([^()]*\d[^()]*\)")
_IDENTIFIER = re.compile(r"\b(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{6,}\b")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?(?![\w])")


def _feature_label(feature: str | None, text: str) -> str:
    """A reason's label for counting: its text without the user's own numbers and ids.

    ``spam ratio 0.273 (norm 0)`` -> ``spam ratio``; ``closest banned account: u0000046`` ->
    ``closest banned account: …``. The feature name alone is used when the text has nothing else.
    """
    label = _PARENTHESISED_NUMBER.sub("", text)
    label = _IDENTIFIER.sub("…", label)
    label = _NUMBER.sub("N", label)
    label = re.sub(r"(\s+N)+$", "", label)  # the trailing value: "spam ratio N" -> "spam ratio"
    label = re.sub(r"\s+", " ", label).strip(" ;:")
    return label or (feature or "unnamed reason")


def _truth_file(lake: Lake, truth: Path | None) -> Path | None:
    """``--truth`` as users.parquet (given a world or truth folder, the file inside it); else a local lake's own."""
    if truth is None:
        own = None if is_uri(lake) else Path(lake) / "truth" / "users.parquet"
        return own if own is not None and own.is_file() else None
    for candidate in (truth, truth / "users.parquet", truth / "truth" / "users.parquet"):
        if candidate.is_file():
            return candidate
    raise ReportError(
        f"--truth {truth}: no truth file there; give the users.parquet, or the folder `argus generate --out` wrote"
    )


# --- sections -----------------------------------------------------------------------------


def alerts_section(alerts: pd.DataFrame, day: date, days: int) -> Section:
    import plotly.graph_objects as go

    section = Section("alerts", "Alerts over time")
    if alerts.empty:
        section.missing = (
            f"No alerts or scores in the lake for the {days} nights up to {day}: "
            f"run `argus batch nightly --date {day}` (its scores and alerts land in LAKE/scores and LAKE/alerts)."
        )
        return section
    nights = _dates(day, days)
    first = min(alerts["date"])
    nights = [n for n in nights if n >= first]
    counts = alerts.groupby(["date", "kind"]).size().unstack(fill_value=0).reindex(nights, fill_value=0)
    fig = go.Figure()
    for kind in counts.columns:
        fig.add_bar(x=counts.index, y=counts[kind], name=str(kind), marker_color=KIND_COLOURS.get(str(kind)))
    fig.update_layout(
        barmode="stack",
        xaxis_title="night",
        yaxis_title="alerts",
        legend_title="kind",
        height=380,
        margin={"t": 30, "b": 40, "l": 60, "r": 20},
    )
    tonight = alerts[alerts["date"] == day.isoformat()]
    table = (
        tonight.groupby(["kind", "severity"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=list(SEVERITIES), fill_value=0)
        if len(tonight)
        else pd.DataFrame()
    )
    section.body = _figure(fig, "fig-alerts")
    if table.empty:
        section.notes.append(f"No alerts on {day} itself.")
    else:
        table["total"] = table.sum(axis=1)
        section.body += f"<h3>Alerts on {day} by severity</h3>" + _table(table.reset_index())
    if (alerts["source"] == "scores").any():
        section.notes.append(
            "Nights without LAKE/alerts files are counted from the flagged rows of their scores (one alert each)."
        )
    return section


def embedding_section(lake: Lake, day: date, scores: pd.DataFrame, max_points: int) -> Section:
    from argus.jobs.lake import published_dates, read_pandas

    section = Section("embeddings", "Behaviour map")
    embedded = read_pandas(lake, "embeddings", day, columns=["user_id", "embedding"])
    if embedded is None:
        earlier = published_dates(lake, "embeddings")
        hint = f" (the latest in the lake is {earlier[-1]})" if earlier else ""
        section.missing = (
            f"No behaviour embeddings for {day}{hint}: run `argus batch embed --date {day}` "
            "or the nightly chain to draw the map."
        )
        return section
    frame = embedded.sort_values("user_id", ignore_index=True)
    if len(frame) < 3:
        section.missing = f"Only {len(frame)} users have an embedding on {day}; the map needs at least 3."
        return section
    sampled = len(frame) > max_points
    if sampled:
        frame = frame.sample(n=max_points, random_state=0).sort_values("user_id", ignore_index=True)
    vectors = np.vstack(frame["embedding"].to_numpy()).astype(np.float32)
    points, explained = project_2d(vectors)
    clusters = cluster_labels(vectors)
    risk, flagged_by = _risk(frame["user_id"], scores)
    section.body = _figure(
        _embedding_figure(frame["user_id"], points, explained, clusters, risk, flagged_by), "fig-map"
    )
    found = len(set(clusters.tolist()) - {-1})
    section.notes.append(
        f"{len(frame):,} users{' (a seeded sample)' if sampled else ''}; {found} clusters found by pHDBSCAN on "
        f"the normalised embeddings, {int((clusters == -1).sum()):,} users in none (grey). Risk is a user's highest "
        "score of the night over every detector; users no detector scored are drawn at 0."
    )
    return section


def project_2d(vectors: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """The first two principal components of the L2-normalised rows, and the share of variance of each."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    centred = unit - unit.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T
    total = float((singular**2).sum()) or 1.0
    share = [*(singular[:2] ** 2 / total).tolist(), 0.0, 0.0]
    if points.shape[1] < 2:
        points = np.hstack([points, np.zeros((len(points), 2 - points.shape[1]))])
    return points, (share[0], share[1])


def cluster_labels(vectors: np.ndarray) -> np.ndarray:
    """pHDBSCAN clusters of the L2-normalised rows (-1: in no cluster)."""
    from argus.detectors.cluster import PHDBSCAN

    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    if len(unit) < 10:
        return np.full(len(unit), -1)
    size = max(5, len(unit) // 50)
    return np.asarray(PHDBSCAN(min_cluster_size=size, min_samples=5).fit_predict(unit))


def _risk(users: pd.Series, scores: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    if scores.empty:
        return np.zeros(len(users)), ["" for _ in users]
    best = scores.groupby("user_id")["score"].max()
    flagged = scores[scores["flagged"].astype(bool)].groupby("user_id")["detector"].agg(lambda d: ", ".join(sorted(d)))
    risk = users.map(best).fillna(0.0).to_numpy(dtype=float)
    return risk, users.map(flagged).fillna("").tolist()


def _embedding_figure(
    users: pd.Series,
    points: np.ndarray,
    explained: tuple[float, float],
    clusters: np.ndarray,
    risk: np.ndarray,
    flagged_by: list[str],
) -> Any:
    import plotly.colors
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("by cluster", "by risk"), horizontal_spacing=0.08)
    hover = [
        f"{u}<br>cluster {c if c >= 0 else 'none'}<br>risk {r:.2f}" + (f"<br>flagged by {f}" if f else "")
        for u, c, r, f in zip(users, clusters, risk, flagged_by, strict=True)
    ]
    hover_array = np.array(hover, dtype=object)
    palette = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.D3
    # go.Scatter (SVG), not Scattergl: prints, screenshots and browsers without WebGL draw it too.
    for label in sorted(set(clusters.tolist())):
        members = clusters == label
        colour = "#c7c7c7" if label == -1 else palette[label % len(palette)]
        fig.add_trace(
            go.Scatter(
                x=points[members, 0],
                y=points[members, 1],
                mode="markers",
                name="no cluster" if label == -1 else f"cluster {label}",
                marker={"size": 6, "color": colour, "opacity": 0.8},
                text=hover_array[members],
                hoverinfo="text",
                legendgroup="clusters",
            ),
            row=1,
            col=1,
        )
    order = np.argsort(risk, kind="stable")  # risky users drawn last, on top
    fig.add_trace(
        go.Scatter(
            x=points[order, 0],
            y=points[order, 1],
            mode="markers",
            name="risk",
            showlegend=False,
            marker={
                "size": 6,
                "color": risk[order],
                "colorscale": "YlOrRd",
                "cmin": 0,
                "cmax": 1,
                "colorbar": {"title": {"text": "risk"}, "x": 1.02},
                "line": {"width": 0.3, "color": "#555"},
            },
            text=hover_array[order],
            hoverinfo="text",
        ),
        row=1,
        col=2,
    )
    for col in (1, 2):
        fig.update_xaxes(title_text=f"PC1 ({explained[0]:.0%} of variance)", row=1, col=col)
        fig.update_yaxes(title_text=f"PC2 ({explained[1]:.0%})", row=1, col=col)
    fig.update_layout(height=520, margin={"t": 40, "b": 50, "l": 60, "r": 20}, legend={"x": 1.1})
    return fig


def reasons_section(tonight: pd.DataFrame) -> Section:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    section = Section("reasons", "Top reasons per detector")
    if tonight.empty:
        section.missing = "No alerts tonight, so no reasons to count."
        return section
    kinds = [k for k in dict.fromkeys(tonight["kind"])]
    fig = make_subplots(rows=len(kinds), cols=1, subplot_titles=kinds, vertical_spacing=0.35 / max(len(kinds), 1))
    for row, kind in enumerate(kinds, start=1):
        alerts = tonight[tonight["kind"] == kind]
        counted: Counter[str] = Counter()
        for reasons in alerts["reasons"]:
            counted.update({label for label, _ in reasons})  # once per alert
        top = counted.most_common(TOP_REASONS)[::-1]
        fig.add_trace(
            go.Bar(
                x=[n for _, n in top],
                y=[_shorten(label) for label, _ in top],
                orientation="h",
                marker_color=KIND_COLOURS.get(kind),
                name=kind,
                showlegend=False,
                hovertext=[f"{label}: {n} of {len(alerts)} alerts" for label, n in top],
                hoverinfo="text",
            ),
            row=row,
            col=1,
        )
        fig.update_xaxes(title_text=f"alerts citing it (of {len(alerts)})", row=row, col=1)
        if not top:
            section.notes.append(f"The {kind} alerts carry no reasons.")
    fig.update_layout(height=260 * len(kinds) + 60, margin={"t": 40, "b": 40, "l": 20, "r": 20})
    fig.update_yaxes(automargin=True)
    section.body = _figure(fig, "fig-reasons")
    section.notes.append("Each reason is counted once per alert; the user's own values and ids are left out.")
    return section


def _shorten(label: str, width: int = 70) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def quality_section(lake: Lake, day: date, days: int) -> Section:
    import plotly.graph_objects as go

    section = Section("quality", "Data quality")
    raw = read_file(lake, _gate_results(day.isoformat()))
    dead = _dead_letters(lake, day)
    history = _gate_history(lake, day, days)
    if raw is None:
        section.missing = (
            f"No quality-gate results for {day}: run `argus batch quality --date {day}` (or the nightly chain)."
        )
        if dead is not None and len(dead):
            section.body = f"<h3>Dead letters rejected on {day}</h3>" + _table(dead)
        return section
    results = json.loads(raw)
    checks = []
    for event_type, suite in results.get("suites", {}).items():
        for result in suite.get("results", []):
            checks.append({"event_type": event_type, "passed": bool(result.get("success")), "check": _describe(result)})
    table = pd.DataFrame(checks, columns=["event_type", "passed", "check"])
    verdict = "passed" if results.get("passed") else "FAILED"
    body = f'<p class="verdict {verdict.lower()}">Quality gate {verdict} for {day}.</p>'
    if len(table):
        per_type = table.groupby("event_type")["passed"].agg(passed="sum", total="count")
        per_type["failed"] = per_type["total"] - per_type["passed"]
        fig = go.Figure()
        fig.add_bar(y=per_type.index, x=per_type["passed"], name="passed", orientation="h", marker_color="#2ca02c")
        fig.add_bar(y=per_type.index, x=per_type["failed"], name="failed", orientation="h", marker_color="#d62728")
        fig.update_layout(
            barmode="stack",
            xaxis_title="checks",
            height=120 + 40 * len(per_type),
            margin={"t": 20, "b": 40, "l": 100, "r": 20},
        )
        body += _figure(fig, "fig-quality")
        rows = rows_per_event_type(lake, day)
        overview = per_type.reset_index()[["event_type", "passed", "failed"]]
        overview.insert(1, "rows", overview["event_type"].map(rows).fillna(0).astype(int))
        body += f"<h3>Checks per event type on {day}</h3>" + _table(overview)
        failed = table[~table["passed"]]
        if len(failed):
            body += "<h3>Failed checks</h3>" + _table(failed[["event_type", "check"]])
    if dead is not None:
        body += f"<h3>Dead letters rejected on {day}</h3>" + (
            _table(dead) if len(dead) else "<p>None: every record ingested that day was valid.</p>"
        )
    if len(history) > 1:
        body += "<h3>The gate on earlier nights</h3>" + _table(history)
    section.body = body
    return section


def _describe(result: dict[str, Any]) -> str:
    """One line for a great-expectations result (as ``jobs/quality.py`` stores them)."""
    config = result.get("expectation_config", {})
    kwargs = config.get("kwargs", {})
    detail = result.get("result") or {}
    parts = [str(config.get("type", "check")).removeprefix("expect_")]
    if kwargs.get("column"):
        parts.append(f"column={kwargs['column']}")
    error = (result.get("exception_info") or {}).get("exception_message")
    if error:
        parts.append(f"could not run: {error}")
    elif detail.get("unexpected_count"):
        parts.append(f"unexpected={detail['unexpected_count']}")
    elif not result.get("success") and detail.get("observed_value") is not None:
        parts.append(f"observed={detail['observed_value']}")
    return " ".join(parts)


def rows_per_event_type(lake: Lake, day: date) -> dict[str, int]:
    """Rows per event type on ``day``: the ingested Delta tables plus files landed by import or generate."""
    import pyarrow.parquet as pq

    from argus.jobs import lake as tables

    rows: Counter[str] = Counter()
    fs, root = tables.lake_filesystem(lake)
    for name in tables.list_folders(lake, "events"):
        folder = f"events/{name}/date={day.isoformat()}"
        for file in tables.list_files(lake, folder, ".parquet"):
            with fs.open_input_file(f"{root}/{folder}/{file}") as data:
                rows[name.removeprefix("event_type=")] += pq.ParquetFile(data).metadata.num_rows
    for name in tables.list_folders(lake, tables.INGESTED_EVENTS):
        event_type = name.removeprefix("event_type=")
        ingested = tables.read_pandas(lake, tables.events_table(event_type), day, columns=["event_id"])
        rows[event_type] += 0 if ingested is None else len(ingested)
    return dict(rows)


def _dead_letters(lake: Lake, day: date) -> pd.DataFrame | None:
    """Dead letters rejected on ``day`` by reason; None when the lake has no dead-letter table (no ingest)."""
    from argus.jobs import lake as tables

    if not is_folder(lake, tables.DEAD_LETTER):
        return None
    codes = tables.read_pandas(lake, tables.DEAD_LETTER, day, columns=["reason_code"])
    if codes is None or not len(codes):
        return pd.DataFrame(columns=["reason_code", "records"])
    return codes["reason_code"].value_counts().rename_axis("reason_code").reset_index(name="records")


def _gate_results(night: str) -> str:
    return f"_quality/date={night}/results.json"


def _gate_history(lake: Lake, day: date, days: int) -> pd.DataFrame:
    rows = []
    for night in _dates(day, days):
        raw = read_file(lake, _gate_results(night))
        if raw is not None:
            passed = json.loads(raw).get("passed")
            rows.append({"date": night, "gate": "passed" if passed else "FAILED"})
    return pd.DataFrame(rows, columns=["date", "gate"])


def truth_labels(truth: pd.DataFrame, detector: str, day: date) -> pd.Series:
    """Who the world says is positive for ``detector`` as of ``day`` (indexed by user_id).

    trolls: ``is_troll``; evaders: ``is_evader``; fraud: a member of a fraud ring; churn: the world's
    churn date within ``CHURN_HORIZON_DAYS`` days after the night.
    """
    if detector == "trolls":
        labels = truth["is_troll"]
    elif detector == "evaders":
        labels = truth["is_evader"]
    elif detector == "fraud":
        labels = truth["fraud_ring"].notna()
    elif detector == "churn":
        end = pd.Timestamp(day + timedelta(days=1 + CHURN_HORIZON_DAYS), tz="UTC")
        labels = pd.to_datetime(truth["churn_ts"], utc=True) < end
    else:
        raise KeyError(f"unknown detector {detector!r}")
    return labels.fillna(False).astype(bool)


def evaluate_night(scores: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per detector: users scored, positives among them, alerts, true positives, precision, recall, ROC AUC."""
    from sklearn.metrics import roc_auc_score

    rows = []
    for detector, group in scores.groupby("detector", sort=False):
        day = date.fromisoformat(str(group["date"].iloc[0]))
        labels = truth_labels(truth, str(detector), day).reindex(group["user_id"]).fillna(False).to_numpy(dtype=bool)
        flagged = group["flagged"].astype(bool).to_numpy()
        score = np.nan_to_num(group["score"].to_numpy(dtype=float), nan=0.0)
        hits = int((flagged & labels).sum())
        auc = float(roc_auc_score(labels, score)) if 0 < labels.sum() < len(labels) else None
        rows.append(
            {
                "detector": detector,
                "users": len(group),
                "positives": int(labels.sum()),
                "alerts": int(flagged.sum()),
                "true_positives": hits,
                "precision": hits / flagged.sum() if flagged.any() else None,
                "recall": hits / labels.sum() if labels.any() else None,
                "roc_auc": auc,
            }
        )
    return pd.DataFrame(rows)


def evaluation_section(scores: pd.DataFrame, truth_file: Path | None, day: date) -> Section:
    import plotly.graph_objects as go

    section = Section("evaluation", "Evaluation against the truth")
    if truth_file is None:
        section.missing = (
            "No truth file: give --truth (the users.parquet that `argus generate --out` writes under truth/) "
            "to see precision and recall; a production lake has none."
        )
        return section
    if scores.empty:
        section.missing = f"No scores for {day} to evaluate against {truth_file}."
        return section
    truth = pd.read_parquet(truth_file).set_index("user_id")
    table = evaluate_night(scores, truth)
    fig = go.Figure()
    for metric, colour in (("precision", "#1f77b4"), ("recall", "#ff7f0e"), ("roc_auc", "#2ca02c")):
        values = table[metric].astype(float)
        fig.add_bar(
            x=table["detector"],
            y=values.fillna(0.0),
            name=metric.replace("_", " "),
            marker_color=colour,
            text=[f"{v:.2f}" if pd.notna(v) else "n/a" for v in values],
            textposition="outside",
        )
    fig.update_layout(
        barmode="group",
        yaxis={"range": [0, 1.12], "title": "against the truth"},
        height=380,
        margin={"t": 20, "b": 40, "l": 60, "r": 20},
    )
    section.body = _figure(fig, "fig-evaluation") + _table(table, floats="{:.3f}")
    section.notes.append(
        f"Truth from {truth_file}: trolls = is_troll, evaders = is_evader, fraud = a fraud-ring member, churn = "
        f"the world's churn date within {CHURN_HORIZON_DAYS} days after {day}. Every user each detector scored that "
        "night counts, including those it could score only on low evidence, so the figures differ from `argus eval`, "
        "which judges a larger world over its whole span."
    )
    return section


# --- the page -------------------------------------------------------------------------------


def _figure(fig: Any, div_id: str) -> str:
    html_div: str = fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False, "responsive": True}
    )
    return f'<div class="figure">{html_div}</div>'


def _table(frame: pd.DataFrame, floats: str = "{:.3g}") -> str:
    def cell(value: object) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "n/a"
        if isinstance(value, float):
            return floats.format(value)
        if isinstance(value, (int, np.integer)):
            return f"{int(value):,}"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 24px 48px; color: #222; }
header { border-bottom: 2px solid #444; margin-bottom: 8px; }
h1 { margin: 24px 0 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ccc; } h3 { font-size: 1em; }
.meta { color: #555; margin: 0 0 12px; }
nav a { margin-right: 14px; }
.missing { background: #fff6e0; border-left: 4px solid #e0a000; padding: 8px 12px; }
.note { color: #555; font-size: 0.92em; }
.verdict.passed { color: #1a7f1a; font-weight: bold; } .verdict.failed { color: #c00; font-weight: bold; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; }
td:not(:first-child) { font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
"""


def render_page(lake: Lake, day: date, sections: list[Section]) -> str:
    from plotly.offline import get_plotlyjs

    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    where = str(lake if is_uri(lake) else Path(lake).resolve())
    nav = " ".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    parts = []
    for s in sections:
        parts.append(f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>')
        if s.missing:
            parts.append(f'<p class="missing">{html.escape(s.missing)}</p>')
        parts.append(s.body)
        parts += [f'<p class="note">{html.escape(n)}</p>' for n in s.notes]
        parts.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Argus nightly report {day}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f"<header><h1>Argus nightly report: {day}</h1>"
        f'<p class="meta">lake {html.escape(where)} · generated {generated}</p>'
        f"<nav>{nav}</nav></header>" + "\n".join(parts) + "</body></html>\n"
    )
