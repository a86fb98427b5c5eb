"""Context-aware chat features per user, after Haque's Twitch Plays Pokemon troll features.

The context of a message is its channel's current goal: the (channel, 10-minute window) it was
sent in, whose goals are the window's most frequent terms (a term counts once per message). A
message is "on the top-k goals" when one of its terms ranks in the window's top k, "on the
bottom-k goals" when one ranks among the k rarest. The same definitions, names and window as the
nightly profile job (``jobs/profiles.py``), so a model fitted on profiles scores these features.

Beyond the paper's ten fractions (``PAPER_FEATURES``), general live chat needs behaviour measured
against the window's norm (``CONTEXT_FEATURES``): repetition, caps, links, mentions, hostile
words, message rate against the other users in the same windows, and burstiness.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd

CONTEXT_WINDOW_S = 600  # as jobs/profiles.py: the paper re-reads the goal every few minutes
STOPWORDS = frozenset(
    ["the", "is", "this", "we", "so", "just", "now", "that", "it", "on", "for", "a", "an", "to", "and"]
)
LINK_PATTERN = r"(?:https?://|www\.|bit\.ly|\.(?:gg|io|shop|com)\b)"
TERM_PATTERN = re.compile(r"[^\W_]+")
_LINK = re.compile(LINK_PATTERN)
_NOT_LETTER = re.compile(r"[^\w]|[\d_]")
# Common hostile words in English game chat; a deployment plugs in its own list or a classifier.
HOSTILE_TERMS = frozenset(
    [
        "trash",
        "garbage",
        "suck",
        "sucks",
        "clown",
        "clowns",
        "idiot",
        "idiots",
        "stupid",
        "dumb",
        "loser",
        "losers",
        "noob",
        "noobs",
        "cry",
        "crying",
        "worst",
        "pathetic",
        "shut",
        "stfu",
        "kys",
        "hate",
        "moron",
        "morons",
        "cringe",
        "toxic",
        "ugly",
        "fake",
        "scam",
        "rigged",
        "bot",
        "bots",
        "braindead",
        "clueless",
        "useless",
    ]
)

# The paper's ten per-user fractions, in the order f1..f10 of `argus trolls paper`.
PAPER_FEATURES = [
    "chat_top1_share",
    "chat_top2_share",
    "chat_top3_share",
    "chat_spam_ratio",
    "chat_anarchy_mode_share",
    "chat_start_share",
    "chat_anarchy_vote_share",
    "chat_bottom1_share",
    "chat_bottom2_share",
    "chat_bottom3_share",
]
CONTEXT_FEATURES = [
    *PAPER_FEATURES,
    "chat_repetition",
    "chat_caps_ratio",
    "chat_link_ratio",
    "chat_mention_ratio",
    "chat_hostile_ratio",
    "chat_rate_vs_window",
    "chat_burstiness",
]
FEATURE_COLUMNS = ["chat_messages", "chat_windows", *CONTEXT_FEATURES]


SHARE_COLUMNS = [c for c in CONTEXT_FEATURES if c.endswith(("_share", "_ratio")) and c != "chat_anarchy_mode_share"]
# The running sums behind the features, per user and batch of windows (gaps come from ChatContextState).
SUM_COLUMNS = [*SHARE_COLUMNS, "messages", "anarchy_num", "anarchy_den", "windows", "rate_vs_window_sum"]
GAP_COLUMNS = ["gap_n", "gap_sum", "gap_sq"]


def chat_context_features(chat: pd.DataFrame, window_s: int = CONTEXT_WINDOW_S) -> pd.DataFrame:
    """One row per user who chatted: ``FEATURE_COLUMNS``, indexed by ``user_id`` (sorted)."""
    state = ChatContextState(window_s)
    state.add(chat)
    return state.features()


def window_user_sums(
    users: Sequence[Hashable],
    contexts: Sequence[object],
    slots: Sequence[int],
    texts: Sequence[object],
    modes: Sequence[object],
) -> tuple[list[Hashable], np.ndarray, dict[Hashable, set[int]]]:
    """Per user, the ``SUM_COLUMNS`` sums of whole (context, slot) windows, and the hashes of their distinct texts.

    Messages are given column-wise, one entry per message; ``users`` may be any hashable key (the
    stream passes (user, channel, window) to get per-window rows: every window-level quantity
    groups by (context, slot), so a finer user key changes none of them). Returns the keys in
    order of first appearance, their sums (one row per key) and texts. Plain Python and numpy:
    a streaming window of a hundred messages cost milliseconds of pandas' fixed per-call work.
    """
    n = len(users)
    code_of: dict[Hashable, int] = {}
    codes = np.fromiter((code_of.setdefault(u, len(code_of)) for u in users), dtype=np.intp, count=n)
    keys = list(code_of)
    indicators, anarchy = _message_indicators(users, contexts, slots, texts, modes)
    out = np.empty((len(keys), len(SUM_COLUMNS)))
    for j in range(indicators.shape[1]):
        out[:, j] = np.bincount(codes, weights=indicators[:, j], minlength=len(keys))
    plays = ~np.isnan(anarchy)
    j = len(SHARE_COLUMNS)
    out[:, j] = np.bincount(codes, minlength=len(keys))
    out[:, j + 1] = np.bincount(codes, weights=np.where(plays, anarchy, 0.0), minlength=len(keys))
    out[:, j + 2] = np.bincount(codes, weights=plays.astype(float), minlength=len(keys))
    # Rate against the window's norm: a user's messages in a (context, slot) over that window's mean per user.
    in_window: dict[tuple[object, int, int], int] = {}
    for context, slot, code in zip(contexts, slots, codes.tolist(), strict=True):
        key = (context, slot, code)
        in_window[key] = in_window.get(key, 0) + 1
    window_total: dict[tuple[object, int], list[int]] = {}  # (context, slot) -> [messages, users]
    for (context, slot, _), count in in_window.items():
        total = window_total.setdefault((context, slot), [0, 0])
        total[0] += count
        total[1] += 1
    windows = np.zeros(len(keys))
    rate = np.zeros(len(keys))
    for (context, slot, code), count in in_window.items():
        messages, senders = window_total[(context, slot)]
        windows[code] += 1.0
        rate[code] += count / (messages / senders)
    out[:, j + 3] = windows
    out[:, j + 4] = rate
    hashes: dict[Hashable, set[int]] = {}
    for user, text in set(zip(users, texts, strict=True)):  # hash each (user, text) once, not per message
        hashes.setdefault(user, set()).add(_stable_hash(str(text)))
    return keys, out, hashes


def features_from_sums(sums: Mapping[str, np.ndarray], distinct_texts: np.ndarray) -> dict[str, np.ndarray]:
    """``FEATURE_COLUMNS`` from the running sums (``SUM_COLUMNS`` and ``GAP_COLUMNS``), row by row."""
    messages = sums["messages"]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {c: sums[c] / messages for c in SHARE_COLUMNS}
        plays = sums["anarchy_den"]
        out["chat_anarchy_mode_share"] = np.where(plays > 0, sums["anarchy_num"] / plays, 0.0)
        out["chat_messages"] = messages
        out["chat_windows"] = sums["windows"]
        out["chat_repetition"] = 1.0 - distinct_texts / messages
        out["chat_rate_vs_window"] = sums["rate_vs_window_sum"] / sums["windows"]
        gap_n = sums["gap_n"]
        mean = sums["gap_sum"] / gap_n
        sd = np.sqrt(np.maximum(sums["gap_sq"] / gap_n - mean**2, 0.0))
        out["chat_burstiness"] = np.where((gap_n > 0) & (mean > 0), (sd - mean) / (sd + mean), np.nan)
    return out


class ChatContextState:
    """Per-user running sums behind ``chat_context_features``, updated one batch of windows at a time.

    Streaming keeps one of these and ``add``s each batch of closed windows (every message of a
    (channel, window) in the same batch, batches in event-time order); ``features()`` then equals
    the batch computation over everything added (tested). Memory: a few numbers per user plus a
    hash per distinct message text (for repetition).
    """

    def __init__(self, window_s: int = CONTEXT_WINDOW_S) -> None:
        self.window_s = window_s
        self.sums = pd.DataFrame(dtype=float)
        self.texts: dict[Hashable, set[int]] = {}
        self.last_seen: dict[str, int] = {}

    def add(self, chat: pd.DataFrame) -> None:
        if chat.empty:
            return
        msgs = chat[["event_id", "user_id", "context", "ts", "text", "channel_mode"]].reset_index(drop=True)
        msgs["slot"] = _epoch_seconds(msgs["ts"]) // self.window_s
        users, sums, texts = window_user_sums(
            msgs["user_id"].tolist(),
            msgs["context"].tolist(),
            msgs["slot"].tolist(),
            msgs["text"].tolist(),
            msgs["channel_mode"].tolist(),
        )
        batch = pd.DataFrame(sums, index=pd.Index(users, name="user_id"), columns=SUM_COLUMNS).sort_index()
        gaps = self._gaps(msgs)
        batch["gap_n"] = gaps.groupby(level=0).size()
        batch["gap_sum"] = gaps.groupby(level=0).sum()
        batch["gap_sq"] = (gaps.astype(float) ** 2).groupby(level=0).sum()
        batch = batch.fillna(0.0).astype(float)
        self.sums = batch if self.sums.empty else self.sums.add(batch, fill_value=0.0)
        for user, hashes in texts.items():
            self.texts.setdefault(user, set()).update(hashes)

    def _gaps(self, msgs: pd.DataFrame) -> pd.Series:
        """Seconds between a user's consecutive messages, continuing from the previous batch."""
        ordered = msgs.sort_values(["user_id", "ts", "event_id"])
        seconds = _epoch_seconds(ordered["ts"])
        previous = seconds.groupby(ordered["user_id"]).shift()
        first = previous.isna()
        previous = previous.astype(float)
        previous[first] = ordered.loc[first, "user_id"].map(lambda u: self.last_seen.get(u, np.nan)).astype(float)
        gaps = (seconds - previous).dropna()
        last = ordered.groupby("user_id").tail(1)
        for user, ts in zip(last["user_id"], _epoch_seconds(last["ts"]), strict=True):
            self.last_seen[user] = int(ts)
        return pd.Series(gaps.to_numpy(dtype=float), index=ordered.loc[gaps.index, "user_id"].to_numpy())

    def features(self) -> pd.DataFrame:
        if self.sums.empty:
            return pd.DataFrame(columns=FEATURE_COLUMNS, index=pd.Index([], name="user_id"), dtype=float)
        sums = self.sums
        columns = {c: sums[c].to_numpy(dtype=float) for c in [*SUM_COLUMNS, *GAP_COLUMNS]}
        distinct = np.array([len(self.texts[u]) if u in self.texts else np.nan for u in sums.index], dtype=float)
        out = pd.DataFrame(features_from_sums(columns, distinct), index=sums.index, columns=FEATURE_COLUMNS)
        out.index.name = "user_id"
        return out.sort_index()


def _message_indicators(
    users: Sequence[Hashable],
    contexts: Sequence[object],
    slots: Sequence[int],
    texts: Sequence[object],
    modes: Sequence[object],
) -> tuple[np.ndarray, np.ndarray]:
    """Per message, the 0/1 indicators the per-user shares average (columns ``SHARE_COLUMNS``), and
    whether it was sent in anarchy mode (NaN outside plays channels, whose mode is null).

    Plain Python over the texts: pandas' string methods loop in Python too, and a streaming window of
    a hundred messages paid milliseconds of their fixed cost per call.
    """
    strings = [str(t) for t in texts]
    lower = [t.lower() for t in strings]
    terms = [TERM_PATTERN.findall(t) for t in lower]
    best_top, best_bottom = _goal_ranks(list(contexts), list(slots), terms)
    # A copy: the same text from the same user earlier in the same (channel, window).
    seen: set[tuple[object, ...]] = set()
    copy = np.zeros(len(strings), dtype=bool)
    for i, key in enumerate(zip(users, contexts, slots, strings, strict=True)):
        copy[i] = key in seen
        seen.add(key)
    link = np.array([_LINK.search(t) is not None for t in strings], dtype=bool)
    letters = [_NOT_LETTER.sub("", t) for t in strings]
    stripped = [t.strip() for t in lower]
    columns = {
        "chat_top1_share": best_top <= 1,
        "chat_top2_share": best_top <= 2,
        "chat_top3_share": best_top <= 3,
        "chat_bottom1_share": best_bottom <= 1,
        "chat_bottom2_share": best_bottom <= 2,
        "chat_bottom3_share": best_bottom <= 3,
        "chat_spam_ratio": link | copy,
        "chat_caps_ratio": [len(x) >= 3 and x == x.upper() for x in letters],
        "chat_link_ratio": link,
        "chat_mention_ratio": ["@" in t for t in strings],
        "chat_hostile_ratio": [any(t in HOSTILE_TERMS for t in ts) for ts in terms],
        "chat_start_share": [t == "start" for t in stripped],
        "chat_anarchy_vote_share": [t == "anarchy" for t in stripped],
    }
    indicators = np.empty((len(strings), len(SHARE_COLUMNS)))
    for j, column in enumerate(SHARE_COLUMNS):
        indicators[:, j] = np.asarray(columns[column], dtype=float) if strings else 0.0
    # pd.isna semantics for the mode: None and NaN both mean "not a plays channel".
    anarchy = np.array([np.nan if m is None or m != m else float(m == "anarchy") for m in modes], dtype=float)
    return indicators, anarchy


def _goal_ranks(contexts: list[object], slots: list[int], terms: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Per message, the best top rank and best bottom rank of its terms in its window (inf if none).

    A term counts once per message; ranks order the window's terms by messages (most first for the
    top, fewest first for the bottom), ties broken by the term itself, as in the profile job
    (row_number over n, term).
    """
    goals = [{t for t in words if len(t) >= 2 and t not in STOPWORDS} for words in terms]
    counts: dict[tuple[object, int], dict[str, int]] = {}
    for context, slot, words in zip(contexts, slots, goals, strict=True):
        window = counts.setdefault((context, slot), {})
        for term in words:
            window[term] = window.get(term, 0) + 1
    top: dict[tuple[object, int], dict[str, int]] = {}
    bottom: dict[tuple[object, int], dict[str, int]] = {}
    for key, window in counts.items():
        by_most = sorted(window.items(), key=lambda item: (-item[1], item[0]))
        by_fewest = sorted(window.items(), key=lambda item: (item[1], item[0]))
        top[key] = {term: rank for rank, (term, _) in enumerate(by_most, 1)}
        bottom[key] = {term: rank for rank, (term, _) in enumerate(by_fewest, 1)}
    best_top = np.full(len(goals), np.inf)
    best_bottom = np.full(len(goals), np.inf)
    for i, (context, slot, words) in enumerate(zip(contexts, slots, goals, strict=True)):
        if words:
            best_top[i] = min(top[(context, slot)][t] for t in words)
            best_bottom[i] = min(bottom[(context, slot)][t] for t in words)
    return best_top, best_bottom


def _stable_hash(text: str) -> int:
    """Equal across processes (Python's own str hash is salted per process; state is pickled)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _epoch_seconds(ts: pd.Series) -> pd.Series:
    return ts.dt.as_unit("s").astype("int64")
