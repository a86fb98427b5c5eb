"""Writes the JSON Schema files from the models (run after a deliberate contract change)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from argus.schemas.models import PUBLISHED_MODELS, SCHEMA_VERSION

SCHEMA_DIR = Path(__file__).parent / "json"


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema document, for every published contract."""
    out = {}
    for name, model in PUBLISHED_MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"argus/{name}.v{SCHEMA_VERSION}.schema.json"
        out[f"{name}.v{SCHEMA_VERSION}.schema.json"] = schema
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, schema in json_schemas().items():
        path = directory / file_name
        path.write_text(render(schema))
        written.append(path)
    return written
