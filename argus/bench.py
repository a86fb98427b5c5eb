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

from infra.broker import LocalBroker, free_port
from infra.topics import ensure_topics
from world.config import WorldConfig
from world.generate import World, produce_world, write_world


@contextmanager
def scratch_broker() -> Iterator[str]:
    """A throw-away local broker on a free port, stopped and deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="argus-bench-kafka-") as home:
        broker = LocalBroker(home=Path(home), port=free_port())
        broker.up()
        try:
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
    """Seeded Gaussian blobs (one per 5,000 points, 5 to 50) plus uniform noise, float32."""
    rng = np.random.default_rng(seed)
    n_noise = int(n * noise)
    centers = rng.uniform(-10, 10, (int(np.clip(n // 5_000, 5, 50)), dim))
    which = rng.integers(0, len(centers), n - n_noise)
    points = centers[which] + rng.normal(0, 1.0, (n - n_noise, dim))
    background = rng.uniform(-12, 12, (n_noise, dim))
    return np.vstack([points, background]).astype(np.float32)


def _fit_labels(library: str, data: np.ndarray, min_cluster_size: int, min_samples: int) -> dict[str, Any]:
    """One library's clustering of ``data``: seconds and labels (fast_hdbscan: JIT warm-up apart)."""
    params: dict[str, Any] = {"min_cluster_size": min_cluster_size, "min_samples": min_samples}
    out: dict[str, Any] = {}
    if library == "ours":
        from detectors.cluster import PHDBSCAN

        model: Any = PHDBSCAN(**params)
    elif library == "hdbscan":
        import hdbscan

        model = hdbscan.HDBSCAN(**params)
    else:
        import fast_hdbscan

        started = time.perf_counter()
        fast_hdbscan.HDBSCAN(**params).fit(data)  # a first fit compiles every JIT path it takes
        out["warmup_s"] = time.perf_counter() - started
        model = fast_hdbscan.HDBSCAN(**params)
    started = time.perf_counter()
    labels = np.asarray(model.fit(data).labels_, dtype=np.intp)
    out.update(seconds=time.perf_counter() - started, labels=labels)
    return out


def _child(conn: Any, library: str, data_path: str, min_cluster_size: int, min_samples: int) -> None:
    import resource

    try:
        result = _fit_labels(library, np.load(data_path), min_cluster_size, min_samples)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        conn.send(result)
    except BaseException as exc:  # reported by the parent
        conn.send({"error": f"{library}: {type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def _timed_in_child(library: str, data_path: Path, min_cluster_size: int, min_samples: int) -> dict[str, Any]:
    """Run one library in a fresh process, so each peak RSS is its own and no state is shared."""
    import multiprocessing as mp

    context = mp.get_context("spawn")
    parent_end, child_end = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child_end, library, str(data_path), min_cluster_size, min_samples))
    process.start()
    child_end.close()
    try:
        result = parent_end.recv()
    except EOFError:
        process.join()
        result = {"error": f"{library}: the benchmark process died (exit code {process.exitcode})"}
    process.join()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result  # type: ignore[no-any-return]


def bench_cluster(
    n: int,
    dim: int,
    min_cluster_size: int = 50,
    min_samples: int = 10,
    data_path: Path | None = None,
    skip_hdbscan: bool = False,
    skip_fast: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Ours, the hdbscan library and fast_hdbscan (warm) on the same data, each in its own process."""
    from sklearn.metrics import adjusted_rand_score

    if not skip_fast:
        try:
            import fast_hdbscan  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                "fast_hdbscan is not installed: pip install -e '.[bench]' (or pass --skip-fast)"
            ) from exc
    with tempfile.TemporaryDirectory(prefix="argus-bench-cluster-") as scratch:
        if data_path is None:
            data_path = Path(scratch) / "blobs.npy"
            np.save(data_path, blobs_with_noise(n, dim, seed))
        n, dim = np.load(data_path, mmap_mode="r").shape
        result: dict[str, Any] = {"n": n, "dim": dim, "min_cluster_size": min_cluster_size, "min_samples": min_samples}
        mine = _timed_in_child("ours", data_path, min_cluster_size, min_samples)
        result.update(ours_s=round(mine["seconds"], 3), peak_rss_mb=round(mine["peak_rss_mb"], 1))
        result["clusters"] = int(mine["labels"].max() + 1)
        result["noise_fraction"] = round(float((mine["labels"] < 0).mean()), 4)
        if not skip_hdbscan:
            ref = _timed_in_child("hdbscan", data_path, min_cluster_size, min_samples)
            result.update(
                hdbscan_s=round(ref["seconds"], 3),
                speedup=round(ref["seconds"] / mine["seconds"], 2),
                ari=round(adjusted_rand_score(ref["labels"], mine["labels"]), 4),
            )
        if not skip_fast:
            fast = _timed_in_child("fast_hdbscan", data_path, min_cluster_size, min_samples)
            result.update(
                fast_hdbscan_s=round(fast["seconds"], 3),
                fast_hdbscan_warmup_s=round(fast["warmup_s"], 3),
                speedup_vs_fast=round(fast["seconds"] / mine["seconds"], 2),
                ari_fast=round(adjusted_rand_score(fast["labels"], mine["labels"]), 4),
            )
    return result


def bench_profile(events: int, seed: int = 7) -> dict[str, Any]:
    """The nightly profile job on ~``events`` generated events (one day, events/100 users), in local Spark,
    against a bare groupBy-count over the same Parquet in the same session."""

    from infra.spark import local_session
    from jobs.profiles import run_profile

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

    import pyarrow.parquet as pq

    from infra.spark import local_session
    from jobs.embed import run_embed
    from world.truth import truth_table

    world = World(WorldConfig(users=users, days=days, seed=seed, events_per_user_day=30.0, profile="dense"))
    with tempfile.TemporaryDirectory(prefix="argus-eval-embed-") as scratch:
        lake = Path(scratch)
        write_world(world, lake)
        spark = local_session("argus-eval-embeddings")
        try:
            result = run_embed(spark, lake, world.cfg.start + timedelta(days=days - 1))
            table = pq.read_table(str(result["path"])).to_pandas().set_index("user_id")
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

    from argus.evals.common import world_events
    from detectors.registry import detector_class

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
