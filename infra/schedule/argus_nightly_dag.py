"""Airflow DAG for the nightly chain, one task per step:

    ingest -> quality_gate -> profiles -> embeddings -> score_trolls -> score_evaders -> score_fraud
           -> score_churn -> alerts -> report
                          -> vacuum

The detectors score one after another: every step that writes the lake holds its writer lease
(one writer at a time, ``infra/spark/README.md``), so parallel score tasks would refuse each other.
``vacuum`` runs once the night's last table is published: it deletes Delta files no version of the
last 168 hours needs (Delta's own retention, a week: the previous seven nights stay readable by
time travel, and no run of the last days loses a file it still reads).

For Airflow 3 (tested with 3.3 by `make test-airflow`). Copy this file into the DAGs folder of a
deployment whose workers have the Argus wheel installed (``make dist``, then ``pip install
dist/argus_behaviour-*.whl``: the ``argus`` command on their PATH; each task's spark-submit ships the
same package to the executors) and set, as Airflow Variables:

- ``argus_lake``: the lake, a folder every task can reach (``/data/lake``, a shared mount) or a URI
  (``s3a://bucket/lake``: ``infra/spark/README.md``); default ``/data/lake``. Every task takes either
- ``argus_master``: the Spark master for every job (``yarn``, ``k8s://...``); default ``yarn``
- ``argus_report_dir``: where the nightly HTML reports go; default ``/data/argus-reports``
- ``argus_oncall_email``: who hears when a night is late (the deadline below)

and point ``KAFKA_BOOTSTRAP`` / ``ARGUS_CONFIG`` at your cluster in the workers' environment.

Each task is one ``argus`` command for the night ``{{ ds }}``: a run scheduled at 01:30 UTC
processes the previous day (the data interval's start), and a backfill run processes its own
date. Every task retries twice, ten minutes apart; a failing quality gate fails its task (exit 1)
and nothing downstream runs, so no profile, score, model or alert of a bad day is published.
A task that finds the lake's writer lease held (a run started by hand, a cron entry on the same
lake) fails at once with a line naming the holder, and its retry comes after that run has ended.
Deadline (the SLA): a night not finished six hours after it was queued mails the on-call address.

Backfill: ``airflow backfill create --dag-id argus_nightly --from-date 2026-10-01 --to-date
2026-10-07``; or set ``ARGUS_DAG_CATCHUP=true`` (and ``ARGUS_DAG_START``) in the scheduler's
environment to have every missed night since the start date run. Runs never overlap
(``max_active_runs=1``): each night's models build on the store the previous night left.
"""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime, timedelta

from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG
from airflow.sdk.definitions.deadline import AsyncCallback, DeadlineAlert, DeadlineReference
from airflow.timetables.interval import CronDataIntervalTimetable

DETECTORS = ("trolls", "evaders", "fraud", "churn")
NIGHT = "--date {{ ds }}"
LAKE = "--lake {{ var.value.get('argus_lake', '/data/lake') }}"
SPARK = f"{LAKE} --master {{{{ var.value.get('argus_master', 'yarn') }}}}"
# Delta's default retention (delta.deletedFileRetentionDuration); VACUUM refuses less.
VACUUM_RETAIN_HOURS = 168
REPORT_OUT = "{{ var.value.get('argus_report_dir', '/data/argus-reports') }}/argus-report-{{ ds }}.html"
ONCALL = "{{ var.value.get('argus_oncall_email', 'trust-and-safety-data@example.com') }}"

# The command of each step, by task id: the test renders them and checks them against `argus`'s options.
COMMANDS = {
    "ingest": f"argus batch ingest {SPARK}",
    "quality_gate": f"argus batch quality {NIGHT} {SPARK}",
    "profiles": f"argus batch profile {NIGHT} {SPARK}",
    "embeddings": f"argus batch embed {NIGHT} {SPARK}",
    **{f"score_{name}": f"argus batch score --detector {name} {NIGHT} {SPARK}" for name in DETECTORS},
    "alerts": f"argus alerts publish {NIGHT} {LAKE}",
    "report": f"argus report {NIGHT} {LAKE} --out {REPORT_OUT}",
    "vacuum": f"argus lake vacuum {LAKE} --retain-hours {VACUUM_RETAIN_HOURS} --no-dry-run",
}

with DAG(
    dag_id="argus_nightly",
    description="Argus nightly chain: ingest, quality gate, profiles, embeddings, four detectors, alerts, report",
    # Data-interval schedule: the 01:30 run of day D+1 has {{ ds }} = D, the day whose events are complete.
    schedule=CronDataIntervalTimetable("30 1 * * *", timezone="UTC"),
    start_date=datetime.fromisoformat(os.environ.get("ARGUS_DAG_START", "2026-01-01")).replace(tzinfo=UTC),
    catchup=os.environ.get("ARGUS_DAG_CATCHUP", "false").lower() in ("1", "true", "yes"),
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=12),
    default_args={
        "owner": "trust-and-safety-data",
        "retries": 2,
        "retry_delay": timedelta(minutes=10),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=3),
    },
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(hours=6),
        callback=AsyncCallback(
            SmtpNotifier,
            kwargs={
                "to": ONCALL,
                "subject": "Argus nightly {{ dag_run.logical_date | ds }} is not done after 6 hours",
                "html_content": "The argus_nightly run for {{ dag_run.logical_date | ds }} missed its deadline.",
            },
        ),
    ),
    tags=["argus"],
    doc_md=__doc__,
) as dag:
    tasks = {task_id: BashOperator(task_id=task_id, bash_command=command) for task_id, command in COMMANDS.items()}
    steps = ["ingest", "quality_gate", "profiles", "embeddings", *(f"score_{name}" for name in DETECTORS), "alerts"]
    for before, after in itertools.pairwise(steps):
        tasks[before] >> tasks[after]
    tasks["alerts"] >> tasks["report"]
    tasks[f"score_{DETECTORS[-1]}"] >> tasks["vacuum"]
