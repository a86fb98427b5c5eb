"""Running ``argus`` as a user does, in a child process, and reading its one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_argus(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``argus ARGS`` with this interpreter; output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", "from argus.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The single ``error: ...`` line of a refused command (exit 2), holding every needle."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
