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


def run_job(parser: argparse.ArgumentParser, argv: list[str], work: Work) -> int:
    """Run ``work`` and print its result as the last stdout line; a ValueError is the user's
    mistake, and so is a Kafka cluster refusing the configured client: one ``error:`` line on
    stderr and exit code 2 (the CLI shows that line)."""
    from pyspark.sql import SparkSession

    args = parser.parse_args(argv)
    spark = SparkSession.builder.getOrCreate()
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
