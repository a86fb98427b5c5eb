"""Ban evasion after Niverthi, Verma & Kumar, "Characterizing, Detecting, and Predicting Online Ban Evasion".

A banned account (the *parent*) comes back as a new account (the *child*). For every new account
the candidates are the ``candidates`` (50, the paper's matching set) accounts banned closest in
time before it was created, plus its nearest banned accounts by FAISS inner product over account
embeddings (username character n-grams, channels, words), so a child that waited long is still
found. Each (parent, child) pair is described by ``PAIR_FEATURES`` (username similarity, shared
channels and words, writing style, time since the ban, and shared device and network
fingerprints weighted by how few accounts use them, so a carrier's NAT address is no evidence)
and a logistic regression gives the probability that the child is the parent's new account.
A new account's score is its best pair's probability; its reasons name the parent.

Fitting: with known evasion cases (``labels``: child -> parent) the model is the paper's
supervised pair classifier. Without them, pairs whose accounts share a device or network
fingerprint teach the model (distant supervision) and the fingerprint features are left out, so
the model learns what evaders look like in names, timing, channels and words and finds those who
changed device and network too; a fingerprint match itself then scores ``FINGERPRINT_MATCH_SCORE`` at
least. The model flags at most the share of the other new accounts that the matches tie to a banned
account, none less likely than the matched pairs' 20th percentile; with fewer than ``MIN_MATCHED``
matched new accounts it flags nobody (see ``_fingerprint_share_threshold``).
With fewer than two such pairs the mean of the pair similarities ranks instead (the fit's metrics say so).

The detector's population is new accounts (a sign-up in the events); other accounts get no score
(``not a new account``). A new account with no account banned before its creation has no
candidate parent: it scores 0 with status ``low evidence: no account was banned before this one
was created`` (nobody it could be evading from is in the data).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Collection, Iterable, Sequence
from difflib import SequenceMatcher
from itertools import chain
from typing import Any, Self

import numpy as np
import pandas as pd

from argus.detectors.base import LOW_EVIDENCE, SCORED, Detector, Reason, score_frame
from argus.detectors.events import Events

MATCH_CANDIDATES = 50  # the paper matches a child among the 50 accounts banned closest in time
RETRIEVED = 10  # extra candidates per child from FAISS retrieval
FINGERPRINTS = ("shared_device", "shared_network")
FINGERPRINT_MATCH_SCORE = 0.75  # unsupervised fit: a new account on a banned account's device or network is flagged
# Unsupervised fit: with fewer fingerprint-matched new accounts, their share (from k matches, a
# relative error of about 1/sqrt(k)) and a percentile of their pairs' probabilities (resting on the
# lowest one or two) are too uncertain to set the model's threshold: the matches alone are flagged.
MIN_MATCHED = 10
TAUGHT_FLOOR_QUANTILE = 0.2  # a pair flagged by the model is as likely as four in five matched pairs at least
FINGERPRINTS_ONLY = f"fingerprint matches only (fewer than {MIN_MATCHED} matched new accounts)"
# A fingerprint counts as a match only when few accounts use it: a family's router is evidence, a
# mobile carrier's NAT address or an internet café's machine (hundreds of accounts) is not.
SPECIFIC_MATCH = 0.3  # fingerprint specificity 1/(accounts on it - 1): at most 4 accounts share it (a home)
PAIR_FEATURES = [
    "name_ngram_jaccard",
    "name_core_similarity",
    "name_contains",
    "channel_cosine",
    "page_jaccard",
    "content_cosine",
    "style_similarity",
    "psycholinguistic_similarity",
    "hours_after_ban_log",
    "shared_device",
    "shared_network",
]
# Psycholinguistic word categories in the spirit of LIWC (which the paper uses; its lexicon is not
# free): how often an account uses each kind of word is a habit that survives a new account.
PSYCHOLINGUISTIC_CATEGORIES: dict[str, frozenset[str]] = {
    name: frozenset(words.split())
    for name, words in {
        "i": "i me my mine myself im ive",
        "we": "we us our ours ourselves",
        "you": "you your yours yourself u ur",
        "negation": "no not never none nothing cant dont wont isnt aint nope",
        "positive": "good great nice love awesome cool thanks gg lol haha pog poggers",
        "negative": "bad sad hate worst awful terrible trash garbage sucks ugh",
        "anger": "stupid idiot idiots dumb shut stfu wtf damn hell clown clowns",
        "certainty": "always never definitely sure obviously literally totally",
        "tentative": "maybe perhaps guess probably might kinda sorta idk",
        "question": "why what how who when where",
    }.items()
}
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_AFFIXES = re.compile(r"^(?:the|not|x+|real|its|im)|(?:alt|back|v\d|real|new|again|x+|official)$")
_EMBED_DIM = 256
_DIGEST = re.compile(r"[0-9a-f]{32}")  # argus.schemas.privacy's digests


def name_core(name: str) -> str:
    """A username reduced to what evaders keep: numbers, separators and common affixes dropped, leet undone."""
    # Runs of two or more digits at either end of a part are numbers ("hawk44"); single digits
    # between letters are leet ("th3").
    parts = [re.sub(r"^\d{2,}|\d{2,}$", "", part) for part in re.split(r"[^a-z0-9@$]+", name.lower())]
    core = re.sub(r"[^a-z]", "", "".join(parts).translate(_LEET))
    for _ in range(2):
        core = _AFFIXES.sub("", core) or core
    return core


def _grams(text: str, n: int = 3) -> set[str]:
    padded = f"^{text}$"
    return {padded[i : i + n] for i in range(max(1, len(padded) - n + 1))}


def is_digest(name: str) -> bool:
    """A username stored salted-hashed (``[privacy] hash_fields``): only equality means anything."""
    return _DIGEST.fullmatch(name) is not None


def name_similarity(parent: str, child: str) -> dict[str, float]:
    """The username part of the pair features (exact match only between hashed usernames)."""
    if is_digest(parent) or is_digest(child):
        same = float(bool(parent) and parent == child)
        return {"name_ngram_jaccard": same, "name_core_similarity": same, "name_contains": same}
    p, c = parent.lower(), child.lower()
    gp, gc = _grams(p), _grams(c)
    core_p, core_c = name_core(parent), name_core(child)
    contains = len(min(core_p, core_c, key=len)) >= 3 and (core_p in core_c or core_c in core_p)
    return {
        "name_ngram_jaccard": len(gp & gc) / len(gp | gc),
        "name_core_similarity": SequenceMatcher(None, core_p, core_c).ratio() if core_p and core_c else 0.0,
        "name_contains": float(contains),
    }


def account_profiles(events: Events) -> pd.DataFrame:
    """One row per account: identity (names, creation, ban), fingerprints, where and what it writes."""
    users = events.user_ids
    account = events["account"]
    chat = events["chat"]
    click = events["click"]
    profile = pd.DataFrame(index=users)
    profile.index.name = "user_id"

    named = account.dropna(subset=["username"])
    profile["username"] = named.groupby("user_id")["username"].last().reindex(users).fillna("")
    signups = account[account["action"] == "signup"].groupby("user_id")["ts"].min()
    profile["created_ts"] = signups.reindex(users)
    firsts = [f.groupby("user_id")["ts"].min() for f in events.frames.values() if len(f)]
    profile["first_seen_ts"] = pd.concat(firsts).groupby(level=0).min().reindex(users) if firsts else pd.NaT
    bans = account[account["action"].isin(["ban", "unban"])].sort_values("ts")
    last = bans.groupby("user_id").last()
    banned = last[last["action"] == "ban"]["ts"]
    profile["banned_ts"] = banned.reindex(users)
    profile["devices"] = _sets(account, "device_fp", users)
    profile["networks"] = _sets(account, "network_fp", users)
    profile["channels"] = chat.groupby("user_id")["context"].agg(lambda c: c.value_counts().to_dict()).reindex(users)
    profile["pages"] = _sets(click, "context", users)
    texts = chat.groupby("user_id")["text"].agg(lambda t: " ".join(t.tail(400)))
    profile["text"] = texts.reindex(users).fillna("")
    profile["messages"] = chat.groupby("user_id").size().reindex(users).fillna(0).astype(float)
    letters = chat["text"].str.replace(r"[^\w]|[\d_]", "", regex=True)
    caps = (letters.str.len() >= 3) & (letters == letters.str.upper())
    profile["caps_ratio"] = caps.groupby(chat["user_id"]).mean().reindex(users)
    profile["message_length"] = chat["text"].str.len().groupby(chat["user_id"]).mean().reindex(users)
    profile["psycholinguistic"] = psycholinguistic_profile(chat).reindex(users)
    profile["events"] = sum((f.groupby("user_id").size().reindex(users).fillna(0) for f in events.frames.values()), 0.0)
    profile["channels"] = profile["channels"].map(lambda v: v if isinstance(v, dict) else {})
    if len(profile) == 0:
        profile["events"] = pd.Series(dtype=float)
    return profile


def _sets(frame: pd.DataFrame, column: str, users: pd.Index) -> pd.Series:
    values = frame.dropna(subset=[column]).groupby("user_id")[column].agg(lambda v: frozenset(v))
    return values.reindex(users).map(lambda v: v if isinstance(v, frozenset) else frozenset())


def candidate_pairs(
    profiles: pd.DataFrame,
    candidates: int = MATCH_CANDIDATES,
    retrieved: int = RETRIEVED,
    children: Iterable[str] | None = None,
) -> pd.DataFrame:
    """(child, parent) pairs: each new account against the accounts banned before it was created.

    The ``candidates`` bans closest in time before the creation, plus the ``retrieved`` nearest
    banned accounts by account embedding (FAISS inner product) among all banned before it. With
    ``children``, those new accounts' pairs only: a child's pairs depend on it and the banned accounts alone.
    """
    new = profiles[profiles["created_ts"].notna()]
    if children is not None:
        new = new[new.index.astype(str).isin(pd.Index(list(children)).astype(str))]
    parents = profiles[profiles["banned_ts"].notna()]
    if new.empty or parents.empty:
        return pd.DataFrame({"child": pd.Series(dtype=object), "parent": pd.Series(dtype=object)})
    ban_order = parents["banned_ts"].sort_values(kind="stable")
    before = np.searchsorted(_nanoseconds(ban_order), _nanoseconds(new["created_ts"]), side="left")
    first = np.maximum(before - candidates, 0)
    counts = before - first
    # Child i's parents are ban_order[first[i] : before[i]], laid end to end.
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    closest = np.repeat(first, counts) + np.arange(int(counts.sum())) - starts
    found = [(np.repeat(np.arange(len(new)), counts), ban_order.index.to_numpy()[closest])]
    if retrieved:
        found.append(_retrieved_pairs(new, parents, retrieved))
    child_rows = np.concatenate([rows for rows, _ in found])
    pairs = pd.DataFrame(
        {
            "child": new.index.astype(str).to_numpy()[child_rows],
            "parent": pd.Index(np.concatenate([parents for _, parents in found])).astype(str),
        }
    ).drop_duplicates()
    pairs = pairs[pairs["child"] != pairs["parent"]]
    return pairs.sort_values(["child", "parent"]).reset_index(drop=True)


def _nanoseconds(times: pd.Series) -> np.ndarray:
    return np.asarray(times.dt.as_unit("ns").astype("int64").to_numpy())


def account_embeddings(profiles: pd.DataFrame) -> np.ndarray:
    """Unit vectors from username character 3-grams, channels and words (hashed, equally weighted)."""
    from scipy import sparse
    from sklearn.feature_extraction.text import HashingVectorizer

    names = profiles["username"].map(lambda n: n if is_digest(n) else " ".join(_grams(name_core(n) or n.lower())))
    channels = profiles["channels"].map(lambda c: " ".join(f"ch{i}" for i in c))
    parts = []
    for texts, analyzer in ((names, "word"), (channels, "word"), (profiles["text"], "word")):
        vectorizer = HashingVectorizer(n_features=_EMBED_DIM, alternate_sign=False, analyzer=analyzer, norm="l2")
        parts.append(vectorizer.transform(texts.to_numpy()))
    data = np.asarray(sparse.hstack(parts, format="csr").astype(np.float32).toarray())  # one dense copy, float32
    norms = np.linalg.norm(data, axis=1, keepdims=True)
    data /= np.where(norms == 0, 1, norms)
    return data


def _retrieved_pairs(children: pd.DataFrame, parents: pd.DataFrame, retrieved: int) -> tuple[np.ndarray, np.ndarray]:
    """(row in ``children``, parent user id) of each child's ``retrieved`` nearest banned accounts banned before it."""
    import faiss

    parent_vectors = account_embeddings(parents)  # an account's vector is its own: only these two sets are needed
    index = faiss.IndexFlatIP(parent_vectors.shape[1])
    index.add(parent_vectors)
    k = min(len(parents), retrieved * 3)
    _, found = index.search(account_embeddings(children), k)
    ban_ts = _nanoseconds(parents["banned_ts"])
    created = _nanoseconds(children["created_ts"])
    earlier = (found >= 0) & (ban_ts[np.maximum(found, 0)] < created[:, None])
    kept = earlier & (np.cumsum(earlier, axis=1) <= retrieved)  # the first ``retrieved`` hits banned before
    rows, columns = np.nonzero(kept)
    return rows, parents.index.to_numpy()[found[rows, columns]]


# Accounts per device and per network fingerprint (``accounts_per_fingerprint``): a fingerprint's specificity.
FingerprintAccounts = tuple[dict[str, int], dict[str, int]]


def pair_features(
    profiles: pd.DataFrame,
    pairs: pd.DataFrame,
    fingerprint_accounts: FingerprintAccounts | None = None,
    text_accounts: pd.Index | None = None,
) -> pd.DataFrame:
    """``PAIR_FEATURES`` for each (child, parent) row of ``pairs``.

    ``fingerprint_accounts``: accounts per device and per network fingerprint over a population
    larger than ``profiles`` (the streaming state); default: counted over ``profiles``.
    ``text_accounts``: the accounts whose words weigh the content similarity (TF-IDF); default: the
    accounts of ``pairs``. Given the accounts of all candidate pairs, features of some of the pairs
    equal those computed with all of them.

    Computed over all pairs at once: each account's names, sets and vectors are prepared once, set
    overlaps are row products of sparse account x item matrices, and only the username core
    similarity (``difflib``'s ratio, with no array form) loops, reusing one matcher per child.
    """
    if pairs.empty:
        return pd.DataFrame(columns=PAIR_FEATURES, dtype=float)
    involved = pd.Index(pd.unique(pd.concat([pairs["child"], pairs["parent"]])))
    sub = profiles.loc[involved]
    ci = involved.get_indexer(pairs["child"])
    pi = involved.get_indexer(pairs["parent"])
    if fingerprint_accounts is None:
        fingerprint_accounts = accounts_per_fingerprint(profiles)
    device_users, network_users = fingerprint_accounts
    out = pd.DataFrame(_name_features(sub["username"].tolist(), pi, ci))
    out["channel_cosine"] = _channel_cosine(sub["channels"].tolist(), pi, ci)
    out["page_jaccard"] = _set_jaccard(sub["pages"].tolist(), pi, ci, empty=0.0)
    corpus = None if text_accounts is None else profiles.loc[text_accounts, "text"].to_numpy()
    out["content_cosine"] = _content_cosine(sub["text"].to_numpy(), pi, ci, corpus)
    out["style_similarity"] = _style_similarity(sub, pi, ci)
    out["psycholinguistic_similarity"] = _vector_cosine(sub["psycholinguistic"].tolist(), pi, ci)
    created = pd.DatetimeIndex(sub["created_ts"])[ci]
    banned = pd.DatetimeIndex(sub["banned_ts"])[pi]
    hours = np.asarray((created - banned).total_seconds(), dtype=float) / 3600
    out["hours_after_ban_log"] = np.log1p(np.maximum(hours, 0.0))
    out["shared_device"] = _specificity(sub["devices"].tolist(), device_users, pi, ci)
    out["shared_network"] = _specificity(sub["networks"].tolist(), network_users, pi, ci)
    return out[PAIR_FEATURES].astype(float)


# Pairs per sparse row product: bounds the temporary matrices (a few items per account and pair).
_PAIR_CHUNK = 200_000


def _item_matrix(
    items: Sequence[Collection[Any]], values: Sequence[Iterable[float]] | None = None
) -> tuple[Any, pd.Index]:
    """Accounts x items (CSR): 1 where an account has an item (or the item's value); and the items."""
    from scipy import sparse

    lengths = np.fromiter((len(i) for i in items), dtype=np.int64, count=len(items))
    flat = pd.Series(list(chain.from_iterable(items)), dtype=object)
    codes, uniques = pd.factorize(flat)
    data = np.ones(len(codes)) if values is None else np.fromiter(chain.from_iterable(values), dtype=float)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    matrix = sparse.csr_matrix((data, codes, indptr), shape=(len(items), max(len(uniques), 1)))
    return matrix, pd.Index(uniques)


def _row_products(left: Any, right: Any, li: np.ndarray, ri: np.ndarray, reduce: str = "sum") -> np.ndarray:
    """Per pair k, the sum (or max) over items of ``left[li[k]] * right[ri[k]]``."""
    out = np.zeros(len(li))
    for start in range(0, len(li), _PAIR_CHUNK):
        part = slice(start, start + _PAIR_CHUNK)
        product = left[li[part]].multiply(right[ri[part]])
        found = product.sum(axis=1) if reduce == "sum" else product.max(axis=1).toarray()
        out[part] = np.asarray(found, dtype=float).ravel()
    return out


def _set_jaccard(sets: Sequence[Collection[Any]], pi: np.ndarray, ci: np.ndarray, empty: float) -> np.ndarray:
    """|a & b| / |a | b| per pair (``empty`` when both sets are empty)."""
    matrix, _ = _item_matrix(sets)
    sizes = np.asarray(matrix.sum(axis=1), dtype=float).ravel()
    shared = _row_products(matrix, matrix, pi, ci)
    union = sizes[pi] + sizes[ci] - shared
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, shared / np.where(union > 0, union, 1.0), empty)


def _name_features(names: list[str], pi: np.ndarray, ci: np.ndarray) -> dict[str, np.ndarray]:
    """The username part of the pair features, as ``name_similarity`` gives them pair by pair."""
    digest = np.array([is_digest(n) for n in names], dtype=bool)
    cores = [name_core(n) for n in names]
    jaccard = _set_jaccard([_grams(n.lower()) for n in names], pi, ci, empty=0.0)
    core_similarity = np.zeros(len(pi))
    contains = np.zeros(len(pi))
    matcher = SequenceMatcher(None)  # its second sequence (the child's core) is indexed once per child
    current = -1
    for k, (p, c) in enumerate(zip(pi.tolist(), ci.tolist(), strict=True)):
        core_p, core_c = cores[p], cores[c]
        if digest[p] or digest[c]:
            continue
        if core_p and core_c:
            if c != current:
                matcher.set_seq2(core_c)
                current = c
            matcher.set_seq1(core_p)
            core_similarity[k] = matcher.ratio()
        contains[k] = len(min(core_p, core_c, key=len)) >= 3 and (core_p in core_c or core_c in core_p)
    hashed = digest[pi] | digest[ci]
    if hashed.any():
        usernames = np.array(names, dtype=object)
        same = ((usernames[pi] == usernames[ci]) & (usernames[pi] != "")).astype(float)
        for values in (jaccard, core_similarity, contains):
            values[hashed] = same[hashed]
    return {"name_ngram_jaccard": jaccard, "name_core_similarity": core_similarity, "name_contains": contains}


def _channel_cosine(channels: list[dict[str, int]], pi: np.ndarray, ci: np.ndarray) -> np.ndarray:
    """Cosine of the two accounts' message counts per channel (0 when either never chatted)."""
    matrix, _ = _item_matrix([c.keys() for c in channels], [c.values() for c in channels])
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1), dtype=float).ravel())
    dot = _row_products(matrix, matrix, pi, ci)
    scale = norms[pi] * norms[ci]
    return np.where(scale > 0, dot / np.where(scale > 0, scale, 1.0), 0.0)


def _content_cosine(texts: np.ndarray, pi: np.ndarray, ci: np.ndarray, corpus: np.ndarray | None = None) -> np.ndarray:
    """TF-IDF cosine of the two accounts' words (1- and 2-grams weighted over ``corpus``, default ``texts``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=1, ngram_range=(1, 2), max_features=50_000)
    try:
        matrix = tfidf.fit_transform(texts) if corpus is None else tfidf.fit(corpus).transform(texts)
    except ValueError:  # nobody involved wrote a word (new accounts scored at sign-up): no content evidence
        return np.zeros(len(pi))
    matrix = matrix.tocsr()
    return _row_products(matrix, matrix, ci, pi)


def _style_similarity(sub: pd.DataFrame, pi: np.ndarray, ci: np.ndarray) -> np.ndarray:
    """1 minus the mean relative gap in caps ratio and message length (0 when either never wrote)."""
    messages = sub["messages"].to_numpy(dtype=float)
    caps_ratio = sub["caps_ratio"].to_numpy(dtype=float)
    length = sub["message_length"].to_numpy(dtype=float)
    wrote = (messages[pi] > 0) & (messages[ci] > 0)
    caps = np.abs(caps_ratio[pi] - caps_ratio[ci])
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.abs(length[pi] - length[ci]) / np.maximum(np.maximum(length[pi], length[ci]), 1.0)
        value = 1.0 - (caps + gap) / 2
    return np.where(wrote & np.isfinite(value), value, 0.0)


def _vector_cosine(vectors: list[object], pi: np.ndarray, ci: np.ndarray) -> np.ndarray:
    """Cosine of the two accounts' vectors (0 when either has none or a zero vector)."""
    arrays = {row: v for row, v in enumerate(vectors) if isinstance(v, np.ndarray)}
    if not arrays:
        return np.zeros(len(pi))
    matrix = np.zeros((len(vectors), len(next(iter(arrays.values())))))
    norms = np.zeros(len(vectors))
    for row, vector in arrays.items():
        matrix[row] = vector
        norms[row] = np.linalg.norm(vector)
    out = np.zeros(len(pi))
    for start in range(0, len(pi), _PAIR_CHUNK):
        part = slice(start, start + _PAIR_CHUNK)
        p, c = pi[part], ci[part]
        scale = norms[p] * norms[c]
        dot = np.einsum("ij,ij->i", matrix[p], matrix[c])
        out[part] = np.where(scale > 0, dot / np.where(scale > 0, scale, 1.0), 0.0)
    return out


def _specificity(sets: list[frozenset[str]], accounts: dict[str, int], pi: np.ndarray, ci: np.ndarray) -> np.ndarray:
    """How much a shared fingerprint says: 1 when only the pair uses it, 1/(n-1) when n accounts do
    (the chance that a given one of the others is the parent), 0 when nothing is shared; per pair
    the most specific shared fingerprint (a fingerprint missing from ``accounts`` counts as the pair's)."""
    present, fingerprints = _item_matrix(sets)
    weights = np.array([1.0 / max(accounts.get(f, 2) - 1, 1) for f in fingerprints], dtype=float)
    weighted = present.multiply(np.atleast_2d(np.pad(weights, (0, present.shape[1] - len(weights))))).tocsr()
    return _row_products(weighted, present, pi, ci, reduce="max")


def accounts_per_fingerprint(profiles: pd.DataFrame) -> FingerprintAccounts:
    """Accounts per device and per network fingerprint among ``profiles``."""
    return _accounts_per_fingerprint(profiles["devices"]), _accounts_per_fingerprint(profiles["networks"])


# Profile columns kept in a fitted model for the banned accounts (what a new account is matched against).
PROFILE_SETS = ("devices", "networks", "pages")


def profile_records(profiles: pd.DataFrame) -> list[dict[str, Any]]:
    """Profiles as plain records with sets as sorted tuples (a model state hashes the same in every process)."""
    records = []
    for user, row in profiles.iterrows():
        record = {"user_id": str(user), **row.to_dict()}
        for column in PROFILE_SETS:
            record[column] = tuple(sorted(record[column]))
        vector = record.get("psycholinguistic")
        record["psycholinguistic"] = tuple(float(v) for v in vector) if isinstance(vector, np.ndarray) else None
        records.append(record)
    return records


def profiles_from_records(records: list[dict[str, Any]]) -> pd.DataFrame:
    """``profile_records`` back into an ``account_profiles`` frame."""
    if not records:
        return pd.DataFrame(columns=["username", "created_ts", "banned_ts", *PROFILE_SETS]).rename_axis("user_id")
    frame = pd.DataFrame.from_records(records).set_index("user_id")
    for column in PROFILE_SETS:
        frame[column] = frame[column].map(frozenset)
    frame["psycholinguistic"] = frame["psycholinguistic"].map(lambda v: np.asarray(v) if v is not None else np.nan)
    for column in ("created_ts", "first_seen_ts", "banned_ts"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def _accounts_per_fingerprint(sets: pd.Series) -> dict[str, int]:
    counts: dict[str, int] = {}
    for fingerprints in sets:
        for fingerprint in fingerprints:
            counts[fingerprint] = counts.get(fingerprint, 0) + 1
    return counts


def psycholinguistic_profile(chat: pd.DataFrame) -> pd.Series:
    """Per user, a vector of ``PSYCHOLINGUISTIC_CATEGORIES`` rates: category words per message."""
    if chat.empty:
        return pd.Series(dtype=object)
    terms = chat["text"].str.lower().str.findall(r"[a-z]+")
    rates = pd.DataFrame(
        {
            name: terms.map(lambda ts, ws=words: sum(t in ws for t in ts))
            for name, words in PSYCHOLINGUISTIC_CATEGORIES.items()
        }
    )
    per_user = rates.groupby(chat["user_id"].to_numpy()).mean()
    return pd.Series(list(per_user.to_numpy(dtype=float)), index=per_user.index)


# ``attrs`` key of a ``sample_new_accounts`` sample: the N of its one-in-N new accounts.
SAMPLED_ONE_IN = "evaders_new_accounts_one_in"
# What a new account's profile carries that only its own pairs read (cleared when it is left out of a fit).
_PAIR_ONLY_COLUMNS = {"text": "", "channels": {}, "pages": frozenset(), "psycholinguistic": np.nan}


def sample_new_accounts(profiles: pd.DataFrame, limit: int) -> pd.DataFrame:
    """``profiles`` with at most about ``limit`` new accounts still new: a fit sample whose pairs are bounded.

    Beyond ``limit``, the new accounts on a banned account's device or network that few accounts
    use (``SPECIFIC_MATCH``: the pairs an unsupervised fit learns from, rare and all needed) are
    all kept, the other new accounts one in N by a hash of the user id (CRC-32: the same sample in
    every run and process). Those left out stay as accounts that are not new (no creation time;
    their words, channels and pages cleared): they form no pairs, yet still count on their
    fingerprints and in the model's streaming state. Banned accounts are never left out, so a
    kept new account has the same candidates and fingerprint specificities as in the whole
    population; only the words' TF-IDF weights are learnt from fewer accounts. ``attrs`` records
    the N, and ``EvaderDetector.fit`` weighs the one-in-N accounts' pairs by it, so the sample
    stands for the population (the inverse of each pair's chance to be in it).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    new = (profiles["created_ts"].notna() & profiles["banned_ts"].isna()).to_numpy()
    if new.sum() <= limit:
        return profiles
    teaching = new & _on_specific_banned_fingerprint(profiles)
    others = new & ~teaching
    keep_one_in = -(-int(others.sum()) // max(limit - int(teaching.sum()), 1))
    hashes = np.array([zlib.crc32(str(u).encode()) for u in profiles.index], dtype=np.int64)
    left_out = others & (hashes % keep_one_in != 0)
    sample = profiles.copy()
    sample.attrs[SAMPLED_ONE_IN] = keep_one_in  # the fit weighs the sampled accounts' pairs by it
    sample.loc[left_out, "created_ts"] = pd.NaT
    for column, empty in _PAIR_ONLY_COLUMNS.items():
        if column in sample.columns:
            sample[column] = sample[column].where(~left_out, pd.Series([empty] * len(sample), index=sample.index))
    return sample


def _on_specific_banned_fingerprint(profiles: pd.DataFrame) -> np.ndarray:
    """Accounts on a device or network of a banned account that at most ``1 / SPECIFIC_MATCH + 1`` accounts use."""
    banned = profiles["banned_ts"].notna().to_numpy()
    found = np.zeros(len(profiles), dtype=bool)
    for column in ("devices", "networks"):
        accounts = _accounts_per_fingerprint(profiles[column])
        specific = {
            f
            for fingerprints in profiles.loc[banned, column]
            for f in fingerprints
            if 1.0 / max(accounts[f] - 1, 1) >= SPECIFIC_MATCH
        }
        found |= np.array([not specific.isdisjoint(fingerprints) for fingerprints in profiles[column]], dtype=bool)
    return found


def fit_pair_model(x: pd.DataFrame, y: np.ndarray, weights: np.ndarray | None = None) -> Any:
    """The paper's pair classifier: standardised features, L2-regularised logistic regression
    (``weights``: each pair's weight, the inverse of its share in a sample)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    if weights is None:
        return model.fit(x.to_numpy(), y)
    return model.fit(x.to_numpy(), y, standardscaler__sample_weight=weights, logisticregression__sample_weight=weights)


def _sample_weights(features: pd.DataFrame, pairs: pd.DataFrame) -> np.ndarray | None:
    """Per pair, the inverse of its child's chance to be in a ``sample_new_accounts`` sample; None for everyone."""
    keep_one_in = features.attrs.get(SAMPLED_ONE_IN)
    if not keep_one_in:
        return None
    always = pd.Series(_on_specific_banned_fingerprint(features), index=features.index.astype(str))
    return np.where(pairs["child"].map(always).fillna(False).to_numpy(dtype=bool), 1.0, float(keep_one_in))


def ban_propensity_features(events: Events, profiles: pd.DataFrame) -> pd.DataFrame:
    """Per banned account, what it did before the ban (the paper's task of predicting who will evade)."""
    banned = profiles[profiles["banned_ts"].notna()]
    rows = {}
    moderation = events["moderation"]
    for user, p in banned.iterrows():
        first = p["first_seen_ts"]
        days = max((p["banned_ts"] - first).total_seconds() / 86_400, 1.0) if pd.notna(first) else 1.0
        actions = moderation[moderation["user_id"] == user]["action"]
        # The paper: accounts that go on to evade were more active and more engaged before the ban.
        rows[user] = {
            "log_events_per_day": float(np.log1p(p["events"] / days)),
            "chat_share": p["messages"] / max(p["events"], 1.0),
            "warnings_per_day": float(actions.isin(["warn", "timeout"]).sum()) / days,
        }
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "user_id"
    return frame


class EvaderDetector(Detector):
    """Scores new accounts: the probability that they are a banned account come back (see module doc)."""

    name = "evaders"
    alert_kind = "evader"

    def __init__(self, candidates: int = MATCH_CANDIDATES, retrieved: int = RETRIEVED, threshold: float = 0.5) -> None:
        if candidates < 1 or retrieved < 0 or not 0 < threshold < 1:
            raise ValueError("need candidates >= 1, retrieved >= 0 and 0 < threshold < 1")
        super().__init__(candidates=candidates, retrieved=retrieved, threshold=threshold)

    def features(self, events: Events) -> pd.DataFrame:
        return account_profiles(events)

    def pairs(
        self,
        features: pd.DataFrame,
        fingerprint_accounts: FingerprintAccounts | None = None,
        children: Iterable[str] | None = None,
        text_accounts: pd.Index | None = None,
        children_pairs: pd.DataFrame | None = None,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Candidate pairs and their features (``fingerprint_accounts``: see ``pair_features``); with
        ``children``, only those new accounts' pairs, their features as computed among all pairs.

        Words are weighed over ``text_accounts``, by default the accounts of all candidate pairs (with
        ``children`` all pairs are then found first); given them (``pair_accounts`` over every share of
        the new accounts), only the children's pairs are found, or taken from ``children_pairs`` when
        ``share_pairs`` found them already."""
        candidates, retrieved = self.params["candidates"], self.params["retrieved"]
        if children is None or text_accounts is not None:
            pairs = children_pairs
            if pairs is None:
                pairs = candidate_pairs(features, candidates, retrieved, children)
            return pairs, pair_features(features, pairs, fingerprint_accounts, text_accounts)
        pairs = candidate_pairs(features, candidates, retrieved)
        involved = _accounts_of(pairs)
        pairs = pairs[pairs["child"].isin(pd.Index(list(children)).astype(str))].reset_index(drop=True)
        return pairs, pair_features(features, pairs, fingerprint_accounts, text_accounts=involved)

    def pair_accounts(self, features: pd.DataFrame, children: Iterable[str]) -> pd.Index:
        """The accounts of ``children``'s candidate pairs, both sides. Their union over shares of the new
        accounts is what weighs the words when all are scored together: given it as ``text_accounts``,
        each share scores as all at once (``score_accounts(users=..., text_accounts=...)``)."""
        return _accounts_of(self.share_pairs(features, children))

    def share_pairs(self, features: pd.DataFrame, children: Iterable[str]) -> pd.DataFrame:
        """``children``'s candidate pairs (child, parent), as scoring finds them: found once, they serve
        both for ``pair_accounts`` and as ``score_accounts(children_pairs=...)``."""
        return candidate_pairs(_complete(features), self.params["candidates"], self.params["retrieved"], children)

    def fit(self, features: pd.DataFrame, labels: pd.Series | None = None) -> Self:
        """``labels``: known child -> parent user ids (other new accounts count as not evading)."""
        from threadpoolctl import threadpool_limits

        # On one BLAS/OpenMP thread: the solver's and the retrieval's sums are grouped by the thread
        # count, so a driver with more cores fitted a model differing in the last bits (another version).
        with threadpool_limits(1):
            return self._fit(features, labels)

    def _fit(self, features: pd.DataFrame, labels: pd.Series | None) -> Self:
        # By user: the rows come in whatever order the blocks were built (Spark's partitioning), and ties
        # in ban time, the solver's sums and the saved population follow it; the model must not.
        features = features.sort_index()
        pairs, x = self.pairs(_complete(features))
        if labels is not None:
            known = labels.dropna().astype(str)
            y = np.array([known.get(c) == p for c, p in zip(pairs["child"], pairs["parent"], strict=True)])
            columns, supervision = list(PAIR_FEATURES), "labels"
        else:
            y = _fingerprint_match(x)
            columns, supervision = [c for c in PAIR_FEATURES if c not in FINGERPRINTS], "shared fingerprints"
        metrics: dict[str, Any] = {"pairs": len(pairs), "positive_pairs": int(y.sum()), "supervision": supervision}
        if labels is None:
            metrics["matched_new_accounts"] = int(pairs.loc[y, "child"].nunique())
        if y.sum() < 2 or (~y).sum() < 2:
            metrics["model"] = "mean similarity (too few positive pairs to learn from)"
            state = {"model": None, "columns": list(PAIR_FEATURES), "threshold": 0.5, **self._population(features)}
            if labels is None:  # the similarity only ranks: the fingerprint matches alone are flagged
                state |= {"threshold": 1.0, "fingerprint_rule": True}
                metrics["operating_point"] = FINGERPRINTS_ONLY
            return self._fitted(state, metrics)
        weights = _sample_weights(features, pairs)  # a sample's pairs count as the population's
        if weights is not None:
            metrics["sampled_new_accounts_one_in"] = int(features.attrs[SAMPLED_ONE_IN])
        model = fit_pair_model(x[columns], y, weights)
        threshold = self.params["threshold"]
        if labels is None and metrics["matched_new_accounts"] < MIN_MATCHED:
            threshold = 1.0  # the model only ranks: the fingerprint matches alone are flagged
            metrics["operating_point"] = FINGERPRINTS_ONLY
        elif labels is None:
            probability = model.predict_proba(x[columns].to_numpy())[:, 1]
            threshold, metrics["flag_rate"] = _fingerprint_share_threshold(pairs["child"], probability, y, weights)
            metrics["operating_point"] = "fingerprint match share, floored at the matched pairs' 20th percentile"
        metrics["model"] = "logistic regression"
        metrics["threshold"] = threshold
        metrics["coefficients"] = dict(zip(columns, np.round(model[-1].coef_[0], 4).tolist(), strict=True))
        state = {"model": model, "columns": columns, "threshold": threshold, "fingerprint_rule": labels is None}
        return self._fitted({**state, **self._population(features)}, metrics)

    @staticmethod
    def _population(features: pd.DataFrame) -> dict[str, Any]:
        """What scoring a new account on its own needs (the streaming adapter): the banned accounts'
        profiles and the accounts on each fingerprint, as sorted plain values."""
        accounts: list[dict[str, tuple[str, ...]]] = []
        for column in ("devices", "networks"):
            users: dict[str, list[str]] = {}
            for user, fingerprints in features[column].items():
                for fingerprint in fingerprints:
                    users.setdefault(fingerprint, []).append(str(user))
            accounts.append({f: tuple(sorted(u)) for f, u in sorted(users.items())})
        return {
            "banned_profiles": profile_records(features[features["banned_ts"].notna()]),
            "fingerprint_accounts": (accounts[0], accounts[1]),  # fingerprint -> the accounts on it
        }

    def pair_probabilities(self, x: pd.DataFrame) -> np.ndarray:
        """Pair scores in 0..1 with the operating threshold at 0.5 (a probability when fitted on labels)."""
        state = self.require_fitted()
        if len(x) == 0:
            return np.zeros(0)
        if state["model"] is None:
            similarity = x[PAIR_FEATURES].drop(columns="hours_after_ban_log")
            soon = 1.0 / (1.0 + x["hours_after_ban_log"])
            raw = np.asarray((similarity.sum(axis=1) + soon) / (similarity.shape[1] + 1), dtype=float)
        else:
            raw = np.asarray(state["model"].predict_proba(x[state["columns"]].to_numpy())[:, 1], dtype=float)
        t = state["threshold"]
        if t < 1:  # piecewise-linear, monotone: the fitted operating threshold becomes 0.5
            scaled = np.where(raw < t, 0.5 * raw / t, 0.5 + 0.5 * (raw - t) / (1 - t))
        else:  # the model flags nobody (too few fingerprint matches to set its threshold): it only ranks
            scaled = np.minimum(0.5 * raw, np.nextafter(0.5, 0.0))
        if state.get("fingerprint_rule"):
            # Taught by fingerprint matches, the model leaves them out; the match itself still counts.
            scaled = np.where(_fingerprint_match(x), np.maximum(scaled, FINGERPRINT_MATCH_SCORE), scaled)
        return np.asarray(scaled, dtype=float)

    def match(
        self,
        features: pd.DataFrame,
        fingerprint_accounts: FingerprintAccounts | None = None,
        children: Iterable[str] | None = None,
        text_accounts: pd.Index | None = None,
        children_pairs: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Every candidate pair with its probability and rank among the child's candidates (1 = best);
        with ``children``, those new accounts' pairs only (the same rows, at a fraction of the cost;
        ``text_accounts`` and ``children_pairs``: see ``pairs``)."""
        pairs, x = self.pairs(_complete(features), fingerprint_accounts, children, text_accounts, children_pairs)
        out = pd.concat([pairs, x], axis=1)
        out["probability"] = self.pair_probabilities(x)
        out["rank"] = out.groupby("child")["probability"].rank(ascending=False, method="first")
        return out.sort_values(["child", "rank"]).reset_index(drop=True)

    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        return self.score_accounts(features)

    def score_accounts(
        self,
        features: pd.DataFrame,
        fingerprint_accounts: FingerprintAccounts | None = None,
        users: Iterable[str] | None = None,
        text_accounts: pd.Index | None = None,
        children_pairs: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """``score`` with the fingerprints' account counts given (see ``pair_features``); with ``users``,
        those accounts' rows only, each scored as among all of ``features``. With ``text_accounts`` too
        (``pair_accounts`` of every share) only their own pairs are computed: so the new accounts of one
        population can be scored a share at a time, by as many tasks as there are shares. ``children_pairs``:
        the share's pairs as ``share_pairs(features, users)`` found them, not found again."""
        self.require_fitted()
        own = features
        if users is not None:
            own = features[features.index.astype(str).isin(pd.Index(list(users)).astype(str))]
        children = None if users is None else own.index[own["created_ts"].notna().to_numpy()].astype(str)
        matches = self.match(features, fingerprint_accounts, children, text_accounts, children_pairs)
        best_rows = matches[matches["rank"] == 1] if len(matches) else matches
        best = {str(row["child"]): row for row in best_rows.to_dict("records")}  # each new account's best pair
        scores = np.full(len(own), np.nan)
        status: list[str] = []
        reasons: list[list[Reason]] = []
        created = own["created_ts"].notna().to_numpy()
        incomplete = ~_complete_mask(own)
        for i, user in enumerate(own.index.astype(str)):
            if not created[i]:
                status.append("not a new account: no sign-up in these events")
                reasons.append([])
            elif incomplete[i]:
                status.append("missing features: account profile incomplete")
                reasons.append([])
            elif user not in best:
                scores[i] = 0.0
                status.append(f"{LOW_EVIDENCE}: no account was banned before this one was created")
                reasons.append([])
            else:
                row = best[user]
                scores[i] = float(row["probability"])
                status.append(SCORED)
                reasons.append(_pair_reasons(row))
        return score_frame(own.index, scores, scores >= 0.5, status, reasons)


def _accounts_of(pairs: pd.DataFrame) -> pd.Index:
    return pd.Index(pd.unique(pd.concat([pairs["child"], pairs["parent"]])))


def _fingerprint_share_threshold(
    children: pd.Series, probability: np.ndarray, taught: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, float]:
    """Without labels, the model's operating threshold and the flag rate it is set to.

    The flag rate is the share of new accounts with a candidate parent that a specific fingerprint
    match ties to a banned account (``taught``, per pair): evaders who kept a device or network, a
    floor on how many new accounts evade. The threshold flags at most that same share of the other
    new accounts, ranked by their best pair's ``probability`` (the model, fingerprints left out), and
    never a pair less likely than the 20th percentile of the taught pairs' own probabilities (what
    looks less like an evader than four in five matched pairs is not flagged). ``weights`` (per pair,
    constant per child): a sample's new accounts count as the population's; taught pairs are never
    sampled out, so their percentile needs none.
    """
    per_pair = pd.DataFrame(
        {
            "child": children.to_numpy(),
            "probability": probability,
            "taught": taught,
            "weight": np.ones(len(probability)) if weights is None else weights,
        }
    )
    per_child = per_pair.groupby("child", sort=True).agg(
        probability=("probability", "max"), taught=("taught", "any"), weight=("weight", "first")
    )
    flag_rate = float(per_child.loc[per_child["taught"], "weight"].sum() / per_child["weight"].sum())
    others = per_child[~per_child["taught"]].sort_values("probability", ascending=False, kind="stable")
    if len(others) == 0:
        return 1.0, flag_rate  # no other new account to flag
    # The highest probability at which the others flagged reach the rate (their weights summed).
    reached = np.cumsum(others["weight"].to_numpy()) >= flag_rate * others["weight"].sum()
    share = float(others["probability"].to_numpy()[np.argmax(reached)])
    floor = float(np.quantile(probability[taught], TAUGHT_FLOOR_QUANTILE))
    return float(np.clip(max(share, floor), 1e-9, 1 - 1e-9)), flag_rate  # scaling needs 0 < threshold < 1


def _fingerprint_match(x: pd.DataFrame) -> np.ndarray:
    """Pairs whose accounts share a device or a network fingerprint that few other accounts use."""
    if len(x) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray((x[list(FINGERPRINTS)] >= SPECIFIC_MATCH).any(axis=1), dtype=bool)


def _complete_mask(features: pd.DataFrame) -> np.ndarray:
    numeric = features.select_dtypes(include=[np.number]).drop(
        columns=["caps_ratio", "message_length"], errors="ignore"
    )
    return np.asarray(numeric.notna().all(axis=1), dtype=bool)


def _complete(features: pd.DataFrame) -> pd.DataFrame:
    return features[_complete_mask(features)]


def _pair_reasons(row: dict[str, Any]) -> list[Reason]:
    parent = str(row["parent"])
    hours = float(np.expm1(row["hours_after_ban_log"]))
    reasons = [Reason("parent", float(row["probability"]), None, f"closest banned account: {parent}")]
    reasons.append(
        Reason("name_core_similarity", float(row["name_core_similarity"]), None, "username like the banned one's")
    )
    reasons.append(Reason("hours_after_ban", hours, None, f"created {hours:.1f} h after {parent}'s ban"))
    for feature, text in (("shared_device", "same device"), ("shared_network", "same network")):
        if row[feature] >= SPECIFIC_MATCH:
            reasons.append(Reason(feature, float(row[feature]), None, text))
    if row["channel_cosine"] >= 0.5:
        reasons.append(Reason("channel_cosine", float(row["channel_cosine"]), None, "chats in the same channels"))
    return reasons
