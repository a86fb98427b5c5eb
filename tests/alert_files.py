"""A night's alert file published as the scoring step publishes one, without Spark, for its readers' tests."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from pathlib import Path

from argus.jobs.alert_blocks import alerts_key
from argus.jobs.lake import put_file
from argus.jobs.publish import Publication


def publish_alert_file(lake: Path, detector: str, day: date, lines: Iterable[str | bytes]) -> Path:
    """Write ``lines`` (one alert each) as ``detector``'s file of ``day`` in a run folder of its own and
    publish it with a manifest; the file's path."""
    publication = Publication(lake, f"alerts-{detector}-{day}")
    key = alerts_key(detector, day)
    relative = f"{publication.new_folder(key)}/part-00000-test-c000.txt"
    put_file(lake, relative, b"".join((line.encode() if isinstance(line, str) else line) + b"\n" for line in lines))
    publication.file(key, relative)
    return lake / relative
