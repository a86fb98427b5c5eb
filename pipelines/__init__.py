"""Beam streaming pipelines (and the plain-Kafka validator they share code with)."""

import os
import sys


def _unique_metric_short_ids() -> None:
    """In a Beam SDK worker process: number its metric short ids from a random offset.

    Each worker process numbers the metrics it reports 1, 2, ... and Prism keeps one id table per job,
    not per worker, so with several worker processes (``pipelines/sdk_workers.py``) one process's id
    decodes as another's metric and Prism panics (``error decoding metrics``). Every stage of the
    pipeline runs code of this package, so importing it patches a process before its own stages
    report. Nothing happens outside an SDK worker (the module is not loaded there).
    """
    worker = sys.modules.get("apache_beam.runners.worker.sdk_worker")
    cache = getattr(worker, "SHORT_ID_CACHE", None)
    if cache is None or getattr(cache, "_argus_offset", False):
        return
    with cache._lock:
        offset = int.from_bytes(os.urandom(5), "big") << 24  # 2^40 processes' ranges of 2^24 ids
        cache._last_short_id = max(cache._last_short_id, offset)
        cache._argus_offset = True


_unique_metric_short_ids()
