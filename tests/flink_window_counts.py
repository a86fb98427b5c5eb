"""Kafka source -> parse -> key -> 10-second event-time windows -> Kafka sink, submitted to a job server.

Run by tests/test_flink.py in the Python environment that matches the Flink job server:
``python -m tests.flink_window_counts BOOTSTRAP TOPIC OUT_TOPIC JOB_ENDPOINT [beam options...]``.
Each record on TOPIC is ``{"user": ..., "ts": seconds}``; OUT_TOPIC gets one record per (user, window),
keyed ``user|window start``, valued with the count.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from argus.pipelines.kafka_io import KafkaRecord, OutRecord, ReadKafka, SourceBatch, WriteKafka

WINDOW_S = 10


def decode(record: KafkaRecord) -> tuple[tuple[str, float], float]:
    event = json.loads(record.value)
    return (event["user"], event["ts"]), event["ts"]


def per_event(batch: SourceBatch) -> list[TimestampedValue]:
    return [TimestampedValue(item, item[1]) for item in batch.items]


def count_record(user_count: tuple[str, int], out: str, window: Any = beam.DoFn.WindowParam) -> OutRecord:
    user, count = user_count
    return OutRecord(out, f"{user}|{int(window.start)}".encode(), str(count).encode())


def main(argv: list[str]) -> None:
    bootstrap, topic, out, endpoint, *beam_args = argv
    options = PipelineOptions(
        ["--runner=PortableRunner", f"--job_endpoint={endpoint}", "--environment_type=LOOPBACK", *beam_args]
    )
    with beam.Pipeline(options=options) as pipeline:
        (
            pipeline
            | ReadKafka([topic], bootstrap, decode=decode, bounded=True)
            | "Events" >> beam.FlatMap(per_event)
            | beam.WindowInto(FixedWindows(WINDOW_S))
            | "ByUser" >> beam.Map(lambda event: (event[0], 1))
            | beam.CombinePerKey(sum)
            | "Records" >> beam.Map(count_record, out)
            | WriteKafka(bootstrap)
        )


if __name__ == "__main__":
    main(sys.argv[1:])
