"""A generated world's events as the detectors read them (every day, one frame per type)."""

from __future__ import annotations

import pyarrow as pa

from detectors.events import Events
from world.simulate import World


def events_of(world: World) -> Events:
    tables: dict[str, list[pa.Table]] = {}
    for _, day in world.days():
        for event_type, table in day.items():
            tables.setdefault(event_type, []).append(table)
    return Events.from_tables({t: pa.concat_tables(parts) for t, parts in tables.items()})
