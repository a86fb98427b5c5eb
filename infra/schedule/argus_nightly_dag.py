"""Airflow DAG for the nightly chain: ingest -> quality gate -> profiles -> embeddings.

Copy into your DAGs folder on a host with Argus installed (`pip install argus-behaviour`), set
the Airflow Variables `argus_lake` (e.g. s3a://bucket/lake or /data/lake) and `argus_master`
(e.g. yarn), and point `KAFKA_BOOTSTRAP` / `ARGUS_CONFIG` at your cluster in the worker's
environment. Each task is one `argus batch` command; a failing quality gate fails its task and
stops the run before profiles are published.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

ARGS = "--lake {{ var.value.argus_lake }} --master {{ var.value.argus_master }}"
DAY = "--date {{ ds }}"

with DAG(
    dag_id="argus_nightly",
    schedule="30 1 * * *",  # after midnight UTC, once the day's events have landed
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
    tags=["argus"],
) as dag:
    ingest = BashOperator(task_id="ingest", bash_command=f"argus batch ingest {ARGS}")
    quality = BashOperator(task_id="quality", bash_command=f"argus batch quality {DAY} {ARGS}")
    profiles = BashOperator(task_id="profiles", bash_command=f"argus batch profile {DAY} {ARGS}")
    embeddings = BashOperator(task_id="embeddings", bash_command=f"argus batch embed {DAY} {ARGS}")
    ingest >> quality >> profiles >> embeddings
