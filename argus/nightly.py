"""``argus batch nightly``: one spark-submit of ``jobs/nightly.py``, its steps shown as they finish.

The job prints one JSON line per finished step; they are passed through to stdout unchanged (for
scripts and schedulers) and summed up one line each on stderr. Spark's and the JVM's own output
goes to ``LAKE/_logs/nightly-<dates>.log``, never to the terminal.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console


class NightlyError(Exception):
    """The chain stopped on a user-fixable problem; the message says what to do."""


@dataclass
class NightlyRun:
    lake: Path | str  # a folder, or a URI (argus.jobs.lake.lake_location)
    dates: list[date]
    detectors: list[str]
    master: str = "local[2]"
    bootstrap: str | None = None  # resolved servers, needed by ingest and alerts
    ingest: bool = False
    alerts: bool = False
    fit: bool = True
    word2vec_partitions: int = 1  # the embed step's Word2Vec training tasks (jobs/embed.py)
    spark_conf: dict[str, str] = field(default_factory=dict)  # spark-submit --conf settings, over the config file's
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def log(self) -> Path:
        from argus.jobs.lake import logs_folder

        first, last = self.dates[0].isoformat(), self.dates[-1].isoformat()
        return logs_folder(self.lake) / (f"nightly-{first}.log" if first == last else f"nightly-{first}_{last}.log")

    def job_args(self) -> list[str]:
        from argus.jobs.lake import lake_location

        args = ["--lake", str(lake_location(self.lake)), "--detectors", ",".join(self.detectors)]
        if len(self.dates) == 1:
            args += ["--date", self.dates[0].isoformat()]
        else:
            args += ["--from", self.dates[0].isoformat(), "--to", self.dates[-1].isoformat()]
        if self.bootstrap:
            args += ["--bootstrap", self.bootstrap]
        args += ["--ingest"] if self.ingest else []
        args += ["--alerts"] if self.alerts else []
        args += [] if self.fit else ["--no-fit"]
        args += ["--word2vec-partitions", str(self.word2vec_partitions)]
        return args


def nightly_command(run: NightlyRun, console: Console) -> list[str]:
    from argus.infra.spark import py_files_archive, submit_command

    with console.status("fetching the Spark Kafka connector's jars (first run only)..."):
        return submit_command(
            "nightly", run.job_args(), master=run.master, py_files=py_files_archive(), extra=run.spark_conf
        )


def run_nightly_submit(run: NightlyRun, console: Console, emit: Any = print) -> int:
    """Run the chain; every step's JSON line goes to ``emit``, a summary of it to ``console``.

    Returns 0, or 1 when a quality gate failed; raises ``NightlyError`` for anything the user can fix.
    """
    from argus.infra.spark import environment_for_submit

    cmd = nightly_command(run, console)
    run.log.parent.mkdir(parents=True, exist_ok=True)
    started = last = time.monotonic()
    final: dict[str, Any] | None = None
    with run.log.open("w") as log:
        process = subprocess.Popen(
            cmd, env=environment_for_submit(run.master), stdout=subprocess.PIPE, stderr=log, text=True
        )
        assert process.stdout is not None
        with console.status(_waiting_for(run, None)) as status:
            for line in process.stdout:
                step = _parse(line)
                if step is None:
                    log.write(line)  # a stray print from a library: kept for the record, not shown
                    continue
                now = time.monotonic()
                emit(json.dumps(step))
                run.steps.append(step)
                if step.get("step") == "done":
                    final = step
                else:
                    console.print(f"{_describe(step)}  [dim]({now - last:.0f} s)[/]", highlight=False, soft_wrap=True)
                    status.update(_waiting_for(run, step))
                last = now
        code = process.wait()
    if code == 1 and final is not None and final.get("failed"):
        console.print(
            f"[bold red]stopped:[/] the quality gate failed for {final['failed']}; nothing of it was published"
        )
        return 1
    if code != 0:
        said = _error_line(run.log)
        raise NightlyError(f"{said} (full log: {run.log})" if said else f"the nightly chain failed; see {run.log}")
    seconds = time.monotonic() - started
    alerts = final.get("alerts", 0) if final else 0
    console.print(
        f"nightly chain done for {', '.join(d.isoformat() for d in run.dates)}: {alerts:,} alerts, "
        f"{seconds:.0f} s in one Spark application (log: {run.log})",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _parse(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        step = json.loads(line)
    except json.JSONDecodeError:
        return None
    return step if isinstance(step, dict) and "step" in step else None


def _waiting_for(run: NightlyRun, done: dict[str, Any] | None) -> str:
    """What the chain is doing now, given the step that just finished."""
    following = {
        None: "ingest: Kafka -> lake" if run.ingest else "quality gate",
        "ingest": "quality gate",
        "quality": "profiles",
        "profiles": "embeddings",
        "embeddings": f"{run.detectors[0]}: fit and score" if run.detectors else "publishing",
        "publish": "alerts to Kafka" if run.alerts else "next date",
        "alerts": "next date",
    }
    kind = done.get("step") if done else None
    if kind == "score":
        names = run.detectors
        position = names.index(done["detector"]) if done and done["detector"] in names else len(names) - 1
        text = f"{names[position + 1]}: fit and score" if position + 1 < len(names) else "publishing"
    else:
        text = following.get(kind, "working")
    when = done.get("date") if done else None
    return f"nightly{f' {when}' if when else ''}: {text}..."


def _describe(step: dict[str, Any]) -> str:
    kind, when = step["step"], step.get("date", "")
    if kind == "ingest":
        return (
            f"ingest: {step['valid']:,} events into the lake, {step['rejected']:,} dead letters (run {step['run_id']})"
        )
    if kind == "quality":
        return (
            f"{when} quality gate {'passed' if step['passed'] else 'FAILED'}: "
            + ", ".join(f"{t} {n:,}" for t, n in step["rows"].items())
            + ("" if step["passed"] else "\n" + step["summary"])
        )
    if kind == "profiles":
        return f"{when} profiles: {step['users']:,} users x {step['columns']} columns (staged)"
    if kind == "embeddings":
        return f"{when} embeddings: {step['users']:,} users x {step['dim']} dims (staged)"
    if kind == "score":
        return (
            f"{when} {step['detector']}: {step['users']:,} users, {step['scored']:,} scored, "
            f"{step['flagged']:,} flagged, {step['alerts']:,} alerts (model {step['model_version']})"
        )
    if kind == "publish":
        published = f"{step['tables']} tables in one manifest, {step['files']} alert files"
        return f"{when} published: {published}; current models: {', '.join(step['models'])}"
    if kind == "alerts":
        produced = ", ".join(f"{topic} {n:,}" for topic, n in step["produced"].items()) or "none"
        return f"{when} alerts produced: {produced}"
    return json.dumps(step)


def _error_line(log: Path) -> str | None:
    """The job's own one-line error (``error: ...``), else the last exception line of the log."""
    lines = log.read_text(errors="replace").splitlines()
    said = next((line[len("error: ") :] for line in reversed(lines) if line.startswith("error: ")), None)
    if said:
        return said
    return next((line.strip() for line in reversed(lines) if "Error" in line or "Exception" in line), None)
