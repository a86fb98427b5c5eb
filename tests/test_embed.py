"""Behaviour-sequence embeddings: fraud-ring members sit closer to each other than to normal users."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest

from argus.jobs.embed import _with_gaps
from argus.jobs.lake import read_pandas
from argus.world.config import WorldConfig
from argus.world.simulate import World
from argus.world.sinks import write_world
from argus.world.truth import truth_table
from tests.spark_partitions import each_shuffle_partitioning


def test_gap_tokens_sit_between_events_and_ages_count_back_from_the_day_end() -> None:
    end = 10 * 86_400
    words, ages = _with_gaps([(0, "chat"), (30, "click:view"), (30 + 7_200, "acct:login")], end, max_tokens=10)
    assert words == ["chat", "gap:<1m", "click:view", "gap:1-6h", "acct:login"]
    assert ages[0] == 10.0 and ages[-1] == (end - 7_230) / 86_400
    assert _with_gaps([(0, "a"), (1, "b"), (2, "c")], end, max_tokens=2)[0] == ["gap:<1m", "c"]


def test_fraud_rings_cluster_together_on_one_word2vec_partition_and_on_two(spark: object, tmp_path: Path) -> None:
    from argus.jobs.embed import run_embed

    world = World(WorldConfig(users=900, days=6, seed=5, events_per_user_day=25.0, profile="dense"))
    write_world(world, tmp_path)
    trained = {}
    for partitions in (1, 2):
        result = run_embed(spark, tmp_path, date(2026, 10, 6), dim=16, word2vec_partitions=partitions)  # type: ignore[arg-type]
        embedded = read_pandas(tmp_path, "embeddings", date(2026, 10, 6))
        assert embedded is not None and result["users"] == len(embedded)
        assert result["word2vec_partitions"] == partitions
        table = embedded.set_index("user_id").sort_index()
        vectors = np.stack(table.embedding.to_numpy())
        assert vectors.shape[1] == 16 and np.isfinite(vectors).all()
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        rings = truth_table(world).to_pandas().set_index("user_id").fraud_ring.reindex(table.index)
        normal = rings.isna().to_numpy()
        assert rings.nunique() == 3
        for ring in rings.dropna().unique():
            members = (rings == ring).to_numpy()
            within = 1 - (unit[members] @ unit[members].T)[np.triu_indices(members.sum(), 1)].mean()
            to_normal = 1 - (unit[members] @ unit[normal].T).mean()
            assert within < to_normal, (partitions, ring, within, to_normal)
        trained[partitions] = vectors
    assert not np.allclose(trained[1], trained[2])  # two partitions trained other vectors, not the same run twice


def test_word2vec_partitions_below_one_are_refused(tmp_path: Path) -> None:
    from argus.jobs.embed import main, run_embed

    with pytest.raises(ValueError, match="--word2vec-partitions 0: give 1 or more"):
        run_embed(None, tmp_path, date(2026, 10, 6), word2vec_partitions=0)  # type: ignore[arg-type]
    with pytest.raises(SystemExit) as refused:
        main(["--lake", str(tmp_path), "--date", "2026-10-06", "--word2vec-partitions", "0"])
    assert refused.value.code == 2


def test_the_embeddings_are_the_same_whatever_the_shuffle_partitions(spark: object, tmp_path: Path) -> None:
    """Word2Vec's vocabulary and training order come from its input's partitions: one night embedded with its
    shuffles in 1 or in 7 partitions (as the cores of the master decide them) gets the same vectors."""
    from argus.jobs.embed import run_embed

    day = date(2026, 10, 3)
    write_world(World(WorldConfig(users=300, days=3, seed=13, events_per_user_day=25.0, profile="dense")), tmp_path)
    vectors = []
    for _ in each_shuffle_partitioning(spark):
        run_embed(spark, tmp_path, day, 3, dim=16)  # type: ignore[arg-type]
        embedded = read_pandas(tmp_path, "embeddings", day)
        assert embedded is not None
        vectors.append(np.stack(embedded.sort_values("user_id")["embedding"].to_numpy()))
    np.testing.assert_array_equal(vectors[0], vectors[1])


def test_word2vec_learns_from_a_bounded_sample_that_holds_every_token(spark: object, tmp_path: Path) -> None:
    """Above ``fit_users`` users Word2Vec learns from that many (chosen by user hash, the same on any
    partitioning) plus a holder of each token: every token still gets a vector and every user is embedded."""
    from argus.jobs.embed import run_embed

    day = date(2026, 10, 3)
    write_world(World(WorldConfig(users=300, days=3, seed=13, events_per_user_day=25.0, profile="dense")), tmp_path)
    whole = run_embed(spark, tmp_path, day, 3, dim=16)  # type: ignore[arg-type]
    full = np.stack(read_pandas(tmp_path, "embeddings", day).sort_values("user_id")["embedding"].to_numpy())
    sampled = []
    for _ in each_shuffle_partitioning(spark):
        result = run_embed(spark, tmp_path, day, 3, dim=16, fit_users=20)  # type: ignore[arg-type]
        assert 20 <= result["word2vec_users"] <= 20 + whole["vocabulary"]
        assert result["vocabulary"] == whole["vocabulary"]
        assert result["users"] == whole["users"] == whole["word2vec_users"]
        embedded = read_pandas(tmp_path, "embeddings", day)
        assert embedded is not None
        sampled.append(np.stack(embedded.sort_values("user_id")["embedding"].to_numpy()))
    np.testing.assert_array_equal(sampled[0], sampled[1])
    assert np.isfinite(sampled[0]).all() and not np.allclose(sampled[0], full)
