"""The nightly HTML report: built from a lake the nightly jobs wrote, rendered by headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from argus.jobs.alert_blocks import read_alerts
from argus.jobs.lake import read_pandas
from argus.report import ReportError, _feature_label, evaluate_night, truth_labels, write_report
from argus.world.config import WorldConfig
from argus.world.simulate import World
from argus.world.sinks import write_world
from tests.alert_files import publish_alert_file
from tests.cli_run import run_argus

DAY = date(2026, 10, 3)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (infra/prerequisites.sh installs Debian's chromium)"
)


def _score_nights(lake: Path, world: World, nights: list[date]) -> None:
    """What the nightly scoring step writes: each detector's scores per night and the last night's alerts."""
    from argus.detectors.alerts import alerts_from_scores
    from argus.detectors.base import reasons_text
    from argus.detectors.events import Events
    from argus.detectors.registry import detector_class
    from argus.evals.common import world_events
    from argus.jobs.lake import commit_manifest, write_date_pandas

    events = world_events(world)
    for night in nights:
        end = pd.Timestamp(night + timedelta(days=1), tz="UTC")
        upto = Events.from_frames({t: f[f["ts"] < end] for t, f in events.frames.items()})
        for name in ("trolls", "evaders", "fraud", "churn"):
            detector = detector_class(name)()
            features = detector.features(upto)
            scores = detector.fit(features).score(features)
            table = f"scores/detector={name}"
            frame = scores.assign(reasons=scores["reasons"].map(reasons_text))
            commit_manifest(lake, {table: write_date_pandas(frame, lake, table, night)}, f"scores-{name}-{night}")
            if night == nights[-1]:
                alerts = alerts_from_scores(scores, detector, end - pd.Timedelta(days=3), end)
                publish_alert_file(lake, name, night, [a.model_dump_json() for a in alerts])


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, spark: object) -> Path:
    """A small world's lake after the nightly jobs: quality results, embeddings, scores, alerts, truth."""
    from argus.jobs.embed import run_embed
    from argus.jobs.quality import run_quality

    root = tmp_path_factory.mktemp("report-lake")
    world = World(
        WorldConfig(users=160, days=3, seed=21, events_per_user_day=20.0, troll_fraction=0.12, profile="dense")
    )
    write_world(world, root)
    run_quality(spark, root, DAY)  # type: ignore[arg-type]
    run_embed(spark, root, DAY, days=3, dim=8)  # type: ignore[arg-type]
    _score_nights(root, world, [DAY - timedelta(days=1), DAY])
    return root


def test_report_from_a_nightly_lake(lake: Path, tmp_path: Path) -> None:
    out = tmp_path / "night" / "report.html"
    summary = write_report(lake, DAY, out)
    assert summary.sections == dict.fromkeys(["alerts", "embeddings", "reasons", "quality", "evaluation"], "ok")
    # The night's alerts per kind are the published alert files' lines, as the chain wrote them.
    expected: dict[str, int] = {}
    for alert in read_alerts(lake, [(name, DAY) for name in ("trolls", "evaders", "fraud", "churn")]):
        expected[alert.kind] = expected.get(alert.kind, 0) + 1
    assert summary.alerts == expected and sum(expected.values()) > 0
    page = out.read_text()
    for div in ("fig-alerts", "fig-map", "fig-reasons", "fig-quality", "fig-evaluation"):
        assert f'id="{div}"' in page
    assert "<script src=" not in page  # self-contained: plotly.js is inlined
    assert "Quality gate passed" in page
    assert not list(out.parent.glob(".*partial"))


def test_a_uri_lake_gives_the_same_report(lake: Path, tmp_path: Path) -> None:
    """The lake as a URI (object storage's way): every part read through the lake's file system."""
    local = write_report(lake, DAY, tmp_path / "local.html", truth=lake)
    remote = write_report(lake.as_uri(), DAY, tmp_path / "uri.html", truth=lake)
    assert (
        remote.sections
        == local.sections
        == dict.fromkeys(["alerts", "embeddings", "reasons", "quality", "evaluation"], "ok")
    )
    assert remote.alerts == local.alerts
    checks = re.compile(r"<h3>Checks per event type.*?</table>", re.S)
    rows_per_type = checks.findall((tmp_path / "local.html").read_text())
    assert rows_per_type and checks.findall((tmp_path / "uri.html").read_text()) == rows_per_type


@needs_chromium
def test_the_page_renders_in_headless_chromium(lake: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    write_report(lake, DAY, out)
    browser = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    browser += [f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=20000", "--window-size=1300,3600"]
    dom = subprocess.run([*browser, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=180).stdout
    shot = tmp_path / "report.png"
    subprocess.run([*browser, f"--screenshot={shot}", out.as_uri()], capture_output=True, timeout=180)

    def rendered(div: str) -> str:
        start = dom.index(f'id="{div}"')
        following = [dom.find('id="fig-', start + 1)]
        return dom[start : min([f for f in following if f > 0], default=len(dom))]

    for div in ("fig-alerts", "fig-map", "fig-reasons", "fig-quality", "fig-evaluation"):
        assert 'class="main-svg"' in rendered(div), f"{div} was not drawn"
    # Every embedded user is a marker on both panels of the map (by cluster, by risk).
    embedded = read_pandas(lake, "embeddings", DAY, columns=["user_id"])
    users = 0 if embedded is None else len(embedded)
    assert len(re.findall(r'class="point"', rendered("fig-map"))) == 2 * users
    # Two nights of alerts: at least one bar per night.
    assert len(re.findall(r'class="point"', rendered("fig-alerts"))) >= 2

    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1300, 3600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # plots, not a blank page


def test_missing_parts_become_sentences(lake: Path, tmp_path: Path) -> None:
    from argus.jobs.lake import commit_manifest, latest_manifest

    partial = tmp_path / "lake"
    shutil.copytree(lake / "scores", partial / "scores")
    published = latest_manifest(lake)
    assert published is not None
    scores = {t: v for t, v in published.tables.items() if t.startswith("scores/")}
    commit_manifest(partial, scores, "scores only")  # a lake where only the scoring step ever ran
    summary = write_report(partial, DAY, tmp_path / "r.html")
    assert summary.sections["alerts"] == summary.sections["reasons"] == "ok"
    assert "argus batch embed --date 2026-10-03" in summary.sections["embeddings"]
    assert "argus batch quality --date 2026-10-03" in summary.sections["quality"]
    assert "--truth" in summary.sections["evaluation"]
    page = (tmp_path / "r.html").read_text()
    assert 'class="missing"' in page and 'id="fig-map"' not in page
    # The lake's own truth is found by --truth pointing at the world folder too.
    assert write_report(partial, DAY, tmp_path / "t.html", truth=lake).sections["evaluation"] == "ok"
    with pytest.raises(ReportError, match="--truth"):
        write_report(partial, DAY, tmp_path / "t.html", truth=tmp_path / "nowhere")
    with pytest.raises(ReportError, match="no nightly outputs for 2026-09-01"):
        write_report(partial, date(2026, 9, 1), tmp_path / "e.html")


def test_reason_labels_drop_the_users_own_values() -> None:
    assert _feature_label(None, "spam ratio 0.273 (norm 0)") == "spam ratio"
    assert _feature_label(None, "closest banned account: u0000046") == "closest banned account: …"
    assert _feature_label(None, "created 23.6 h after u0000046's ban") == "created N h after …'s ban"
    assert _feature_label(None, "spent within 3h of a new-device login (USD) 1.74e+03 (norm 0)") == (
        "spent within 3h of a new-device login (USD)"
    )
    assert _feature_label(None, "unusual for its peers (outlier 0.86)") == "unusual for its peers"
    assert _feature_label("amount_z", "") == "amount_z"


def test_evaluation_by_hand() -> None:
    truth = pd.DataFrame(
        {
            "is_troll": [True, True, False, False, False],
            "is_evader": [False] * 5,
            "fraud_ring": [None, "r1", None, None, None],
            "churn_ts": pd.to_datetime([None, "2026-10-10", "2026-11-30", None, None], utc=True),
        },
        index=pd.Index(["a", "b", "c", "d", "e"], name="user_id"),
    )
    assert truth_labels(truth, "churn", DAY).tolist() == [False, True, False, False, False]  # within 14 days
    scores = pd.DataFrame(
        {
            "detector": ["trolls"] * 4,
            "date": [DAY.isoformat()] * 4,
            "user_id": ["a", "b", "c", "d"],  # e was not scored: it does not count
            "score": [0.9, 0.2, 0.8, np.nan],
            "flagged": [True, False, True, False],
        }
    )
    row = evaluate_night(scores, truth).iloc[0]
    assert (row["users"], row["positives"], row["alerts"], row["true_positives"]) == (4, 2, 2, 1)
    assert row["precision"] == 0.5 and row["recall"] == 0.5
    assert row["roc_auc"] == pytest.approx(0.75)  # pairs (a,c) (a,d) (b,d) ranked right, (b,c) wrong


_argus = run_argus


def test_report_command_mistakes_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "lake").mkdir()
    for args, message in [
        (["--date", "2026/10/03", "--out", "r.html"], "--date must be YYYY-MM-DD"),
        (["--date", "2026-10-03", "--out", str(tmp_path)], "is a folder"),
        (["--date", "2026-10-03", "--out", str(tmp_path / "file" / "r.html")], "is a file, not a folder"),
        (["--date", "2026-10-03", "--out", "r.html", "--lake", str(tmp_path / "none")], "--lake"),
        (["--date", "2026-10-03", "--out", "r.html", "--lake", str(tmp_path / "lake")], "no nightly outputs"),
    ]:
        result = _argus("report", *args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
