"""pHDBSCAN against the hdbscan library: exact on complete graphs, close on k-NN graphs, robust at the edges."""

from __future__ import annotations

from pathlib import Path

import hdbscan
import numpy as np
import pytest
from sklearn.datasets import make_blobs, make_moons
from sklearn.metrics import adjusted_rand_score

from argus.detectors.cluster import PHDBSCAN


def _blobs_with_noise(n: int, dim: int, seed: int) -> np.ndarray:
    points, _ = make_blobs(n, dim, centers=5, cluster_std=1.0, center_box=(-10, 10), random_state=seed)
    noise = np.random.default_rng(seed).uniform(-12, 12, (n // 10, dim))
    return np.vstack([points, noise])


def _shapes() -> dict[str, tuple[np.ndarray, dict[str, int]]]:
    rng = np.random.default_rng(3)
    return {
        "blobs": (_blobs_with_noise(600, 8, 1), {"min_cluster_size": 15, "min_samples": 5}),
        "moons": (make_moons(500, noise=0.06, random_state=2)[0], {"min_cluster_size": 10}),
        "varying_density": (
            np.vstack([rng.normal(0, 0.2, (200, 2)), rng.normal(4, 1.5, (300, 2)), rng.normal((8, 0), 0.5, (150, 2))]),
            {"min_cluster_size": 20, "min_samples": 8},
        ),
        "duplicates": (np.repeat(rng.normal(0, 1, (60, 3)), 4, axis=0), {"min_cluster_size": 8, "min_samples": 3}),
        "ties_on_a_grid": (np.round(rng.normal(0, 1, (400, 2)) * 2) / 2, {"min_cluster_size": 10, "min_samples": 5}),
    }


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to a permutation of cluster ids, with noise (-1) kept as noise."""
    if not np.array_equal(a < 0, b < 0):
        return False
    pairs = set(zip(a[a >= 0].tolist(), b[b >= 0].tolist(), strict=True))
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


@pytest.mark.parametrize("shape", list(_shapes()))
def test_complete_graph_equals_hdbscan(shape: str) -> None:
    X, params = _shapes()[shape]
    reference = hdbscan.HDBSCAN(algorithm="generic", **params).fit(X)
    ours = PHDBSCAN(n_neighbors=len(X) - 1, **params).fit(X)
    assert _same_partition(reference.labels_, ours.labels_)
    assert reference.labels_.max() >= 1  # the shapes do have clusters
    np.testing.assert_allclose(ours.probabilities_, reference.probabilities_, atol=1e-9)
    np.testing.assert_allclose(ours.outlier_scores_, reference.outlier_scores_, atol=1e-6)


@pytest.mark.parametrize("knn", ["exact", "ivf", "hnsw"])
def test_knn_graph_agrees_with_hdbscan_on_blobs_with_noise(knn: str) -> None:
    X = _blobs_with_noise(5000, 16, seed=4).astype(np.float32)
    reference = hdbscan.HDBSCAN(min_cluster_size=40, min_samples=10).fit(X)
    ours = PHDBSCAN(min_cluster_size=40, min_samples=10, knn=knn).fit(X)  # default k
    assert adjusted_rand_score(reference.labels_, ours.labels_) >= 0.95
    assert ours.labels_.max() + 1 == 5


def test_disconnected_knn_graph_is_joined_without_dropping_points() -> None:
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.1, (300, 4)), rng.normal(50, 0.1, (300, 4)), rng.normal(-80, 0.1, (5, 4))])
    model = PHDBSCAN(min_cluster_size=20, min_samples=3, n_neighbors=4).fit(X)
    mst = model.minimum_spanning_tree_
    assert mst.shape == (len(X) - 1, 3)
    assert set(mst[:, :2].ravel().astype(int)) == set(range(len(X)))
    complete = PHDBSCAN(min_cluster_size=20, min_samples=3, n_neighbors=len(X) - 1).fit(X)
    assert _same_partition(model.labels_, complete.labels_)


def test_float32_and_float64_give_the_same_labels() -> None:
    X = _blobs_with_noise(800, 6, seed=5)
    a = PHDBSCAN(min_cluster_size=20).fit(X.astype(np.float64)).labels_
    b = PHDBSCAN(min_cluster_size=20).fit(X.astype(np.float32)).labels_
    assert adjusted_rand_score(a, b) == 1.0


def test_deterministic() -> None:
    X = _blobs_with_noise(25_000, 8, seed=6).astype(np.float32)  # above the exact threshold: IVF
    a = PHDBSCAN(min_cluster_size=50, min_samples=10).fit(X).labels_
    b = PHDBSCAN(min_cluster_size=50, min_samples=10).fit(X).labels_
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("X", "expected"),
    [
        (np.random.default_rng(0).normal(size=(4, 3)), "all noise"),  # fewer points than min_cluster_size
        (np.ones((50, 3)), "all noise"),  # all identical
        (np.empty((0, 3)), "empty"),
        (np.ones((1, 3)), "all noise"),
    ],
    ids=["fewer_than_min_cluster_size", "all_identical", "empty", "single_point"],
)
def test_degenerate_inputs(X: np.ndarray, expected: str) -> None:
    model = PHDBSCAN(min_cluster_size=5).fit(X)
    assert model.labels_.shape == (len(X),)
    assert (model.labels_ == -1).all()
    assert np.isfinite(model.outlier_scores_).all() or len(X) == 0


def test_all_identical_points_form_one_cluster_when_allowed() -> None:
    model = PHDBSCAN(min_cluster_size=5, allow_single_cluster=True).fit(np.ones((50, 3)))
    assert hdbscan.HDBSCAN(min_cluster_size=5, allow_single_cluster=True).fit(np.ones((50, 3))).labels_.max() == (
        model.labels_.max()
    )


def test_a_single_dimension() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 0.1, 200), rng.normal(5, 0.1, 200)]).reshape(-1, 1)
    labels = PHDBSCAN(min_cluster_size=20).fit_predict(x)
    assert labels.max() == 1 and len(set(labels[:200])) == 1 and len(set(labels[200:])) == 1


@pytest.mark.parametrize(
    ("X", "params", "message"),
    [
        (np.array([[0.0, np.nan]] * 10), {}, "NaN or infinity .* row 0, column 1"),
        (np.array([[np.inf, 0.0]] * 10), {}, "NaN or infinity"),
        (np.zeros(10), {}, "reshape a single feature"),
        (np.array([["a", "b"]]), {}, "must be numeric"),
        (np.zeros((10, 2)), {"min_cluster_size": 1}, "min_cluster_size must be an integer >= 2"),
        (np.zeros((10, 2)), {"min_samples": 0}, "min_samples must be an integer >= 1"),
        (np.zeros((10, 2)), {"cluster_selection_method": "best"}, "'eom' or 'leaf'"),
        (np.zeros((10, 2)), {"knn": "lsh"}, "knn must be"),
        (np.zeros((10, 2)), {"alpha": 0}, "alpha must be > 0"),
    ],
)
def test_errors_say_what_to_do(X: np.ndarray, params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PHDBSCAN(**params).fit(X)  # type: ignore[arg-type]


def test_approximate_predict_assigns_new_points_to_their_blob() -> None:
    centers = np.array([[0.0] * 8, [10.0] * 8, [-10.0] * 8])
    rng = np.random.default_rng(2)
    train = np.vstack([c + rng.normal(0, 1, (400, 8)) for c in centers])
    model = PHDBSCAN(min_cluster_size=30, min_samples=10).fit(train)
    fresh = np.vstack([c + rng.normal(0, 1, (50, 8)) for c in centers])
    labels, strengths = model.approximate_predict(fresh)
    expected = np.repeat([model.labels_[0], model.labels_[400], model.labels_[800]], 50)
    assert (labels == expected).mean() >= 0.95
    assert ((strengths > 0) & (strengths <= 1))[labels >= 0].all()
    far, far_strength = model.approximate_predict(np.full((3, 8), 100.0))
    assert (far == -1).all() and (far_strength == 0).all()
    # Training points fall back into their own clusters.
    back, _ = model.approximate_predict(train)
    core = model.probabilities_ > 0.5
    assert (back[core] == model.labels_[core]).mean() >= 0.98
    with pytest.raises(ValueError, match="model was fitted on 8"):
        model.approximate_predict(np.zeros((2, 3)))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    X = _blobs_with_noise(1500, 8, seed=8)
    model = PHDBSCAN(min_cluster_size=25).fit(X)
    path = model.save(tmp_path / "model.npz")
    loaded = PHDBSCAN.load(path)
    assert np.array_equal(loaded.labels_, model.labels_)
    assert np.array_equal(loaded.outlier_scores_, model.outlier_scores_)
    assert loaded.get_params() == model.get_params()
    probe = X[::7] + 0.01
    for a, b in zip(model.approximate_predict(probe), loaded.approximate_predict(probe), strict=True):
        assert np.array_equal(a, b)


def test_predict_before_fit_and_gpu_without_gpu() -> None:
    with pytest.raises(RuntimeError, match="call fit"):
        PHDBSCAN().approximate_predict(np.zeros((1, 2)))
    from argus.detectors.cluster.knn import gpu_available

    if not gpu_available():
        with pytest.raises(ValueError, match="FAISS sees no GPU"):
            PHDBSCAN(use_gpu=True).fit(np.random.default_rng(0).normal(size=(100, 4)))


def test_duplicate_rows_are_grouped_with_counts() -> None:
    from argus.detectors.cluster.duplicates import unique_rows, weighted_core_distances

    X = np.array([[0, 0], [1, 0], [0, 0], [2, 2], [1, 0], [0, 0]], dtype=np.float32)
    rows = unique_rows(X)
    assert rows is not None
    assert rows.first.tolist() == [0, 1, 3] and rows.group.tolist() == [0, 1, 0, 2, 1, 0]
    assert rows.counts.tolist() == [3, 2, 1]
    assert unique_rows(np.eye(3, dtype=np.float32)) is None
    # Distinct rows 0 and 1 (2 and 1 other copies) list each other, then row 2, as neighbours.
    dist, idx = np.array([[1.0, 2.8], [1.0, 2.2]]), np.array([[1, 2], [0, 2]])
    copies = rows.counts[:2] - 1
    assert weighted_core_distances(dist, idx, rows.counts, copies, 2).tolist() == [0.0, 1.0]  # a copy; (0, 0)
    assert weighted_core_distances(dist, idx, rows.counts, copies, 4).tolist() == [1.0, 1.0]  # 2 + 2 (1, 0)s
    assert weighted_core_distances(dist, idx, rows.counts, copies, 5).tolist() == [2.8, 2.2]  # then (2, 2)


@pytest.mark.parametrize("copies", [3, 40])
def test_duplicate_heavy_data_gives_hdbscans_exact_result(copies: int) -> None:
    rng = np.random.default_rng(9)
    distinct = np.vstack([rng.normal(0, 0.5, (30, 3)), rng.normal(6, 0.5, (30, 3)), rng.uniform(-8, 14, (10, 3))])
    X = np.repeat(distinct, rng.integers(1, copies, len(distinct)), axis=0)
    rng.shuffle(X)
    params = {"min_cluster_size": 3 * copies, "min_samples": 5}
    reference = hdbscan.HDBSCAN(algorithm="generic", **params).fit(X)
    # 80 neighbours cover every distinct row (a complete graph among them), though far fewer than n - 1.
    ours = PHDBSCAN(n_neighbors=80, **params).fit(X)
    assert ours.n_distinct_ == len(distinct) < len(X) - 1 > 80
    assert reference.labels_.max() >= 1
    assert _same_partition(reference.labels_, ours.labels_)
    np.testing.assert_allclose(ours.probabilities_, reference.probabilities_, atol=1e-6)
    np.testing.assert_allclose(ours.outlier_scores_, reference.outlier_scores_, atol=1e-6)
    labels, _ = ours.approximate_predict(X[:50])
    assert (labels[ours.probabilities_[:50] > 0.5] == ours.labels_[:50][ours.probabilities_[:50] > 0.5]).all()


# --- the large-data paths: two-level IVF, the self-join's selection, Kruskal on the graph --------


def test_nearest_columns_selects_the_k_smallest_distances() -> None:
    from argus.detectors.cluster.knn import _nearest_columns

    rng = np.random.default_rng(12)
    queries, candidates = rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(300, 6)).astype(np.float32)
    found = _nearest_columns(queries @ candidates.T, np.einsum("ij,ij->i", candidates, candidates), 7)
    squared = ((queries[:, None, :] - candidates[None, :, :]) ** 2).sum(axis=2)
    assert np.array_equal(found, np.argsort(squared, axis=1)[:, :7])  # nearest first, as a sort gives


def test_spanning_forest_matches_scipy_and_keeps_components_apart() -> None:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    from argus.detectors.cluster.forest import SpanningForest

    rng = np.random.default_rng(13)
    n, k = 500, 6
    knn_idx = rng.integers(0, n // 2, (n, k))  # two halves with no edge between them
    knn_idx[n // 2 :] += n // 2
    knn_idx[::17, -1] = -1  # missing neighbours
    knn_dist = rng.random((n, k)).round(2)  # many ties
    core = np.zeros(n)
    for dtype in (np.float64, np.float32):
        forest = SpanningForest(n)
        forest.add_knn_graph(knn_dist.astype(dtype), knn_idx.astype(np.int32), core.astype(dtype))
        rows = np.repeat(np.arange(n), k)
        valid = (knn_idx.ravel() >= 0) & (knn_idx.ravel() != rows)
        # scipy: no explicit zeros, and each pair once at its lighter weight (repeated entries are summed)
        cheapest = np.argsort(knn_dist.ravel()[valid], kind="stable")
        a, b, weight = rows[valid][cheapest], knn_idx.ravel()[valid][cheapest], knn_dist.ravel()[valid][cheapest] + 1
        pairs = np.unique(np.sort(np.column_stack([a, b]), axis=1), axis=0, return_index=True)[1]
        graph = coo_matrix((weight[pairs], (a[pairs], b[pairs])), shape=(n, n))
        reference = minimum_spanning_tree(graph)
        count, labels = forest.components()
        assert count == 2 and len(set(labels[: n // 2])) == 1 and labels[0] != labels[-1]
        assert len(forest.edges) == n - 2 == reference.nnz
        assert forest.edges[:, 2].sum() + len(forest.edges) == pytest.approx(reference.sum(), rel=1e-6)
        forest.add_edges(np.array([[3.0, n - 1.0, 9.0], [0.0, n - 2.0, 5.0], [1.0, 2.0, 0.0]]))
        assert forest.components()[0] == 1 and forest.edges[-1].tolist() == [0.0, n - 2.0, 5.0]


@pytest.fixture
def two_level_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small data on the 10-million-point index: two-level lists above 16 lists."""
    from argus.detectors.cluster import knn

    monkeypatch.setattr(knn, "FLAT_QUANTIZER_UP_TO", 16)


@pytest.mark.usefixtures("two_level_lists")
def test_two_level_ivf_index_holds_every_point_and_finds_neighbours() -> None:
    import faiss

    from argus.detectors.cluster.knn import build_index, ivf_lists, ivf_self_join

    X = _blobs_with_noise(6000, 8, seed=14).astype(np.float32)
    index = build_index(X, "ivf")
    ivf = faiss.extract_index_ivf(index.index)
    assert isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSWFlat) and ivf.nlist >= 100
    held = np.concatenate(ivf_lists(ivf))
    assert np.array_equal(np.sort(held), np.arange(len(X)))  # each point in exactly one list
    dist, idx = ivf_self_join(index, 11)
    assert dist.dtype == np.float32 and idx.dtype == np.int32
    _, truth = faiss.knn(X, X, 11)
    recall = np.mean([len(set(a) & set(b)) for a, b in zip(idx.tolist(), truth.tolist(), strict=True)]) / 11
    assert recall >= 0.85  # 0.89 measured: 12 lists of about 40 points searched per list
    np.testing.assert_allclose(dist, np.sqrt(((X[:, None, :] - X[idx]) ** 2).sum(axis=2)), rtol=1e-5, atol=1e-5)
    _, found = index.search(X[:50] + 0.01, 5)  # queries reach their lists through the HNSW centroids
    assert (found[:, 0] == np.arange(50)).mean() >= 0.95


@pytest.mark.usefixtures("two_level_lists")
def test_two_level_ivf_clusters_like_hdbscan() -> None:
    X = _blobs_with_noise(5000, 16, seed=4).astype(np.float32)
    reference = hdbscan.HDBSCAN(min_cluster_size=40, min_samples=10).fit(X)
    ours = PHDBSCAN(min_cluster_size=40, min_samples=10, knn="ivf").fit(X)
    assert adjusted_rand_score(reference.labels_, ours.labels_) >= 0.95
    labels, _ = ours.approximate_predict(X[:200])
    assert (labels == ours.labels_[:200]).mean() >= 0.95


# --- the benchmark harness (argus bench cluster) -------------------------------------------


def _two_blobs(n: int = 400, dim: int = 4) -> np.ndarray:
    rng = np.random.default_rng(11)
    return np.vstack([rng.normal(0, 0.3, (n // 2, dim)), rng.normal(5, 0.3, (n // 2, dim))]).astype(np.float32)


def test_bench_reads_npy_csv_and_parquet_alike(tmp_path: Path) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from argus.bench import load_matrix

    X = _two_blobs(40, 3).astype(np.float64)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(X))
    pd.DataFrame(X, columns=["a", "b", "c"]).to_csv(tmp_path / "header.csv", index=False)
    pd.DataFrame(X).to_csv(tmp_path / "bare.csv", index=False, header=False)
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2]}), tmp_path / "columns.parquet")
    embedding = pa.array(X.tolist(), type=pa.list_(pa.float64(), 3))  # one vector per row, as argus.jobs.embed writes
    pq.write_table(pa.table({"embedding": embedding}), tmp_path / "vectors.pq")
    for name in ("fortran.npy", "header.csv", "bare.csv", "columns.parquet", "vectors.pq"):
        np.testing.assert_allclose(load_matrix(tmp_path / name), X, rtol=1e-12, err_msg=name)


def test_bench_data_errors_say_what_to_do(tmp_path: Path) -> None:
    import pandas as pd

    from argus.bench import BenchDataError, load_matrix

    pd.DataFrame({"x": [1.0, 2.0], "user": ["a", "b"]}).to_csv(tmp_path / "text.csv", index=False)
    pd.DataFrame({"x": [1.0, np.nan, 3.0], "y": [1.0, 2.0, 3.0]}).to_parquet(tmp_path / "gaps.parquet")
    np.save(tmp_path / "flat.npy", np.zeros(5))
    (tmp_path / "data.json").write_text("[]")
    for name, message in [
        ("text.csv", "column.* user are not numeric; drop or encode them"),
        ("gaps.parquet", "1 rows have missing or infinite values .first: row 1.; drop or impute"),
        ("flat.npy", "need a 2-D matrix"),
        ("data.json", r"--data takes \.npy, \.csv, \.parquet, \.pq files"),
    ]:
        with pytest.raises(BenchDataError, match=message):
            load_matrix(tmp_path / name)


def test_bench_runs_every_library_on_the_same_fortran_ordered_duplicate_heavy_data(tmp_path: Path) -> None:
    from argus.bench import bench_cluster

    X = np.asfortranarray(np.repeat(_two_blobs(), 3, axis=0))  # as pandas' .to_numpy() often leaves it
    np.save(tmp_path / "x.npy", X)
    result = bench_cluster(0, 0, 20, 5, tmp_path / "x.npy", skip_fast=True, repeats=2)
    assert (result["n"], result["dim"], result["duplicate_rows"]) == (1200, 4, 800)
    assert len(result["ours_runs_s"]) == len(result["hdbscan_runs_s"]) == 2
    assert result["clusters"] == 2 and result["ari"] == 1.0
    assert "fast_hdbscan_s" not in result and "hdbscan" not in result  # skipped, not failed


def test_one_library_failing_keeps_the_others_figures(tmp_path: Path) -> None:
    from argus.bench import bench_cluster

    np.save(tmp_path / "x.npy", _two_blobs(30, 2))
    # scikit-learn's HDBSCAN in hdbscan's place refuses min_samples above n; ours clusters the 30 points.
    sklearn_in_its_place = {"hdbscan": "sklearn.cluster:HDBSCAN"}
    result = bench_cluster(0, 0, 5, 40, tmp_path / "x.npy", skip_fast=True, repeats=2, estimators=sklearn_in_its_place)
    assert result["hdbscan"]["error"].startswith("ValueError") and result["hdbscan"]["completed_runs"] == 0
    assert len(result["ours_runs_s"]) == 2 and "speedup" not in result


def test_bench_without_fast_hdbscan_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from argus import cli

    monkeypatch.setitem(sys.modules, "fast_hdbscan", None)  # import fails as if not installed
    monkeypatch.setattr(sys, "argv", ["argus", "bench", "cluster", "--n", "100", "--dim", "2", "--skip-hdbscan"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "pip install -e '.[bench]'" in " ".join(capsys.readouterr().err.split())


# --- the GPU check script, its steps run on CPU ------------------------------------------------


def test_gpu_check_script_runs_its_steps_on_cpu_and_judges_them(tmp_path: Path) -> None:
    import json
    import os
    import subprocess

    script = Path(__file__).parents[1] / "infra" / "gpu" / "check_phdbscan.sh"
    small = {"CPU_ONLY": "1", "N": "3000", "DIM": "8", "SAMPLE": "2000", "OUT": str(tmp_path), "LIMIT_S": "0.000001"}
    done = subprocess.run(
        ["bash", str(script)], env={**os.environ, **small}, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 1, done.stderr  # no fit takes a microsecond: the time target is missed
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["fast_enough"] is False and verdict["agrees"] is True and verdict["ari_gpu_vs_cpu"] == 1.0
    assert json.loads((tmp_path / "full.json").read_text())["n"] == 3000
    if subprocess.run(["bash", "-c", "command -v nvidia-smi"], capture_output=True).returncode != 0:
        no_gpu = subprocess.run(
            ["bash", str(script)], env={**os.environ, "OUT": str(tmp_path)}, capture_output=True, text=True
        )
        assert no_gpu.returncode == 3 and "no NVIDIA GPU here" in no_gpu.stderr
