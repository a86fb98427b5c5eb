"""Message-level norm-violation scores in context, and a user's violation rate from them.

Every chat message gets binary *signals* (1 fires, 0 does not, NaN abstains) from its content,
from its channel's conversation in the trailing ``context_s`` seconds and from its sender's own
recent messages. Context matters: *Analyzing Norm Violations in Live-Stream Chat* finds that the
surrounding chat and the user's own recent messages improve moderation a lot over the message
alone, and Haque (*Twitch Plays Pokemon, Machine Learns Twitch*) defines a troll against the
group's current goal in a time window. Every window here is trailing, so a message's signals are
known when it arrives (streaming can compute them the same way).

Content
- ``toxic``: ``alt-profanity-check``'s offensive-language probability is at least 0.5 (its own
  decision threshold). A linear model over word n-grams trained on English offensive-language
  data, shipped inside the package. Fails on other languages, on hostility without swear words
  ("nobody cares") and on reclaimed or quoted profanity; about 5 µs per message.
- ``hostile_words``: a word of ``HOSTILE_TERMS`` (chat_features), a small list of insults common
  in game chat; catches mild hostility the model misses, misses everything else.
- ``link``: a URL or an ad-like domain (``LINK_PATTERN``); fails on links spelled out ("dot com").
- ``shouting``: at least ``SHOUT_MIN_LETTERS`` letters, nearly all upper case. Fans shout too,
  which is why no signal decides alone.
- ``emote_flood``: at least ``FLOOD_MIN_TOKENS`` tokens, one of which makes most of them.
- ``aimed_at_person``: an @-mention (or a reply) whose content is toxic or hostile: an attack on
  a person rather than hostility in the air. ``mention`` alone also counts, weakly.

Context (the channel's trailing ``context_s`` seconds, other users only)
- ``off_topic``: none of the message's content terms (two letters or more, not a stopword) was
  used by another user in the conversation: the message ignores it. The conversation is the
  trailing ``context_s`` seconds, reaching back in a slow channel to its last ``context_messages``
  messages but at most ``max_context_s`` seconds (a 2-minute window in a channel with a message
  every few minutes holds nothing, and the signal would abstain on nearly every message there).
  Abstains when the conversation holds fewer than ``min_context_messages`` messages of others or
  the message no term. Fails on a channel that has just started a topic and on greetings.
- ``copypasta``: another user sent the same text (case and spacing ignored, at least
  ``PASTA_MIN_TOKENS`` tokens) in the window. Coordinated floods and pastas; also catches a
  chant that everyone joins, which is why it is one signal among many.
- ``self_repeat``: the sender sent the same text in the window already.
- ``burst``: the sender's messages in the trailing ``burst_s`` seconds are at least
  ``MIN_BURST`` and ``burst_factor`` times both the channel's mean per sender in the same span
  and the sender's own mean per active span elsewhere (0 for a sender without other history).
- ``backseating`` and ``other_streamer``: only in channels whose rules (``channel_rules``, a
  detector parameter: channel -> rule names) say so; abstain elsewhere. Backseating is game
  advice in the imperative ("you should", "go left", "use the..."); another streamer is a
  mention of another channel's name or a twitch.tv link to it.

Combination, learned without labels: a latent-class (naive Bayes) model, the label model of data
programming (Ratner et al., *Data Programming*, 2016): in each latent class every signal fires at
its own rate, the classes and rates estimated by EM on the messages themselves. Three classes, not
two: live chat has crowd behaviour as common as it is harmless (a chant the whole chat copies in
capitals, a wave of greetings nobody answers), and a two-class fit makes whichever such cluster is
largest the "violating" class, after which offensive language counts for nothing (a hand-made
channel whose chant is a third of its messages ranked its one insult below every chant message).
The third class takes the crowd; the violating class is the one on which the content anchors
(``CONTENT_ANCHORS``: the offensive-language model and hostile words) fire most against the
others, chosen after the fit whatever its start, so it cannot swap onto off-topic chatter or a
chant. The other classes are collapsed into one normal class (rates weighted by class share), and
a signal never speaks *for* the normal class (where it fires less on the violating class, or
never fired in the fit, it is uninformative). A message's score is its posterior probability of a
violation. Fails when signals are strongly correlated (each is counted as independent evidence),
when offensive language is not what a channel's moderators act on (spam-only channels: without an
anchor firing anywhere, the smallest class is taken as violating) and when violations are so rare
that EM cannot separate them (it then falls back to its prior rates). Cost: O(patterns x signals
x classes) per iteration, a few dozen iterations over the distinct signal patterns.

A user's violation rate: a Beta-Binomial empirical-Bayes posterior. With ``k`` = the sum of the
user's message scores (expected violating messages) out of ``n`` messages and a Beta(a, b)
prior fitted by the method of moments on users with at least ``min_messages`` messages, the
posterior is Beta(a + k, b + n - k): one message moves it a little, many messages pin it down,
and its credible interval shrinks with evidence.

A user's troll probability from three views (``fit_user_views``, when the data holds moderation
events): what the user wrote (the content score above, binned within message-count tiers, finest
in the upper tail), how many distinct users reported them and how severe the sanctions moderators
gave them on chat grounds were (``SANCTION_POINTS``: a warning 1, a timeout 2, a ban 3, summed and
capped at a ban: two warnings weigh as a timeout). A ban is a moderator's firmest judgement and a
warning its mildest; counting them alike made one warning as telling as a ban, which cost most on
users with one to three messages, whose content says little. Reports and sanctions are late, partial
and noisy (moderators see a fraction of what happens and sometimes warn the wrong person), so
they are views, not labels:
a latent-class model (Dawid and Skene, *Maximum Likelihood Estimation of Observer Error-rates*,
1979) learns each view's category rates per class by EM, without labels, assuming the views are
independent given the class. A user with one message and two reports scores far above one with
one message and none; a sanctioned user who wrote nothing odd is pulled back by what they wrote.
The model is identifiable only with at least three views and enough moderated users
(``MIN_MODERATED``); without them (a feed without moderation, the streaming state) the content
score stands alone. Fails where reports are brigaded (many users reporting an innocent together)
and where moderation follows the content model itself (the views are then not independent).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from argus.detectors.chat_features import HOSTILE_TERMS, LINK_PATTERN, STOPWORDS, TERM_PATTERN

SIGNALS = (
    "toxic",
    "hostile_words",
    "link",
    "shouting",
    "emote_flood",
    "mention",
    "aimed_at_person",
    "off_topic",
    "copypasta",
    "self_repeat",
    "burst",
    "backseating",
    "other_streamer",
)
SIGNAL_LABELS = {
    "toxic": "offensive-language messages",
    "hostile_words": "messages with hostile words",
    "link": "messages with links",
    "shouting": "all-caps messages",
    "emote_flood": "emote floods",
    "mention": "messages @-mentioning someone",
    "aimed_at_person": "hostile messages aimed at a person",
    "off_topic": "messages off the conversation's topic",
    "copypasta": "messages copied from other users",
    "self_repeat": "messages repeating their own",
    "burst": "messages in bursts",
    "backseating": "backseating where the channel forbids it",
    "other_streamer": "mentions of other streamers where the channel forbids it",
}
RULES = ("no_backseating", "no_other_streamers")
CONTEXT_S = 120  # the conversation a message answers: about two minutes of live chat
# In a slow channel two minutes hold no conversation: the topic window reaches back to the channel's
# last CONTEXT_MESSAGES messages (about what a chat pane shows), but never past MAX_CONTEXT_S.
CONTEXT_MESSAGES = 20
MAX_CONTEXT_S = 1800
BURST_S = 60
TOXIC_THRESHOLD = 0.5  # alt-profanity-check's own decision threshold
SHOUT_MIN_LETTERS = 6
FLOOD_MIN_TOKENS = 4
PASTA_MIN_TOKENS = 3
MIN_BURST = 4
BACKSEAT_PATTERN = re.compile(
    r"\b(?:you should|you need to|you have to|why (?:don'?t|didn'?t) you|just (?:go|use|jump|do|press)"
    r"|go (?:left|right|back|up|down)|use the|try (?:the|to)|don'?t (?:go|use)|wrong way)\b",
    re.IGNORECASE,
)
MENTION_PATTERN = re.compile(r"@\w+")
# The latent classes: violating, normal, and one for crowd behaviour (chants, greetings) that would
# otherwise take the violating class; the violating one is found by the content anchors.
LATENT_CLASSES = 3
CONTENT_ANCHORS = ("toxic", "hostile_words")


@dataclass(frozen=True)
class MessageModel:
    """The latent-class model's parameters: prior violation share and per-signal firing rates."""

    prior: float
    theta1: tuple[float, ...]  # P(signal fires | violation), in SIGNALS order
    theta0: tuple[float, ...]  # P(signal fires | no violation)
    iterations: int

    def weights(self) -> np.ndarray:
        """Per signal, log-likelihood ratios when it fires (column 0) and when it does not (column 1)."""
        t1, t0 = np.asarray(self.theta1), np.asarray(self.theta0)
        return np.column_stack([np.log(t1 / t0), np.log((1 - t1) / (1 - t0))])

    def score(self, signals: pd.DataFrame) -> np.ndarray:
        """Posterior probability of a violation per message (rows of ``message_signals``)."""
        values = signals[list(SIGNALS)].to_numpy(dtype=float)
        return _posterior(values, self.prior, self.weights())


DEFAULT_MODEL = MessageModel(
    # Before any fit: every signal weakly for a violation, nothing learnt (used for empty input).
    prior=0.05,
    theta1=tuple([0.2] * len(SIGNALS)),
    theta0=tuple([0.05] * len(SIGNALS)),
    iterations=0,
)


def message_signals(
    chat: pd.DataFrame,
    context_s: int = CONTEXT_S,
    burst_s: int = BURST_S,
    burst_factor: float = 3.0,
    min_context_messages: int = 5,
    channel_rules: Mapping[str, list[str]] | None = None,
    context_messages: int = CONTEXT_MESSAGES,
    max_context_s: int = MAX_CONTEXT_S,
) -> pd.DataFrame:
    """One row per message of ``chat`` (same index order): ``SIGNALS`` (1/0/NaN) and ``toxicity`` (0..1)."""
    columns = [*SIGNALS, "toxicity"]
    if chat.empty:
        return pd.DataFrame(columns=columns, dtype=float)
    msgs = chat.reset_index(drop=True)
    text = msgs["text"].fillna("").astype(str)
    lower = text.str.lower()
    normal = lower.str.split().str.join(" ")
    tokens = normal.str.split()
    n_tokens = tokens.str.len().fillna(0).to_numpy()
    seconds = (msgs["ts"].dt.as_unit("ms").astype("int64") / 1000.0).to_numpy()
    channel = msgs["context"].astype(str)
    user = msgs["user_id"].astype(str)
    out = pd.DataFrame(index=msgs.index, columns=columns, dtype=float)

    toxicity = _toxicity(text.tolist())
    out["toxicity"] = toxicity
    out["toxic"] = (toxicity >= TOXIC_THRESHOLD).astype(float)
    terms = lower.str.findall(TERM_PATTERN)
    hostile = terms.map(lambda ts: any(t in HOSTILE_TERMS for t in ts)).to_numpy(dtype=bool)
    out["hostile_words"] = hostile.astype(float)
    out["link"] = text.str.contains(LINK_PATTERN, regex=True).astype(float)
    letters = text.str.replace(r"[^A-Za-z]", "", regex=True)
    upper = letters.str.count(r"[A-Z]")
    out["shouting"] = ((letters.str.len() >= SHOUT_MIN_LETTERS) & (upper >= 0.9 * letters.str.len())).astype(float)
    top_share = tokens.map(lambda ts: Counter(ts).most_common(1)[0][1] / len(ts) if ts else 0.0)
    out["emote_flood"] = ((n_tokens >= FLOOD_MIN_TOKENS) & (top_share.to_numpy() >= 0.75)).astype(float)
    mentions = text.str.contains(MENTION_PATTERN)
    if "reply_to" in msgs.columns:
        mentions |= msgs["reply_to"].notna() & (msgs["reply_to"].astype(str) != "")
    out["mention"] = mentions.astype(float)
    out["aimed_at_person"] = (mentions.to_numpy() & ((toxicity >= TOXIC_THRESHOLD) | hostile)).astype(float)

    # Context: trailing counts of equal keys within the channel's last context_s seconds.
    same_text = _trailing(seconds, [channel, normal], context_s)
    own_same_text = _trailing(seconds, [channel, normal, user], context_s)
    long_enough = n_tokens >= PASTA_MIN_TOKENS
    out["copypasta"] = ((same_text - own_same_text >= 1) & long_enough).astype(float)
    out["self_repeat"] = (own_same_text >= 1).astype(float)
    topic_s = _conversation_span(seconds, channel, context_s, context_messages, max_context_s)
    topic_others = _trailing(seconds, [channel], topic_s) - _trailing(seconds, [channel, user], topic_s)
    out["off_topic"] = _off_topic(terms, seconds, channel, user, topic_others, topic_s, min_context_messages)
    out["burst"] = _bursts(seconds, channel, user, burst_s, burst_factor)

    rules = {str(k): set(v) for k, v in (channel_rules or {}).items()}
    unknown = {r for v in rules.values() for r in v} - set(RULES)
    if unknown:
        raise ValueError(f"unknown channel rule(s) {sorted(unknown)}; known: {', '.join(RULES)}")
    no_backseat = channel.map(lambda c: "no_backseating" in rules.get(c, set())).to_numpy(dtype=bool)
    no_others = channel.map(lambda c: "no_other_streamers" in rules.get(c, set())).to_numpy(dtype=bool)
    backseat = text.str.contains(BACKSEAT_PATTERN).to_numpy(dtype=bool)
    out["backseating"] = np.where(no_backseat, backseat.astype(float), np.nan)
    names = sorted({c.lower() for c in channel.unique()})
    other = _mentions_other_channel(lower, channel.str.lower(), names) if no_others.any() else np.zeros(len(msgs))
    out["other_streamer"] = np.where(no_others, other.astype(float), np.nan)
    return out


def fit_message_model(
    signals: pd.DataFrame,
    max_iter: int = 200,
    tol: float = 1e-6,
    classes: int = LATENT_CLASSES,
    anchors: tuple[str, ...] = CONTENT_ANCHORS,
) -> MessageModel:
    """EM for the latent-class model on ``message_signals`` rows (module doc); no labels.

    Fits ``classes`` latent classes, so that a crowd behaviour (a chant the whole chat copies and
    shouts, a burst of off-topic greetings) gets a class of its own instead of taking the violating
    one. The violating class is then the one on which the content ``anchors`` (offensive language,
    hostile words) fire most against the other classes, whatever its start; the others are
    collapsed into one normal class (their rates weighted by their shares). Starts: the violating
    class from the messages where an anchor fires, a crowd class from each message's share of
    firing non-anchor signals, the normal class from the rest. Rates are smoothed by half a message
    each way; distinct signal patterns are fitted once, weighted by their count.
    """
    if signals.empty:
        return DEFAULT_MODEL
    if classes < 2:
        raise ValueError(f"classes must be at least 2, not {classes}")
    unknown = sorted(set(anchors) - set(SIGNALS))
    if unknown:
        raise ValueError(f"unknown anchor signal(s) {unknown}; known: {', '.join(SIGNALS)}")
    values = signals[list(SIGNALS)].to_numpy(dtype=float)
    patterns, counts = _patterns(values)
    observed = ~np.isnan(patterns)
    fired = np.nan_to_num(patterns, nan=0.0)
    is_anchor = np.isin(np.asarray(SIGNALS), anchors)
    resp = _start(fired, observed, is_anchor, classes)
    shares, theta = np.full(classes, 1.0 / classes), np.full((classes, len(SIGNALS)), 0.5)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        weight = counts[:, None] * resp  # patterns x classes
        shares = np.clip(weight.sum(axis=0) / counts.sum(), 1e-6, None)
        shares /= shares.sum()
        theta = (weight.T @ fired + 0.5) / (weight.T @ observed + 1.0)
        log_joint = np.log(shares) + fired @ np.log(theta).T + (observed & (fired == 0)) @ np.log(1 - theta).T
        updated = np.exp(log_joint - log_joint.max(axis=1, keepdims=True))
        updated /= updated.sum(axis=1, keepdims=True)
        change = float(np.max(np.abs(updated - resp)))
        resp = updated
        if change < tol:
            break
    violating = _violating_class(theta, shares, is_anchor)
    rest = np.arange(classes) != violating
    prior = float(np.clip(shares[violating], 1e-4, 0.5))
    theta1 = theta[violating]
    theta0 = shares[rest] @ theta[rest] / shares[rest].sum()
    # Monotone: a signal never speaks for the normal class; pooled rate where it would. A signal that
    # never fired in the fit has no evidence either way (smoothing alone would favour the small class).
    pooled = (counts @ fired + 0.5) / (counts @ observed + 1.0)
    backwards = (theta1 < theta0) | (counts @ fired == 0)
    theta1, theta0 = np.where(backwards, pooled, theta1), np.where(backwards, pooled, theta0)
    return MessageModel(
        prior=round(prior, 12),
        theta1=tuple(round(float(t), 12) for t in theta1),
        theta0=tuple(round(float(t), 12) for t in theta0),
        iterations=iterations,
    )


def _start(fired: np.ndarray, observed: np.ndarray, is_anchor: np.ndarray, classes: int) -> np.ndarray:
    """Starting responsibilities (patterns x classes): 0 normal, 1 violating (an anchor fires),
    2.. crowd classes (share of firing non-anchor signals, split by how many fire)."""
    anchored = (fired[:, is_anchor] > 0).any(axis=1)
    seen = observed[:, ~is_anchor].sum(axis=1)
    crowd = np.where(seen > 0, fired[:, ~is_anchor].sum(axis=1) / np.maximum(seen, 1), 0.0)
    start = np.full((len(fired), classes), 0.01)
    start[:, 0] = 1.0 - crowd
    start[:, 1] = np.where(anchored, 0.98, 0.01)
    for k in range(2, classes):
        # Crowd class k starts from the patterns with at least k - 1 firing non-anchor signals.
        start[:, k] = np.where(fired[:, ~is_anchor].sum(axis=1) >= k - 1, crowd, 0.01)
    start = np.clip(start, 0.01, None)
    return np.asarray(start / start.sum(axis=1, keepdims=True), dtype=float)


def _violating_class(theta: np.ndarray, shares: np.ndarray, is_anchor: np.ndarray) -> int:
    """The class on which the anchors fire most against the other classes (mean log-lift); without
    anchors, or when they fire nowhere, the smallest class (violations are the rare behaviour)."""
    if not is_anchor.any():
        return int(np.argmin(shares))
    lifts = []
    for k in range(len(shares)):
        rest = np.arange(len(shares)) != k
        others = shares[rest] @ theta[rest] / shares[rest].sum()
        lifts.append(float(np.mean(np.log(theta[k, is_anchor] / others[is_anchor]))))
    best = int(np.argmax(lifts))
    return best if lifts[best] > 0 else int(np.argmin(shares))


@dataclass(frozen=True)
class BetaPrior:
    """Beta(a, b) prior on a user's violation rate."""

    a: float
    b: float

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)


def fit_rate_prior(violations: np.ndarray, messages: np.ndarray, fallback_mean: float = 0.05) -> BetaPrior:
    """Method-of-moments Beta prior from users' expected violations ``k`` out of ``n`` messages.

    The spread of observed rates k/n is the prior's variance plus binomial noise; subtracting the
    noise leaves the prior's. Without users (or without excess spread) the prior is weak, worth two
    messages, around ``fallback_mean``.
    """
    k, n = np.asarray(violations, dtype=float), np.asarray(messages, dtype=float)
    keep = n > 0
    if keep.sum() < 2:
        return BetaPrior(2.0 * fallback_mean, 2.0 * (1 - fallback_mean))
    rate = k[keep] / n[keep]
    mean = float(np.clip(rate.mean(), 1e-4, 1 - 1e-4))
    noise = float(np.mean(mean * (1 - mean) / n[keep]))
    variance = float(rate.var()) - noise
    if variance <= 1e-9:
        return BetaPrior(2.0 * mean, 2.0 * (1 - mean))
    strength = max(mean * (1 - mean) / variance - 1.0, 0.5)
    return BetaPrior(mean * strength, (1 - mean) * strength)


def rate_posterior(
    violations: np.ndarray, messages: np.ndarray, prior: BetaPrior, interval: float = 0.8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior mean and the central ``interval`` credible bounds of each user's violation rate."""
    from scipy.stats import beta

    k = np.asarray(violations, dtype=float)
    n = np.asarray(messages, dtype=float)
    a, b = prior.a + k, prior.b + np.maximum(n - k, 0.0)
    tail = (1 - interval) / 2
    return a / (a + b), beta.ppf(tail, a, b), beta.ppf(1 - tail, a, b)


# --- internals ---------------------------------------------------------------------------------


def _toxicity(texts: list[str]) -> np.ndarray:
    from profanity_check import predict_prob

    return np.asarray(predict_prob(texts), dtype=float) if texts else np.zeros(0)


def _posterior(values: np.ndarray, prior: float, weights: np.ndarray) -> np.ndarray:
    """P(violation | signals) under conditional independence; NaN signals abstain."""
    fires = np.where(np.isnan(values), 0.0, values)
    quiet = np.where(np.isnan(values), 0.0, 1.0 - values)
    log_odds = np.log(prior / (1 - prior)) + fires @ weights[:, 0] + quiet @ weights[:, 1]
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(log_odds, -50, 50))), dtype=float)


def _patterns(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    coded = np.nan_to_num(values, nan=-1.0)
    unique, counts = np.unique(coded, axis=0, return_counts=True)
    return np.where(unique < 0, np.nan, unique), counts.astype(float)


def _trailing(seconds: np.ndarray, keys: list[pd.Series], window_s: float | np.ndarray) -> np.ndarray:
    """Per row, the earlier rows with the same keys in ``[t - window_s, t]`` (ties: earlier rows first).

    ``window_s`` is one span for every row or one per row."""
    codes = pd.MultiIndex.from_arrays(keys).factorize()[0] if len(keys) > 1 else pd.factorize(keys[0])[0]
    return _trailing_by_code(seconds, np.asarray(codes), window_s)


def _trailing_by_code(seconds: np.ndarray, codes: np.ndarray, window_s: float | np.ndarray) -> np.ndarray:
    order = np.lexsort((np.arange(len(seconds)), seconds, codes))
    window = np.broadcast_to(np.asarray(window_s, dtype=float), seconds.shape)
    # Times and window starts as ranks among both, so that (code, rank) is one exact integer key: a float
    # key code * span + seconds rounds, and a message exactly a window back then counted by chance.
    ranks = np.unique(np.concatenate([seconds, seconds - window]), return_inverse=True)[1].reshape(2, -1)
    stride = np.int64(2 * len(seconds) + 1)
    key = codes[order].astype(np.int64) * stride + ranks[0][order]
    start = np.searchsorted(key, codes[order].astype(np.int64) * stride + ranks[1][order], side="left")
    counts = np.empty(len(seconds))
    counts[order] = np.arange(len(seconds)) - start
    return counts


def _conversation_span(
    seconds: np.ndarray, channel: pd.Series, context_s: int, context_messages: int, max_context_s: int
) -> np.ndarray:
    """Per message, how far back its conversation reaches: ``context_s``, or back to the channel's
    ``context_messages``-th previous message when that is older, at most ``max_context_s``."""
    if not len(seconds):
        return np.zeros(0)
    codes = np.asarray(pd.factorize(channel)[0])
    order = np.lexsort((np.arange(len(seconds)), seconds, codes))
    t, c = seconds[order], codes[order]
    back = np.arange(len(t)) - context_messages
    same = (back >= 0) & (c[np.maximum(back, 0)] == c)
    reach = np.where(same, t - t[np.maximum(back, 0)], np.inf)
    span = np.empty(len(seconds))
    span[order] = np.clip(reach, context_s, max(max_context_s, context_s))
    return span


def _off_topic(
    terms: pd.Series,
    seconds: np.ndarray,
    channel: pd.Series,
    user: pd.Series,
    others_in_window: np.ndarray,
    context_s: np.ndarray,
    min_context_messages: int,
) -> np.ndarray:
    content = terms.map(lambda ts: sorted({t for t in ts if len(t) >= 2 and t not in STOPWORDS}))
    exploded = content.explode().dropna()
    result = np.full(len(terms), np.nan)
    if exploded.empty:
        return result
    rows = exploded.index.to_numpy()
    term = exploded.astype(str)
    t = seconds[rows]
    ch = channel.to_numpy()[rows]
    us = user.to_numpy()[rows]
    span = context_s[rows]
    by_term = _trailing(t, [pd.Series(ch), pd.Series(term.to_numpy())], span)
    by_term_user = _trailing(t, [pd.Series(ch), pd.Series(term.to_numpy()), pd.Series(us)], span)
    shared = pd.Series(by_term - by_term_user >= 1, index=rows).groupby(level=0).any()
    enough = others_in_window >= min_context_messages
    positions = shared.index.to_numpy()
    result[positions] = np.where(enough[positions], (~shared.to_numpy()).astype(float), np.nan)
    return result


def _bursts(seconds: np.ndarray, channel: pd.Series, user: pd.Series, burst_s: int, factor: float) -> np.ndarray:
    own = _trailing(seconds, [channel, user], burst_s) + 1.0
    # The channel's mean per sender in fixed spans of burst_s; the sender's own mean per active span elsewhere.
    span = np.floor(seconds / burst_s).astype(np.int64)
    frame = pd.DataFrame({"c": channel.to_numpy(), "u": user.to_numpy(), "s": span})
    per_sender = frame.groupby(["c", "s", "u"]).size().rename("n").reset_index()
    channel_mean = per_sender.groupby(["c", "s"])["n"].mean()
    total = per_sender.groupby("u")["n"].agg(["sum", "size"])
    here = frame.merge(per_sender, on=["c", "s", "u"], how="left")
    norm = channel_mean.reindex(pd.MultiIndex.from_frame(frame[["c", "s"]])).to_numpy()
    stats = total.reindex(frame["u"])
    elsewhere = (stats["sum"].to_numpy() - here["n"].to_numpy()) / np.maximum(stats["size"].to_numpy() - 1, 1)
    elsewhere = np.where(stats["size"].to_numpy() > 1, elsewhere, 0.0)
    burst = (own >= MIN_BURST) & (own >= factor * norm) & (own >= factor * elsewhere)
    return np.asarray(burst, dtype=float)


def _mentions_other_channel(lower: pd.Series, channel: pd.Series, names: list[str]) -> np.ndarray:
    patterns = {name: re.compile(rf"(?:@|twitch\.tv/|\b){re.escape(name)}\b") for name in names}
    hits = [
        any(p.search(text) for name, p in patterns.items() if name != own)
        for text, own in zip(lower.to_numpy(), channel.to_numpy(), strict=True)
    ]
    return np.asarray(hits, dtype=bool)


# --- users from three views: content, reports, sanctions ----------------------------------------

SANCTIONS = ("warn", "timeout", "ban")
CHAT_GROUNDS = ("troll", "spam", "harassment")  # moderation labels about chat (fraud and evasion are not)
# A sanction's weight in the severity view: the firmer the moderator's judgement, the more it says.
SANCTION_POINTS = {"warn": 1, "timeout": 2, "ban": 3}
MODERATION_COLUMNS = ["mod_reporters", "mod_sanctions", "mod_sanction_severity"]
MIN_MODERATED = 5  # users with a report or a sanction: fewer, and the moderation views say nothing
MIN_VIEW_USERS = 1000  # about 60 rates to learn (32 categories, two classes): fewer users overfit them
CONTENT_BINS = 8  # content-score bins per message-count tier
# Bin edges at the tier's quantiles 1/2, 3/4, 7/8, ...: each bin holds half the users above the
# previous edge, the last two the top 1/128 each. Trolls are a few percent of users and sit in the
# content score's upper tail; equal-mass bins spent seven of eight bins on ordinary users and put
# everyone above the 88th percentile in one bin, so a borderline message and a slur counted alike.
CONTENT_QUANTILES = 1.0 - 0.5 ** np.arange(1, CONTENT_BINS)
MAX_REPORTERS = 3  # report categories 0, 1, 2, 3+
MAX_SEVERITY = 3  # severity categories 0 (none), 1 (a warning), 2 (a timeout or two warnings), 3 (a ban or more)
# Each class's rates start from this many users distributed as everybody is: a view's likelihood
# ratios stay near 1 until the class holds well more users than this (a few dozen trolls cannot
# make one report decisive), and are the data's once it does.
PSEUDO_USERS = 1.0


def moderation_counts(moderation: pd.DataFrame) -> pd.DataFrame:
    """Per user (index ``user_id``): ``mod_reporters`` (distinct users who reported them),
    ``mod_sanctions`` (warnings, timeouts and bans) and ``mod_sanction_severity`` (their
    ``SANCTION_POINTS`` summed), on chat grounds or without a stated ground."""
    if moderation.empty:
        return pd.DataFrame(columns=MODERATION_COLUMNS, dtype=float)
    label = moderation["label"] if "label" in moderation.columns else pd.Series(None, index=moderation.index)
    about_chat = label.isna() | label.isin(CHAT_GROUNDS)
    action = moderation["action"].astype(str)
    reports = moderation[about_chat & (action == "report")]
    sanctions = moderation[about_chat & action.isin(SANCTIONS)]
    return pd.DataFrame(
        {
            "mod_reporters": reports.groupby("user_id")["actor_id"].nunique(),
            "mod_sanctions": sanctions.groupby("user_id").size(),
            "mod_sanction_severity": action[sanctions.index].map(SANCTION_POINTS).groupby(sanctions["user_id"]).sum(),
        }
    ).fillna(0.0)


@dataclass(frozen=True)
class UserViewModel:
    """The latent-class model over a user's three views (module doc).

    ``tiers``: upper message counts of the message-count tiers (the last tier is open);
    ``content_edges``: per tier, the content-score bin edges; ``rates1``/``rates0``: per view
    (content, reporters, sanction severity), the category probabilities for trolls and for the rest.
    """

    tiers: tuple[int, ...]
    content_edges: tuple[tuple[float, ...], ...]
    prior: float
    rates1: tuple[tuple[float, ...], ...]
    rates0: tuple[tuple[float, ...], ...]
    iterations: int

    def categories(
        self, content: np.ndarray, messages: np.ndarray, reporters: np.ndarray, severity: np.ndarray
    ) -> list[np.ndarray]:
        """Each user's category in each view (``severity``: summed ``SANCTION_POINTS``)."""
        content = np.nan_to_num(np.asarray(content, dtype=float), nan=0.0)
        tier = np.searchsorted(np.asarray(self.tiers, dtype=float), np.asarray(messages, dtype=float), side="left")
        binned = np.zeros(len(content), dtype=int)
        for t, edges in enumerate(self.content_edges):
            rows = tier == t
            binned[rows] = np.searchsorted(np.asarray(edges), content[rows], side="right")
        return [
            tier * CONTENT_BINS + binned,
            np.minimum(np.nan_to_num(np.asarray(reporters, dtype=float)), MAX_REPORTERS).astype(int),
            np.minimum(np.nan_to_num(np.asarray(severity, dtype=float)), self._severity_cap()).astype(int),
        ]

    def _severity_cap(self) -> int:
        # A model saved before the severity view learnt three sanction-count categories.
        return len(self.rates1[2]) - 1 if len(self.rates1) == 3 else MAX_SEVERITY

    def log_ratios(self, views: list[np.ndarray]) -> np.ndarray:
        """Per user and view (columns), the log-likelihood ratio troll : rest of its category."""
        return np.column_stack(
            [
                np.log(np.asarray(r1)[v] / np.asarray(r0)[v])
                for v, r1, r0 in zip(views, self.rates1, self.rates0, strict=True)
            ]
        )

    def posterior(
        self, content: np.ndarray, messages: np.ndarray, reporters: np.ndarray, severity: np.ndarray
    ) -> np.ndarray:
        """P(troll | the three views) per user."""
        ratios = self.log_ratios(self.categories(content, messages, reporters, severity))
        log_odds = np.log(self.prior / (1 - self.prior)) + ratios.sum(axis=1)
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(log_odds, -50, 50))), dtype=float)


def fit_user_views(
    content: np.ndarray,
    messages: np.ndarray,
    reporters: np.ndarray,
    severity: np.ndarray,
    tiers: tuple[int, ...] = (3, 20),
    max_iter: int = 500,
    tol: float = 1e-7,
    pseudo_users: float = PSEUDO_USERS,
) -> UserViewModel | None:
    """EM for the three-view latent-class model (module doc); None when the views cannot be learnt.

    ``content`` (0..1, from the message and context modes) starts the responsibilities; content bins
    are halving quantiles (``CONTENT_QUANTILES``) within each message-count tier (``tiers``: users
    with up to 3, up to 20, more messages), so a one-message user is compared with other one-message
    users. ``severity`` is each user's summed ``SANCTION_POINTS`` (``moderation_counts``). Rates are
    smoothed by one user spread over a view's categories. None with fewer than ``MIN_VIEW_USERS`` users, fewer
    than ``MIN_MODERATED`` reported or sanctioned ones, or when the fitted troll class is reported
    and sanctioned less than the rest (the views disagree; the content score then stands alone).
    """
    content = np.nan_to_num(np.asarray(content, dtype=float), nan=0.0)
    messages = np.asarray(messages, dtype=float)
    reporters = np.nan_to_num(np.asarray(reporters, dtype=float))
    severity = np.nan_to_num(np.asarray(severity, dtype=float))
    moderated = int(((reporters > 0) | (severity > 0)).sum())
    if len(content) < MIN_VIEW_USERS or moderated < MIN_MODERATED:
        return None
    tier = np.searchsorted(np.asarray(tiers, dtype=float), messages, side="left")
    edges = []
    for t in range(len(tiers) + 1):
        values = content[tier == t]
        cut = np.quantile(values, CONTENT_QUANTILES) if len(values) else np.zeros(0)
        edges.append(tuple(float(e) for e in cut))
    shell = UserViewModel(tuple(tiers), tuple(edges), 0.5, (), (), 0)
    views = shell.categories(content, messages, reporters, severity)
    sizes = [(len(tiers) + 1) * CONTENT_BINS, MAX_REPORTERS + 1, MAX_SEVERITY + 1]
    resp = np.clip(content, 0.01, 0.99)
    prior, rates1, rates0 = 0.5, [np.ones(k) / k for k in sizes], [np.ones(k) / k for k in sizes]
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        prior = float(np.clip(resp.mean(), 1e-4, 0.5))
        log_odds = np.full(len(resp), np.log(prior / (1 - prior)))
        for j, (view, k) in enumerate(zip(views, sizes, strict=True)):
            pooled = pseudo_users * (np.bincount(view, minlength=k) + 1.0 / k) / (len(view) + 1.0)
            c1 = np.bincount(view, weights=resp, minlength=k) + pooled
            c0 = np.bincount(view, weights=1 - resp, minlength=k) + pooled
            runs = (
                [range(t * CONTENT_BINS, (t + 1) * CONTENT_BINS) for t in range(len(tiers) + 1)]
                if j == 0
                else [range(k)]
            )
            c1, c0 = _monotone(c1, c0, runs)
            rates1[j], rates0[j] = c1 / c1.sum(), c0 / c0.sum()
            log_odds += np.log(rates1[j][view] / rates0[j][view])
        updated = 1.0 / (1.0 + np.exp(-np.clip(log_odds, -50, 50)))
        change = float(np.max(np.abs(updated - resp)))
        resp = updated
        if change < tol:
            break
    mean_count = [float(np.arange(k) @ r) for k, r in zip(sizes[1:], rates1[1:], strict=True)]
    mean_rest = [float(np.arange(k) @ r) for k, r in zip(sizes[1:], rates0[1:], strict=True)]
    if not all(a > b for a, b in zip(mean_count, mean_rest, strict=True)):
        return None
    return UserViewModel(
        tiers=tuple(int(t) for t in tiers),
        content_edges=tuple(edges),
        prior=round(prior, 12),
        rates1=tuple(tuple(round(float(x), 12) for x in r) for r in rates1),
        rates0=tuple(tuple(round(float(x), 12) for x in r) for r in rates0),
        iterations=iterations,
    )


def _monotone(c1: np.ndarray, c1_rest: np.ndarray, runs: list[range]) -> tuple[np.ndarray, np.ndarray]:
    """Class counts per category with the troll share non-decreasing along each run of ordered categories.

    A higher content bin, more reporters or more sanctions never speak *less* for the troll class:
    pool-adjacent-violators on the troll share of each run (weighted by the category's users), which
    also keeps a sparse bin's noise from deciding a user alone."""
    from sklearn.isotonic import IsotonicRegression

    c1, c1_rest = c1.copy(), c1_rest.copy()
    for run in runs:
        idx = np.asarray(run)
        weight = c1[idx] + c1_rest[idx]
        share = IsotonicRegression(increasing=True).fit_transform(
            np.arange(len(idx)), c1[idx] / weight, sample_weight=weight
        )
        c1[idx], c1_rest[idx] = share * weight, (1 - share) * weight
    return c1, c1_rest


__all__ = [
    "MODERATION_COLUMNS",
    "SANCTION_POINTS",
    "SIGNALS",
    "BetaPrior",
    "MessageModel",
    "UserViewModel",
    "fit_message_model",
    "fit_rate_prior",
    "fit_user_views",
    "message_signals",
    "moderation_counts",
    "rate_posterior",
]
