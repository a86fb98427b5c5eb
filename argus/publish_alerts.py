"""``argus alerts publish``: a night's alerts from the lake to the ``alerts.*`` topics.

The scoring step writes each detector's alerts of a night to a file of its run under
``LAKE/alerts/detector=X/date=D/`` (one ``argus.schemas.Alert`` per line), which the lake's manifest
publishes; this step produces them, keyed by ``alert_id`` with an idempotent producer
(``argus.infra.clients.publish_alerts``), so publishing a night again writes the same keys and a
compacted topic keeps one record per alert. A scheduler runs it as its own task after every detector
has scored (the Airflow DAG's ``alerts``).

Each file is read and parsed once, a line at a time, straight into the producer
(``argus.jobs.alert_blocks.read_alerts``): memory stays flat however many alerts a night holds.
``publish_night`` checks that every detector's night is published and parses the first alert before
it asks for the broker, so a night not scored or a broken first line is refused before anything is
produced. The night goes in one Kafka transaction: a broken line further on aborts it, with one line
naming the file and line, and readers of committed records (``argus alerts tail``; consumers set
``isolation_level=read_committed``) see none of that night. Publishing it again once the file is
mended writes the same keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from itertools import chain

from argus.jobs.alert_blocks import read_alerts
from argus.jobs.lake import Lake
from argus.schemas.models import Alert


def publish_night(lake: Lake, day: date, detectors: list[str], bootstrap: str | None = None) -> dict[str, int]:
    """Produce the alerts of ``day`` for ``detectors`` to their topics; the records produced per topic
    (``{}`` for a night without alerts). ``AlertFileError`` for a night not scored or a broken line,
    ``argus.preflight.PreflightError`` when no broker answers."""
    from argus.infra.clients import publish_alerts
    from argus.preflight import require_broker

    alerts = night_alerts(lake, day, detectors)
    first = next(alerts, None)  # every night is there and the first line is an alert before the broker is asked
    require_broker(bootstrap)
    return {} if first is None else publish_alerts(chain([first], alerts), bootstrap, source=str(lake))


def night_alerts(lake: Lake, day: date, detectors: list[str]) -> Iterator[Alert]:
    """Every alert of ``day`` for ``detectors``, detector by detector in file order, each line parsed once
    as it is read (``argus.jobs.alert_blocks.read_alerts``). Every detector's night must be published: a
    missing one raises ``AlertFileError`` here, before any is read; a line that is not an alert raises
    it, naming the file and line, when the iteration reaches that line."""
    return read_alerts(lake, [(detector, day) for detector in detectors])
