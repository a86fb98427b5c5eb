"""The ``argus.toml`` file as ``schemas`` reads it: where it is, whether it changed, its tables.

argus.infra.clients reads the same file for Kafka settings; schemas/ imports nothing of the project.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$ARGUS_CONFIG``, else ``argus.toml`` in the working directory."""
    return Path(environ.get("ARGUS_CONFIG", "argus.toml"))


def config_stamp(environ: Mapping[str, str] = os.environ) -> tuple[str, object]:
    """The file's path and modification time (``None`` when absent): a cache key part that changes with the file."""
    path = config_path(environ)
    try:
        return str(path), path.stat().st_mtime_ns
    except OSError:
        return str(path), None


def read_config_table(environ: Mapping[str, str], error: type[Exception]) -> dict[str, Any]:
    """The parsed file (``{}`` when absent); invalid TOML raises ``error`` naming the file."""
    path = config_path(environ)
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path} is not valid TOML: {exc}") from exc
