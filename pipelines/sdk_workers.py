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

Several worker processes need one fix to Beam: each process numbers the metrics it reports 1, 2, ...
and Prism keeps one id table per job, not per worker, so one process's id decodes as another's metric
and Prism fails (``error decoding metrics``). ``process_worker_args`` marks the environment the worker
processes inherit (``PROCESS_WORKERS_ENV``), and in such a process this module, imported with the
placed stages' code before they report, numbers its ids from a random offset
(``unique_metric_short_ids``). That touches Beam's private ``SHORT_ID_CACHE``: where a Beam version
lacks it, a warning says so and the pipeline runs unpatched.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import apache_beam as beam
from apache_beam.transforms.resources import ResourceHint

__all__ = [
    "PROCESS_WORKERS_ENV",
    "SDK_WORKER_HINT",
    "SdkWorkerHint",
    "detector_worker",
    "on_worker",
    "process_worker_args",
    "unique_metric_short_ids",
]

SDK_WORKER_HINT = "argus_sdk_worker"
PROCESS_WORKERS_ENV = "ARGUS_SDK_WORKER_PROCESSES"  # set for the worker processes of --sdk-workers > 1
_SDK_WORKER_MODULE = "apache_beam.runners.worker.sdk_worker"
log = logging.getLogger(__name__)


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
    from apache_beam.runners.worker import sdk_worker

    if _short_id_cache(sdk_worker) is not None:  # else warned: the workers run unpatched
        os.environ[PROCESS_WORKERS_ENV] = "1"
    return ["--experiments=use_loopback_process_worker"]


def unique_metric_short_ids() -> None:
    """In an SDK worker process: number its metric short ids from a random offset (once per process).

    The ids of two processes then differ (ranges of 2^24 ids at one of 2^40 offsets), and differ from
    the 1, 2, ... of a process left unpatched (the source's, which may never import this module).
    """
    worker = sys.modules.get(_SDK_WORKER_MODULE)
    cache = None if worker is None else _short_id_cache(worker)
    if cache is None or getattr(cache, "_argus_offset", False):
        return
    with cache._lock:
        offset = int.from_bytes(os.urandom(5), "big") << 24
        cache._last_short_id = max(cache._last_short_id, offset)
        cache._argus_offset = True


def _short_id_cache(worker: Any) -> Any | None:
    """Beam's private metric id cache of the ``sdk_worker`` module; None, with a warning, where it has changed."""
    cache = getattr(worker, "SHORT_ID_CACHE", None)
    if all(hasattr(cache, name) for name in ("_lock", "_last_short_id")):
        return cache
    log.warning(
        "apache-beam %s has no SHORT_ID_CACHE._last_short_id: the SDK worker processes of --sdk-workers may "
        "number their metrics alike, and Prism then fails with 'error decoding metrics'; if so, run with "
        "--sdk-workers 1",
        beam.__version__,
    )
    return None


if os.environ.get(PROCESS_WORKERS_ENV):  # a worker process of --sdk-workers > 1, loading placed stages
    unique_metric_short_ids()
