"""Arrow schemas of the event tables, derived from the event models (one source of truth)."""

from __future__ import annotations

import types
import typing
from datetime import datetime

import pyarrow as pa

from argus.schemas.models import EVENT_MODELS

TS_TYPE = pa.timestamp("ms", tz="UTC")


def _arrow_type(annotation: object) -> pa.DataType:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _arrow_type(args[0])
    if origin is typing.Annotated:
        return _arrow_type(args[0])
    if origin is typing.Literal:
        return pa.int64() if isinstance(args[0], int) else pa.string()
    return {str: pa.string(), int: pa.int64(), float: pa.float64(), datetime: TS_TYPE}[annotation]  # type: ignore[index]


def arrow_schema(event_type: str) -> pa.Schema:
    """Columns in the model's field order: the envelope, then the type's own fields."""
    model = EVENT_MODELS[event_type]
    return pa.schema(
        [
            pa.field(name, _arrow_type(info.annotation), nullable=not info.is_required())
            for name, info in model.model_fields.items()
        ]
    )


ARROW_SCHEMAS: dict[str, pa.Schema] = {t: arrow_schema(t) for t in EVENT_MODELS}


def wide_event_schema() -> pa.Schema:
    """Every field of every event type once (types agree across event types), all nullable."""
    fields: dict[str, pa.Field] = {}
    for schema in ARROW_SCHEMAS.values():
        for field in schema:
            fields.setdefault(field.name, field.with_nullable(True))
    return pa.schema(list(fields.values()))
