"""Fetching jars from Maven Central with ``mvn dependency:copy-dependencies``, once per pom content."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path


class MavenError(RuntimeError):
    """Maven is missing or could not deliver the jars; the message says why."""


def argus_home() -> Path:
    return Path(os.environ.get("ARGUS_HOME", Path.home() / ".argus"))


def jar_dir(pom: Path, name: str) -> Path:
    """Where the jars of ``pom`` are cached, keyed by the pom's content."""
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    return argus_home() / "cache" / f"{name}-{digest}" / "libs"


def fetch_jars(pom: Path, name: str, quiet: bool = True) -> Path:
    """Copy the runtime dependencies of ``pom`` into the cache once; return their folder."""
    libs = jar_dir(pom, name)
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise MavenError("Maven (mvn) is not installed; install it (apt-get install maven)")
    staging = libs.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = ["mvn", "-B", "-f", str(pom), "dependency:copy-dependencies"]
    cmd += [f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
    if quiet:
        cmd.insert(1, "-q")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise MavenError(f"fetching jars failed ({' '.join(cmd)}):\n{tail}")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    marker.touch()
    return libs
