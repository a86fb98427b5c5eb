"""The installable package: one top-level import name, ``argus``, with the folders at the repository's top
level mapped under it (``detectors/`` is ``argus.detectors``); the wheel holds them all and nothing else,
and the archive ``argus batch`` ships to Spark's executors holds the same modules."""

from __future__ import annotations

import ast
import os
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
    """Local mode runs the tasks in the driver's JVM; on a cluster the driver keeps Spark's default unless set."""
    from argus.infra.spark import LOCAL_DRIVER_MEMORY, spark_settings, submit_command

    assert spark_settings(master="local[2]")["spark.driver.memory"] == LOCAL_DRIVER_MEMORY
    assert "spark.driver.memory" not in spark_settings(master="spark://10.0.0.1:7077")
    assert f"spark.driver.memory={LOCAL_DRIVER_MEMORY}" not in submit_command("nightly", [], "yarn")
    assert f"spark.driver.memory={LOCAL_DRIVER_MEMORY}" in submit_command("nightly", [], "local[1]")
    config = tmp_path / "argus.toml"
    config.write_text('[spark]\n"spark.driver.memory" = "3g"\n')
    monkeypatch.setenv("ARGUS_CONFIG", str(config))
    assert spark_settings(master="local[2]")["spark.driver.memory"] == "3g"
    assert spark_settings(master="yarn")["spark.driver.memory"] == "3g"
