"""The installable package: one top-level import name, ``argus``, with the folders at the repository's top
level mapped under it (``detectors/`` is ``argus.detectors``); the wheel holds them all and nothing else,
and the archive ``argus batch`` ships to Spark's executors holds the same modules."""

from __future__ import annotations

import ast
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("detectors", "jobs", "schemas", "infra", "world", "pipelines")
FOLDERS = ("argus", *SUBPACKAGES)


def _package_folders() -> dict[str, Path]:
    """Every folder with an ``__init__.py`` by its import name (``detectors/cluster``: ``argus.detectors.cluster``)."""
    found = {}
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT).parts
            if "__pycache__" not in parts:
                found[".".join(parts if parts[0] == "argus" else ("argus", *parts))] = init.parent
    return found


def _wheel_names(folders: dict[str, Path]) -> set[str]:
    """The modules of those folders as a wheel names them (``argus/detectors/cluster/phdbscan.py``)."""
    return {"/".join((*name.split("."), path.name)) for name, folder in folders.items() for path in folder.glob("*.py")}


def test_every_package_folder_is_installed_under_argus() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"argus": "argus", **{f"argus.{p}": p for p in SUBPACKAGES}}
    missing = sorted(set(_package_folders()) - set(setuptools["packages"]))
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    assert sorted(set(setuptools["packages"]) - set(_package_folders())) == []


def test_no_bare_top_level_imports() -> None:
    """Nothing imports ``detectors``, ``jobs``, ... as top-level packages: it would work in a checkout (the
    repository's root is on sys.path there) and fail from the wheel."""
    stray = []
    for path in sorted(p for folder in (*FOLDERS, "tests") for p in (ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            stray += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in SUBPACKAGES]
    assert stray == [], "import these as argus.<package>: " + ", ".join(stray)

    import argus.jobs.nightly  # noqa: F401  (pulls in the chain: jobs, detectors, schemas, infra)

    assert sorted(name for name in sys.modules if name.split(".")[0] in SUBPACKAGES) == []


@pytest.mark.dist
def test_wheel_holds_only_the_argus_package(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: an in-tree build would reuse the checkout's build/ (stale modules)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    out = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = out.glob("argus_behaviour-*-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    top = {name.split("/")[0] for name in names}
    assert top == {"argus", next(t for t in top if t.endswith(".dist-info"))}, top
    modules = {name for name in names if name.endswith(".py")}
    assert modules == _wheel_names(_package_folders())
    assert "argus/schemas/json/alert.v1.schema.json" in names
    assert {"argus/infra/spark/pom.xml", "argus/infra/kafka/pom.xml"} <= names
    dist_info = next(t for t in top if t.endswith(".dist-info"))
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "argus = argus.cli:main" in entry_points

    # As Spark's executors do with --py-files: the archive first on sys.path, every import from inside it.
    probe = (
        "import argus.jobs.nightly, argus.detectors.registry as r, argus.pipelines.stream_detectors;"
        "print(argus.jobs.nightly.__file__); print(r.detector_class('churn').__module__)"
    )
    env = {**os.environ, "PYTHONPATH": str(wheel)}
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    nightly_file, churn_module = ran.stdout.split()
    assert nightly_file == f"{wheel}/argus/jobs/nightly.py"
    assert churn_module == "argus.detectors.churn"


def test_executor_archive_has_the_wheel_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from argus.infra import spark

    monkeypatch.setenv("ARGUS_HOME", str(tmp_path))
    monkeypatch.delenv("ARGUS_WHEEL", raising=False)
    archive = spark.py_files_archive()
    assert archive.suffix == ".zip"  # Spark puts only .zip/.egg/.jar --py-files on the executors' sys.path
    names = set(zipfile.ZipFile(archive).namelist())
    assert names == _wheel_names(_package_folders())
    assert spark.py_files_archive() == archive  # unchanged code: the cached archive


def test_argus_wheel_is_shipped_as_a_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from argus.infra import spark
    from argus.infra.clients import ConfigError

    monkeypatch.setenv("ARGUS_HOME", str(tmp_path))
    wheel = tmp_path / "argus_behaviour-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("argus/__init__.py", "")
    monkeypatch.setenv("ARGUS_WHEEL", str(wheel))
    shipped = spark.py_files_archive()
    assert shipped.suffix == ".zip" and shipped.name.startswith(wheel.stem)
    assert shipped.read_bytes() == wheel.read_bytes()

    monkeypatch.setenv("ARGUS_WHEEL", str(tmp_path / "missing.whl"))
    with pytest.raises(ConfigError, match="ARGUS_WHEEL"):
        spark.py_files_archive()


def test_models_saved_before_the_move_still_load(tmp_path: Path) -> None:
    """A model store written when the packages were top level: its pickles name the classes without ``argus.``."""
    import pickle

    from argus.detectors.btyd import BGNBDParams
    from argus.detectors.registry import detector_class

    churn = detector_class("churn")
    fitted = churn()
    fitted.state = {"bgnbd": BGNBDParams(r=0.5, alpha=3.0, a=0.8, b=2.5)}
    fitted.save(tmp_path)
    module = BGNBDParams.__module__.encode()  # argus.detectors.btyd
    old = pickle.dumps(fitted.state, protocol=2).replace(module + b"\n", module.removeprefix(b"argus.") + b"\n")
    assert module not in old
    (tmp_path / "state.pkl").write_bytes(old)

    loaded = churn.load(tmp_path)
    assert isinstance(loaded.state["bgnbd"], BGNBDParams)
    assert loaded.state == fitted.state and loaded.model_version == fitted.model_version


def test_the_driver_heap_is_large_in_local_mode_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local mode runs the tasks in the driver's JVM; on a cluster the driver gets bounded defaults unless set."""
    from argus.infra.spark import DEFAULTS, LOCAL_DRIVER_SETTINGS, spark_settings, submit_command

    monkeypatch.delenv("ARGUS_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no argus.toml here
    local = {"spark.driver.memory": "4g", "spark.driver.defaultJavaOptions": "-XX:+UseParallelGC"}
    assert local == LOCAL_DRIVER_SETTINGS
    assert spark_settings(master="local[2]") == {**DEFAULTS, **local}
    assert spark_settings(master="local[*]")["spark.driver.memory"] == "4g"
    for master in ("spark://10.0.0.1:7077", "yarn", "k8s://https://api.example.com:6443"):
        assert spark_settings(master=master) == {
            **DEFAULTS,
            "spark.driver.memory": "1g",
            "spark.driver.defaultJavaOptions": "-XX:+UseG1GC -Xms128m -XX:MinHeapFreeRatio=10 -XX:MaxHeapFreeRatio=30 "
            "-XX:G1PeriodicGCInterval=30000 -XX:GCTimeRatio=4 -XX:MaxDirectMemorySize=256m "
            "-XX:ReservedCodeCacheSize=128m",
            "spark.driver.maxResultSize": "512m",
        }
    assert "spark.driver.memory=4g" not in submit_command("nightly", [], "yarn")
    assert "spark.driver.memory=1g" in submit_command("nightly", [], "yarn")
    assert "spark.driver.memory=4g" in submit_command("nightly", [], "local[1]")
    assert "spark.driver.defaultJavaOptions=-XX:+UseParallelGC" in submit_command("nightly", [], "local[1]")
    config = tmp_path / "argus.toml"
    config.write_text('[spark]\n"spark.driver.memory" = "3g"\n"spark.driver.maxResultSize" = "2g"\n')
    monkeypatch.setenv("ARGUS_CONFIG", str(config))
    assert spark_settings(master="local[2]")["spark.driver.memory"] == "3g"
    cluster = spark_settings(master="yarn")
    assert (cluster["spark.driver.memory"], cluster["spark.driver.maxResultSize"]) == ("3g", "2g")
    assert cluster["spark.driver.defaultJavaOptions"].startswith("-XX:+UseG1GC")  # ours where the file is silent


def test_the_cluster_driver_environment_bounds_malloc_arenas_unless_the_user_set_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from argus.infra.spark import environment_for_submit

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert environment_for_submit("spark://10.0.0.1:7077")["MALLOC_ARENA_MAX"] == "2"
    assert "MALLOC_ARENA_MAX" not in environment_for_submit("local[2]")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert environment_for_submit("yarn")["MALLOC_ARENA_MAX"] == "4"


def test_settings_given_for_one_run_reach_spark_submit_over_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from argus.infra.spark import parse_spark_conf, submit_command

    config = tmp_path / "argus.toml"
    config.write_text('[spark]\n"spark.executor.memory" = "2g"\n"spark.sql.shuffle.partitions" = "16"\n')
    monkeypatch.setenv("ARGUS_CONFIG", str(config))
    extra = parse_spark_conf(["spark.executor.memory=3g", "spark.executor.extraJavaOptions=-Da=b -Dc=d"])
    assert extra == {"spark.executor.memory": "3g", "spark.executor.extraJavaOptions": "-Da=b -Dc=d"}
    confs = _confs(submit_command("nightly", [], "spark://10.0.0.1:7077", extra=extra))
    assert confs["spark.executor.memory"] == "3g"
    assert confs["spark.sql.shuffle.partitions"] == "16"
    assert confs["spark.executor.extraJavaOptions"] == "-Da=b -Dc=d"
    for bad in ("spark.executor.memory", "executor.memory=3g", "=3g"):
        with pytest.raises(ValueError, match=r"give KEY=VALUE with a spark\.\* key"):
            parse_spark_conf([bad])


def test_argus_batch_nightly_passes_conf_settings_to_spark_submit(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from argus.cli import app

    args = ["batch", "nightly", "--date", "2026-10-01", "--lake", str(tmp_path / "lake"), "--skip-ingest"]
    args += ["--master", "spark://10.0.0.1:7077", "--conf", "spark.executor.memory=3g", "--print-command"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _confs(shlex.split(result.stdout))["spark.executor.memory"] == "3g"
    refused = CliRunner().invoke(app, [*args[:-3], "--conf", "executor.memory=3g", "--print-command"])
    assert refused.exit_code != 0 and "give KEY=VALUE with a spark.* key" in str(refused.exception)


@pytest.mark.parametrize(
    "command",
    [
        ["ingest", "--bootstrap", "broker:9092"],
        ["quality", "--date", "2026-10-01"],
        ["profile", "--date", "2026-10-01"],
        ["embed", "--date", "2026-10-01"],
        ["score", "--detector", "fraud", "--date", "2026-10-01"],
    ],
)
def test_each_batch_step_passes_conf_settings_to_spark_submit(tmp_path: Path, command: list[str]) -> None:
    from typer.testing import CliRunner

    from argus.cli import app

    args = ["batch", *command, "--lake", str(tmp_path / "lake"), "--conf", "spark.executor.memory=3g"]
    args += ["--conf", "spark.executor.extraJavaOptions=-Da=b -Dc=d", "--print-command"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "'spark.executor.extraJavaOptions=-Da=b -Dc=d'" in result.stdout  # quoted for a shell
    confs = _confs(shlex.split(result.stdout))
    assert (confs["spark.executor.memory"], confs["spark.executor.extraJavaOptions"]) == ("3g", "-Da=b -Dc=d")
    refused = CliRunner().invoke(app, [*args[:-1], "--conf", "executor.memory=3g", "--print-command"])
    assert refused.exit_code != 0 and "give KEY=VALUE with a spark.* key" in str(refused.exception)


def _confs(cmd: list[str]) -> dict[str, str]:
    """The ``--conf KEY=VALUE`` pairs of a spark-submit command line."""
    pairs = [cmd[i + 1] for i, arg in enumerate(cmd[:-1]) if arg == "--conf"]
    return dict(pair.split("=", 1) for pair in pairs)
