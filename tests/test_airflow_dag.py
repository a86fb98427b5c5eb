"""The Airflow DAG (infra/schedule/argus_nightly_dag.py), loaded by Airflow's own DagBag.

apache-airflow does not install beside Argus's pins, so this group runs in its own virtual
environment (`make test-airflow`: .venv-airflow, with pytest) and is skipped elsewhere. The
commands the DAG renders are checked against the real `argus` command line, parsed by the
project's virtual environment (ARGUS_PYTHON, default .venv/bin/python).
"""

from __future__ import annotations

import atexit
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

# Airflow reads AIRFLOW_HOME when imported and would otherwise create ~/airflow; a folder made
# here goes when the test run ends.
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="argus-airflow-home-")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
pytestmark = pytest.mark.airflow
pytest.importorskip("airflow", reason="apache-airflow is not installed here; `make test-airflow` runs this group")

ROOT = Path(__file__).resolve().parent.parent
DAG_FOLDER = ROOT / "infra" / "schedule"
DETECTORS = ["trolls", "evaders", "fraud", "churn"]
VARIABLES = {"argus_lake": "/data/lake", "argus_master": "yarn", "argus_report_dir": "/srv/argus-reports"}

# Parses each command with the CLI's own click objects: unknown options, missing required options
# and bad values fail exactly as they would at run time, without running anything.
CHECK_AGAINST_CLI = """
import json, sys
from typer.main import get_command
from argus.cli import app

problems = {}
for task_id, argv in json.loads(sys.argv[1]).items():
    command, args, name = get_command(app), argv[1:], "argus"
    while hasattr(command, "commands") and args and args[0] in command.commands:
        name, command, args = args[0], command.commands[args[0]], args[1:]
    if hasattr(command, "commands"):
        problems[task_id] = "not a command: " + " ".join(argv)
        continue
    try:
        command.make_context(name, list(args))
    except Exception as exc:  # click's usage errors (typer may vendor click: matched by their interface)
        if not hasattr(exc, "format_message"):
            raise
        problems[task_id] = exc.format_message()
print(json.dumps(problems))
"""


@pytest.fixture(scope="module")
def dag() -> object:
    for key, value in VARIABLES.items():
        os.environ[f"AIRFLOW_VAR_{key.upper()}"] = value
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FOLDER))
    assert bag.import_errors == {}
    assert list(bag.dags) == ["argus_nightly"]
    return bag.dags["argus_nightly"]


def _rendered(dag: object, ds: str) -> dict[str, str]:
    """Each task's bash command as Airflow renders it for the night ``ds`` (Variables from the environment)."""
    from airflow.sdk.execution_time.context import VariableAccessor

    context = {"ds": ds, "var": {"value": VariableAccessor(deserialize_json=False)}}
    env = dag.get_template_env()  # type: ignore[attr-defined]
    return {t.task_id: t.render_template(t.bash_command, context, env) for t in dag.tasks}  # type: ignore[attr-defined]


def test_one_task_per_step_in_order(dag: object) -> None:
    upstream = {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}  # type: ignore[attr-defined]
    # One lake writer at a time (the writer lease): the detectors score one after another.
    assert upstream == {
        "ingest": [],
        "quality_gate": ["ingest"],
        "profiles": ["quality_gate"],
        "embeddings": ["profiles"],
        "score_trolls": ["embeddings"],
        "score_evaders": ["score_trolls"],
        "score_fraud": ["score_evaders"],
        "score_churn": ["score_fraud"],
        "alerts": ["score_churn"],
        "report": ["alerts"],
        "vacuum": ["score_churn"],  # once the night's last table is published
    }
    # The gate blocks: everything after it runs only when everything before it succeeded.
    assert {t.trigger_rule for t in dag.tasks} == {"all_success"}  # type: ignore[attr-defined]


def test_retries_deadline_and_backfill_settings(dag: object) -> None:
    for task in dag.tasks:  # type: ignore[attr-defined]
        assert task.retries == 2 and task.retry_delay == timedelta(minutes=10), task.task_id
        assert task.execution_timeout == timedelta(hours=3)
    (deadline,) = dag.deadline  # type: ignore[attr-defined]
    assert deadline.interval == timedelta(hours=6)
    assert deadline.callback.path == "airflow.providers.smtp.notifications.smtp.SmtpNotifier"
    assert dag.max_active_runs == 1 and dag.catchup is False  # type: ignore[attr-defined]
    # The 01:30 UTC run on 3 October processes 2 October: {{ ds }} is the data interval's start.
    from airflow.timetables.base import TimeRestriction

    earliest = datetime(2026, 10, 2, 1, 30, tzinfo=UTC)
    info = dag.timetable.next_dagrun_info(  # type: ignore[attr-defined]
        last_automated_data_interval=None, restriction=TimeRestriction(earliest=earliest, latest=None, catchup=True)
    )
    assert info.run_after == datetime(2026, 10, 3, 1, 30, tzinfo=UTC)
    assert info.logical_date.date().isoformat() == "2026-10-02"


def test_catchup_and_start_come_from_the_environment() -> None:
    env = {**os.environ, "ARGUS_DAG_CATCHUP": "true", "ARGUS_DAG_START": "2026-09-01"}
    probe = (
        "from airflow.dag_processing.dagbag import DagBag; "
        f"d = DagBag(dag_folder={str(DAG_FOLDER)!r}).dags['argus_nightly']; "
        "print(d.catchup, d.start_date.date())"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "True 2026-09-01", out.stderr


def test_rendered_commands_are_what_argus_accepts(dag: object) -> None:
    commands = _rendered(dag, "2026-10-02")
    assert commands["quality_gate"] == "argus batch quality --date 2026-10-02 --lake /data/lake --master yarn"
    assert commands["report"].endswith("--out /srv/argus-reports/argus-report-2026-10-02.html")
    # Delta's own retention: the previous seven nights stay readable by time travel.
    assert commands["vacuum"] == "argus lake vacuum --lake /data/lake --retain-hours 168 --no-dry-run"
    assert all("{{" not in c for c in commands.values())
    argv = {task_id: shlex.split(command) for task_id, command in commands.items()}
    assert {a[0] for a in argv.values()} == {"argus"}
    python = os.environ.get("ARGUS_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    if not Path(python).is_file():
        pytest.skip(f"no Argus environment at {python} to check the commands against (set ARGUS_PYTHON)")
    result = subprocess.run(
        [python, "-c", CHECK_AGAINST_CLI, json.dumps(argv)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {}
    # The check does catch a wrong option.
    wrong = {"quality_gate": [*argv["quality_gate"], "--days", "3"]}
    caught = subprocess.run(
        [python, "-c", CHECK_AGAINST_CLI, json.dumps(wrong)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert "--days" in json.loads(caught.stdout.strip().splitlines()[-1])["quality_gate"]
