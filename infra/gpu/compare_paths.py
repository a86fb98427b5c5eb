"""pHDBSCAN's GPU path against its CPU path on the same seeded blobs: one JSON line with the ARI.

    python -m argus.infra.gpu.compare_paths --n 1000000 --dim 64 --gpu 1

With ``--gpu 0`` both fits run on the CPU (the script's steps checked without a GPU: ARI 1.0).
"""

from __future__ import annotations

import argparse
import json
import time

from sklearn.metrics import adjusted_rand_score

from argus.bench import blobs_with_noise
from argus.detectors.cluster import PHDBSCAN


def compare_paths(
    n: int, dim: int, use_gpu: bool, min_cluster_size: int = 50, min_samples: int = 10
) -> dict[str, float]:
    data = blobs_with_noise(n, dim)
    timings = {}
    labels = {}
    for name, gpu in (("cpu", False), ("gpu", use_gpu)):
        started = time.perf_counter()
        model = PHDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, use_gpu=gpu).fit(data)
        timings[f"{name}_s"] = round(time.perf_counter() - started, 2)
        labels[name] = model.labels_
    return {
        "n": n,
        "dim": dim,
        "gpu": use_gpu,
        **timings,
        "ari": round(adjusted_rand_score(labels["cpu"], labels["gpu"]), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--gpu", type=int, choices=(0, 1), default=1)
    args = parser.parse_args()
    print(json.dumps(compare_paths(args.n, args.dim, bool(args.gpu))))


if __name__ == "__main__":
    main()
