"""Behaviour-sequence embeddings in which the time between events matters.

The fraud paper encodes each user's event sequence with a time-attention Bi-LSTM. On Spark,
without a GPU, we keep its two ideas and drop the recurrent network:

1. **Time-gap tokens.** Each user's events (all types, in time order) become tokens that name what
   happened (``pay:purchase:declined:small``, ``acct:login``, ``chat``...), and between two events a
   token names the gap (``gap:<1m``, ``gap:1-10m``... ``gap:>1d``). Bursts, pauses and their order
   are now part of the sequence.
2. **Word2Vec** (Spark MLlib skip-gram) learns a vector per token from which tokens occur near
   which, so a declined micro-purchase one minute after another lands near its kind.
3. **Time-decay attention pooling.** A user's vector is the average of its tokens' vectors weighted
   by ``exp(-age / tau)`` (age: days before the profile date's end; tau: 7 days), so recent
   behaviour dominates, as the paper's time attention intends.

Sequences keep each user's last ``max_tokens`` tokens (long histories are folded away by the
decay anyway). Output: ``LAKE/embeddings/date=D/`` with ``user_id``, ``embedding`` (float array),
``tokens``.

Word2Vec trains on one partition by default (``word2vec_partitions=1``, Spark's own default): one
task runs the skip-gram updates over every sequence, so training time grows with the events and does
not shrink with executors. With ``--word2vec-partitions N`` each of N tasks trains a copy of the
vectors on its share of the sequences and the copies are merged after every iteration (MLlib's
``numPartitions``): training runs on N cores, but each copy sees 1/N of the co-occurrences between
merges, so the vectors are noisier and drift further from the one-partition ones as N grows (MLlib
advises keeping N small, or more iterations to recover). The token vocabulary and the pooling are the
same; the default stays one partition so that a night's embeddings, and the evaluations built on them,
do not change with the cluster's size. Either way Word2Vec reads the sequences sorted by user from one
partition, so its vocabulary's numbering and the order it trains in do not depend on the cores or
the shuffle partitions.

Word2Vec learns from at most ``fit_users`` users' sequences (``WORD2VEC_FIT_USERS``, 50,000): the first
in the order of a hash of their user id (``xxhash64``, ties by user id), and for each token the first
user in that order whose sequence holds it, so every token of the night gets a vector and the
vocabulary is the whole one. The vocabulary is small (event and gap tokens), so that many sequences
hold far more co-occurrences than its vectors need, and training time stops growing with the users.
Every user is still pooled with the learnt vectors. Up to ``fit_users`` users the sample is everyone
and the vectors are those learnt from all sequences. The sample depends on the user ids only, so it
too is the same on any master.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from argus.jobs.entry import run_job
from argus.jobs.lake import Lake, is_uri, job_uri_lake
from argus.jobs.publish import Publication, publish_per_user

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

GAP_EDGES_S = (60, 600, 3_600, 6 * 3_600, 86_400)
GAP_NAMES = ("gap:<1m", "gap:1-10m", "gap:10m-1h", "gap:1-6h", "gap:6-24h", "gap:>1d")
DIM = 32
TAU_DAYS = 7.0
# Users Word2Vec learns from at most (plus one holder of each token); every user is still embedded.
WORD2VEC_FIT_USERS = 50_000


def event_tokens(spark: SparkSession, lake: Lake, day: date, days: int) -> DataFrame:
    """(user_id, ts, token) for every event in the window."""
    from pyspark.sql import functions as F

    from argus.jobs.profiles import read_events

    since = (day - timedelta(days=days - 1)).isoformat()
    size = F.when(F.col("amount") <= 5, "small").when(F.col("amount") <= 100, "mid").otherwise("large")
    token_of = {
        "chat": F.lit("chat"),
        "click": F.concat(F.lit("click:"), F.col("action")),
        "payment": F.concat_ws(":", F.lit("pay"), F.col("action"), F.col("status"), size),
        "account": F.concat(F.lit("acct:"), F.col("action")),
        "moderation": F.concat(F.lit("mod:"), F.col("action")),
    }
    parts = []
    for event_type, token in token_of.items():
        frame = read_events(spark, lake, event_type, day)
        if frame is not None:
            parts.append(frame.where(F.col("date") >= since).select("user_id", "ts", token.alias("token")))
    if not parts:
        raise ValueError(f"no events in {lake}/events up to {day}; ingest first or check --date")
    tokens = parts[0]
    for part in parts[1:]:
        tokens = tokens.unionByName(part)
    return tokens


def sequences(tokens: DataFrame) -> DataFrame:
    """(user_id, events): each user's (unix time, token) pairs in time order."""
    from pyspark.sql import functions as F

    ordered = tokens.groupBy("user_id").agg(
        F.sort_array(F.collect_list(F.struct(F.unix_timestamp("ts").alias("t"), F.col("token")))).alias("events")
    )
    return ordered.select("user_id", "events")


def _with_gaps(events: list[tuple[int, str]], end_s: int, max_tokens: int) -> tuple[list[str], list[float]]:
    words: list[str] = []
    ages: list[float] = []
    previous = None
    for t, token in events:
        if previous is not None:
            gap = t - previous
            words.append(GAP_NAMES[int(np.searchsorted(GAP_EDGES_S, gap, side="right"))])
            ages.append((end_s - t) / 86_400)
        words.append(token)
        ages.append((end_s - t) / 86_400)
        previous = t
    return words[-max_tokens:], ages[-max_tokens:]


def fit_sample(docs: DataFrame, fit_users: int) -> DataFrame:
    """The sequences Word2Vec learns from: the first ``fit_users`` users in user-hash order, and for each
    token the first user in that order whose sequence holds it, so that every token gets a vector."""
    from pyspark.sql import functions as F

    ranked = docs.select("user_id", "words", F.xxhash64("user_id").alias("rank"))
    first = ranked.select("rank", "user_id").orderBy("rank", "user_id").limit(fit_users).select("user_id")
    holders = (
        ranked.select("user_id", "rank", F.explode(F.array_distinct("words")).alias("word"))
        .groupBy("word")
        .agg(F.min(F.struct("rank", "user_id")).alias("holder"))
        .select(F.col("holder.user_id").alias("user_id"))
    )
    return docs.join(first.union(holders).distinct(), "user_id", "left_semi")


def run_embed(
    spark: SparkSession,
    lake: Lake,
    day: date,
    days: int = 30,
    dim: int = DIM,
    max_tokens: int = 512,
    seed: int = 7,
    publication: Publication | None = None,
    word2vec_partitions: int = 1,
    fit_users: int = WORD2VEC_FIT_USERS,
) -> dict[str, object]:
    """Embed every user with events in the ``days`` up to ``day`` and publish ``day`` of the embeddings
    table; ``word2vec_partitions`` trades the vectors' accuracy for training on more cores, ``fit_users``
    bounds the users Word2Vec learns from (module doc)."""
    from pyspark.ml.feature import Word2Vec
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if fit_users < 1:
        raise ValueError(f"fit_users {fit_users}: give 1 or more")
    if word2vec_partitions < 1:
        raise ValueError(f"--word2vec-partitions {word2vec_partitions}: give 1 or more (1 trains on one core)")
    lake = lake if is_uri(lake) else Path(lake)
    end_s = int((np.datetime64(day.isoformat()) + np.timedelta64(1, "D")).astype("datetime64[s]").astype(np.int64))
    grouped = sequences(event_tokens(spark, lake, day, days))

    def expand(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            pairs = [
                _with_gaps([(e["t"], e["token"]) for e in events], end_s, max_tokens) for events in batch["events"]
            ]
            yield pd.DataFrame(
                {"user_id": batch["user_id"], "words": [p[0] for p in pairs], "ages": [p[1] for p in pairs]}
            )

    schema = T.StructType(
        [
            T.StructField("user_id", T.StringType()),
            T.StructField("words", T.ArrayType(T.StringType())),
            T.StructField("ages", T.ArrayType(T.DoubleType())),
        ]
    )
    docs = grouped.mapInPandas(expand, schema=schema).cache()
    word2vec = Word2Vec(
        vectorSize=dim,
        windowSize=5,
        minCount=1,
        maxIter=2,
        seed=seed,
        inputCol="words",
        numPartitions=word2vec_partitions,
    )
    # Word2Vec numbers its vocabulary in the order the word counts are collected and trains on the
    # sequences in the order they come: both follow the input's partitions, which follow the cores
    # and the shuffle. Handed one partition sorted by user, it learns the same vectors on any master.
    # The sort runs on every core and is kept: Word2Vec reads its input twice (vocabulary, training).
    training = (fit_sample(docs, fit_users) if docs.count() > fit_users else docs).orderBy("user_id").cache()
    word2vec_users = training.count()
    model = word2vec.fit(training.coalesce(1))
    training.unpersist()
    vectors = {row["word"]: np.asarray(row["vector"].toArray()) for row in model.getVectors().collect()}
    table = spark.sparkContext.broadcast(vectors)

    def pool(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            lookup = table.value
            embeddings = []
            for words, ages in zip(batch["words"], batch["ages"], strict=True):
                weights = np.exp(-np.asarray(ages, dtype=float) / TAU_DAYS)
                stacked = np.stack([lookup.get(w, np.zeros(dim)) for w in words])
                embeddings.append((weights @ stacked / weights.sum()).astype(np.float32).tolist())
            yield pd.DataFrame(
                {"user_id": batch["user_id"], "embedding": embeddings, "tokens": [len(w) for w in batch["words"]]}
            )

    out_schema = T.StructType(
        [
            T.StructField("user_id", T.StringType()),
            T.StructField("embedding", T.ArrayType(T.FloatType())),
            T.StructField("tokens", T.IntegerType()),
        ]
    )
    embedded = docs.mapInPandas(pool, schema=out_schema).withColumn("embedding_date", F.lit(day.isoformat()))
    published, users = publish_per_user(spark, embedded, lake, "embeddings", day, publication)
    docs.unpersist()
    return {
        "date": day.isoformat(),
        "users": users,
        "dim": dim,
        "vocabulary": len(vectors),
        "word2vec_partitions": word2vec_partitions,
        "word2vec_users": word2vec_users,
        "table": published,
    }


def main(argv: list[str]) -> int:
    """spark-submit entry point: embed.py --lake DIR|URI --date YYYY-MM-DD [--days 30] [--dim 32]
    [--word2vec-partitions 1]."""
    parser = argparse.ArgumentParser(prog="embed.py", description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True, type=job_uri_lake)
    parser.add_argument("--date", required=True, type=date.fromisoformat)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--word2vec-partitions", type=_partitions, default=1)
    return run_job(
        parser,
        argv,
        lambda spark, a: (
            run_embed(spark, a.lake, a.date, a.days, a.dim, word2vec_partitions=a.word2vec_partitions),
            0,
        ),
        lease="argus batch embed",
    )


def _partitions(value: str) -> int:
    """``--word2vec-partitions``: a whole number of at least 1."""
    try:
        partitions = int(value)
    except ValueError:
        partitions = 0
    if partitions < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give a whole number of 1 or more (1 trains on one core)")
    return partitions


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
