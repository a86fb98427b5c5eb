"""The shared shape of a spark-submit entry point: parse, run with the session, report one JSON line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

Work = Callable[["SparkSession", argparse.Namespace], tuple[dict[str, Any], int]]


def run_job(parser: argparse.ArgumentParser, argv: list[str], work: Work, lease: str | None = None) -> int:
    """Run ``work`` and print its result as the last stdout line; a ValueError is the user's
    mistake, and so is a Kafka cluster refusing the configured client: one ``error:`` line on
    stderr and exit code 2 (the CLI shows that line).

    A job that writes the lake names its command in ``lease``: it runs holding the lake's writer
    lease (``argus.jobs.lake.WriterLease``, on ``--lake``), taken before Spark starts and given back
    however the job ends; another writer holding it is an ``error:`` line naming that writer."""
    from pyspark.sql import SparkSession

    from argus.jobs.lake import LeaseHeld, WriterLease

    args = parser.parse_args(argv)
    writer = WriterLease(args.lake, lease) if lease else None
    try:
        if writer is not None:
            writer.acquire()
    except LeaseHeld as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return _run_with_session(SparkSession.builder.getOrCreate(), args, work)
    finally:
        if writer is not None:
            writer.release()


def _run_with_session(spark: SparkSession, args: argparse.Namespace, work: Work) -> int:
    try:
        result, code = work(spark, args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from argus.infra.clients import explain_failure

        said = explain_failure(exc)  # the cluster refused us: one line, never a secret
        if said is None:
            raise
        print(f"error: {said}", file=sys.stderr)
        return 2
    finally:
        spark.stop()
    print(json.dumps(result))
    return code
