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

import re

import numpy as np
import pandas as pd

CONTEXT_WINDOW_S = 600  # as jobs/profiles.py: the paper re-reads the goal every few minutes
STOPWORDS = frozenset(
    ["the", "is", "this", "we", "so", "just", "now", "that", "it", "on", "for", "a", "an", "to", "and"]
)
LINK_PATTERN = r"(?:https?://|www\.|bit\.ly|\.(?:gg|io|shop|com)\b)"
TERM_PATTERN = re.compile(r"[^\W_]+")
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


def chat_context_features(chat: pd.DataFrame, window_s: int = CONTEXT_WINDOW_S) -> pd.DataFrame:
    """One row per user who chatted: ``FEATURE_COLUMNS``, indexed by ``user_id`` (sorted)."""
    if chat.empty:
        return pd.DataFrame(columns=FEATURE_COLUMNS, index=pd.Index([], name="user_id"), dtype=float)
    msgs = chat[["event_id", "user_id", "context", "ts", "text", "channel_mode"]].reset_index(drop=True)
    msgs["slot"] = _epoch_seconds(msgs["ts"]) // window_s
    lower = msgs["text"].str.lower()
    best_top, best_bottom = _goal_ranks(msgs, lower)

    copy = msgs.groupby(["user_id", "context", "slot", "text"], sort=False).cumcount()
    link = msgs["text"].str.contains(LINK_PATTERN, regex=True)
    letters = msgs["text"].str.replace(r"[^\w]|[\d_]", "", regex=True)
    terms = lower.str.findall(TERM_PATTERN)
    stripped = lower.str.strip()
    plays = msgs["channel_mode"].notna()
    per_message = pd.DataFrame(
        {
            "user_id": msgs["user_id"],
            "chat_top1_share": best_top <= 1,
            "chat_top2_share": best_top <= 2,
            "chat_top3_share": best_top <= 3,
            "chat_bottom1_share": best_bottom <= 1,
            "chat_bottom2_share": best_bottom <= 2,
            "chat_bottom3_share": best_bottom <= 3,
            "chat_spam_ratio": link | (copy > 0),
            "chat_caps_ratio": (letters.str.len() >= 3) & (letters == letters.str.upper()),
            "chat_link_ratio": link,
            "chat_mention_ratio": msgs["text"].str.contains("@", regex=False),
            "chat_hostile_ratio": terms.map(lambda ts: any(t in HOSTILE_TERMS for t in ts)),
            "chat_start_share": stripped == "start",
            "chat_anarchy_vote_share": stripped == "anarchy",
            "_anarchy": (msgs["channel_mode"] == "anarchy").where(plays),
        }
    )
    users = per_message.groupby("user_id", sort=True)
    shares = users.mean(numeric_only=False).astype(float)
    out = shares.drop(columns="_anarchy")
    # Share sent in anarchy mode, among the user's messages in channels that have modes (0 if none).
    out["chat_anarchy_mode_share"] = shares["_anarchy"].fillna(0.0)
    out["chat_messages"] = users.size().astype(float)
    out["chat_repetition"] = 1.0 - msgs.groupby("user_id")["text"].nunique() / out["chat_messages"]

    in_slot = msgs.groupby(["context", "slot", "user_id"]).size().rename("n").reset_index()
    in_slot["norm"] = in_slot.groupby(["context", "slot"])["n"].transform("mean")
    out["chat_windows"] = in_slot.groupby("user_id").size().astype(float)
    out["chat_rate_vs_window"] = (in_slot["n"] / in_slot["norm"]).groupby(in_slot["user_id"]).mean()
    out["chat_burstiness"] = _burstiness(msgs)
    out.index.name = "user_id"
    return out[FEATURE_COLUMNS]


def _goal_ranks(msgs: pd.DataFrame, lower: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Per message, the best top rank and best bottom rank of its terms in its window (inf if none)."""
    terms = lower.str.findall(TERM_PATTERN).explode().dropna()
    terms = terms[(terms.str.len() >= 2) & ~terms.isin(STOPWORDS)]
    rows = pd.DataFrame({"msg": terms.index, "term": terms.to_numpy()}).drop_duplicates()
    rows["context"] = msgs["context"].to_numpy()[rows["msg"]]
    rows["slot"] = msgs["slot"].to_numpy()[rows["msg"]]
    counts = rows.groupby(["context", "slot", "term"], sort=False).size().rename("n").reset_index()
    # Ties broken by the term itself, as in the profile job (row_number over n, term).
    counts = counts.sort_values(["context", "slot", "n", "term"], ascending=[True, True, False, True])
    counts["top_rank"] = counts.groupby(["context", "slot"]).cumcount() + 1
    counts = counts.sort_values(["context", "slot", "n", "term"], ascending=[True, True, True, True])
    counts["bottom_rank"] = counts.groupby(["context", "slot"]).cumcount() + 1
    ranked = rows.merge(counts, on=["context", "slot", "term"], how="left")
    best = ranked.groupby("msg")[["top_rank", "bottom_rank"]].min()
    best = best.reindex(range(len(msgs)))
    return best["top_rank"].fillna(np.inf), best["bottom_rank"].fillna(np.inf)


def _burstiness(msgs: pd.DataFrame) -> pd.Series:
    """(sd - mean) / (sd + mean) of the gaps between a user's messages (population sd, as Spark's)."""
    ordered = msgs.sort_values(["user_id", "ts", "event_id"])
    seconds = _epoch_seconds(ordered["ts"])
    gaps = seconds.groupby(ordered["user_id"]).diff().dropna()
    by_user = gaps.groupby(ordered.loc[gaps.index, "user_id"])
    mean, sd = by_user.mean(), by_user.std(ddof=0)
    return ((sd - mean) / (sd + mean)).where(mean > 0)


def _epoch_seconds(ts: pd.Series) -> pd.Series:
    return ts.dt.as_unit("s").astype("int64")
