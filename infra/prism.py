"""The Beam Prism runner, built once from the Go module proxy and cached like the Kafka jars.

Prism is Beam's local portable runner: one Go binary that runs Python pipelines in streaming mode
without Docker (the Python SDK harness runs in-process, ``--environment_type=LOOPBACK``). It is
built with ``go install github.com/apache/beam/sdks/v2/go/cmd/prism@v<beam version>`` at the
version of the installed ``apache-beam``, so runner and SDK speak the same protocol, into
``$ARGUS_HOME/cache/prism-v<version>/prism``. A build takes 2-8 minutes on two cores; later
calls return the cached binary at once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from argus.infra.maven import argus_home

PRISM_MODULE = "github.com/apache/beam/sdks/v2/go/cmd/prism"
__all__ = ["PRISM_MODULE", "PrismError", "beam_version", "fetch_prism", "prism_path"]


class PrismError(RuntimeError):
    """Prism could not be built; the message says what to install or fix."""


def beam_version() -> str:
    """The installed apache-beam's version (the Prism binary must match it)."""
    from importlib.metadata import version

    return version("apache-beam")


def prism_path(version: str | None = None) -> Path:
    """Where the Prism binary of ``version`` (default: the installed Beam's) is cached."""
    return argus_home() / "cache" / f"prism-v{version or beam_version()}" / "prism"


def fetch_prism(version: str | None = None) -> Path:
    """Build Prism once (``go install``) and return the cached binary; idempotent.

    ``ARGUS_PRISM`` names an existing binary instead (no build).
    """
    override = os.environ.get("ARGUS_PRISM")
    if override:
        path = Path(override)
        if not os.access(path, os.X_OK):
            raise PrismError(
                f"ARGUS_PRISM={override} is not an executable file; unset it or point it at a prism binary"
            )
        return path
    version = version or beam_version()
    target = prism_path(version)
    if os.access(target, os.X_OK):
        return target
    go = shutil.which("go")
    if go is None:
        raise PrismError(
            "Go is not installed; the Beam Prism runner is built with it "
            "(apt-get install golang-go, or https://go.dev/dl), or set ARGUS_PRISM to a prism binary"
        )
    staging = target.parent / "bin.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    env = {**os.environ, "GOBIN": str(staging)}
    cmd = [go, "install", f"{PRISM_MODULE}@v{version}"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    built = staging / "prism"
    if result.returncode != 0 or not built.is_file():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-10:])
        raise PrismError(f"building Prism failed ({' '.join(cmd)}):\n{tail}")
    os.replace(built, target)
    shutil.rmtree(staging, ignore_errors=True)
    return target
