"""Benchmarks behind ``argus bench``: each returns a dict that the CLI prints as one JSON line."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from argus.infra.broker import LocalBroker, free_port
from argus.infra.topics import ensure_topics
from argus.world.config import WorldConfig
from argus.world.generate import World, produce_world, write_world


@contextmanager
def scratch_broker() -> Iterator[str]:
    """A throw-away local broker on a free port, stopped and deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="argus-bench-kafka-") as home:
        broker = LocalBroker(home=Path(home), port=free_port())
        try:
            broker.up()  # inside: interrupted while it waits for the broker, the broker is still stopped
            ensure_topics(broker.bootstrap)
            yield broker.bootstrap
        finally:
            broker.down()


def bench_generate(
    users: int, days: int, kafka: bool = True, bootstrap: str | None = None, profile: str = "dense"
) -> dict[str, Any]:
    """Generation throughput; the dense profile by default, so figures stay comparable across releases."""
    cfg = WorldConfig(users=users, days=days, profile=profile)
    result: dict[str, Any] = {"users": users, "days": days, "profile": profile}
    with tempfile.TemporaryDirectory(prefix="argus-bench-") as out:
        started = time.perf_counter()
        manifest = write_world(World(cfg), Path(out), "parquet")
        seconds = time.perf_counter() - started
    events = sum(sum(d.values()) for d in manifest["events"].values())
    result.update(events=events, files_s=round(seconds, 3), events_per_s_files=round(events / seconds))
    if kafka:
        target = bootstrap or os.environ.get("KAFKA_BOOTSTRAP")
        with _given(target) if target else scratch_broker() as servers:
            started = time.perf_counter()
            sent = sum(produce_world(World(cfg), servers).values())
            seconds = time.perf_counter() - started
        result.update(kafka_s=round(seconds, 3), events_per_s_kafka=round(sent / seconds))
    return result


@contextmanager
def _given(bootstrap: str) -> Iterator[str]:
    ensure_topics(bootstrap)
    yield bootstrap


def blobs_with_noise(n: int, dim: int, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """Seeded Gaussian blobs (one per 5,000 points, 5 to 50) plus uniform noise, float32.

    Drawn in blocks of rows straight into the float32 result (10,000,000 x 32: 1.3 GB, not the
    8 GB of float64 temporaries in one piece); the values are those of drawing it all at once.
    """
    rng = np.random.default_rng(seed)
    n_noise = int(n * noise)
    centers = rng.uniform(-10, 10, (int(np.clip(n // 5_000, 5, 50)), dim))
    which = rng.integers(0, len(centers), n - n_noise)
    out = np.empty((n, dim), dtype=np.float32)
    block = max(1, 4_000_000 // max(dim, 1))
    for start in range(0, n - n_noise, block):
        rows = which[start : start + block]
        out[start : start + len(rows)] = centers[rows] + rng.normal(0, 1.0, (len(rows), dim))
    for start in range(n - n_noise, n, block):
        stop = min(n, start + block)
        out[start:stop] = rng.uniform(-12, 12, (stop - start, dim))
    return out


# Each benchmarked library's estimator class, as "module:Class"; all take min_cluster_size and min_samples.
CLUSTER_LIBRARIES = {
    "ours": "argus.detectors.cluster:PHDBSCAN",
    "hdbscan": "hdbscan:HDBSCAN",
    "fast_hdbscan": "fast_hdbscan:HDBSCAN",
}
MATRIX_SUFFIXES = (".npy", ".csv", ".parquet", ".pq")


class BenchDataError(ValueError):
    """A --data file that cannot be read as a numeric matrix; the message says what to change."""


def load_matrix(path: Path) -> np.ndarray:
    """A 2-D numeric matrix from ``.npy``, ``.csv`` (header row optional) or Parquet.

    CSV and Parquet columns must all be numeric; a Parquet list column (an embedding per row) is
    spread over as many columns as it has elements. Missing values are an error, not dropped.
    """
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            matrix = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise BenchDataError(f"{path}: not a plain .npy array ({exc})") from exc
    elif suffix == ".csv":
        matrix = _csv_matrix(path)
    elif suffix in (".parquet", ".pq"):
        matrix = _parquet_matrix(path)
    else:
        raise BenchDataError(f"{path}: --data takes {', '.join(MATRIX_SUFFIXES)} files, not {suffix or 'no suffix'}")
    if matrix.ndim != 2 or matrix.shape[0] < 2 or matrix.shape[1] < 1:
        raise BenchDataError(f"{path}: need a 2-D matrix of at least 2 rows and 1 column, got shape {matrix.shape}")
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
        raise BenchDataError(f"{path}: values must be real numbers, got dtype {matrix.dtype}")
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        raise BenchDataError(
            f"{path}: {int((~finite).sum())} rows have missing or infinite values "
            f"(first: row {int(np.argmin(finite))}); drop or impute them first"
        )
    return np.asarray(matrix)


def _csv_matrix(path: Path) -> np.ndarray:
    import pandas as pd

    frame = pd.read_csv(path)
    if all(_is_number(str(name)) for name in frame.columns):  # no header: the first row is data
        frame = pd.read_csv(path, header=None)
    return _numeric_columns(frame, path)


def _parquet_matrix(path: Path) -> np.ndarray:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    columns: dict[str, Any] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if (
            pa.types.is_list(column.type)
            or pa.types.is_fixed_size_list(column.type)
            or pa.types.is_large_list(column.type)
        ):
            lengths = set(pc.list_value_length(column).to_numpy(zero_copy_only=False).tolist())
            if len(lengths) != 1:
                raise BenchDataError(f"{path}: list column {name!r} has rows of different lengths; pad or drop them")
            flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
            for j, values in enumerate(np.reshape(flat, (table.num_rows, lengths.pop())).T):
                columns[f"{name}[{j}]"] = values
        else:
            columns[name] = column.to_numpy(zero_copy_only=False)
    return _numeric_columns(pd.DataFrame(columns), path)


def _numeric_columns(frame: Any, path: Path) -> np.ndarray:
    import pandas as pd

    other = [str(name) for name, dtype in frame.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
    if other:
        raise BenchDataError(f"{path}: column(s) {', '.join(other[:5])} are not numeric; drop or encode them first")
    if frame.empty:
        raise BenchDataError(f"{path}: no rows")
    return np.asarray(frame.to_numpy(dtype=np.float64))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def duplicate_rows(data: np.ndarray) -> int:
    """Rows that repeat an earlier row exactly."""
    from argus.detectors.cluster.duplicates import unique_rows

    rows = unique_rows(np.ascontiguousarray(data, dtype=np.float32))
    return 0 if rows is None else data.shape[0] - rows.n_unique


def _estimator_class(estimator: str) -> Any:
    import importlib

    module, name = estimator.split(":")
    return getattr(importlib.import_module(module), name)


def _serve_fits(
    conn: Any, library: str, estimator: str, data_path: str, min_cluster_size: int, min_samples: int
) -> None:
    """A benchmark worker: fits ``library`` on the data once per request until told to stop.

    fast_hdbscan's first fit compiles its JIT code; it runs once before the first timed fit and
    is reported as warmup_s.
    """
    import resource

    params = {"min_cluster_size": min_cluster_size, "min_samples": min_samples}
    data = np.load(data_path)
    warmup: float | None = None
    try:
        cls: Any = _estimator_class(estimator)
    except Exception as exc:  # reported at the first fit
        cls, failure = None, exc
    loaded_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # interpreter, imports, data
    while _next_request(conn) == "fit":
        try:
            if cls is None:
                raise failure
            if library == "fast_hdbscan" and warmup is None:
                started = time.perf_counter()
                cls(**params).fit(data)
                warmup = time.perf_counter() - started
            model = cls(**params)
            started = time.perf_counter()
            model.fit(data)
            seconds = time.perf_counter() - started
            conn.send(
                {
                    "seconds": seconds,
                    "labels": np.asarray(model.labels_, dtype=np.intp),
                    "warmup_s": warmup,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "loaded_rss_mb": loaded_rss_mb,
                }
            )
        except Exception as exc:  # reported in the JSON; the other libraries go on
            conn.send({"error": f"{type(exc).__name__}: {str(exc)[:500]}"})
    conn.close()


def _next_request(conn: Any) -> str:
    try:
        return str(conn.recv())
    except EOFError:  # the parent is gone
        return "stop"


class _Worker:
    """One library in its own process (so each peak RSS is its own), fitting on request. Not a
    daemon process: joblib, behind the hdbscan library's parallel core distances, runs serially in one."""

    def __init__(self, library: str, estimator: str, data_path: Path, min_cluster_size: int, min_samples: int) -> None:
        import multiprocessing as mp

        context = mp.get_context("spawn")
        self.library = library
        self._conn, child_end = context.Pipe()
        self._process = context.Process(
            target=_serve_fits,
            args=(child_end, library, estimator, str(data_path), min_cluster_size, min_samples),
        )
        self._process.start()
        child_end.close()

    def fit(self, timeout_s: float | None) -> dict[str, Any]:
        """One timed fit: seconds, labels, warmup_s, peak_rss_mb; or error."""
        try:
            self._conn.send("fit")
            if not self._conn.poll(timeout_s):
                self.close()
                return {"error": f"no result within {timeout_s:g} s (--timeout); stopped"}
            result: dict[str, Any] = self._conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self._process.join(5)
            return {"error": f"the process died (exit code {self._process.exitcode}; out of memory?)"}
        return result

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send("stop")
                self._process.join(10)
            except OSError:
                pass
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()


def bench_cluster(
    n: int,
    dim: int,
    min_cluster_size: int = 50,
    min_samples: int = 10,
    data_path: Path | None = None,
    skip_hdbscan: bool = False,
    skip_fast: bool = False,
    seed: int = 0,
    repeats: int = 1,
    timeout_s: float | None = None,
    estimators: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Ours, the hdbscan library and fast_hdbscan (warm) on the same data, each in its own process.

    Every library reads the same C-ordered float32 matrix (``--data`` or seeded blobs). Duplicate
    rows stay in: each library clusters every row and returns a label per row (ours groups the
    copies itself). Repeats run round-robin (ours, hdbscan, fast_hdbscan, ours, ...) so that load
    from other work hits all alike; times are medians. A library that fails or runs past
    ``timeout_s`` gets ``{"error": ...}`` under its name; the others' figures stay. ``estimators``
    replaces a library's class (``{"hdbscan": "sklearn.cluster:HDBSCAN"}``).
    """
    from sklearn.metrics import adjusted_rand_score

    if not skip_fast:
        try:
            import fast_hdbscan  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                "fast_hdbscan is not installed: pip install -e '.[bench]' (or pass --skip-fast)"
            ) from exc
    classes = {**CLUSTER_LIBRARIES, **(estimators or {})}
    libraries = [lib for lib, skip in zip(CLUSTER_LIBRARIES, (False, skip_hdbscan, skip_fast), strict=True) if not skip]
    with tempfile.TemporaryDirectory(prefix="argus-bench-cluster-") as scratch:
        raw = load_matrix(data_path) if data_path is not None else blobs_with_noise(n, dim, seed)
        data = np.ascontiguousarray(raw, dtype=np.float32)  # one copy in one layout for every library
        del raw
        shared = Path(scratch) / "data.npy"
        np.save(shared, data)
        n, dim = data.shape
        duplicates = duplicate_rows(data)
        result: dict[str, Any] = {
            "n": n,
            "dim": dim,
            "data": str(data_path) if data_path is not None else f"blobs(seed={seed})",
            "duplicate_rows": duplicates,
            "min_cluster_size": min_cluster_size,
            "min_samples": min_samples,
            "repeats": repeats,
        }
        del data
        workers = {lib: _Worker(lib, classes[lib], shared, min_cluster_size, min_samples) for lib in libraries}
        runs: dict[str, list[dict[str, Any]]] = {lib: [] for lib in libraries}
        failed: dict[str, str] = {}
        try:
            for _ in range(repeats):
                for lib, worker in workers.items():
                    if lib in failed:
                        continue
                    outcome = worker.fit(timeout_s)
                    if "error" in outcome:
                        failed[lib] = outcome["error"]
                        worker.close()
                    else:
                        runs[lib].append(outcome)
        finally:
            for worker in workers.values():
                worker.close()
    figures = {lib: _summary(runs[lib]) for lib in libraries if lib not in failed}
    if "ours" in figures:
        ours = figures["ours"]
        result.update(
            ours_s=ours["median_s"],
            ours_runs_s=ours["runs_s"],
            peak_rss_mb=ours["peak_rss_mb"],
            loaded_rss_mb=ours["loaded_rss_mb"],
        )
        result["clusters"] = int(ours["labels"].max() + 1)
        result["noise_fraction"] = round(float((ours["labels"] < 0).mean()), 4)
    if "hdbscan" in figures:
        ref = figures["hdbscan"]
        result.update(hdbscan_s=ref["median_s"], hdbscan_runs_s=ref["runs_s"])
    if "fast_hdbscan" in figures:
        fast = figures["fast_hdbscan"]
        result.update(
            fast_hdbscan_s=fast["median_s"],
            fast_hdbscan_runs_s=fast["runs_s"],
            fast_hdbscan_warmup_s=fast["warmup_s"],
            fast_hdbscan_peak_rss_mb=fast["peak_rss_mb"],
        )
    if "ours" in figures:
        for lib, ratio_key, ari_key in (("hdbscan", "speedup", "ari"), ("fast_hdbscan", "speedup_vs_fast", "ari_fast")):
            if lib in figures:
                result[ratio_key] = round(figures[lib]["median_s"] / max(figures["ours"]["median_s"], 1e-9), 2)
                result[ari_key] = round(adjusted_rand_score(figures[lib]["labels"], figures["ours"]["labels"]), 4)
    if "hdbscan" in figures and "fast_hdbscan" in figures:
        result["ari_fast_vs_hdbscan"] = round(
            adjusted_rand_score(figures["hdbscan"]["labels"], figures["fast_hdbscan"]["labels"]), 4
        )
    for lib, message in failed.items():
        result[lib] = {"error": message, "completed_runs": len(runs[lib])}
    return result


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [run["seconds"] for run in runs]
    return {
        "median_s": round(float(np.median(seconds)), 3),
        "runs_s": [round(s, 3) for s in seconds],
        "labels": runs[0]["labels"],
        "warmup_s": None if runs[0]["warmup_s"] is None else round(runs[0]["warmup_s"], 3),
        "peak_rss_mb": round(max(run["peak_rss_mb"] for run in runs), 1),
        "loaded_rss_mb": round(runs[0]["loaded_rss_mb"], 1),
    }


def bench_profile(events: int, seed: int = 7) -> dict[str, Any]:
    """The nightly profile job on ~``events`` generated events (one day, events/100 users), in local Spark,
    against a bare groupBy-count over the same Parquet in the same session."""

    from argus.infra.spark import local_session
    from argus.jobs.profiles import run_profile

    users = max(50, events // 100)
    cfg = WorldConfig(
        users=users, days=1, seed=seed, events_per_user_day=118.0 * events / (users * 100), profile="dense"
    )
    with tempfile.TemporaryDirectory(prefix="argus-bench-profile-") as scratch:
        lake = Path(scratch)
        manifest = write_world(World(cfg), lake)
        total = sum(sum(d.values()) for d in manifest["events"].values())
        spark = local_session("argus-bench-profile")
        try:
            started = time.perf_counter()
            spark.read.parquet(str(lake / "events")).groupBy("user_id").count().write.format("noop").mode(
                "overwrite"
            ).save()
            baseline = time.perf_counter() - started
            started = time.perf_counter()
            result = run_profile(spark, lake, cfg.start)
            seconds = time.perf_counter() - started
        finally:
            spark.stop()
    return {
        "events": total,
        "users": result["users"],
        "seconds": round(seconds, 2),
        "events_per_s": round(total / seconds),
        "baseline_groupby_s": round(baseline, 2),
        "ratio": round(seconds / baseline, 2),
    }


def eval_embeddings(users: int, days: int, seed: int = 5) -> dict[str, Any]:
    """Cosine distance within each injected fraud ring against ring-to-normal, on a generated world."""
    from datetime import timedelta

    from argus.infra.spark import local_session
    from argus.jobs.embed import run_embed
    from argus.jobs.lake import read_pandas
    from argus.world.truth import truth_table

    world = World(WorldConfig(users=users, days=days, seed=seed, events_per_user_day=30.0, profile="dense"))
    with tempfile.TemporaryDirectory(prefix="argus-eval-embed-") as scratch:
        lake = Path(scratch)
        write_world(world, lake)
        spark = local_session("argus-eval-embeddings")
        try:
            result = run_embed(spark, lake, world.cfg.start + timedelta(days=days - 1))
            embedded = read_pandas(lake, "embeddings", world.cfg.start + timedelta(days=days - 1))
            assert embedded is not None, result
            table = embedded.set_index("user_id")
        finally:
            spark.stop()
    vectors = np.stack(table.embedding.to_numpy())
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    truth = truth_table(world).to_pandas().set_index("user_id").reindex(table.index)
    normal = truth.fraud_ring.isna().to_numpy()
    rings = []
    for ring, members in truth[~normal].groupby("fraud_ring"):
        mask = truth.index.isin(members.index)
        within = 1 - (unit[mask] @ unit[mask].T)[np.triu_indices(int(mask.sum()), 1)].mean()
        to_normal = 1 - (unit[mask] @ unit[normal].T).mean()
        rings.append(
            {
                "ring": ring,
                "pattern": members.fraud_pattern.iloc[0],
                "members": int(mask.sum()),
                "within_ring_distance": round(float(within), 4),
                "to_normal_distance": round(float(to_normal), 4),
            }
        )
    return {"users": len(table), "days": days, "dim": result["dim"], "rings": rings}


def bench_detect(users: int, days: int, detectors: list[str], seed: int = 7) -> dict[str, Any]:
    """Each detector's features, fit and score times (and peak memory of this process) on one world."""
    import resource

    from argus.detectors.registry import detector_class
    from argus.evals.common import world_events

    events = world_events(World(WorldConfig(users=users, days=days, seed=seed, profile="dense")))
    result: dict[str, Any] = {"users": users, "days": days, "events": events.count}
    for name in detectors:
        detector = detector_class(name)()
        started = time.perf_counter()
        features = detector.features(events)
        featured = time.perf_counter()
        detector.fit(features)
        fitted = time.perf_counter()
        scores = detector.score(features)
        scored = time.perf_counter()
        result[name] = {
            "features_s": round(featured - started, 2),
            "fit_s": round(fitted - featured, 2),
            "score_s": round(scored - fitted, 2),
            "scored_users": int(scores["score"].notna().sum()),
        }
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result
