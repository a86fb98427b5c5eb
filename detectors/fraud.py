"""Fraud rings: behaviour-sequence embedding + expert features, pHDBSCAN, risky clusters, readable rules.

After *Explainable Deep Behavioral Sequence Clustering for Transaction Fraud Detection*
(FinDeepBehaviorCluster): each user becomes a hybrid vector (a time-aware embedding of the
behaviour sequence next to expert features), users are clustered with the FAISS-backed HDBSCAN
(``argus.detectors.cluster.PHDBSCAN``), a cluster is *risky* when enough of its members have known bad
outcomes, and every risky cluster gets rules an investigator can read.

1. **Features** (``detectors/fraud_features.py``): expert payment features and a time-aware
   embedding of the behaviour sequence, per user.
2. **Clustering.** Expert features are log-damped and robust-scaled with the fitted medians and
   interquartile ranges (activity volume, which says how much and not how, weighted by
   ``volume_weight``), the embedding is appended with weight ``embed_weight``, and PHDBSCAN clusters
   the result (``min_cluster_size`` 5: the smallest ring worth an investigator's time).
3. **Risk.** Known outcomes: a ``fraud``/``chargeback`` label from the risk
   team (``fit(labels=...)`` adds labels from elsewhere), a chargeback, a burst of declines. A
   cluster is risky when, for one outcome, at least ``min_support`` members have it and so many
   would be unlikely at the population's base rate (binomial tail ``p <= alpha``); its risk is
   ``min(1, -log10(p) / 10)``. Outcomes are sparse and late (a chargeback comes weeks after the
   purchase), which is why the paper lets a few labelled members speak for their cluster.
4. **Score.** Known outcomes spread through the cluster: membership strength times the share of
   the *other* members with an outcome, ``bad / (size - 1 + 2)`` (``cluster_evidence``). Beside it
   the evidence around the user's payments (``detectors/fraud_payments.py``): the unlabelled mule
   and takeover patterns, suspicion among the other accounts on its own device, network or
   instrument (``crew_share``), known outcomes on any entity it shares (``known_nearby``), paying
   a mule (at ``PAYS_MULE_WEIGHT``), and the positive-unlabelled payment model's best probability
   over its payments and received transfers (at ``PU_WEIGHT``). The score is the noisy-or
   ``1 - prod(1 - e)`` of those and of ``OWN_WEIGHT`` times the user's own outlier score, the
   larger of GLOSH (from the clustering; it sees the user only against its own cluster, so a tight
   ring scores 0) and ``1 - exp(-d / 2)``, ``d`` the mean of the user's five largest robust
   z-scores. A user is flagged when one piece of evidence alone exceeds ``FLAG_AT``
   (``strongest_evidence``). Reasons: the stronger side first (the risky cluster, its outcome
   count and rule; the patterns and entities; the payment most like the known fraud), then the
   user's features against the medians. ``score_items`` scores each payment the same way with
   that payment's PU probability; a sender's score is its payments' maximum.
5. **Rules.** For each risky cluster a depth-``rule_depth`` decision tree separates it from everyone
   else on the raw expert features; the purest leaves (up to ``max_rules``, precision >= 0.5) become
   ``feature > threshold and ...`` with support (users matching), precision (of them, in the
   cluster), coverage (of the cluster) and bad rate (of them, with a known outcome).

New activity is put into the nightly clusters with ``assign`` (PHDBSCAN.approximate_predict).

Bad input never crashes and is never guessed at: negative, missing or absurd amounts (above
``MAX_AMOUNT_USD``) and currencies outside ``FX_PER_USD`` are left out of the amount features and
counted (``invalid_amounts``, ``unknown_currency``, with a reason on the user's score). A user with
at least as many such rows as usable ones gets score NaN and a status that says why, and so does a
user with no payment of its own and no account sending it money (``no payments``).

**Evidence.** The detector's events are payment attempts a user sends and transfers it receives
(counted as ``fan_in``, the accounts sending it money; an account seen only as a payee is a user
too). The clusters, norms and risk are fitted on users with at least ``min_payments`` of them
(status ``scored``); a user with fewer is scored by the same model (``assign`` puts it into the
fitted clusters, its own score uses the fitted medians, its payments go through the same PU
model and entity graph), with status ``low evidence: 1 payment`` (or ``1 account sending it
money``). The PU model is fitted on every payment of the night, single payments included.

Costs: features are vectorised pandas, O(events log events); the fit is one PHDBSCAN (k-NN graph,
exact below 20,000 users), one shallow tree per risky cluster and four gradient-boosting fits (three
folds for the label frequency, one final). It fails on fraud that looks like ordinary customers
on every feature, shares no specific entity with known fraud and follows neither money pattern.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.tree import DecisionTreeClassifier

from argus.detectors.base import (
    ITEM_COLUMNS,
    LOW_EVIDENCE,
    SCORED,
    Detector,
    Reason,
    norm_reasons,
    score_frame,
)
from argus.detectors.cluster.phdbscan import PHDBSCAN
from argus.detectors.events import Events
from argus.detectors.fraud_features import (
    EMBED_COLUMNS,
    EXPERT_FEATURES,
    FEATURE_COLUMNS,
    LOG_FEATURES,
    VOLUME_FEATURES,
    FraudPopulation,
    RollingPopulation,
    _account_table,
    decline_bursts,
    expert_features,
    fraud_labels,
    fraud_population,
    payment_table,
    sequence_embedding,
    share_tables,
)
from argus.detectors.fraud_payments import (
    ACCOUNT_EVIDENCE,
    PAYMENT_FEATURES,
    PROPAGATION_PRIOR,
    account_evidence,
    feature_reach,
    fit_pu,
    payment_features,
    predict_pu,
    rows_per_account,
)

# --- the detector ------------------------------------------------------------------------------
DECLINE_BURST_OUTCOME = 3  # declines in ten minutes: the issuers' answer to a card test, not bad luck
OUTCOMES: dict[str, str] = {
    "labelled": "labelled fraud or chargeback by the risk team",
    "chargeback": "had a chargeback",
    "decline_burst": f"had a burst of declines (>= {DECLINE_BURST_OUTCOME} in ten minutes)",
}
DEVIATION_TOP = 5  # the user's own deviation: mean of its five largest robust z-scores
# Deviation -> 0..1 as 1 - exp(-d / 2): five features 2 robust SDs out score 0.63. A fixed scale, not a
# fitted percentile, so the score does not sink when a night holds many fraudsters.
DEVIATION_SCALE = 2.0
# The PU probability is weighted down: the known outcomes of a real feed include honest disputes and
# struggling cards, so "like a known outcome" is weaker evidence than a money-flow pattern. On the
# realistic evaluation world weights 1, 0.5 and 0.3 give PR-AUC 0.41, 0.94 and 0.97 (before
# ``crew_share`` counted alone); any weight keeps the model's ranking where no pattern applies.
PU_WEIGHT = 0.3
PAYS_MULE_WEIGHT = 0.5
# A user is flagged when one piece of evidence alone exceeds this (``strongest_evidence``): the
# score's noisy-or adds weak evidence up, which ranks well but flags housemates of a disputed card.
# The PU model alone (at most PU_WEIGHT) never flags.
FLAG_AT = 0.5
# The user's own outlier score (GLOSH or robust deviation) counts at this weight: it ranks users
# without any other evidence, but on single-payment senders it is mostly noise (on a PaySim-like
# set, weight 0.49 halved the PR-AUC on unreported fraud against 0.1).
OWN_WEIGHT = 0.1
REASON_AT = 0.2  # evidence worth a reason (one known-bad payer among a payee's two others: 0.25)
CLUSTER_FEATURE = "cluster"
PAYMENT_COLUMNS = ("payment_rows", "payment_ids")  # per user: its payment rows (sent and received) and their ids
COLUMNS = (*FEATURE_COLUMNS, *ACCOUNT_EVIDENCE, *PAYMENT_COLUMNS, "evidence")


class FraudDetector(Detector):
    """Fraud rings by behaviour clustering (FinDeepBehaviorCluster); see the module docstring.

    Args:
        min_cluster_size: smallest group PHDBSCAN reports (5: the smallest ring worth investigating).
        min_samples: neighbours that make a user a core point (3: rings are small and tight).
        embed_weight: weight of the sequence embedding next to the robust-scaled expert features. On
            the default evaluation world 0, 1, 2 and 3 give PR-AUC 0.94, 0.93, 0.86 and 0.93: the
            embedding separates no ring the expert features miss there; 10 drowns the features.
        min_support: members with one kind of known outcome a cluster needs to be risky.
        alpha: how unlikely (binomial tail at the population's base rate) those outcomes must be.
        rule_depth: depth of the tree whose purest leaves become a risky cluster's rules.
        min_payments: payment attempts plus accounts sending it money that a user needs to be in the
            fit; users with fewer (but at least one) are scored by the fitted model as low evidence.
        volume_weight: weight of the activity-volume features (``VOLUME_FEATURES``) in the clustering;
            0.3 chosen on the default evaluation world (1.0 left takeover accounts scattered).
        max_rules: rules kept per risky cluster.
        seed: seeds the projection, the clustering and the trees.
    """

    name = "fraud"
    alert_kind = "fraud"
    item_kind = "payment"

    def __init__(
        self,
        min_cluster_size: int = 5,
        min_samples: int = 3,
        embed_weight: float = 1.0,
        min_support: int = 2,
        alpha: float = 1e-3,
        rule_depth: int = 3,
        min_payments: int = 2,
        volume_weight: float = 0.3,
        max_rules: int = 2,
        seed: int = 7,
    ) -> None:
        super().__init__(
            min_cluster_size=min_cluster_size,
            min_samples=min_samples,
            embed_weight=embed_weight,
            min_support=min_support,
            alpha=alpha,
            rule_depth=rule_depth,
            min_payments=min_payments,
            volume_weight=volume_weight,
            max_rules=max_rules,
            seed=seed,
        )
        self._clusterer: PHDBSCAN | None = None

    # --- Detector interface ------------------------------------------------------------------
    def features(self, events: Events) -> pd.DataFrame:
        """Expert features, the sequence embedding, outcomes, data-quality counts and evidence ids."""
        return self.features_from(events, payment_features(events))

    def features_for(
        self, events: Events, users: Iterable[str], rolling: RollingPopulation | None = None
    ) -> pd.DataFrame:
        """The rows of ``features(events)`` of ``users`` (those it has), built from their neighbourhood.

        What relates them to everybody (norms, medians, accounts per entity) is one pass of grouped
        aggregations over all payments and logins (``fraud_population``), or read from ``rolling`` when
        the caller keeps it up to date over exactly ``events`` (the stream does, per boundary); the rest
        comes from the events of the accounts within reach of their features (``feature_reach``): their
        payers and payees, the accounts on their instruments, devices and networks and those accounts'
        payees. So the cost follows the users' neighbourhood, not everybody's features; the values are
        equal, bit for bit, because every function sees the same rows in the same order.
        """
        wanted = pd.Index(sorted({str(u) for u in users}), name="user_id")
        pay = payment_table(events)
        around = _events_of(events, feature_reach(pay, _account_table(events), wanted))
        # From ``rolling``: per-account figures for every account whose rows the features read (those in reach).
        population = fraud_population(events, pay) if rolling is None else rolling.population(_accounts_in(around))
        rows = payment_features(around, population)
        evidence = account_evidence(rows, around, _known_outcomes(around), population)
        own = _events_of(around, wanted)
        mine = rows[rows["user_id"].isin(wanted) | rows["payee"].isin(wanted)]
        features = self.features_from(own, mine, population, evidence)
        return features[features.index.isin(wanted)]

    def features_from(
        self,
        events: Events,
        rows: pd.DataFrame,
        population: FraudPopulation | None = None,
        evidence: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """``features`` given the payment rows (``payment_features``) and, where computed elsewhere, what
        relates the users to everybody: ``population`` and ``evidence`` (``ACCOUNT_EVIDENCE`` per account).

        With both, ``events`` need only hold the users' own events and the payments they received, and
        ``rows`` their sent and received payment rows: ``jobs/fraud_blocks.py`` builds blocks of users so.
        Rows of other users in the result are then incomplete: the caller keeps its own users.
        """
        expert = expert_features(events, population)
        end = None if population is None else population.embed_end
        embedding = sequence_embedding(events, seed=int(self.params["seed"]), end=end)
        frame = expert.join(embedding, how="left")
        frame[list(EMBED_COLUMNS)] = frame[list(EMBED_COLUMNS)].fillna(0.0)
        frame = frame.reindex(columns=list(FEATURE_COLUMNS))
        if evidence is None:
            known = _outcomes(frame, None).any(axis=1)
            evidence = account_evidence(rows, events, known)
        evidence = evidence.reindex(frame.index)
        for column in ACCOUNT_EVIDENCE:
            frame[column] = evidence[column].fillna(0.0) if len(evidence) else 0.0
        arrays, ids = rows_per_account(rows)
        empty = np.zeros((0, len(PAYMENT_FEATURES) + 1))
        frame["payment_rows"] = pd.Series([arrays.get(u, empty) for u in frame.index], index=frame.index, dtype=object)
        frame["payment_ids"] = pd.Series([ids.get(u, ()) for u in frame.index], index=frame.index, dtype=object)
        frame["evidence"] = _evidence_ids(events).reindex(frame.index).fillna("")
        frame.index.name = "user_id"
        return frame.sort_index()

    def fit(self, features: pd.DataFrame, labels: pd.Series | None = None) -> Self:
        """Cluster the scorable users, find risky clusters from known outcomes, extract their rules."""
        p = self.params
        status, _ = self._status(features)
        usable = features[status == SCORED]
        expert = usable[list(EXPERT_FEATURES)]
        fill = expert.median().fillna(0.0)
        logged = _log_features(expert.fillna(fill))
        # A night without a single scorable user still gives a model (no clusters; own scores only).
        center = logged.median().fillna(0.0)
        iqr = (logged.quantile(0.75) - logged.quantile(0.25)).fillna(0.0)
        scale = np.maximum(iqr / 1.349, np.maximum(0.5 * logged.std().fillna(0.0), 1e-3))
        state: dict[str, Any] = {
            "fill": fill.to_dict(),
            "center": center.to_dict(),
            "scale": scale.to_dict(),
            "norms": expert.median().fillna(0.0).to_dict(),
        }
        data = self._representation(usable, state)
        clusterer = PHDBSCAN(
            min_cluster_size=int(p["min_cluster_size"]),
            min_samples=int(p["min_samples"]),
            random_state=int(p["seed"]),
        ).fit(data)
        state["clusterer"] = clusterer.to_arrays()
        state["users"] = list(usable.index.astype(str))
        outcomes = _outcomes(usable, labels)
        clusters, base = self._risky_clusters(clusterer.labels_, outcomes)
        raw = expert.fillna(fill)
        for cluster_id, info in clusters.items():
            members = clusterer.labels_ == cluster_id
            info["members"] = list(usable.index[members].astype(str))
            info["profile"] = _profile(raw[members], state["norms"])
            info["evidence"] = _cluster_evidence(usable.loc[members, "evidence"])
            info["bad"] = int(outcomes.any(axis=1).to_numpy()[members].sum())
            if info["risky"]:
                info["rules"] = _extract_rules(raw, members, outcomes.any(axis=1).to_numpy(), p)
        state["clusters"] = clusters
        state["base_rates"] = base
        state["pu"] = self._fit_pu(features[status != "missing features"], labels)
        self._clusterer = clusterer
        risky = [c for c, info in clusters.items() if info["risky"]]
        metrics = {
            "users": len(features),
            "clustered_users": len(usable),
            "clusters": len(clusters),
            "risky_clusters": len(risky),
            "rules": sum(len(clusters[c]["rules"]) for c in risky),
            "noise": int((clusterer.labels_ < 0).sum()),
            "pu_labelled_accounts": int(state["pu"]["labelled_accounts"]) if state["pu"] else 0,
            "pu_label_frequency": round(float(state["pu"]["c"]), 4) if state["pu"] else None,
        }
        # Detach the state from objects it shares with ``params`` (pickle memoises by identity), so
        # the model_version hash is the same before save and after load.
        return self._fitted(pickle.loads(pickle.dumps(state, protocol=5)), metrics)

    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        """Cluster risk for members of risky clusters (0.5..1), the user's own outlier score below 0.5."""
        state = self.require_fitted()
        status, quality = self._status(features)
        ok = np.array([s == SCORED or s.startswith(LOW_EVIDENCE) for s in status], dtype=bool)
        n = len(features)
        scores = np.full(n, np.nan)
        flagged = np.zeros(n, dtype=bool)
        reasons: list[list[Reason]] = [[] for _ in range(n)]
        if ok.any():
            usable = features[ok]
            assigned, z, own, spread, part = self._cluster_part(usable, state)
            clusters = state["clusters"]
            risky = assigned["risky"].to_numpy()
            payment, best_pu, best_id = self._payment_evidence(usable, state)
            scores[ok] = 1.0 - (1.0 - part) * (1.0 - payment)
            flagged[ok] = strongest_evidence(usable, spread, best_pu) > FLAG_AT
            raw = usable[list(EXPERT_FEATURES)].astype(float)
            why = norm_reasons(raw, pd.Series(state["norms"]), z.where(z > 0), EXPERT_FEATURES)
            positions = np.flatnonzero(ok)
            cluster_of = assigned["cluster"].to_numpy()
            # The account evidence as one array: a row of ``usable`` per user costs more than the reasons.
            evidence = usable[list(ACCOUNT_EVIDENCE)].to_numpy(dtype=float)
            for k, i in enumerate(positions):
                cluster = int(cluster_of[k])
                head: list[Reason] = []
                if risky[k]:
                    head.append(_cluster_reason(cluster, clusters[cluster]))
                elif own[k] > 0.5:
                    head.append(Reason("outlier", float(own[k]), None, f"unusual for its peers (outlier {own[k]:.2f})"))
                around = _payment_reasons(
                    dict(zip(ACCOUNT_EVIDENCE, evidence[k], strict=True)), float(best_pu[k]), best_id[k]
                )
                # The stronger side of the score speaks first.
                head = around + head if payment[k] > part[k] else head + around
                reasons[i] = head + why[k]
        for row, note in enumerate(quality):
            if note:
                reasons[row] = reasons[row] + [note]
        return score_frame(features.index, scores, flagged, status, reasons)

    def score_items(self, events: Events, features: pd.DataFrame) -> pd.DataFrame:
        """One row per payment attempt (``ITEM_COLUMNS``): the noisy-or of the sender's cluster part and
        ``combined_evidence(p, e)``, ``p`` the payment's PU probability and ``e`` the sender's evidence.

        A user's ``score`` is the largest of its payments' scores, or of the transfers it received
        when those score higher against it (an account that only receives is scored that way)."""
        state = self.require_fitted()
        rows = payment_features(events)
        if rows.empty:
            return pd.DataFrame(columns=ITEM_COLUMNS)
        pu = predict_pu(state.get("pu"), _pu_matrix(rows[list(PAYMENT_FEATURES)].to_numpy(dtype=float)))
        status, _ = self._status(features)
        ok = np.array([st == SCORED or st.startswith(LOW_EVIDENCE) for st in status], dtype=bool)
        usable = features[ok]
        cluster = pd.Series(0.0, index=features.index.astype(str))
        evidence = pd.Series(0.0, index=cluster.index)
        strongest = pd.Series(0.0, index=cluster.index)
        if len(usable):
            _, _, _, spread, part = self._cluster_part(usable, state)
            cluster[usable.index.astype(str)] = part
            evidence[usable.index.astype(str)] = account_score(usable)
            strongest[usable.index.astype(str)] = strongest_evidence(usable, spread, np.zeros(len(usable)))
        sender = rows["user_id"].astype(str)
        known = sender.isin(cluster.index[ok])
        payment = combined_evidence(pu, sender.map(evidence).fillna(0.0).to_numpy())
        score = 1.0 - (1.0 - sender.map(cluster).fillna(0.0).to_numpy()) * (1.0 - payment)
        score = np.where(known, score, np.nan)
        strong = np.maximum(sender.map(strongest).fillna(0.0).to_numpy(), PU_WEIGHT * pu)
        flagged = known & (strong > FLAG_AT)
        reasons = [
            [Reason("payment_model", float(p), None, f"payment like the known fraud (PU probability {p:.2f})")]
            if p >= REASON_AT
            else []
            for p in pu
        ]
        ts = pd.to_datetime(rows["t"], unit="s", utc=True)
        out = pd.DataFrame(
            {
                "event_id": rows["event_id"].to_numpy(),
                "user_id": sender.to_numpy(),
                "ts": ts.to_numpy(),
                "context": rows["context"].to_numpy(),
                "score": np.clip(score, 0.0, 1.0),
                "flagged": np.asarray(flagged, dtype=bool),
                "reasons": reasons,
            },
            columns=ITEM_COLUMNS,
        )
        return out.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)

    # --- investigation and streaming -----------------------------------------------------
    def assign(self, features: pd.DataFrame) -> pd.DataFrame:
        """Put users into the fitted clusters (approximate_predict); training users keep their cluster.

        Returns ``cluster`` (-1: none), ``strength`` (membership 0..1), ``outlier`` (GLOSH; for a new
        user, its nearest fitted neighbour's) and ``risky``, indexed like ``features``.
        """
        state = self.require_fitted()
        clusterer = self._model()
        data = self._representation(features, state)
        fitted_points = len(state["users"])
        labels = np.full(len(data), -1, dtype=np.intp)
        strength = np.zeros(len(data))
        outlier = np.zeros(len(data))
        if len(data) and fitted_points:
            labels, strength = clusterer.approximate_predict(data)
            _, nearest = clusterer._index.search(data, 1)
            outlier = clusterer.outlier_scores_[np.maximum(nearest[:, 0], 0)]
            # A user of the fitted night whose vector is unchanged keeps its fitted cluster exactly.
            position = pd.Index(state["users"]).get_indexer(features.index.astype(str))
            known = position >= 0
            if known.any():
                same = np.all(np.isclose(clusterer._data[position[known]], data[known], atol=1e-6), axis=1)
                idx = np.flatnonzero(known)[same]
                fitted = position[known][same]
                labels[idx] = clusterer.labels_[fitted]
                strength[idx] = clusterer.probabilities_[fitted]
                outlier[idx] = clusterer.outlier_scores_[fitted]
        clusters = state["clusters"]
        risky = np.array([bool(clusters.get(int(c), {}).get("risky", False)) for c in labels], dtype=bool)
        return pd.DataFrame(
            {"cluster": labels.astype(int), "strength": strength, "outlier": outlier, "risky": risky},
            index=features.index,
        )

    def explain(self, cluster_id: int) -> dict[str, Any]:
        """A cluster for an investigator: rules, support, outcomes, members, feature profile, evidence ids."""
        state = self.require_fitted()
        clusters = state["clusters"]
        if cluster_id not in clusters:
            known = ", ".join(str(c) for c in sorted(clusters)) or "none"
            raise KeyError(f"no cluster {cluster_id} in model {self.model_version}; clusters: {known}")
        info = clusters[cluster_id]
        return {"cluster": cluster_id, "model_version": self.model_version, **info}

    def risky_clusters(self) -> list[int]:
        """Ids of the risky clusters, riskiest first."""
        clusters = self.require_fitted()["clusters"]
        return sorted((c for c in clusters if clusters[c]["risky"]), key=lambda c: (-clusters[c]["risk"], c))

    # --- internals ---------------------------------------------------------------------------
    def _model(self) -> PHDBSCAN:
        if self._clusterer is None:
            self._clusterer = PHDBSCAN.from_arrays(self.require_fitted()["clusterer"])
        return self._clusterer

    def _cluster_part(
        self, usable: pd.DataFrame, state: dict[str, Any]
    ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
        """Cluster assignment, robust z-scores, own outlier score, outcomes spread through the cluster
        and the cluster part of the score."""
        assigned = self.assign(usable)
        z = _robust_z(usable, state)
        own = np.maximum(assigned["outlier"].to_numpy(), 1 - np.exp(-_deviation(z) / DEVIATION_SCALE))
        fitted = dict(zip(state["users"], self._model().labels_.tolist(), strict=True))
        spread = cluster_evidence(assigned, state["clusters"], _outcomes(usable, None).any(axis=1), fitted)
        part = 1.0 - (1.0 - spread) * (1.0 - OWN_WEIGHT * own)
        return assigned, z, own, spread, part

    def _fit_pu(self, features: pd.DataFrame, labels: pd.Series | None) -> dict[str, Any] | None:
        """The positive-unlabelled payment model: payments sent by accounts with a known outcome are positive."""
        known = _outcomes(features, labels).any(axis=1)
        arrays = features["payment_rows"]
        sent = [(user, a[a[:, -1] == 0, :-1]) for user, a in arrays.items() if len(a)]
        sent = [(user, a) for user, a in sent if len(a)]
        if not sent:
            return None
        x = _pu_matrix(np.vstack([a for _, a in sent]))
        groups = np.concatenate([np.full(len(a), str(user), dtype=object) for user, a in sent])
        labelled = np.concatenate([np.full(len(a), bool(known.get(user, False))) for user, a in sent])
        pu = fit_pu(x, labelled, groups, int(self.params["seed"]))
        if pu is not None:
            pu["labelled_accounts"] = int(known[[u for u, _ in sent]].sum())
        return pu

    def _payment_evidence(
        self, usable: pd.DataFrame, state: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Per user: ``combined_evidence(max p, e)`` over its payment rows, the best ``p`` and that payment's id."""
        arrays = list(usable["payment_rows"])
        sizes = np.array([len(a) for a in arrays])
        best = np.zeros(len(arrays))
        best_id = [""] * len(arrays)
        if sizes.sum():
            pu = predict_pu(state.get("pu"), _pu_matrix(np.vstack([a[:, :-1] for a in arrays if len(a)])))
            start = 0
            for i, (size, ids) in enumerate(zip(sizes, usable["payment_ids"], strict=True)):
                if size:
                    k = int(np.argmax(pu[start : start + size]))
                    best[i], best_id[i] = float(pu[start + k]), str(ids[k])
                    start += size
        return combined_evidence(best, account_score(usable)), best, best_id

    def _representation(self, features: pd.DataFrame, state: dict[str, Any]) -> np.ndarray:
        z = _robust_z(features, state)
        z[list(VOLUME_FEATURES)] *= float(self.params["volume_weight"])
        z = z.to_numpy()
        embedding = features[list(EMBED_COLUMNS)].fillna(0.0).to_numpy(dtype=float)
        return np.hstack([z, float(self.params["embed_weight"]) * embedding]).astype(np.float32)

    def _status(self, features: pd.DataFrame) -> tuple[np.ndarray, list[Reason | None]]:
        """Per user: SCORED or why not, and a note about payments left out of the amount features."""
        n = len(features)
        status = np.full(n, SCORED, dtype=object)
        notes: list[Reason | None] = [None] * n
        if n == 0:
            return status, notes
        missing = [c for c in (*FEATURE_COLUMNS, *ACCOUNT_EVIDENCE, *PAYMENT_COLUMNS) if c not in features.columns]
        if missing:
            raise ValueError(f"features lack {', '.join(missing[:5])}: compute them with FraudDetector.features()")
        counts = [
            "payments", "fan_in", "usable_payments", "invalid_amounts", "unknown_currency", *EMBED_COLUMNS,
            *ACCOUNT_EVIDENCE,
        ]  # fmt: skip
        incomplete = features[counts].isna().any(axis=1).to_numpy()
        activity = (features["payments"].fillna(0) + features["fan_in"].fillna(0)).to_numpy()
        bad = (features["invalid_amounts"].fillna(0) + features["unknown_currency"].fillna(0)).to_numpy()
        usable = features["usable_payments"].fillna(0).to_numpy()
        need = int(self.params["min_payments"])
        sent = features["payments"].fillna(0).to_numpy()
        senders = features["fan_in"].fillna(0).to_numpy()
        for i in range(n):
            if incomplete[i]:
                status[i] = "missing features"
            elif activity[i] <= 0:
                status[i] = "no payments: none sent and no account sending it money"
            elif bad[i] > 0 and bad[i] >= usable[i]:
                status[i] = f"unusable payment data: {int(bad[i])} of {int(bad[i] + usable[i])} payments unusable"
            elif activity[i] < need:
                status[i] = f"{LOW_EVIDENCE}: {_evidence_words(int(sent[i]), int(senders[i]))}"
            if bad[i] > 0:
                invalid = int(features["invalid_amounts"].iloc[i])
                unknown = int(features["unknown_currency"].iloc[i])
                text = f"{int(bad[i])} payment(s) left out of amounts: {invalid} invalid, {unknown} unknown currency"
                notes[i] = Reason("unusable_payments", float(bad[i]), 0.0, text)
        return status, notes

    def _risky_clusters(
        self, labels: np.ndarray, outcomes: pd.DataFrame
    ) -> tuple[dict[int, dict[str, Any]], dict[str, float]]:
        from scipy.stats import binom

        n_all = max(1, len(labels))
        base = {o: max(float(outcomes[o].mean()) if len(outcomes) else 0.0, 1.0 / (n_all + 1)) for o in OUTCOMES}
        clusters: dict[int, dict[str, Any]] = {}
        for cluster_id in sorted(set(labels.tolist()) - {-1}):
            members = labels == cluster_id
            size = int(members.sum())
            counts = {o: int(outcomes.loc[members, o].sum()) for o in OUTCOMES}
            pvalues = {o: float(binom.sf(counts[o] - 1, size, base[o])) if counts[o] else 1.0 for o in OUTCOMES}
            supported = {o: pvalues[o] for o in OUTCOMES if counts[o] >= int(self.params["min_support"])}
            best = min(supported, key=lambda o: supported[o]) if supported else min(pvalues, key=lambda o: pvalues[o])
            p_min = pvalues[best]
            risky = bool(supported) and p_min <= float(self.params["alpha"])
            clusters[int(cluster_id)] = {
                "size": size,
                "outcomes": counts,
                "expected": {o: round(base[o] * size, 3) for o in OUTCOMES},
                "p_value": p_min,
                "evidence_outcome": best,
                "risk": float(min(1.0, -np.log10(max(p_min, 1e-300)) / 10.0)),
                "risky": risky,
                "rules": [],
            }
        return clusters, base


def account_score(features: pd.DataFrame) -> np.ndarray:
    """The account's evidence without a model, 0..1, a noisy-or of the mule and takeover patterns,
    suspicion on its own device, network or instrument (``crew_share``), known outcomes nearby and,
    at half weight, paying a mule (honest people are talked into paying mules too)."""
    f = features[list(ACCOUNT_EVIDENCE)].astype(float).fillna(0.0).clip(0.0, 1.0)
    keep = (1 - f["mule_pattern"]) * (1 - f["takeover_pattern"]) * (1 - f["crew_share"]) * (1 - f["known_nearby"])
    return np.asarray(1.0 - keep * (1 - PAYS_MULE_WEIGHT * f["pays_mule"]), dtype=float)


def cluster_evidence(
    assigned: pd.DataFrame, clusters: dict[int, dict[str, Any]], bad: pd.Series, fitted: dict[str, int]
) -> np.ndarray:
    """Known outcomes spread through the user's cluster: membership strength times the share of the
    *other* members with an outcome, ``others_bad / (size - 1 + PROPAGATION_PRIOR)`` (as for entities).
    ``fitted``: the fitted users' clusters (a member's own outcome is not evidence about itself)."""
    out = np.zeros(len(assigned))
    for i, (user, cluster, strength) in enumerate(
        zip(assigned.index.astype(str), assigned["cluster"], assigned["strength"], strict=True)
    ):
        info = clusters.get(int(cluster))
        if info is None:
            continue
        # Models saved before outcomes spread through clusters lack "bad": their largest outcome count.
        members_bad = info.get("bad", max(info["outcomes"].values(), default=0))
        others = members_bad - int(bool(bad.iloc[i]) and fitted.get(user) == int(cluster))
        out[i] = float(strength) * max(others, 0) / (info["size"] - 1 + PROPAGATION_PRIOR)
    return out


def strongest_evidence(features: pd.DataFrame, spread: np.ndarray, pu: np.ndarray) -> np.ndarray:
    """The largest single piece of evidence: outcomes spread through the cluster, a pattern, the crew,
    known outcomes nearby, the weighted PU probability or the weighted mule payment."""
    f = features[list(ACCOUNT_EVIDENCE)].astype(float).fillna(0.0).clip(0.0, 1.0)
    parts = [
        np.asarray(spread, dtype=float),
        f["mule_pattern"].to_numpy(),
        f["takeover_pattern"].to_numpy(),
        f["crew_share"].to_numpy(),
        f["known_nearby"].to_numpy(),
        PU_WEIGHT * np.asarray(pu, dtype=float),
        PAYS_MULE_WEIGHT * f["pays_mule"].to_numpy(),
    ]
    return np.max(np.vstack(parts), axis=0) if len(f) else np.zeros(0)


def combined_evidence(pu: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """``1 - (1 - PU_WEIGHT * p) * (1 - e)``: the PU probability ``p`` counts at ``PU_WEIGHT``."""
    return 1.0 - (1.0 - PU_WEIGHT * np.asarray(pu, dtype=float)) * (1.0 - np.asarray(evidence, dtype=float))


def _pu_matrix(values: np.ndarray) -> np.ndarray:
    """The payment rows as the PU model reads them (NaN amounts stay NaN: the trees route them)."""
    return np.asarray(values, dtype=float).reshape(-1, len(PAYMENT_FEATURES))


def _payment_reasons(row: Mapping[str, float], pu: float, event_id: str) -> list[Reason]:
    """The account's evidence and its most suspicious payment, worded, strongest first."""
    out: list[Reason] = []
    values = {name: float(row[name]) if np.isfinite(row[name]) else 0.0 for name in ACCOUNT_EVIDENCE}
    for name, value in sorted(values.items(), key=lambda item: -item[1]):
        if value >= REASON_AT:
            out.append(Reason(name, value, 0.0, f"{ACCOUNT_EVIDENCE[name]} ({value:.2f})"))
    if pu >= REASON_AT:
        out.append(Reason("payment_model", pu, None, f"payment {event_id} is like the known fraud (PU {pu:.2f})"))
    return out


def _evidence_words(sent: int, senders: int) -> str:
    """``1 payment``, ``1 account sending it money``, or both joined: what a low-evidence score rests on."""
    parts = []
    if sent:
        parts.append(f"{sent} payment{'s' if sent != 1 else ''}")
    if senders:
        parts.append(f"{senders} account{'s' if senders != 1 else ''} sending it money")
    return " and ".join(parts) or "no payments"


def _log_features(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.astype(float).copy()
    for column in out.columns:
        if column in LOG_FEATURES:
            out[column] = np.log1p(out[column].clip(lower=0))
    return out


def _robust_z(features: pd.DataFrame, state: dict[str, Any]) -> pd.DataFrame:
    """Expert features, log-damped, as robust z-scores against the fitted medians (clipped to +-10).

    One array for all columns (the same arithmetic as ``_log_features`` and pandas' aligned ops, without
    their per-column cost: the stream scores tens of users at a time).
    """
    columns = list(EXPERT_FEATURES)
    values = features[columns].to_numpy(dtype=float, copy=True)
    fill = np.array([state["fill"].get(c, np.nan) for c in columns], dtype=float)
    values = np.where(np.isnan(values), fill, values)
    logged = np.array([c in LOG_FEATURES for c in columns])
    values[:, logged] = np.log1p(np.clip(values[:, logged], 0, None))
    center = np.array([state["center"].get(c, np.nan) for c in columns], dtype=float)
    scale = np.array([state["scale"].get(c, np.nan) for c in columns], dtype=float)
    return pd.DataFrame(np.clip((values - center) / scale, -10, 10), index=features.index, columns=columns)


def _deviation(z: pd.DataFrame) -> np.ndarray:
    values = np.sort(z.clip(lower=0).to_numpy(dtype=float), axis=1)
    return values[:, -DEVIATION_TOP:].mean(axis=1) if values.size else np.zeros(len(z))


def _outcomes(features: pd.DataFrame, labels: pd.Series | None) -> pd.DataFrame:
    """Known bad outcomes per user: risk-team labels (and ``labels``), chargebacks, decline bursts."""
    labelled = features["fraud_labels"].fillna(0) > 0
    if labels is not None:
        labelled |= labels.reindex(features.index).fillna(0).astype(float) > 0
    return pd.DataFrame(
        {
            "labelled": labelled,
            "chargeback": features["chargebacks"].fillna(0) > 0,
            "decline_burst": features["decline_burst"].fillna(0) >= DECLINE_BURST_OUTCOME,
        },
        index=features.index,
    )


def _known_outcomes(events: Events) -> pd.Series:
    """Per account in ``events``, whether it has a known outcome (``_outcomes`` of its own events)."""
    return _outcomes(outcome_counts(events), None).any(axis=1)


def outcome_counts(events: Events) -> pd.DataFrame:
    """Per account in ``events``: its fraud labels, chargebacks and decline bursts (absent where none)."""
    pay = payment_table(events)
    attempts = pay[pay["action"].isin(["purchase", "transfer"])]
    return pd.DataFrame(
        {
            "fraud_labels": fraud_labels(events),
            "chargebacks": pay[pay["action"] == "chargeback"].groupby("user_id").size(),
            "decline_burst": decline_bursts(attempts[attempts["status"] == "declined"]),
        },
        columns=["fraud_labels", "chargebacks", "decline_burst"],
    )


def _accounts_in(events: Events) -> list[str]:
    """Every account with events in ``events`` and every payee of its payments, sorted."""
    payees = events["payment"]["counterparty_id"].dropna().astype(str)
    return sorted(set(events.user_ids.astype(str)) | set(payees))


def _events_of(events: Events, accounts: pd.Index) -> Events:
    """The accounts' own events of every type and the payments they received, in ``events``' order."""
    frames = {}
    for event_type, frame in events.frames.items():
        mine = frame["user_id"].astype(str).isin(accounts)
        if event_type == "payment":
            payee = frame["counterparty_id"]
            mine |= payee.notna() & payee.astype(str).isin(accounts)
        frames[event_type] = frame[mine.to_numpy()]
    part = Events(frames, events.rejected)
    share_tables(part, events, accounts)
    return part


def _profile(members: pd.DataFrame, norms: dict[str, float]) -> dict[str, dict[str, float]]:
    medians = members.median()
    return {c: {"median": round(float(medians[c]), 4), "norm": round(float(norms[c]), 4)} for c in members.columns}


def _extract_rules(
    raw: pd.DataFrame, members: np.ndarray, bad: np.ndarray, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """The purest nodes of a shallow tree separating the cluster from everyone else, as thresholds.

    Every node of the tree (not only its leaves, so two sibling leaves that both hold the cluster
    read as their parent's one rule) is ranked by precision^2 x members covered; up to ``max_rules``
    nodes with precision >= 0.5, none inside another, are kept, so a cluster that joins two
    behaviours (a takeover crew and its mules) can get a rule for each.
    """
    values = raw.to_numpy()
    tree = DecisionTreeClassifier(
        max_depth=int(params["rule_depth"]),
        min_samples_leaf=max(2, int(members.sum()) // 3),
        class_weight="balanced",
        random_state=int(params["seed"]),
    ).fit(values, members)
    t = tree.tree_
    reach = tree.decision_path(values).tocsc()
    total = np.asarray(reach.sum(axis=0)).ravel()
    hits = np.asarray(reach[np.flatnonzero(members)].sum(axis=0)).ravel()
    paths: dict[int, list[tuple[str, str, float]]] = {0: []}
    for node in range(t.node_count):
        if t.children_left[node] != -1:
            name, threshold = str(raw.columns[t.feature[node]]), float(t.threshold[node])
            paths[int(t.children_left[node])] = [*paths[node], (name, "<=", threshold)]
            paths[int(t.children_right[node])] = [*paths[node], (name, ">", threshold)]
    precision = hits / np.maximum(total, 1)
    ranked = sorted(
        (node for node in range(1, t.node_count) if hits[node] >= 2 and precision[node] >= 0.5),
        key=lambda node: (-(precision[node] ** 2) * hits[node], node),
    )
    chosen: list[int] = []
    for node in ranked:
        if len(chosen) == int(params["max_rules"]):
            break
        if all(not _nested(paths[node], paths[other]) for other in chosen):
            chosen.append(node)
    return [_rule(raw, members, bad, _simplify(paths[node])) for node in chosen]


def _nested(a: list[tuple[str, str, float]], b: list[tuple[str, str, float]]) -> bool:
    """One tree path is a prefix of the other (one node lies inside the other's subtree)."""
    shorter, longer = (a, b) if len(a) <= len(b) else (b, a)
    return longer[: len(shorter)] == shorter


def _rule(
    raw: pd.DataFrame, members: np.ndarray, bad: np.ndarray, conditions: list[tuple[str, str, float]]
) -> dict[str, Any]:
    """A rule's text and how it does on the fitted users: support, precision, coverage, bad rate."""
    match = np.ones(len(raw), dtype=bool)
    for name, op, threshold in conditions:
        column = raw[name].to_numpy()
        match &= column > threshold if op == ">" else column <= threshold
    support = int(match.sum())
    hits = int((match & members).sum())
    return {
        "text": " and ".join(f"{name} {op} {_fmt(threshold)}" for name, op, threshold in conditions) or "everyone",
        "words": " and ".join(f"{EXPERT_FEATURES[name]} {op} {_fmt(threshold)}" for name, op, threshold in conditions),
        "conditions": [{"feature": n, "op": o, "threshold": float(v)} for n, o, v in conditions],
        "support": support,
        "precision": round(hits / max(1, support), 4),
        "coverage": round(hits / max(1, int(members.sum())), 4),
        "bad_rate": round(float(bad[match].mean()) if support else 0.0, 4),
    }


def _simplify(path: list[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
    """Keep the tightest bound per feature and direction, in first-use order."""
    bounds: dict[tuple[str, str], float] = {}
    for name, op, threshold in path:
        key = (name, op)
        if key not in bounds:
            bounds[key] = threshold
        else:
            bounds[key] = max(bounds[key], threshold) if op == ">" else min(bounds[key], threshold)
    return [(name, op, threshold) for (name, op), threshold in bounds.items()]


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _cluster_reason(cluster: int, info: dict[str, Any]) -> Reason:
    outcome = info["evidence_outcome"]
    rule = info["rules"][0]["text"] if info["rules"] else "no rule"
    text = (
        f"member of risky cluster {cluster}: {info['outcomes'][outcome]} of {info['size']} members "
        f"{OUTCOMES[outcome]} (expected {info['expected'][outcome]:.2g}); rule: {rule}"
    )
    return Reason(CLUSTER_FEATURE, float(cluster), None, text)


def _cluster_evidence(evidence: pd.Series, limit: int = 10) -> list[str]:
    ids: list[str] = []
    for value in evidence:
        ids += [e for e in str(value).split() if e][:2]
    return ids[:limit]


def _evidence_ids(events: Events, per_user: int = 5) -> pd.Series:
    """Per user, the payment event ids an investigator should open first: declines, then the largest;
    for an account that only receives money (a mule's first layer), the transfers it received."""
    pay = payment_table(events)
    if pay.empty:
        return pd.Series(dtype=object)
    pay = pay.assign(declined=pay["status"] == "declined", usd=pay["amount_usd"].fillna(0.0), received=False)
    received = pay[pay["counterparty"].notna()].assign(user_id=lambda f: f["counterparty"].astype(str), received=True)
    rows = pd.concat([pay, received[~received["user_id"].isin(pay["user_id"])]], ignore_index=True)
    rows = rows.sort_values(["user_id", "declined", "usd", "event_id"], ascending=[True, False, False, True])
    return rows.groupby("user_id").head(per_user).groupby("user_id")["event_id"].agg(" ".join)
