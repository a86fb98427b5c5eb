"""Checks a command runs before its long work, so that a mistake costs seconds, not a whole fit.

Each raises ``PreflightError`` with one line that names the option and says what to do; the
command line shows it without a traceback.
"""

from __future__ import annotations

import socket
from datetime import date
from pathlib import Path

NO_BROKER_HINT = "start one with `argus kafka up` or set KAFKA_BOOTSTRAP to your cluster"


class PreflightError(ValueError):
    """A mistake found before any long work; one line for the user."""


def writable_file(path: Path, option: str) -> Path:
    """``path`` can be written as a file: not a folder, and no file where a parent folder must be."""
    if path.is_dir():
        raise PreflightError(f"{option} {path} is a folder; give a file name, e.g. {option} {path / 'scores.csv'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise PreflightError(f"{option} {path}: {parent} is a file, not a folder; choose another path")
            break
    return path


def iso_date(value: str, option: str) -> str:
    """``value`` if it is a YYYY-MM-DD date; else one line naming ``option``."""
    try:
        date.fromisoformat(value)
    except ValueError as exc:
        raise PreflightError(f"{option} must be a date as YYYY-MM-DD (e.g. 2026-10-01), not {value!r}") from exc
    return value


def servers(bootstrap: str | None) -> list[tuple[str, int]]:
    """The resolved bootstrap servers as (host, port) pairs."""
    from argus.infra.clients import kafka_settings

    value = kafka_settings(bootstrap)["bootstrap_servers"]
    listed = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for server in (s.strip() for s in listed):
        if not server:
            continue
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise PreflightError(f"--bootstrap/KAFKA_BOOTSTRAP: {server!r} is not HOST:PORT")
        out.append((host.strip("[]"), int(port)))
    return out


def require_broker(bootstrap: str | None, timeout_s: float = 3.0) -> None:
    """Fail fast, in seconds, when no bootstrap server accepts a connection."""
    listed = servers(bootstrap)
    for host, port in listed:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return
        except OSError:
            continue
    where = ",".join(f"{h}:{p}" for h, p in listed)
    raise PreflightError(f"no Kafka broker answers at {where}; {NO_BROKER_HINT}")
