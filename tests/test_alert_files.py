"""A night's alert files: written once per run, published by the lake's manifest, read through it."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from argus.jobs.alert_blocks import ALERT_SCHEMA, AlertFileError, alerts_file, read_alerts, write_alerts
from argus.jobs.lake import Lake, latest_manifest, vacuum
from argus.jobs.publish import Publication
from argus.schemas.models import Alert

NIGHT = date(2026, 10, 3)


def _alerts(spark: Any, prefix: str, count: int) -> Any:
    """``count`` alerts of ``prefix`` as the alert tasks emit them (``ALERT_SCHEMA`` rows), out of id order."""
    alerts = [
        Alert(
            alert_id=f"{prefix}-{n:03d}",
            kind="troll",
            user_id=f"u{n}",
            score=0.9,
            severity="high",
            reasons=[],
            model_version=prefix,
            window_start=datetime(2026, 9, 4, tzinfo=UTC),
            window_end=datetime(2026, 10, 4, tzinfo=UTC),
        )
        for n in reversed(range(count))
    ]
    return spark.createDataFrame([(a.alert_id, a.model_dump_json()) for a in alerts], ALERT_SCHEMA)


def _ids(lake: Lake) -> list[str]:
    return [alert.alert_id for alert in read_alerts(lake, [("trolls", NIGHT)])]


def _publish(spark: Any, lake: Lake, prefix: str, count: int) -> str:
    return write_alerts(Publication(lake, f"scores-{prefix}"), lake, "trolls", NIGHT, _alerts(spark, prefix, count))


def test_a_run_that_fails_before_its_manifest_leaves_the_night_as_it_was(spark: Any, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    published = _publish(spark, lake, "old", 3)
    assert _ids(lake) == ["old-000", "old-001", "old-002"]  # one file, sorted by alert id
    night = Publication(lake, "nightly", deferred=True)
    written = write_alerts(night, lake, "trolls", NIGHT, _alerts(spark, "new", 5))
    assert (lake / written).is_file() and _ids(lake) == ["old-000", "old-001", "old-002"]  # not published yet
    night.discard()  # what the chain does when a later step fails
    assert _ids(lake) == ["old-000", "old-001", "old-002"] and alerts_file(lake, "trolls", NIGHT) == published
    assert not (lake / written).parent.exists()
    crashed = Publication(lake, "nightly", deferred=True)  # killed: neither commit nor discard
    left = write_alerts(crashed, lake, "trolls", NIGHT, _alerts(spark, "new", 5))
    assert _ids(lake) == ["old-000", "old-001", "old-002"] and (lake / left).is_file()
    assert vacuum(lake, retain_hours=168, dry_run=False).files == {}  # younger than the retention: kept
    files = len(list((lake / left).parent.iterdir()))  # Spark's part, _SUCCESS and their checksums
    assert vacuum(lake, retain_hours=0, dry_run=False).files == {"alerts": files}  # the crashed run's: no manifest's
    assert not (lake / left).parent.exists() and (lake / published).is_file()
    assert _ids(lake) == ["old-000", "old-001", "old-002"]


def test_a_rerun_replaces_the_night_whole_for_readers_on_either_side(spark: Any, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    first = _publish(spark, lake, "old", 4)
    reading = read_alerts(lake, [("trolls", NIGHT)])  # a reader that started before the rerun's manifest
    assert next(reading).alert_id == "old-000"
    night = Publication(lake, "nightly", deferred=True)
    second = write_alerts(night, lake, "trolls", NIGHT, _alerts(spark, "new", 2))
    tables, files = night.commit()
    assert (tables, files) == ([], [f"alerts/detector=trolls/date={NIGHT}"])
    assert [a.alert_id for a in reading] == ["old-001", "old-002", "old-003"]  # the old night to its end
    assert _ids(lake) == ["new-000", "new-001"]  # readers from now on: the new night, whole
    manifest = latest_manifest(lake)
    assert manifest is not None and manifest.files == {f"alerts/detector=trolls/date={NIGHT}": second}
    assert manifest.changed == [f"alerts/detector=trolls/date={NIGHT}"]
    assert vacuum(lake, retain_hours=168).files == {}  # the replaced night stays with its manifest's retention
    replaced = [p.stat().st_size for p in (lake / first).parent.iterdir()]
    removed = vacuum(lake, retain_hours=0, dry_run=False)
    assert removed.files == {"alerts": len(replaced)} and removed.bytes == {"alerts": sum(replaced)}
    assert not (lake / first).exists() and _ids(lake) == ["new-000", "new-001"]


def test_alert_files_on_a_uri_lake_and_a_night_without_alerts(spark: Any, tmp_path: Path) -> None:
    lake = f"file://{tmp_path}/lake"  # a URI, so the object-store code paths run: Hadoop FS, pyarrow FS
    with pytest.raises(AlertFileError, match=re.escape(f"no trolls alerts for {NIGHT} in {lake}; score that night")):
        read_alerts(lake, [("trolls", NIGHT)])
    written = _publish(spark, lake, "uri", 3)
    assert written.startswith(f"alerts/detector=trolls/date={NIGHT}/run=")
    assert (tmp_path / "lake" / written).is_file() and _ids(lake) == ["uri-000", "uri-001", "uri-002"]
    _publish(spark, lake, "none", 0)  # a night scored without alerts: published, and empty
    assert alerts_file(lake, "trolls", NIGHT) is not None and _ids(lake) == []
    stored = json.loads(next((tmp_path / "lake" / "_manifests").glob("*2.json")).read_text())
    assert stored["files"] == {f"alerts/detector=trolls/date={NIGHT}": alerts_file(lake, "trolls", NIGHT)}
