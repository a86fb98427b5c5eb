"""Troll detection after Haque, "Twitch Plays Pokemon, Machine Learns Twitch" (three modes).

**Message mode** (the default of `TrollDetector` on events): every chat message gets a
norm-violation score from its content and its context (`detectors/chat_messages.py`: an
offensive-language model, hostile words, links, shouting and emote floods; off-topic against the
channel's last minutes, copy-pasta across users, attacks aimed at a person, bursts against the
sender's own rate, per-channel rules), combined by a latent-class model learnt without labels.
A user's score is the posterior mean of their violation rate under a Beta-Binomial prior fitted
on users with at least ``min_messages`` messages; its credible interval, in the reasons, shrinks
with evidence. One message gives a score, with status ``low evidence: 1 chat message ...``. A
user is flagged when the lower end of that interval is above the rate threshold: an outer fence
(Q3 + ``fence`` x IQR) on the fitted users' posterior means, at least the prior mean. `score_items`
writes the message scores; a user's expected violating messages is their sum.
The context mode below is fitted alongside, and a user's score combines both sources of evidence
as independent ones, ``1 - (1 - rate) * (1 - context score)``, flagged when either flags: the
message rate carries sparse users with a violating message, the context features carry users with
enough messages whose violations are in their pattern (off the window's goals, repetition, caps).
Feature frames without the message columns (the nightly profile, the streaming state) are scored
by the context mode alone.

**Moderation views.** With moderation events in the input, ``features`` counts per user the
distinct users who reported them and the moderator sanctions on chat grounds
(``chat_messages.moderation_counts``), and ``fit`` learns a latent-class model over three views of
every scored user, without labels: the content score above (message and context modes), the
reports and the sanctions' severity (a warning 1, a timeout 2, a ban 3, summed;
``chat_messages.fit_user_views``). The score is then P(troll) from all three, flagged above 0.5,
with the reports and sanctions first among the reasons. Reports and sanctions are partial and
noisy, which is why they are views and not labels; with fewer than ``MIN_VIEW_USERS`` users or
``MIN_MODERATED`` moderated ones the content score stands alone.
``content_scores`` gives the content score with moderation left out.

**Paper mode** (`paper_scores`) reproduces the paper: on its ten per-user fractions, the score
is the squared Euclidean distance of the *unscaled* features to the single k-means centroid
(k=1, i.e. the mean), or the distance to the k-th nearest neighbour (k=5, FAISS); scores are
min-max rescaled to 0..100 and a user is a troll above 40 (the paper's threshold).

**Context mode** (`TrollDetector`) is for general live chat, where the paper's distances are
dominated by whichever fraction has the widest spread and by users with one odd habit (shouty
fans, link promoters, hype spammers). Each feature of ``SCORED_FEATURES`` becomes a one-sided
deviation from the fitted population's median in units of its spread (IQR, floored at a tenth of
its 1st-99th percentile range), counted only in the troll direction (fewer messages on the
window's top goals; more spam, caps, links, hostility...) and capped at ``cap`` so that no single
habit decides. The score is the distance from the typical user in that space: the Manhattan
distance to the median (``method="centroid"``), or the distance to the ``k``-th nearest fitted
user (``method="knn"``, FAISS; weaker when trolls coordinate, because they neighbour each other).
The operating threshold is an outer fence on the fitted distances (Q3 + ``fence`` x IQR, Tukey);
the 0..1 score maps the threshold to 0.5. Refitting on a schedule is the paper's hourly
re-clustering: `relabelled` lists users whose decision changed between two fits.

**Evidence.** The norms (median, spread, threshold and the kNN reference) are fitted on users
with at least ``min_messages`` messages (status ``scored``). Every other user with at least one
chat message is scored by the same model, status ``low evidence: n chat messages (norms are fit
on users with >= 20)``, after its features are shrunk toward the fitted median in proportion to
its evidence: ``median + n / (n + prior_messages) * (value - median)`` (empirical-Bayes shrinkage
of a share estimated from ``n`` messages toward the population's, with a prior worth
``prior_messages`` messages). A feature undefined for so few messages (burstiness needs two)
counts as the median. A fraction over one or two messages is mostly noise, so a low-evidence user
moves away from the median, and past the same threshold, only as far as its evidence carries it.
Users without a chat message are not scored (``no chat messages``), nor are users with NaN
features (``missing features: ...``).

Raids (`find_raids`): groups of users that flood one channel together. Windows where several
users post far above the window's norm are clustered with the FAISS-backed HDBSCAN on what they
wrote; a cluster of at least ``min_members`` users is one group alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Self

import numpy as np
import pandas as pd

from argus.detectors.base import ITEM_COLUMNS, LOW_EVIDENCE, SCORED, Detector, Reason, norm_reasons, score_frame
from argus.detectors.chat_features import (
    CONTEXT_WINDOW_S,
    FEATURE_COLUMNS,
    PAPER_FEATURES,
    TERM_PATTERN,
    chat_context_features,
)
from argus.detectors.chat_messages import (
    BURST_S,
    CONTEXT_S,
    DEFAULT_MODEL,
    MODERATION_COLUMNS,
    SIGNAL_LABELS,
    SIGNALS,
    BetaPrior,
    MessageModel,
    UserViewModel,
    fit_message_model,
    fit_rate_prior,
    fit_user_views,
    message_signals,
    moderation_counts,
    rate_posterior,
)
from argus.detectors.events import Events

PAPER_THRESHOLD = 40.0  # Haque: troll when the rescaled score is above 40 of 100
PAPER_KNN_K = 5

# Feature -> direction that is suspicious (+1 higher, -1 lower).
SCORED_FEATURES: dict[str, int] = {
    "chat_top3_share": -1,
    "chat_bottom3_share": 1,
    "chat_spam_ratio": 1,
    "chat_repetition": 1,
    "chat_caps_ratio": 1,
    "chat_link_ratio": 1,
    "chat_mention_ratio": 1,
    "chat_hostile_ratio": 1,
    "chat_start_share": 1,
    "chat_anarchy_vote_share": 1,
    "chat_rate_vs_window": 1,
    "chat_burstiness": 1,
}
LABELS = {
    "chat_top3_share": "share on the window's top-3 goals",
    "chat_bottom3_share": "share on the window's rarest goals",
    "chat_spam_ratio": "spam ratio",
    "chat_repetition": "repeated messages",
    "chat_caps_ratio": "all-caps messages",
    "chat_link_ratio": "messages with links",
    "chat_mention_ratio": "messages with @mentions",
    "chat_hostile_ratio": "messages with hostile words",
    "chat_start_share": "START commands",
    "chat_anarchy_vote_share": "anarchy votes",
    "chat_rate_vs_window": "message rate against the window's norm",
    "chat_burstiness": "burstiness",
}
# Per-user aggregates of the message scores (message mode); signal counts are "msg_<signal>".
MESSAGE_COLUMNS = ["msg_violations", "msg_max_score", *(f"msg_{s}" for s in SIGNALS)]
MESSAGE_MODEL_ATTR = "message_model"
USER_VIEWS = "user_views"  # the state's three-view model (chat_messages.fit_user_views), when learnt
ITEM_FLAG = 0.5  # a message is flagged when a violation is more likely than not
FEW_MESSAGES_TIER = 3  # the three-view model compares users with up to 3 messages among themselves


def paper_scores(features: np.ndarray, method: str = "centroid", k: int = PAPER_KNN_K) -> np.ndarray:
    """The paper's 0..100 troll scores for rows of its ten fractions (unscaled, as published).

    ``centroid``: squared Euclidean distance to the mean (k-means with k=1). ``knn``: squared
    Euclidean distance to the k-th nearest other user (FAISS, exact). Min-max rescaled; all-equal
    distances give 0.
    """
    data = np.ascontiguousarray(features, dtype=np.float32)
    if data.ndim != 2 or len(data) == 0:
        raise ValueError("paper_scores needs a non-empty 2-D array (users x features)")
    if method == "centroid":
        distance = ((data - data.mean(axis=0)) ** 2).sum(axis=1).astype(float)
    elif method == "knn":
        distance = _kth_neighbour_distance(data, data, k, exclude_self=True)
    else:
        raise ValueError(f"method must be 'centroid' or 'knn', not {method!r}")
    span = distance.max() - distance.min()
    return np.zeros(len(data)) if span == 0 else (distance - distance.min()) / span * 100.0


def _kth_neighbour_distance(reference: np.ndarray, query: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    import faiss

    reference = np.ascontiguousarray(reference, dtype=np.float32)
    query = np.ascontiguousarray(query, dtype=np.float32)
    k_eff = min(k + int(exclude_self), len(reference))
    if k_eff == 0:
        return np.full(len(query), np.nan)
    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(reference)
    distances, _ = index.search(query, k_eff)
    return np.asarray(distances[:, k_eff - 1], dtype=float)


class ContextScores(NamedTuple):
    """Context-mode scores and flags of every row, and the worded reasons of some rows (row -> reasons)."""

    score: np.ndarray
    flagged: np.ndarray
    reasons: dict[int, list[Reason]]


class TrollDetector(Detector):
    """Message-mode troll scores, context mode for profile features (module doc); unsupervised."""

    name = "trolls"
    alert_kind = "troll"
    item_kind = "message"

    def __init__(
        self,
        method: str = "centroid",
        k: int = PAPER_KNN_K,
        min_messages: int = 20,
        prior_messages: float = 20.0,
        cap: float = 4.0,
        fence: float = 2.0,
        window_s: int = CONTEXT_WINDOW_S,
        context_s: int = CONTEXT_S,
        burst_s: int = BURST_S,
        channel_rules: dict[str, list[str]] | None = None,
        interval: float = 0.8,
    ) -> None:
        if method not in ("centroid", "knn"):
            raise ValueError(f"method must be 'centroid' or 'knn', not {method!r}")
        if min_messages < 1 or cap <= 0 or fence < 0 or k < 1 or prior_messages < 0:
            raise ValueError("need min_messages >= 1, k >= 1, cap > 0, fence >= 0 and prior_messages >= 0")
        if context_s <= 0 or burst_s <= 0 or not 0 < interval < 1:
            raise ValueError("need context_s > 0, burst_s > 0 and 0 < interval < 1")
        super().__init__(
            method=method,
            k=k,
            min_messages=min_messages,
            prior_messages=float(prior_messages),
            cap=cap,
            fence=fence,
            window_s=window_s,
            context_s=context_s,
            burst_s=burst_s,
            channel_rules={str(c): sorted(r) for c, r in sorted((channel_rules or {}).items())},
            interval=interval,
        )

    def features(self, events: Events) -> pd.DataFrame:
        """Context features and message-score aggregates of every user in ``events`` (no chat: 0 messages).

        The message scores come from the fitted detector's message model; an unfitted detector
        learns one from these events (EM, no labels) and hands it to ``fit`` in the frame's
        ``attrs["message_model"]``.
        """
        chat = events["chat"]
        features = chat_context_features(chat, self.params["window_s"])
        signals = self.message_signals(chat)
        model = self._message_model(signals)
        scores = model.score(signals) if len(signals) else np.zeros(0)
        per_user = signals[list(SIGNALS)].fillna(0.0).groupby(chat["user_id"].to_numpy())
        aggregates = per_user.sum().add_prefix("msg_")
        aggregates["msg_violations"] = pd.Series(scores).groupby(chat["user_id"].to_numpy()).sum()
        aggregates["msg_max_score"] = pd.Series(scores).groupby(chat["user_id"].to_numpy()).max()
        features = features.join(aggregates[MESSAGE_COLUMNS]).reindex(events.user_ids)
        features["chat_messages"] = features["chat_messages"].fillna(0.0)
        features[MESSAGE_COLUMNS] = features[MESSAGE_COLUMNS].where(features["chat_messages"] > 0, 0.0)
        moderation = moderation_counts(events["moderation"]).reindex(features.index)
        features[MODERATION_COLUMNS] = moderation[MODERATION_COLUMNS].fillna(0.0).to_numpy(dtype=float)
        features.index.name = "user_id"
        features.attrs[MESSAGE_MODEL_ATTR] = model
        return features

    def message_signals(self, chat: pd.DataFrame) -> pd.DataFrame:
        """``chat_messages.message_signals`` with this detector's context, burst and channel settings."""
        return message_signals(
            chat,
            context_s=self.params.get("context_s", CONTEXT_S),
            burst_s=self.params.get("burst_s", BURST_S),
            channel_rules=self.params.get("channel_rules"),
        )

    def score_items(self, events: Events, features: pd.DataFrame) -> pd.DataFrame:
        """One row per chat message: its violation probability, flagged above 0.5, the signals that fired."""
        state = self.require_fitted()
        chat = events["chat"].reset_index(drop=True)
        if chat.empty:
            return pd.DataFrame(columns=ITEM_COLUMNS)
        signals = self.message_signals(chat)
        model: MessageModel = state.get(MESSAGE_MODEL_ATTR, DEFAULT_MODEL)
        scores = model.score(signals)
        fired = signals[list(SIGNALS)].to_numpy(dtype=float) == 1.0
        lift = model.weights()[:, 0]
        reasons: list[list[Reason]] = []
        for row in fired:
            hits = sorted(np.flatnonzero(row), key=lambda j: -lift[j])
            reasons.append(
                [
                    Reason(SIGNALS[j], 1.0, float(model.theta0[j]), SIGNAL_LABELS[SIGNALS[j]])
                    for j in hits
                    if lift[j] > 0
                ]
            )
        return pd.DataFrame(
            {
                "event_id": chat["event_id"].astype(str),
                "user_id": chat["user_id"].astype(str),
                "ts": chat["ts"],
                "context": chat["context"].astype(str),
                "score": scores,
                "flagged": scores > ITEM_FLAG,
                "reasons": reasons,
            },
            columns=ITEM_COLUMNS,
        )

    def fit(self, features: pd.DataFrame, labels: pd.Series | None = None) -> Self:
        eligible = features[self._eligible(features)]
        values = eligible[list(SCORED_FEATURES)].to_numpy(dtype=float)
        if len(values) >= 2:
            q1, median, q3, p1, p99 = np.percentile(values, [25, 50, 75, 1, 99], axis=0)
            scale = np.maximum(q3 - q1, np.maximum(0.1 * (p99 - p1), 1e-3))
        else:  # too few users to learn a norm: no deviation counts until a real fit
            median, scale = np.zeros(len(SCORED_FEATURES)), np.full(len(SCORED_FEATURES), np.inf)
        state: dict[str, Any] = {"median": median, "scale": scale, "reference": np.zeros((0, len(SCORED_FEATURES)))}
        deviations = self._deviations(values, state)
        if self.params["method"] == "knn":
            state["reference"] = deviations.astype(np.float32)
        distances = self._distances(deviations, state, exclude_self=True)
        if len(distances):
            q1d, q3d = np.percentile(distances, [25, 75])
            threshold = max(q3d + self.params["fence"] * (q3d - q1d), 1e-6)
        else:
            threshold = np.inf
        state["threshold"] = float(threshold)
        metrics: dict[str, Any] = {"users_fitted": len(values), "flagged_at_fit": int((distances > threshold).sum())}
        if self._has_messages(features):
            model = features.attrs.get(MESSAGE_MODEL_ATTR, DEFAULT_MODEL)
            k = eligible["msg_violations"].to_numpy(dtype=float)
            n = eligible["chat_messages"].to_numpy(dtype=float)
            prior = fit_rate_prior(k, n)
            means, lower, _ = rate_posterior(k, n, prior, self.params.get("interval", 0.8))
            if len(means):
                q1m, q3m = np.percentile(means, [25, 75])
                rate_threshold = max(q3m + self.params["fence"] * (q3m - q1m), prior.mean)
            else:
                rate_threshold = 0.5
            shares = eligible[[f"msg_{s}" for s in SIGNALS]].to_numpy(dtype=float) / np.maximum(n, 1.0)[:, None]
            state[MESSAGE_MODEL_ATTR] = model
            state["rate_prior"] = prior
            state["rate_threshold"] = float(rate_threshold)
            state["signal_norms"] = shares.mean(axis=0) if len(shares) else np.zeros(len(SIGNALS))
            metrics.update(
                message_model_iterations=model.iterations,
                violation_prior=round(prior.mean, 6),
                rate_threshold=round(float(rate_threshold), 6),
                message_flagged_at_fit=int((lower > rate_threshold).sum()),
            )
            if self._has_moderation(features):
                views = self._fit_views(features, state)
                metrics["user_views"] = "fitted" if views is not None else "too few moderated users"
                if views is not None:
                    state[USER_VIEWS] = views
                    metrics.update(user_views_prior=round(views.prior, 6), user_views_iterations=views.iterations)
        return self._fitted(state, metrics)

    def fit_messages(self, chat: pd.DataFrame) -> Self:
        """Add the message-level part to a model fitted without message columns (the nightly profile).

        The message model, the rate prior and threshold and the signal norms are learnt from ``chat``
        (a night's messages, whole channels: the context signals need the conversation) exactly as
        ``fit`` learns them from ``features`` of events; the context norms stay as fitted. The
        streaming per-message scoring (``argus stream run --detectors troll-messages``) needs them.
        """
        state = self.require_fitted()
        fresh = type(self)(**self.params)
        learnt = fresh.fit(fresh.features(Events.from_frames({"chat": chat}))).require_fitted()
        for key in (MESSAGE_MODEL_ATTR, "rate_prior", "rate_threshold", "signal_norms"):
            if key in learnt:
                state[key] = learnt[key]
        parts = ("message_model_iterations", "violation_prior", "rate_threshold", "message_flagged_at_fit")
        self.metrics.update({k: v for k, v in fresh.metrics.items() if k in parts})
        self.metrics["message_users_fitted"] = fresh.metrics.get("users_fitted", 0)
        return self

    def _fit_views(self, features: pd.DataFrame, state: dict[str, Any]) -> UserViewModel | None:
        """The three-view model on every user with a content score (chat_messages.fit_user_views)."""
        content = self._score_content(features, state)["score"].to_numpy(dtype=float)
        rows = np.isfinite(content)
        return fit_user_views(
            content[rows],
            features["chat_messages"].to_numpy(dtype=float)[rows],
            features["mod_reporters"].to_numpy(dtype=float)[rows],
            features["mod_sanction_severity"].to_numpy(dtype=float)[rows],
            tiers=(FEW_MESSAGES_TIER, int(self.params["min_messages"])),
        )

    @staticmethod
    def _has_moderation(features: pd.DataFrame) -> bool:
        return all(c in features.columns for c in MODERATION_COLUMNS)

    def _message_model(self, signals: pd.DataFrame) -> MessageModel:
        if self.state is not None and MESSAGE_MODEL_ATTR in self.state:
            model: MessageModel = self.state[MESSAGE_MODEL_ATTR]
            return model
        return fit_message_model(signals)

    @staticmethod
    def _has_messages(features: pd.DataFrame) -> bool:
        return all(c in features.columns for c in MESSAGE_COLUMNS)

    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        """Every user with a chat message gets a score; low-evidence users on shrunk features (module doc).

        With a three-view model and the moderation columns, the score is P(troll) from what the user
        wrote, their reports and their sanctions, flagged when more likely than not."""
        state = self.require_fitted()
        content = self._score_content(features, state)
        views: UserViewModel | None = state.get(USER_VIEWS)
        if views is None or not self._has_moderation(features):
            return content
        rows = content["score"].notna().to_numpy()
        scores = content["score"].to_numpy(dtype=float).copy()
        flagged = np.zeros(len(features), dtype=bool)
        reasons = list(content["reasons"])
        if rows.any():
            reporters = features["mod_reporters"].to_numpy(dtype=float)
            sanctions = features["mod_sanctions"].to_numpy(dtype=float)
            severity = features["mod_sanction_severity"].to_numpy(dtype=float)
            messages = features["chat_messages"].to_numpy(dtype=float)
            scores[rows] = views.posterior(scores[rows], messages[rows], reporters[rows], severity[rows])
            flagged[rows] = scores[rows] > ITEM_FLAG
            for i in np.flatnonzero(rows):
                said = []
                if reporters[i] > 0:
                    count = int(reporters[i])
                    said.append(
                        Reason("mod_reporters", float(count), 0.0, f"reported by {count} user{'s' * (count != 1)}")
                    )
                if sanctions[i] > 0:
                    count = int(sanctions[i])
                    points = int(severity[i])
                    text = (
                        f"{count} moderator sanction{'s' * (count != 1)}, severity {points}"
                        " (a warning 1, a timeout 2, a ban 3)"
                    )
                    said.append(Reason("mod_sanction_severity", float(points), 0.0, text))
                reasons[i] = said + list(reasons[i])
        return score_frame(features.index, scores, flagged, content["status"], reasons)

    def content_scores(self, features: pd.DataFrame) -> pd.DataFrame:
        """The score frame from what users wrote alone (message and context modes), moderation left out."""
        return self._score_content(features, self.require_fitted())

    def _score_content(self, features: pd.DataFrame, state: dict[str, Any]) -> pd.DataFrame:
        """The message and context modes combined: what the user wrote, in its context."""
        context = self._score_context(features, state)
        if not (self._has_messages(features) and "rate_prior" in state):
            return context
        messages = self._score_messages(features, state)
        # Two sources of evidence, either enough: P(troll) = 1 - (1 - messages)(1 - context).
        both = messages["score"].notna() & context["score"].notna()
        combined = 1.0 - (1.0 - messages["score"]) * (1.0 - context["score"].where(both, 0.0))
        # Flagged when the rate is credibly high (interval above the threshold) and the combined
        # probability is past even, or when the context mode flags on its own.
        flagged = (messages["flagged"] & (combined > 0.5)) | (context["flagged"] & both)
        reasons = [m + c[:1] for m, c in zip(messages["reasons"], context["reasons"], strict=True)]
        return score_frame(features.index, combined.to_numpy(), flagged.to_numpy(), messages["status"], reasons)

    def _score_context(self, features: pd.DataFrame, state: dict[str, Any]) -> pd.DataFrame:
        """Context-mode scores: deviations of (shrunk) context features from the fitted norms."""
        eligible, low = self._scorable(features)
        context = self._context_arrays(features, state, eligible | low, flagged_reasons_only=False)
        reasons: list[list[Reason]] = [context.reasons.get(i, []) for i in range(len(features))]
        status = self._status(features, eligible, low)
        return score_frame(features.index, context.score, context.flagged, status, reasons)

    def context_scores(self, features: pd.DataFrame) -> ContextScores | None:
        """``score``'s scores and flags as arrays, with reasons for the flagged rows only, or None where
        ``score`` uses more than the context features (message columns; moderation with the three-view
        model). The streaming scorer's path: no per-row statuses or frame, and wording only what alerts."""
        state = self.require_fitted()
        if self._has_messages(features) or (self._has_moderation(features) and state.get(USER_VIEWS) is not None):
            return None
        eligible, low = self._scorable(features)
        return self._context_arrays(features, state, eligible | low, flagged_reasons_only=True)

    def _context_arrays(
        self, features: pd.DataFrame, state: dict[str, Any], rows: np.ndarray, flagged_reasons_only: bool
    ) -> ContextScores:
        scorable = np.flatnonzero(rows)
        scores = np.full(len(features), np.nan)
        flagged = np.zeros(len(features), dtype=bool)
        reasons: dict[int, list[Reason]] = {}
        if len(scorable):
            values = features[list(SCORED_FEATURES)].to_numpy(dtype=float)[scorable]
            messages = features["chat_messages"].to_numpy(dtype=float)[scorable]
            deviations = self._deviations(self.shrink(values, messages, state), state)
            distance = self._distances(deviations, state, exclude_self=False)
            scores[scorable] = distance / (distance + state["threshold"])
            over = distance > state["threshold"]
            flagged[scorable] = over
            worded = over if flagged_reasons_only else np.ones(len(scorable), dtype=bool)
            if worded.any():
                norms = pd.Series(state["median"], index=list(SCORED_FEATURES))
                said = norm_reasons(
                    pd.DataFrame(values[worded], columns=list(SCORED_FEATURES)),
                    norms,
                    pd.DataFrame(deviations[worded], columns=list(SCORED_FEATURES)),
                    LABELS,
                )
                reasons = dict(zip(scorable[worded].tolist(), said, strict=True))
        return ContextScores(np.clip(scores, 0.0, 1.0), flagged, reasons)

    def _score_messages(self, features: pd.DataFrame, state: dict[str, Any]) -> pd.DataFrame:
        """The posterior mean of each user's violation rate; flagged above the fitted fence (module doc)."""
        eligible, low = self._scorable(features)
        usable = features[MESSAGE_COLUMNS].notna().all(axis=1).to_numpy()
        eligible, low = eligible & usable, low & usable
        scorable = eligible | low
        status = self._status(features, eligible, low)
        for i in np.flatnonzero(~usable & (features["chat_messages"].to_numpy(dtype=float) >= 1)):
            missing = features[MESSAGE_COLUMNS].iloc[i].isna()
            status[i] = "missing features: " + ", ".join(missing.index[missing.to_numpy()])
        scores = np.full(len(features), np.nan)
        flagged = np.zeros(len(features), dtype=bool)
        reasons: list[list[Reason]] = [[] for _ in range(len(features))]
        if scorable.any():
            prior: BetaPrior = state["rate_prior"]
            k = features["msg_violations"].to_numpy(dtype=float)[scorable]
            n = features["chat_messages"].to_numpy(dtype=float)[scorable]
            mean, lo, hi = rate_posterior(k, n, prior, self.params.get("interval", 0.8))
            scores[scorable] = mean
            # Flagged only when the rate is credibly above the threshold: one message rarely suffices.
            flagged[scorable] = lo > state["rate_threshold"]
            counts = features.loc[scorable, [f"msg_{s}" for s in SIGNALS]].to_numpy(dtype=float)
            shares = pd.DataFrame(counts / np.maximum(n, 1.0)[:, None], columns=list(SIGNALS))
            norms = pd.Series(state["signal_norms"], index=list(SIGNALS))
            model: MessageModel = state[MESSAGE_MODEL_ATTR]
            lift = np.maximum(model.weights()[:, 0], 0.0)
            worded = norm_reasons(shares, norms, (shares - norms) * lift, SIGNAL_LABELS, top=2)
            width = round(100 * self.params.get("interval", 0.8))
            for row, position in enumerate(np.flatnonzero(scorable)):
                text = (
                    f"violating messages {k[row]:.1f} of {int(n[row])}: rate {mean[row]:.3f}"
                    f" ({width}% interval {_interval_text(lo[row], hi[row])}) (norm {prior.mean:.3g})"
                )
                rate = Reason("violation_rate", float(mean[row]), float(prior.mean), text)
                reasons[position] = [rate, *worded[row]]
        return score_frame(features.index, scores, flagged, status, reasons)

    def shrink(self, values: np.ndarray, messages: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        """Features of users below ``min_messages`` pulled toward the fitted median by ``n / (n + prior)``.

        Users with ``min_messages`` or more keep their values exactly; a NaN (a feature undefined
        for so few messages) becomes the median.
        """
        median = np.asarray(state["median"], dtype=float)
        prior = float(self.params.get("prior_messages", self.params["min_messages"]))
        n = np.nan_to_num(np.asarray(messages, dtype=float), nan=0.0)
        weight = np.where(n >= self.params["min_messages"], 1.0, n / np.maximum(n + prior, 1e-12))[:, None]
        values = np.asarray(values, dtype=float)
        shrunk = median + weight * (np.where(np.isnan(values), median, values) - median)
        return np.asarray(np.where(weight == 1.0, values, shrunk), dtype=float)

    def relabelled(self, previous: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
        """Users whose ``flagged`` decision changed between two score frames (the paper's hourly relabel)."""
        before = previous.set_index("user_id")["flagged"]
        after = current.set_index("user_id")["flagged"]
        both = before.index.intersection(after.index)
        changed = both[before[both].to_numpy() != after[both].to_numpy()]
        return pd.DataFrame({"user_id": changed, "was": before[changed].to_numpy(), "now": after[changed].to_numpy()})

    # --- internals --------------------------------------------------------------------
    def _scorable(self, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The rows scored on their features, and those scored on shrunk features (low evidence)."""
        eligible = self._eligible(features)
        return eligible, self._low_evidence(features, eligible)

    def _eligible(self, features: pd.DataFrame) -> np.ndarray:
        enough = features["chat_messages"].to_numpy(dtype=float) >= self.params["min_messages"]
        complete = ~np.isnan(features[list(SCORED_FEATURES)].to_numpy(dtype=float)).any(axis=1)
        return np.asarray(enough & complete, dtype=bool)

    def _low_evidence(self, features: pd.DataFrame, eligible: np.ndarray) -> np.ndarray:
        """Users with 1 to ``min_messages - 1`` messages whose features are usable (burstiness may be undefined)."""
        messages = features["chat_messages"].to_numpy(dtype=float)
        few = (messages >= 1) & (messages < self.params["min_messages"])
        defined = [c for c in SCORED_FEATURES if c != "chat_burstiness"]
        complete = ~np.isnan(features[defined].to_numpy(dtype=float)).any(axis=1)
        return np.asarray(few & complete & ~eligible, dtype=bool)

    def _status(self, features: pd.DataFrame, eligible: np.ndarray, low: np.ndarray) -> list[str]:
        messages = features["chat_messages"].to_numpy(dtype=float)
        missing = np.isnan(features[list(SCORED_FEATURES)].to_numpy(dtype=float))
        columns = list(SCORED_FEATURES)
        need = self.params["min_messages"]
        status = []
        for i in range(len(features)):
            if eligible[i]:
                status.append(SCORED)
            elif low[i]:
                count = int(messages[i])
                plural = "s" if count != 1 else ""
                status.append(f"{LOW_EVIDENCE}: {count} chat message{plural} (norms are fit on users with ≥ {need})")
            elif np.isnan(messages[i]):
                status.append("missing features: chat_messages")
            elif messages[i] < 1:
                status.append("no chat messages")
            else:
                absent = [c for c, gone in zip(columns, missing[i], strict=True) if gone]
                status.append("missing features: " + ", ".join(absent))
        return status

    def _deviations(self, values: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        direction = np.array(list(SCORED_FEATURES.values()), dtype=float)
        z = (values - state["median"]) / state["scale"] * direction
        return np.asarray(np.minimum(np.clip(z, 0.0, None), self.params["cap"]), dtype=float)

    def _distances(self, deviations: np.ndarray, state: dict[str, Any], exclude_self: bool) -> np.ndarray:
        if len(deviations) == 0:
            return np.zeros(0)
        if self.params["method"] == "centroid":
            # Manhattan distance to the median user (whose deviations are all 0).
            return np.asarray(deviations.sum(axis=1), dtype=float)
        reference = state["reference"]
        if len(reference) == 0:
            return np.zeros(len(deviations))
        return np.asarray(np.sqrt(_kth_neighbour_distance(reference, deviations, self.params["k"], exclude_self)))


# --- raids ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raid:
    """A group of users flooding one channel in one window: one group alert."""

    channel: str
    window_start: pd.Timestamp
    window_end: pd.Timestamp
    members: list[str]
    messages: int
    rate_vs_norm: float  # members' median messages against the window's median
    evidence_event_ids: list[str]


def _interval_text(lower: float, upper: float) -> str:
    """A rate's credible interval in three decimals; "below 0.001" where both ends round to zero
    (the rate prior is skewed: most users never violate, so an ordinary user's interval sits at zero
    while the posterior mean stays above it, carried by the few who do)."""
    if upper < 0.0005:
        return "below 0.001"
    return f"{lower:.3f}-{upper:.3f}"


def find_raids(
    chat: pd.DataFrame,
    window_s: int = 900,
    burst_factor: float = 4.0,
    min_burst_messages: int = 4,
    min_members: int = 4,
) -> list[Raid]:
    """Coordinated floods: per (channel, window), users far above both the window's and their own norm.

    A user bursts in a window when they post at least ``min_burst_messages`` there, and at least
    ``burst_factor`` times both the window's norm and their own mean count over their other active
    windows (so heavy regulars of a busy channel are not a raid; accounts with no history, typical
    of raids, have a norm of 0). The window's norm is its median sender's count, or the channel's
    usual one (the median over its other windows) when lower: in a quiet channel the raiders are
    the window's only senders, and against its own median nobody bursts. Windows with
    ``min_members`` bursting users are clustered with pHDBSCAN on the words each user wrote that
    are unusual for the channel; a cluster of ``min_members`` or more whose members wrote nearly
    the same, and mostly copied each other's messages verbatim, is a raid, widened to anyone in
    the window who posted its messages twice or more. Windows are half-overlapping so a raid that
    straddles a boundary is seen whole; overlapping findings are merged. Cost: two group-bys over
    the chat, then work only on the few windows with bursts.
    """
    if chat.empty:
        return []
    msgs = chat[["event_id", "user_id", "context", "ts", "text"]].copy()
    seconds = msgs["ts"].dt.as_unit("s").astype("int64")
    found: list[Raid] = []
    for offset in (0, window_s // 2):
        msgs["slot"] = (seconds + offset) // window_s
        counts = msgs.groupby(["context", "slot", "user_id"]).size().rename("n").reset_index()
        # The window's norm: its median sender, or the channel's usual median sender in its other
        # windows when lower. In a quiet channel a raid *is* the window, and its own median is the raid's.
        window_median = counts.groupby(["context", "slot"])["n"].median().rename("window_median")
        usual = _usual_median(window_median).rename("usual")
        counts = counts.join(window_median, on=["context", "slot"]).join(usual, on=["context", "slot"])
        counts["norm"] = counts[["window_median", "usual"]].min(axis=1)
        # The user's own norm: mean count over their *other* active windows (0 without history).
        total = counts.groupby("user_id")["n"].transform("sum")
        active = counts.groupby("user_id")["n"].transform("size")
        own = ((total - counts["n"]) / (active - 1).clip(lower=1)).where(active > 1, 0.0)
        bursting = counts[
            (counts["n"] >= min_burst_messages)
            & (counts["n"] >= burst_factor * counts["norm"])
            & (counts["n"] >= burst_factor * own)
        ]
        bursting = bursting[bursting.groupby(["context", "slot"])["user_id"].transform("size") >= min_members]
        if bursting.empty:
            continue
        candidates = msgs.merge(bursting[["context", "slot", "user_id", "norm"]], on=["context", "slot", "user_id"])
        for (channel, slot), in_window in candidates.groupby(["context", "slot"], sort=True):
            start = pd.Timestamp((int(slot) * window_s - offset) * 10**9, tz="UTC")
            norm = float(in_window["norm"].iloc[0])
            # The channel's usual vocabulary, learnt outside this window (a raid must not define it).
            elsewhere = msgs.loc[(msgs["context"] == channel) & (msgs["slot"] != slot), "text"]
            everyone = msgs[(msgs["context"] == channel) & (msgs["slot"] == slot)]
            for core in _text_clusters(in_window, min_members, _habitual_terms(elsewhere)):
                members = _with_copiers(everyone, core)
                rows = everyone[everyone["user_id"].isin(members)]
                found.append(
                    Raid(
                        channel=str(channel),
                        window_start=start,
                        window_end=start + pd.Timedelta(seconds=window_s),
                        members=sorted(members),
                        messages=len(rows),
                        rate_vs_norm=float(rows.groupby("user_id").size().median() / max(norm, 1.0)),
                        evidence_event_ids=rows["event_id"].head(50).tolist(),
                    )
                )
    return _merge_raids(found)


def _usual_median(window_median: pd.Series) -> pd.Series:
    """Per (channel, window), the median of the channel's *other* windows' median sender counts
    (NaN for a channel's only window): what a sender usually posts there, without this window."""
    usual = pd.Series(np.nan, index=window_median.index)
    for _, medians in window_median.groupby(level=0):
        values = medians.to_numpy(dtype=float)
        if len(values) < 2:
            continue
        # Leave-one-out median from one sort: without the element at sorted position p, the rest's
        # j-th element is sorted[j + (j >= p)].
        order = np.argsort(values, kind="stable")
        ranked = values[order]
        rest = len(values) - 1
        middle = np.array([(rest - 1) // 2, rest // 2])
        position = np.empty(len(values), dtype=int)
        position[order] = np.arange(len(values))
        picks = middle[None, :] + (middle[None, :] >= position[:, None])
        usual[medians.index] = ranked[picks].mean(axis=1)
    return usual


def _with_copiers(window: pd.DataFrame, core: list[str], min_copies: int = 2) -> list[str]:
    """The core group plus anyone in the window who posted its shared messages at least ``min_copies`` times."""
    text = window["text"].str.lower().str.strip()
    in_core = window["user_id"].isin(core)
    senders = window.loc[in_core, "user_id"].groupby(text[in_core]).transform("nunique")
    raid_texts = set(text[in_core][senders > 1])
    copies = text.isin(raid_texts).groupby(window["user_id"]).sum()
    return sorted(set(core) | set(copies.index[copies >= min_copies]))


def _habitual_terms(texts: pd.Series, min_share: float = 0.02) -> frozenset[str]:
    """Terms in at least ``min_share`` of a channel's messages: its usual vocabulary (commands, topics)."""
    terms = texts.str.lower().str.findall(TERM_PATTERN).map(set).explode().dropna()
    share = terms.value_counts() / max(len(texts), 1)
    return frozenset(share.index[share >= min_share])


def _text_clusters(
    messages: pd.DataFrame, min_members: int, habitual: frozenset[str], min_similarity: float = 0.8
) -> list[list[str]]:
    """Users in one window grouped by what they wrote: pHDBSCAN over hashed, L2-normalised term counts.

    The channel's habitual terms are left out (everyone in a plays channel types the same commands)
    and a group counts only when its members wrote nearly the same thing (mean pairwise cosine of
    at least ``min_similarity``): users who talk about the window's topic share words, raiders
    share messages.
    """
    from sklearn.feature_extraction.text import HashingVectorizer

    from argus.detectors.cluster import PHDBSCAN

    unusual = (
        messages["text"].str.lower().str.findall(TERM_PATTERN).map(lambda ts: [t for t in ts if t not in habitual])
    )
    by_user = unusual.groupby(messages["user_id"]).agg(lambda lists: " ".join(t for ts in lists for t in ts))
    by_user = by_user[by_user.str.len() > 0]
    users = by_user.index.to_numpy()
    if len(users) < min_members:
        return []
    vectorizer = HashingVectorizer(n_features=1024, token_pattern=TERM_PATTERN.pattern, alternate_sign=False)
    data = vectorizer.transform(by_user.to_numpy()).toarray().astype(np.float32)
    if len(users) > min_members and not np.allclose(data, data[0]):
        min_samples = min(min_members, len(users) - 1)
        labels = PHDBSCAN(min_cluster_size=min_members, min_samples=min_samples).fit_predict(data)
    else:  # too few points for a density estimate: test the whole window as one group
        labels = np.zeros(len(users), dtype=int)
    groups = []
    for label in np.unique(labels[labels >= 0]):
        members = labels == label
        similarity = data[members] @ data[members].T
        count = int(members.sum())
        mean_pairwise = (similarity.sum() - np.trace(similarity)) / (count * (count - 1))
        group = users[members].tolist()
        if count >= min_members and mean_pairwise >= min_similarity and _share_copied(messages, unusual, group) >= 0.5:
            groups.append(group)
    return groups


def _share_copied(messages: pd.DataFrame, unusual: pd.Series, group: list[str]) -> float:
    """Median over members of the share of their unusual messages that another member also sent verbatim."""
    rows = messages[messages["user_id"].isin(group) & (unusual.str.len() > 0)]
    text = rows["text"].str.lower().str.strip()
    senders = rows.groupby(text)["user_id"].transform("nunique")
    return float((senders > 1).groupby(rows["user_id"]).mean().median())


def _merge_raids(raids: list[Raid]) -> list[Raid]:
    """Findings of the same channel whose windows overlap and share a member become one raid."""
    merged: list[Raid] = []
    for raid in sorted(raids, key=lambda r: (r.channel, r.window_start, r.members)):
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.channel == raid.channel
            and raid.window_start < last.window_end
            and set(last.members) & set(raid.members)
        ):
            evidence = list(dict.fromkeys(last.evidence_event_ids + raid.evidence_event_ids))[:50]
            merged[-1] = Raid(
                channel=raid.channel,
                window_start=last.window_start,
                window_end=max(last.window_end, raid.window_end),
                members=sorted(set(last.members) | set(raid.members)),
                messages=max(last.messages, raid.messages),
                rate_vs_norm=max(last.rate_vs_norm, raid.rate_vs_norm),
                evidence_event_ids=evidence,
            )
        else:
            merged.append(raid)
    return merged


__all__ = ["FEATURE_COLUMNS", "PAPER_FEATURES", "Raid", "TrollDetector", "find_raids", "paper_scores"]
