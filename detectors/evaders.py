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
least.
With no such pairs at all it falls back to the mean of the pair similarities (status says so).

The detector's population is new accounts (a sign-up in the events); other accounts get no score
(``not a new account``). A new account with no account banned before its creation has no
candidate parent: it scores 0 with status ``low evidence: no account was banned before this one
was created`` (nobody it could be evading from is in the data).
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from typing import Any, Self

import numpy as np
import pandas as pd

from argus.detectors.base import LOW_EVIDENCE, SCORED, Detector, Reason, score_frame
from argus.detectors.events import Events

MATCH_CANDIDATES = 50  # the paper matches a child among the 50 accounts banned closest in time
RETRIEVED = 10  # extra candidates per child from FAISS retrieval
FINGERPRINTS = ("shared_device", "shared_network")
FINGERPRINT_MATCH_SCORE = 0.75  # unsupervised fit: a new account on a banned account's device or network is flagged
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
    profiles: pd.DataFrame, candidates: int = MATCH_CANDIDATES, retrieved: int = RETRIEVED
) -> pd.DataFrame:
    """(child, parent) pairs: each new account against the accounts banned before it was created.

    The ``candidates`` bans closest in time before the creation, plus the ``retrieved`` nearest
    banned accounts by account embedding (FAISS inner product) among all banned before it.
    """
    children = profiles[profiles["created_ts"].notna()]
    parents = profiles[profiles["banned_ts"].notna()]
    if children.empty or parents.empty:
        return pd.DataFrame({"child": pd.Series(dtype=object), "parent": pd.Series(dtype=object)})
    ban_order = parents["banned_ts"].sort_values(kind="stable")
    ban_times = _nanoseconds(ban_order)
    rows: list[tuple[str, str]] = []
    for child, created in children["created_ts"].items():
        before = int(np.searchsorted(ban_times, pd.Timestamp(created).value, side="left"))
        for parent in ban_order.index[max(0, before - candidates) : before]:
            rows.append((str(child), str(parent)))
    if retrieved:
        rows += _retrieved_pairs(profiles, children, parents, retrieved)
    pairs = pd.DataFrame(rows, columns=["child", "parent"]).drop_duplicates()
    pairs = pairs[pairs["child"] != pairs["parent"]]
    return pairs.sort_values(["child", "parent"]).reset_index(drop=True)


def _nanoseconds(times: pd.Series) -> np.ndarray:
    return np.asarray(times.dt.as_unit("ns").astype("int64").to_numpy())


def account_embeddings(profiles: pd.DataFrame) -> np.ndarray:
    """Unit vectors from username character 3-grams, channels and words (hashed, equally weighted)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    names = profiles["username"].map(lambda n: n if is_digest(n) else " ".join(_grams(name_core(n) or n.lower())))
    channels = profiles["channels"].map(lambda c: " ".join(f"ch{i}" for i in c))
    parts = []
    for texts, analyzer in ((names, "word"), (channels, "word"), (profiles["text"], "word")):
        vectorizer = HashingVectorizer(n_features=_EMBED_DIM, alternate_sign=False, analyzer=analyzer, norm="l2")
        parts.append(vectorizer.transform(texts.to_numpy()).toarray())
    data = np.hstack(parts).astype(np.float32)
    norms = np.linalg.norm(data, axis=1, keepdims=True)
    return np.asarray(data / np.where(norms == 0, 1, norms), dtype=np.float32)


def _retrieved_pairs(
    profiles: pd.DataFrame, children: pd.DataFrame, parents: pd.DataFrame, retrieved: int
) -> list[tuple[str, str]]:
    import faiss

    vectors = account_embeddings(profiles)
    position = {u: i for i, u in enumerate(profiles.index)}
    parent_vectors = np.ascontiguousarray(vectors[[position[p] for p in parents.index]])
    index = faiss.IndexFlatIP(parent_vectors.shape[1])
    index.add(parent_vectors)
    k = min(len(parents), retrieved * 3)
    _, found = index.search(np.ascontiguousarray(vectors[[position[c] for c in children.index]]), k)
    ban_ts = _nanoseconds(parents["banned_ts"])
    rows = []
    for row, (child, created) in enumerate(children["created_ts"].items()):
        hits = [j for j in found[row] if j >= 0 and ban_ts[j] < pd.Timestamp(created).value][:retrieved]
        rows += [(str(child), str(parents.index[j])) for j in hits]
    return rows


# Accounts per device and per network fingerprint (``accounts_per_fingerprint``): a fingerprint's specificity.
FingerprintAccounts = tuple[dict[str, int], dict[str, int]]


def pair_features(
    profiles: pd.DataFrame, pairs: pd.DataFrame, fingerprint_accounts: FingerprintAccounts | None = None
) -> pd.DataFrame:
    """``PAIR_FEATURES`` for each (child, parent) row of ``pairs``.

    ``fingerprint_accounts``: accounts per device and per network fingerprint over a population
    larger than ``profiles`` (the streaming state); default: counted over ``profiles``.
    """
    if pairs.empty:
        return pd.DataFrame(columns=PAIR_FEATURES, dtype=float)
    from sklearn.feature_extraction.text import TfidfVectorizer

    involved = pd.Index(pd.unique(pd.concat([pairs["child"], pairs["parent"]])))
    sub = profiles.loc[involved]
    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=1, ngram_range=(1, 2), max_features=50_000)
    position = {u: i for i, u in enumerate(involved)}
    ci = np.array([position[c] for c in pairs["child"]])
    pi = np.array([position[p] for p in pairs["parent"]])
    try:
        text = tfidf.fit_transform(sub["text"].to_numpy())
        content = np.asarray(text[ci].multiply(text[pi]).sum(axis=1)).ravel()
    except ValueError:  # nobody involved wrote a word (new accounts scored at sign-up): no content evidence
        content = np.zeros(len(pairs))
    if fingerprint_accounts is None:
        fingerprint_accounts = accounts_per_fingerprint(profiles)
    device_users, network_users = fingerprint_accounts
    rows = []
    for child, parent in zip(pairs["child"], pairs["parent"], strict=True):
        c, p = sub.loc[child], sub.loc[parent]
        hours = (c["created_ts"] - p["banned_ts"]).total_seconds() / 3600
        rows.append(
            {
                **name_similarity(p["username"], c["username"]),
                "channel_cosine": _cosine(p["channels"], c["channels"]),
                "page_jaccard": _jaccard(p["pages"], c["pages"]),
                "style_similarity": _style_similarity(p, c),
                "psycholinguistic_similarity": _vector_cosine(p["psycholinguistic"], c["psycholinguistic"]),
                "hours_after_ban_log": float(np.log1p(max(hours, 0.0))),
                "shared_device": _specificity(p["devices"] & c["devices"], device_users),
                "shared_network": _specificity(p["networks"] & c["networks"], network_users),
            }
        )
    out = pd.DataFrame(rows)
    out["content_cosine"] = content
    return out[PAIR_FEATURES].astype(float)


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


def _specificity(shared: frozenset[str], accounts: dict[str, int]) -> float:
    """How much a shared fingerprint says: 1 when only the pair uses it, 1/(n-1) when n accounts do
    (the chance that a given one of the others is the parent), 0 when nothing is shared."""
    if not shared:
        return 0.0
    return max(1.0 / max(accounts.get(f, 2) - 1, 1) for f in shared)


def _cosine(a: dict[str, int], b: dict[str, int]) -> float:
    if not a or not b:
        return 0.0
    dot = sum(v * b.get(k, 0) for k, v in a.items())
    return float(dot / (np.sqrt(sum(v * v for v in a.values())) * np.sqrt(sum(v * v for v in b.values()))))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


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


def _vector_cosine(a: object, b: object) -> float:
    if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
        return 0.0
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else 0.0


def _style_similarity(p: pd.Series, c: pd.Series) -> float:
    """1 minus the mean relative gap in caps ratio and message length (0 when either never wrote)."""
    if not (p["messages"] > 0 and c["messages"] > 0):
        return 0.0
    caps = abs(p["caps_ratio"] - c["caps_ratio"])
    length = abs(p["message_length"] - c["message_length"]) / max(p["message_length"], c["message_length"], 1.0)
    value = 1.0 - (caps + length) / 2
    return float(value) if np.isfinite(value) else 0.0


def fit_pair_model(x: pd.DataFrame, y: np.ndarray) -> Any:
    """The paper's pair classifier: standardised features, L2-regularised logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(x.to_numpy(), y)


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
        self, features: pd.DataFrame, fingerprint_accounts: FingerprintAccounts | None = None
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Candidate pairs and their features (``fingerprint_accounts``: see ``pair_features``)."""
        pairs = candidate_pairs(features, self.params["candidates"], self.params["retrieved"])
        return pairs, pair_features(features, pairs, fingerprint_accounts)

    def fit(self, features: pd.DataFrame, labels: pd.Series | None = None) -> Self:
        """``labels``: known child -> parent user ids (other new accounts count as not evading)."""
        pairs, x = self.pairs(_complete(features))
        if labels is not None:
            known = labels.dropna().astype(str)
            y = np.array([known.get(c) == p for c, p in zip(pairs["child"], pairs["parent"], strict=True)])
            columns, supervision = list(PAIR_FEATURES), "labels"
        else:
            y = _fingerprint_match(x)
            columns, supervision = [c for c in PAIR_FEATURES if c not in FINGERPRINTS], "shared fingerprints"
        metrics: dict[str, Any] = {"pairs": len(pairs), "positive_pairs": int(y.sum()), "supervision": supervision}
        if y.sum() < 2 or (~y).sum() < 2:
            metrics["model"] = "mean similarity (too few positive pairs to learn from)"
            state = {"model": None, "columns": list(PAIR_FEATURES), "threshold": 0.5, **self._population(features)}
            return self._fitted(state, metrics)
        model = fit_pair_model(x[columns], y)
        threshold = self.params["threshold"]
        if labels is None:
            # Calibrated on the fingerprint-sharing pairs: flag what looks at least as much like an
            # evader as four in five of them do, judged without the fingerprints.
            taught = model.predict_proba(x.loc[y, columns].to_numpy())[:, 1]
            threshold = float(np.clip(np.quantile(taught, 0.2), 1e-3, 1 - 1e-3))
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
        # Piecewise-linear, monotone: the fitted operating threshold becomes 0.5.
        t = state["threshold"]
        scaled = np.where(raw < t, 0.5 * raw / t, 0.5 + 0.5 * (raw - t) / (1 - t))
        if state.get("fingerprint_rule"):
            # Taught by fingerprint matches, the model leaves them out; the match itself still counts.
            scaled = np.where(_fingerprint_match(x), np.maximum(scaled, FINGERPRINT_MATCH_SCORE), scaled)
        return np.asarray(scaled, dtype=float)

    def match(self, features: pd.DataFrame, fingerprint_accounts: FingerprintAccounts | None = None) -> pd.DataFrame:
        """Every candidate pair with its probability and rank among the child's candidates (1 = best)."""
        pairs, x = self.pairs(_complete(features), fingerprint_accounts)
        out = pd.concat([pairs, x], axis=1)
        out["probability"] = self.pair_probabilities(x)
        out["rank"] = out.groupby("child")["probability"].rank(ascending=False, method="first")
        return out.sort_values(["child", "rank"]).reset_index(drop=True)

    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        return self.score_accounts(features)

    def score_accounts(
        self, features: pd.DataFrame, fingerprint_accounts: FingerprintAccounts | None = None
    ) -> pd.DataFrame:
        """``score`` with the fingerprints' account counts given (see ``pair_features``)."""
        self.require_fitted()
        matches = self.match(features, fingerprint_accounts)
        best = matches[matches["rank"] == 1].set_index("child") if len(matches) else matches
        scores = np.full(len(features), np.nan)
        status: list[str] = []
        reasons: list[list[Reason]] = []
        created = features["created_ts"].notna().to_numpy()
        incomplete = ~_complete_mask(features)
        for i, user in enumerate(features.index.astype(str)):
            if not created[i]:
                status.append("not a new account: no sign-up in these events")
                reasons.append([])
            elif incomplete[i]:
                status.append("missing features: account profile incomplete")
                reasons.append([])
            elif user not in best.index:
                scores[i] = 0.0
                status.append(f"{LOW_EVIDENCE}: no account was banned before this one was created")
                reasons.append([])
            else:
                row = best.loc[user]
                scores[i] = float(row["probability"])
                status.append(SCORED)
                reasons.append(_pair_reasons(row))
        return score_frame(features.index, scores, scores >= 0.5, status, reasons)


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


def _pair_reasons(row: pd.Series) -> list[Reason]:
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
