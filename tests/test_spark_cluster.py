"""Cluster rehearsal: the nightly chain against a Spark standalone master gives the local run's outputs.

A master and one worker start from pyspark's own jars (``infra/spark_cluster.py``); the chain runs
with ``--master spark://...`` as on a real cluster: executors in their own JVM, the code shipped
with ``--py-files``, nothing shared with the driver but what Spark sends. The same lake run at
``local[2]`` is the reference. A few minutes on 2 shared cores; ``-m 'not cluster'`` leaves it out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from argus.infra.spark_cluster import ClusterError, StandaloneCluster, end_process_group, group_members
from argus.jobs.alert_blocks import alerts_file, read_alerts
from argus.world.config import WorldConfig
from argus.world.simulate import World
from argus.world.sinks import write_world

pytestmark = pytest.mark.cluster

NIGHT = date(2026, 10, 2)
DETECTORS = ["trolls", "evaders", "fraud", "churn"]
# Lean memory for a shared machine: the worker offers 1 GiB, an executor takes 768 MiB of it.
SPARK_SETTINGS = {"spark.driver.memory": "1g", "spark.executor.memory": "768m", "spark.sql.shuffle.partitions": "4"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    with StandaloneCluster(tmp_path_factory.mktemp("spark-cluster"), cores=2, memory="1g") as started:
        yield started


@pytest.fixture(scope="module")
def nights(
    cluster: StandaloneCluster, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, list[dict[str, Any]]]]:
    """One small world, run through `argus batch nightly` at local[2] and on the cluster, side by side."""
    from argus.infra.broker import argus_home
    from argus.infra.spark import py_files_archive

    lakes = {"local": tmp_path_factory.mktemp("lake-local"), "cluster": tmp_path_factory.mktemp("lake-cluster")}
    write_world(World(WorldConfig(users=60, days=2, seed=5, events_per_user_day=15.0, profile="dense")), lakes["local"])
    shutil.copytree(lakes["local"], lakes["cluster"], dirs_exist_ok=True)
    home = tmp_path_factory.mktemp("home")  # as tests/conftest.py isolates each test: its own home, shared jars
    (home / "cache").symlink_to(argus_home() / "cache", target_is_directory=True)
    config = home / "argus.toml"
    config.write_text("[spark]\n" + "".join(f'"{key}" = "{value}"\n' for key, value in SPARK_SETTINGS.items()))
    env = {**os.environ, "ARGUS_HOME": str(home), "ARGUS_CONFIG": str(config), "SPARK_LOCAL_IP": cluster.host}
    py_files_archive()  # built once here: the two runs below would otherwise race to write it
    masters = {"local": "local[2]", "cluster": cluster.master_url}
    nightly = [sys.executable, "-c", "from argus.cli import main; main()", "batch", "nightly", "--date", str(NIGHT)]
    running = {
        kind: subprocess.Popen(
            [*nightly, "--lake", str(lake), "--skip-ingest", "--master", masters[kind]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # its own group: a failure here ends its JVM and Python workers too
        )
        for kind, lake in lakes.items()
    }
    results = {}
    try:
        for kind, process in running.items():
            out, err = process.communicate(timeout=1800)  # generous: the machine may be shared
            assert process.returncode == 0, f"{kind}: {err[-3000:]}"
            results[kind] = (lakes[kind], [json.loads(line) for line in out.splitlines()])
    finally:
        for process in running.values():
            end_process_group(process, grace_s=5)
    return results


def _outputs(lake: Path, table: str) -> pd.DataFrame:
    from argus.jobs.lake import read_pandas

    frame = read_pandas(lake, table, NIGHT)
    assert frame is not None, f"nothing published in {lake}/{table} for {NIGHT}"
    return frame.sort_values("user_id").reset_index(drop=True)


def test_the_nightly_chain_runs_on_the_standalone_cluster_executors(
    cluster: StandaloneCluster, nights: dict[str, tuple[Path, list[dict[str, Any]]]]
) -> None:
    lake, steps = nights["cluster"]
    done = steps[-1]
    assert done["step"] == "done" and done["dates"] == [str(NIGHT)]
    assert done["application"].startswith("app-"), done  # a standalone application id, not local-...
    application = cluster.application(done["application"])
    assert application is not None and application["name"] == "argus-nightly"
    assert application["state"] == "FINISHED" and application["cores"] == 2
    logs = cluster.executor_logs(done["application"])
    assert logs, "no executor ran on the worker"
    assert any("Finished task" in log.read_text(errors="replace") for log in logs)  # tasks ran out there
    assert [s["detector"] for s in steps if s["step"] == "score"] == DETECTORS
    for name in DETECTORS:
        assert (lake / "scores" / f"detector={name}" / f"date={NIGHT}").is_dir()
        assert alerts_file(lake, name, NIGHT) is not None


def test_the_cluster_run_publishes_what_the_local_run_publishes(
    nights: dict[str, tuple[Path, list[dict[str, Any]]]],
) -> None:
    (local_lake, local_steps), (cluster_lake, cluster_steps) = nights["local"], nights["cluster"]
    assert nights["local"][1][-1]["application"].startswith("local-")

    def per_step(steps: list[dict[str, Any]], lake: Path) -> list[dict[str, Any]]:
        """The step lines without what differs by design: the application, timings, the lake's own path."""
        return [
            {k: v.replace(str(lake), "LAKE") if isinstance(v, str) else v for k, v in step.items()}
            for step in ({k: v for k, v in s.items() if k not in ("application", "seconds")} for s in steps)
        ]

    # Same counts, same model versions (content hashes of the fitted models), same alert totals.
    assert per_step(cluster_steps, cluster_lake) == per_step(local_steps, local_lake)
    for kind in ("profiles", "embeddings"):
        pd.testing.assert_frame_equal(_outputs(cluster_lake, kind), _outputs(local_lake, kind))
    for name in DETECTORS:
        scores = _outputs(cluster_lake, f"scores/detector={name}")
        assert len(scores) > 40 and scores["score"].notna().any(), name
        pd.testing.assert_frame_equal(scores, _outputs(local_lake, f"scores/detector={name}"))
        night = [(name, NIGHT)]
        assert list(read_alerts(cluster_lake, night)) == list(read_alerts(local_lake, night)), name
        assert (cluster_lake / "models" / name / "CURRENT").read_text() == (
            local_lake / "models" / name / "CURRENT"
        ).read_text()


def test_stopping_the_cluster_ends_its_daemons_and_everything_they_started(cluster: StandaloneCluster) -> None:
    leaders = [process.pid for process in cluster.processes]
    members = [pid for leader in leaders for pid in group_members(leader)]
    assert len(leaders) == 2 and set(leaders) <= set(members)
    cluster.stop()
    assert cluster.processes == []
    assert not any(group_members(leader) for leader in leaders)  # the daemons and what they started
    cluster.stop()  # twice is fine (the fixture stops it again)


def test_a_worker_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    broken = StandaloneCluster(tmp_path / "broken", memory="not-a-size")
    with pytest.raises(ClusterError, match=r"worker-0 exited before the cluster was ready; see .*worker-0\.log"):
        broken.start(timeout_s=120)
    assert broken.processes == []
