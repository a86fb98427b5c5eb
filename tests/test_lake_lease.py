"""The lake's writer lease: one writer at a time, the holder named to the one refused, a dead or
silent holder taken over, the lease given back however a run ends."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from argus.infra.procfs import process_stat
from argus.jobs import lake as tables
from argus.jobs.lake import LeaseHeld, WriterLease, lease_holder

HOST = socket.gethostname()
# A writer in its own process: takes the lease, says so, then works until it is stopped.
HOLD = """
import sys, time
from argus.jobs.lake import WriterLease
with WriterLease(sys.argv[1], "argus batch nightly"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Any:
    """Another process holding ``tmp_path / "lake"``'s lease as the nightly chain; killed at the end."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "lake")], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def _record(lake: Path, generation: int, **fields: Any) -> None:
    """A lease record as another host's writer leaves it."""
    record = {"generation": generation, "command": "argus batch ingest", "host": "worker-7", "pid": 4242}
    record |= {"since": "2026-10-02T01:30:00+00:00", "heartbeat": time.time(), **fields}
    (lake / "_lease").mkdir(parents=True, exist_ok=True)
    (lake / "_lease" / f"{generation:012d}.json").write_text(json.dumps(record))


def test_a_second_writer_is_refused_with_the_holder_named(holder: Any, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    named = rf"`argus batch nightly` \(host {HOST}, pid {holder.pid}, since 20\d\d-"
    with pytest.raises(LeaseHeld, match=named):
        WriterLease(lake, "argus forget").acquire()
    found = lease_holder(lake)
    assert found is not None and (found.command, found.host, found.pid) == ("argus batch nightly", HOST, holder.pid)
    # The commands: VACUUM that deletes and forget refuse in one line; a dry run only reads.
    from typer.testing import CliRunner

    from argus.cli import app

    frame = pd.DataFrame({"user_id": ["a"], "score": [1.0]})
    version = tables.write_date_pandas(frame, lake, "scores/detector=fraud", date(2026, 10, 1))
    tables.commit_manifest(lake, {"scores/detector=fraud": version}, "night")
    runner = CliRunner()
    deleting = runner.invoke(app, ["lake", "vacuum", "--lake", str(lake), "--no-dry-run"])
    assert deleting.exit_code != 0 and "is being written by `argus batch nightly`" in str(deleting.exception)
    assert "run this again when it has finished" in str(deleting.exception)
    assert runner.invoke(app, ["lake", "vacuum", "--lake", str(lake)]).exit_code == 0
    forgetting = runner.invoke(app, ["forget", "--user", "a", "--lake", str(lake), "--no-kafka"])
    assert forgetting.exit_code != 0 and f"pid {holder.pid}" in str(forgetting.exception)
    assert tables.read_pandas(lake, "scores/detector=fraud")["user_id"].tolist() == ["a"]  # forget changed nothing
    # The Spark jobs' commands look before starting Spark; the nightly chain too.
    for command in (["batch", "score", "--detector", "fraud"], ["batch", "nightly", "--skip-ingest"]):
        refused = runner.invoke(app, [*command, "--date", "2026-10-01", "--lake", str(lake)])
        assert refused.exit_code != 0 and f"pid {holder.pid}" in str(refused.exception), command


def test_generate_import_and_the_quality_gate_write_under_the_lease(holder: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from argus.cli import app

    lake, examples = tmp_path / "lake", Path(__file__).resolve().parents[1] / "examples" / "import"
    generate = ["generate", "--users", "60", "--days", "1", "--events-per-user-day", "5", "--out", str(lake)]
    importing = ["import", str(examples / "twitch_chat.csv"), "--mapping", str(examples / "twitch_chat.toml")]
    importing += ["--out", str(lake), "--rejects", str(tmp_path / "rejects.jsonl")]
    quality = ["batch", "quality", "--date", "2026-10-01", "--lake", str(lake)]
    runner = CliRunner()
    for command in (generate, importing, quality):
        refused = runner.invoke(app, command)
        assert refused.exit_code != 0, command
        assert "is being written by `argus batch nightly`" in str(refused.exception), command
        assert f"pid {holder.pid}" in str(refused.exception), command
    assert sorted(p.name for p in lake.iterdir()) == ["_lease"]  # nothing written
    holder.kill()
    holder.wait()
    for command, holding in ((generate, "argus generate --out"), (importing, "argus import --out")):
        assert runner.invoke(app, command).exit_code == 0, command
        (record,) = (lake / "_lease").iterdir()  # each took the lease itself, and gave it back
        taken = json.loads(record.read_text())
        assert (taken["command"], taken["released"]) == (holding, True), command
    assert (lake / "events" / "event_type=chat").is_dir()


def test_a_writing_job_is_refused_before_spark_starts(
    holder: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyspark.sql import SparkSession

    from argus.jobs import nightly, quality

    class NoSpark:
        def getOrCreate(self) -> None:
            raise AssertionError("Spark started although the lake was held")

    monkeypatch.setattr(SparkSession, "builder", NoSpark())
    for job in (nightly, quality):
        assert job.main(["--lake", str(tmp_path / "lake"), "--date", "2026-10-01"]) == 2
        said = capsys.readouterr().err.strip().splitlines()
        assert len(said) == 1 and said[0].startswith(
            f"error: lake {tmp_path / 'lake'} is being written by `argus batch"
        )
        assert f"pid {holder.pid}" in said[0]


def test_the_lease_of_a_killed_writer_is_taken_over(
    holder: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lake = tmp_path / "lake"
    holder.send_signal(signal.SIGKILL)  # no release, no finally: the record still names it
    holder.wait()
    assert json.loads((lake / "_lease" / "000000000001.json").read_text())["released"] is False
    with caplog.at_level(logging.WARNING, logger="argus.jobs.lake"), WriterLease(lake, "argus forget") as lease:
        assert lease.holder is not None and lease.holder.generation == 2
        assert lease_holder(lake) == lease.holder
    (line,) = caplog.messages
    assert f"took over the writer lease of `argus batch nightly` (host {HOST}, pid {holder.pid}" in line
    assert line.endswith("its process is gone")
    assert [p.name for p in (lake / "_lease").iterdir()] == ["000000000002.json"]  # the dead one's record pruned


def test_another_hosts_lease_is_taken_over_only_once_its_heartbeat_is_older_than_the_ttl(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lake = tmp_path / "lake"
    _record(lake, 5, heartbeat=time.time() - 60)  # its pid cannot be checked from here: the heartbeat decides
    with pytest.raises(LeaseHeld, match=r"`argus batch ingest` \(host worker-7, pid 4242, since 2026-10-02T01:30"):
        WriterLease(lake, "argus batch nightly", ttl_seconds=600).acquire()
    _record(lake, 5, heartbeat=time.time() - 601)
    with caplog.at_level(logging.WARNING, logger="argus.jobs.lake"), WriterLease(lake, "argus batch nightly") as lease:
        assert lease.holder is not None and lease.holder.generation == 6
    assert "no heartbeat for 601 s (lease time 600 s)" in caplog.text


def test_a_pid_reused_by_another_process_does_not_hold_the_lease(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lake, own = tmp_path / "lake", process_stat(os.getpid())
    assert own is not None
    _record(lake, 3, host=HOST, pid=own.pid, process_start=str(own.started))  # this very process: held
    with pytest.raises(LeaseHeld, match=rf"host {HOST}, pid {own.pid}"):
        WriterLease(lake, "argus forget").acquire()
    _record(lake, 3, host=HOST, pid=own.pid, process_start=str(own.started - 1))  # the pid's earlier owner
    with caplog.at_level(logging.WARNING, logger="argus.jobs.lake"), WriterLease(lake, "argus forget") as lease:
        assert lease.holder is not None and lease.holder.generation == 4
    assert caplog.messages[0].endswith("its process is gone")


def test_the_lease_is_given_back_after_a_failed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyspark.sql import SparkSession

    from argus.jobs.entry import run_job

    lake = tmp_path / "lake"
    with pytest.raises(RuntimeError), WriterLease(lake, "argus forget"):
        assert lease_holder(lake) is not None
        raise RuntimeError("a step failed")
    assert lease_holder(lake) is None

    class Session:
        def stop(self) -> None:
            pass

    class Builder:
        def getOrCreate(self) -> Session:
            assert lease_holder(lake) is not None  # held while the job runs
            return Session()

    monkeypatch.setattr(SparkSession, "builder", Builder())
    parser = argparse.ArgumentParser()
    parser.add_argument("--lake")

    def mistake(spark: Any, args: argparse.Namespace) -> tuple[dict[str, Any], int]:
        raise ValueError("--date is missing")

    def bug(spark: Any, args: argparse.Namespace) -> tuple[dict[str, Any], int]:
        raise KeyError("profiles")

    assert run_job(parser, ["--lake", str(lake)], mistake, lease="argus batch profile") == 2
    assert lease_holder(lake) is None
    with pytest.raises(KeyError):
        run_job(parser, ["--lake", str(lake)], bug, lease="argus batch profile")
    assert lease_holder(lake) is None
    record = json.loads(max((lake / "_lease").iterdir()).read_text())
    assert (record["command"], record["released"]) == ("argus batch profile", True)


def test_one_process_shares_its_lease_and_a_heartbeat_keeps_it(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    with WriterLease(lake, "argus batch nightly", ttl_seconds=0.5) as outer:
        with WriterLease(lake, "argus batch ingest"):  # ingest inside the nightly chain
            assert outer.holder is not None and lease_holder(lake, ttl_seconds=0.5) == outer.holder
        assert lease_holder(lake, ttl_seconds=0.5) is not None  # still the chain's
        first = outer.holder.heartbeat
        time.sleep(1.0)  # two TTLs: without the heartbeat the lease would have expired
        current = lease_holder(lake, ttl_seconds=0.5)
        assert current is not None and current.generation == 1 and current.heartbeat > first
    assert lease_holder(lake) is None


def test_writers_starting_together_get_one_lease(tmp_path: Path) -> None:
    """Four processes each find the lease free, then all create it at one signal: the exclusive create
    lets exactly one win, and the others, looking again, are refused."""
    lake, go = tmp_path / "lake", tmp_path / "go"
    race = f"""
import os, sys, time
from argus.jobs import lake as tables

create = tables._create_exclusive

def together(*args):
    open({str(tmp_path)!r} + "/ready-" + sys.argv[1], "w").close()
    while not os.path.exists({str(go)!r}):
        time.sleep(0.001)
    return create(*args)

tables._create_exclusive = together
try:
    lease = tables.WriterLease({str(lake)!r}, "writer " + sys.argv[1])
    lease.acquire()
    print("won", flush=True)
    time.sleep(2)
    lease.release()
except tables.LeaseHeld:
    print("refused", flush=True)
"""
    racers = [
        subprocess.Popen([sys.executable, "-c", race, str(n)], stdout=subprocess.PIPE, text=True) for n in range(4)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)  # every racer has read the lease as free and waits to create it
    go.touch()
    said = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
    assert said == ["refused", "refused", "refused", "won"]


def test_a_run_whose_lease_was_taken_over_publishes_nothing(tmp_path: Path) -> None:
    lake, table = tmp_path / "lake", "scores/detector=fraud"
    frame = pd.DataFrame({"user_id": ["a"], "score": [1.0]})
    with WriterLease(lake, "argus batch nightly") as lease:
        version = tables.write_date_pandas(frame, lake, table, date(2026, 10, 1))
        tables.commit_manifest(lake, {table: version}, "night-1")
        assert lease.holder is not None
        # This run fell silent past the TTL and a writer on another host took over: generation 2.
        _record(lake, lease.holder.generation + 1)
        assert tables.lease_lost(lake)
        with pytest.raises(LeaseHeld, match=r"`argus batch ingest` \(host worker-7.*took the writer lease over"):
            tables.commit_manifest(lake, {table: version}, "night-2")
    assert [m.name for m in tables.manifests(lake)] == ["night-1"]
    taker = lease_holder(lake)
    assert taker is not None and taker.host == "worker-7"  # the loser did not release the new holder's lease
