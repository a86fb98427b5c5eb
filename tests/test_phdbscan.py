"""pHDBSCAN against the hdbscan library: exact on complete graphs, close on k-NN graphs, robust at the edges."""

from __future__ import annotations

from pathlib import Path

import hdbscan
import numpy as np
import pytest
from sklearn.datasets import make_blobs, make_moons
from sklearn.metrics import adjusted_rand_score

from detectors.cluster import PHDBSCAN


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
    from detectors.cluster.knn import gpu_available

    if not gpu_available():
        with pytest.raises(ValueError, match="FAISS sees no GPU"):
            PHDBSCAN(use_gpu=True).fit(np.random.default_rng(0).normal(size=(100, 4)))
