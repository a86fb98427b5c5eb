"""Which Python worker process runs which stages on Prism: the source on one, the detectors' keyed stages on others.

Prism starts one SDK worker per *environment* of the pipeline, and in LOOPBACK mode that worker is a
thread of the submitting process, so all Python work shares one interpreter (one core). Beam gives
transforms with distinct resource hints distinct environments (a copy of the default one), and the
``use_loopback_process_worker`` experiment makes each LOOPBACK worker a process of its own. So a
resource hint naming a worker (``SdkWorkerHint``, which no runner acts on otherwise) spreads the
pipeline over that many processes (``detector_worker``): the source, validation and sinks stay on
worker 0; each detector's stateful stages and scoring go to a worker of their own while there are
workers to spare, else detector ``i`` to worker ``i % workers`` (two workers, trolls then fraud: the
source and the troll stages on one, the payment graph, the costliest stage, on the other). Elements
between stages pass through Prism either way (a stateful stage is a stage of its own), so the split
adds no hop.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from apache_beam.transforms.resources import ResourceHint

__all__ = ["SDK_WORKER_HINT", "SdkWorkerHint", "detector_worker", "on_worker", "process_worker_args"]

SDK_WORKER_HINT = "argus_sdk_worker"


class SdkWorkerHint(ResourceHint):  # type: ignore[misc]
    """The Python worker (0, 1, ...) a transform runs on: a distinct environment per worker."""

    urn = "argus:resource_hint:sdk_worker:v1"


ResourceHint.register_resource_hint(SDK_WORKER_HINT, SdkWorkerHint)


def detector_worker(index: int, detectors: int, workers: int) -> str | None:
    """The worker of the ``index``-th of ``detectors`` detectors' keyed stages; None: worker 0, the source's."""
    worker = 1 + index if workers > detectors else index % workers
    return str(worker) if worker else None


def on_worker(transform: Any, worker: str | None) -> Any:
    """``transform`` placed on ``worker`` (None: left on the default one)."""
    return transform if worker is None else transform.with_resource_hints(**{SDK_WORKER_HINT: worker})


def process_worker_args() -> list[str]:
    """Beam options that make every LOOPBACK worker a process. Beam's worker pool starts it as ``python`` from
    ``PATH``: this interpreter goes first there, so the worker imports the same packages as the pipeline."""
    here = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != here:
        os.environ["PATH"] = here + os.pathsep + path
    return ["--experiments=use_loopback_process_worker"]
