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


def chat_context_features(chat: pd.DataFrame, window_s: int = CONTEXT_WINDOW_S) -> pd.DataFrame:
    """One row per user who chatted: ``FEATURE_COLUMNS``, indexed by ``user_id`` (sorted)."""
    state = ChatContextState(window_s)
    state.add(chat)
    return state.features()


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
        self.texts: dict[str, set[int]] = {}
        self.last_seen: dict[str, int] = {}

    def add(self, chat: pd.DataFrame) -> None:
        if chat.empty:
            return
        msgs = chat[["event_id", "user_id", "context", "ts", "text", "channel_mode"]].reset_index(drop=True)
        msgs["slot"] = _epoch_seconds(msgs["ts"]) // self.window_s
        per_message = _message_indicators(msgs)
        users = per_message.groupby(msgs["user_id"], sort=True)
        batch = users[SHARE_COLUMNS].sum()
        batch["messages"] = users.size()
        batch["anarchy_num"] = users["_anarchy"].sum()
        batch["anarchy_den"] = users["_anarchy"].count()

        in_slot = msgs.groupby(["context", "slot", "user_id"]).size().rename("n").reset_index()
        in_slot["norm"] = in_slot.groupby(["context", "slot"])["n"].transform("mean")
        by_user = in_slot.groupby("user_id")
        batch["windows"] = by_user.size()
        batch["rate_vs_window_sum"] = (in_slot["n"] / in_slot["norm"]).groupby(in_slot["user_id"]).sum()
        gaps = self._gaps(msgs)
        batch["gap_n"] = gaps.groupby(level=0).size()
        batch["gap_sum"] = gaps.groupby(level=0).sum()
        batch["gap_sq"] = (gaps.astype(float) ** 2).groupby(level=0).sum()
        batch = batch.fillna(0.0).astype(float)
        self.sums = batch if self.sums.empty else self.sums.add(batch, fill_value=0.0)
        distinct = msgs[["user_id", "text"]].drop_duplicates()  # hash each (user, text) once, not per message
        for user, text in zip(distinct["user_id"], distinct["text"], strict=True):
            self.texts.setdefault(user, set()).add(_stable_hash(text))

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
        out = sums[SHARE_COLUMNS].div(sums["messages"], axis=0)
        out["chat_anarchy_mode_share"] = (sums["anarchy_num"] / sums["anarchy_den"]).where(sums["anarchy_den"] > 0, 0.0)
        out["chat_messages"] = sums["messages"]
        out["chat_windows"] = sums["windows"]
        distinct = pd.Series({u: len(t) for u, t in self.texts.items()}).reindex(sums.index)
        out["chat_repetition"] = 1.0 - distinct / sums["messages"]
        out["chat_rate_vs_window"] = sums["rate_vs_window_sum"] / sums["windows"]
        mean = sums["gap_sum"] / sums["gap_n"]
        sd = np.sqrt(np.maximum(sums["gap_sq"] / sums["gap_n"] - mean**2, 0.0))
        out["chat_burstiness"] = ((sd - mean) / (sd + mean)).where((sums["gap_n"] > 0) & (mean > 0))
        out.index.name = "user_id"
        return out[FEATURE_COLUMNS].sort_index()


def _message_indicators(msgs: pd.DataFrame) -> pd.DataFrame:
    """Per message, the 0/1 indicators the per-user shares average (``_anarchy``: NaN outside plays channels).

    Plain Python over the texts: pandas' string methods loop in Python too, and a streaming window of
    a hundred messages paid milliseconds of their fixed cost per call.
    """
    texts = [str(t) for t in msgs["text"].tolist()]
    lower = [t.lower() for t in texts]
    terms = [TERM_PATTERN.findall(t) for t in lower]
    best_top, best_bottom = _goal_ranks(msgs["context"].tolist(), msgs["slot"].tolist(), terms)
    # A copy: the same text from the same user earlier in the same (channel, window).
    seen: set[tuple[object, ...]] = set()
    copy = np.zeros(len(texts), dtype=bool)
    keys = zip(msgs["user_id"].tolist(), msgs["context"].tolist(), msgs["slot"].tolist(), texts, strict=True)
    for i, key in enumerate(keys):
        copy[i] = key in seen
        seen.add(key)
    link = np.array([_LINK.search(t) is not None for t in texts], dtype=bool)
    letters = [_NOT_LETTER.sub("", t) for t in texts]
    stripped = [t.strip() for t in lower]
    indicators = pd.DataFrame(
        {
            "chat_top1_share": best_top <= 1,
            "chat_top2_share": best_top <= 2,
            "chat_top3_share": best_top <= 3,
            "chat_bottom1_share": best_bottom <= 1,
            "chat_bottom2_share": best_bottom <= 2,
            "chat_bottom3_share": best_bottom <= 3,
            "chat_spam_ratio": link | copy,
            "chat_caps_ratio": [len(x) >= 3 and x == x.upper() for x in letters],
            "chat_link_ratio": link,
            "chat_mention_ratio": ["@" in t for t in texts],
            "chat_hostile_ratio": [any(t in HOSTILE_TERMS for t in ts) for ts in terms],
            "chat_start_share": [t == "start" for t in stripped],
            "chat_anarchy_vote_share": [t == "anarchy" for t in stripped],
        },
        index=msgs.index,
    ).astype(float)
    plays = msgs["channel_mode"].notna()
    indicators["_anarchy"] = (msgs["channel_mode"] == "anarchy").astype(float).where(plays)
    return indicators


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
