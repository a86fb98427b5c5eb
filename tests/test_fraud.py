"""Fraud-ring detector: expert features by hand, bad input, risky clusters, rules, assignment, quality floor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy.stats import binom
from sklearn.metrics import average_precision_score, roc_auc_score

from argus.detectors.base import ITEM_COLUMNS, LOW_EVIDENCE, SCORED
from argus.detectors.events import Events
from argus.detectors.fraud import COLUMNS, FraudDetector, _extract_rules
from argus.detectors.fraud_features import (
    EMBED_COLUMNS,
    SHARED_COLUMNS,
    FraudPopulation,
    RollingPopulation,
    expert_features,
    fraud_population,
    sequence_embedding,
)
from argus.detectors.fraud_payments import ACCOUNT_EVIDENCE, MULE_SCALE, PROPAGATION_PRIOR
from argus.schemas.arrow import ARROW_SCHEMAS
from argus.world.simulate import World

T0 = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)


def _payment(
    event_id: str,
    user: str,
    seconds: float,
    amount: float,
    status: str = "approved",
    action: str = "purchase",
    merchant: str = "m1",
    instrument: str = "aaaaaaaa",
    currency: str = "USD",
    counterparty: str | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "ts": T0 + timedelta(seconds=seconds),
        "user_id": user,
        "context": "p2p" if action == "transfer" else merchant,
        "event_type": "payment",
        "action": action,
        "amount": amount,
        "currency": currency,
        "instrument_id": instrument,
        "status": status,
        "decline_reason": "do_not_honor" if status == "declined" else None,
        "counterparty_id": counterparty,
    }


def _login(event_id: str, user: str, seconds: float, device: str, network: str = "cccccccc") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "ts": T0 + timedelta(seconds=seconds),
        "user_id": user,
        "context": "web",
        "event_type": "account",
        "action": "login",
        "username": user,
        "device_fp": device,
        "network_fp": network,
    }


def _events(payments: list[dict[str, Any]], accounts: list[dict[str, Any]] | None = None) -> Events:
    tables = {"payment": pa.Table.from_pylist(payments, schema=ARROW_SCHEMAS["payment"])}
    if accounts:
        tables["account"] = pa.Table.from_pylist(accounts, schema=ARROW_SCHEMAS["account"])
    return Events.from_tables(tables)


@pytest.fixture(scope="module")
def hand_made() -> Events:
    """a: a burst of three $1 tries on two cards at one merchant, two declined; b sends c $200;
    c spends $90 of it an hour later and logs in from a new device just before a $50 purchase."""
    payments = [
        _payment("p1", "a", 0, 1.0, "declined", instrument="aaaaaaa1"),
        _payment("p2", "a", 60, 1.0, "declined", instrument="aaaaaaa2"),
        _payment("p3", "a", 120, 1.0, "approved", instrument="aaaaaaa2"),
        _payment("p4", "b", 0, 200.0, action="transfer", counterparty="c"),
        _payment("p5", "c", 3_600, 90.0, merchant="m2", instrument="bbbbbbbb"),
        _payment("p6", "c", 7_300, 50.0, merchant="m3", instrument="bbbbbbbb"),
    ]
    logins = [
        _login("l1", "c", -86_400, "dddddddd"),
        _login("l2", "c", 7_200, "eeeeeeee"),
        _login("l3", "a", 0, "ffffffff"),
        _login("l4", "b", 0, "ffffffff"),
    ]
    return _events(payments, logins)


def test_expert_features_by_hand(hand_made: Events) -> None:
    f = expert_features(hand_made)
    assert list(f.index) == ["a", "b", "c"]
    a, b, c = f.loc["a"], f.loc["b"], f.loc["c"]
    assert (a["payments"], a["velocity_1h"], a["decline_burst"], a["instruments"]) == (3, 3, 2, 2)
    assert a["decline_rate"] == pytest.approx(2 / 3)
    assert (a["fold_max_len"], a["fold_max_declines"], a["fold_max_usd"]) == (3, 2, 1.0)
    assert a["new_instrument_share"] == 1.0  # every try within an hour of its card's first use
    assert (a["device_accounts"], b["device_accounts"], c["device_accounts"]) == (1, 1, 0)
    assert (a["network_accounts"], c["network_accounts"]) == (2, 2)
    assert (b["fan_out"], b["payee_fan_in"], b["inflow_usd"]) == (1, 1, 0)
    assert (c["fan_in"], c["inflow_usd"], c["merchants"]) == (1, 200.0, 2)
    assert c["pass_through"] == pytest.approx((90 + 50) / 200)  # both purchases fall within a day of the transfer
    assert c["new_device_spend_usd"] == 50.0  # only the purchase after the new device's login
    assert c["amount_median_usd"] == 70.0 and c["amount_max_usd"] == 90.0
    assert (f["invalid_amounts"].sum(), f["unknown_currency"].sum(), f["chargebacks"].sum()) == (0, 0, 0)


def test_amounts_are_converted_and_compared_within_the_currency() -> None:
    payments = [_payment(f"u{i}", "u", i * 7_200, 100.0 * (i + 1)) for i in range(3)]
    payments += [_payment(f"j{i}", "j", i * 7_200, 15_000.0, currency="JPY") for i in range(2)]
    # 30 ordinary INR purchases set the INR norm (2,000 INR); 100 INR is tiny in INR, though $1.2 is not rare.
    payments += [_payment(f"i{i}", "i", i * 3_600, 2_000.0, currency="INR") for i in range(30)]
    payments.append(_payment("i30", "i", 40 * 3_600, 100.0, currency="INR"))
    f = expert_features(_events(payments))
    assert f.loc["j", "amount_median_usd"] == pytest.approx(100.0)  # 15,000 JPY at 150 per USD
    assert f.loc["u", "amount_max_usd"] == 300.0
    assert f.loc["i", "tiny_share"] == pytest.approx(1 / 31)
    assert f.loc["u", "tiny_share"] == 0.0  # few USD purchases: the norm falls back to all purchases in USD


def test_bad_amounts_and_currencies_are_counted_never_used() -> None:
    payments = [
        _payment("n1", "neg", 0, -5.0),
        _payment("n2", "neg", 600, 20.0),
        _payment("n3", "neg", 1_200, 30.0),
        _payment("x1", "xyz", 0, 10.0, currency="XYZ"),
        _payment("x2", "xyz", 600, 12.0, currency="XYZ"),
        _payment("h1", "huge", 0, 9e12),
        _payment("h2", "huge", 600, 40.0),
        _payment("h3", "huge", 1_200, 60.0),
    ]
    f = expert_features(_events(payments))
    assert f.loc["neg", "invalid_amounts"] == 1 and f.loc["neg", "amount_median_usd"] == 25.0
    assert f.loc["huge", "invalid_amounts"] == 1 and f.loc["huge", "amount_max_usd"] == 60.0
    assert f.loc["xyz", "unknown_currency"] == 2 and np.isnan(f.loc["xyz", "amount_median_usd"])
    assert f.loc["xyz", "payments"] == 2  # still attempts: velocity and declines do not need the amount


@pytest.fixture(scope="module")
def fitted(small_world_events: Events) -> tuple[FraudDetector, pd.DataFrame]:
    detector = FraudDetector()
    features = detector.features(small_world_events)
    return detector.fit(features), features


def test_features_frame_columns(fitted: tuple[FraudDetector, pd.DataFrame]) -> None:
    _, features = fitted
    assert list(features.columns) == list(COLUMNS)
    assert features[list(EMBED_COLUMNS)].notna().all().all()


def test_bad_input_gets_a_status_and_a_reason(fitted: tuple[FraudDetector, pd.DataFrame]) -> None:
    detector, _ = fitted
    payments = [
        _payment("o1", "one", 0, 20.0),
        _payment("b1", "bad", 0, -1.0),
        _payment("b2", "bad", 60, 5.0, currency="XYZ"),
        _payment("g1", "mixed", 0, 20.0),
        _payment("g2", "mixed", 600, 25.0),
        _payment("g3", "mixed", 1_200, 30.0, currency="XYZ"),
    ]
    chat = {"event_id": "c1", "ts": T0, "user_id": "quiet", "context": "ch1", "event_type": "chat", "text": "hi"}
    events = _events(payments)
    events.frames["chat"] = Events.from_tables({"chat": pa.Table.from_pylist([chat], ARROW_SCHEMAS["chat"])})["chat"]
    scores = detector.score(detector.features(events)).set_index("user_id")
    assert scores.loc["one", "status"] == f"{LOW_EVIDENCE}: 1 payment"
    assert np.isfinite(scores.loc["one", "score"]) and 0 <= scores.loc["one", "score"] <= 1
    assert scores.loc["quiet", "status"] == "no payments: none sent and no account sending it money"
    assert scores.loc["bad", "status"] == "unusable payment data: 2 of 2 payments unusable"
    assert scores.loc[["quiet", "bad"], "score"].isna().all()
    assert scores.loc["mixed", "status"] == SCORED and np.isfinite(scores.loc["mixed", "score"])
    note = scores.loc["mixed", "reasons"][-1]
    assert note.feature == "unusable_payments" and "1 unknown currency" in note.text


def test_one_payment_is_scored_by_the_fitted_model(fitted: tuple[FraudDetector, pd.DataFrame]) -> None:
    detector, features = fitted
    payments = [_payment("p1", "newbie", 0, 20.0), _transfer_to("t1", "sender", "mule", 0, 50.0)]
    events = _events(payments, [_login("l1", "mule", 60, "dddddddd")])  # the mule's only event: a login
    scores = detector.score(detector.features(events)).set_index("user_id")
    assert scores.loc["newbie", "status"] == "low evidence: 1 payment"
    assert scores.loc["mule", "status"] == "low evidence: 1 account sending it money"
    assert scores.loc["sender", "status"] == "low evidence: 1 payment"
    # The same model: the cluster it lands in decides the flag, its own deviation the score below 0.5.
    assigned = detector.assign(detector.features(events))
    for user in ("newbie", "mule", "sender"):
        assert np.isfinite(scores.loc[user, "score"])
        assert bool(scores.loc[user, "flagged"]) == bool(assigned.loc[user, "risky"])
        if not assigned.loc[user, "risky"]:
            assert scores.loc[user, "score"] < 0.5
    # The fit is unchanged: single-payment users of the fitted night are not in the clusters.
    fitted_users = set(detector.require_fitted()["users"])
    assert not fitted_users & set(features.index[(features["payments"] + features["fan_in"].fillna(0)) < 2])


def _transfer_to(event_id: str, user: str, payee: str, seconds: float, amount: float) -> dict[str, Any]:
    return _payment(event_id, user, seconds, amount, action="transfer", counterparty=payee)


def test_empty_days_and_no_payments(fitted: tuple[FraudDetector, pd.DataFrame]) -> None:
    detector, _ = fitted
    gap_day = expert_features(_events([_payment("d0", "g", 0, 20.0), _payment("d2", "g", 2 * 86_400, 30.0)]))
    assert (gap_day.loc["g", "events_per_day"], gap_day.loc["g", "velocity_1h"]) == (1.0, 1.0)
    empty = detector.features(Events({"payment": ARROW_SCHEMAS["payment"].empty_table().to_pandas()}))
    assert len(empty) == 0 and list(empty.columns) == list(COLUMNS)
    assert len(detector.score(empty)) == 0
    assert sequence_embedding(Events()).shape == (0, len(EMBED_COLUMNS))


def test_embedding_depends_on_the_sequence_not_the_user_id() -> None:
    twin = [_payment(f"{u}{i}", u, i * 45, 2.0, "declined" if i % 2 else "approved") for u in "xy" for i in range(6)]
    calm = [_payment(f"z{i}", "z", i * 86_400, 60.0) for i in range(6)]
    e = sequence_embedding(_events(twin + calm))
    np.testing.assert_allclose(e.loc["x"], e.loc["y"])
    assert np.linalg.norm(e.loc["x"] - e.loc["z"]) > 0.1
    np.testing.assert_allclose(e, sequence_embedding(_events(twin + calm)))  # seeded, stateless


def test_rules_read_as_thresholds_with_support_and_precision() -> None:
    rng = np.random.default_rng(0)
    raw = pd.DataFrame({"decline_burst": rng.integers(0, 2, 60).astype(float), "fan_in": rng.integers(0, 4, 60)})
    members = np.zeros(60, dtype=bool)
    members[:8] = True
    raw.loc[members, "decline_burst"] = 9.0
    bad = members.copy()
    rules = _extract_rules(raw, members, bad, {"rule_depth": 2, "seed": 0, "max_rules": 2})
    assert rules[0]["text"] == "decline_burst > 5"
    assert (rules[0]["support"], rules[0]["precision"], rules[0]["coverage"], rules[0]["bad_rate"]) == (
        8,
        1.0,
        1.0,
        1.0,
    )
    assert rules[0]["words"] == "most declines in ten minutes > 5"


def test_cluster_risk_needs_support_and_an_unlikely_count() -> None:
    detector = FraudDetector(min_support=2, alpha=1e-3)
    labels = np.array([0] * 5 + [1] * 5 + [2] * 90)
    flags = np.zeros(100, dtype=bool)
    flags[[0, 1, 2, 5]] = True  # three of cluster 0, one of cluster 1
    outcomes = pd.DataFrame({"labelled": flags, "chargeback": False, "decline_burst": False})
    clusters, base = detector._risky_clusters(labels, outcomes)
    assert base["labelled"] == 0.04
    assert clusters[0]["risky"] and clusters[0]["p_value"] == pytest.approx(binom.sf(2, 5, 0.04))
    assert not clusters[1]["risky"]  # one labelled member is below the minimum support
    assert not clusters[2]["risky"] and clusters[2]["outcomes"]["labelled"] == 0


def test_rings_score_above_everyone_else(fitted: tuple[FraudDetector, pd.DataFrame], small_world: World) -> None:
    detector, features = fitted
    scores = detector.score(features).set_index("user_id")
    ring_members = {small_world.pop.user_id[i] for ring in small_world.pop.rings for i in ring.members}
    truth = scores.index.isin(list(ring_members))
    values = scores["score"].fillna(0.0).to_numpy()
    assert roc_auc_score(truth, values) >= 0.85
    assert average_precision_score(truth, values) >= 0.7
    flagged = scores[scores["flagged"]]
    assert len(flagged) >= 8 and flagged.index.isin(list(ring_members)).mean() >= 0.9
    # Every flag names its evidence first: a risky cluster (with its rule), a pattern or shared entities.
    named = {"cluster", "payment_model", *ACCOUNT_EVIDENCE}
    assert all(reasons[0].feature in named for reasons in flagged["reasons"])
    cluster_reasons = [r for reasons in flagged["reasons"] for r in reasons if r.feature == "cluster"]
    assert cluster_reasons and all("rule: " in r.text for r in cluster_reasons)


def test_explain_and_assign(fitted: tuple[FraudDetector, pd.DataFrame], small_world_events: Events) -> None:
    detector, features = fitted
    risky = detector.risky_clusters()
    assert risky
    info = detector.explain(risky[0])
    assert info["risky"] and info["rules"] and info["size"] == len(info["members"])
    rule = info["rules"][0]
    assert rule["support"] >= 1 and 0.5 <= rule["precision"] <= 1.0
    assert set(info["evidence"]) <= set(small_world_events["payment"]["event_id"])
    with pytest.raises(KeyError, match="no cluster 999"):
        detector.explain(999)
    members = features.loc[info["members"]]
    assert (detector.assign(members)["cluster"] == risky[0]).all()
    # Streaming: the same behaviour under new account ids lands in the nightly cluster.
    renamed = members.rename(index=lambda u: f"new-{u}")
    assigned = detector.assign(renamed)
    assert (assigned["cluster"] == risky[0]).mean() >= 0.6


def test_a_night_without_scorable_users_still_fits(fitted: tuple[FraudDetector, pd.DataFrame]) -> None:
    _, features = fitted
    quiet = features[features["payments"] + features["fan_in"] < 2]
    detector = FraudDetector().fit(quiet)
    assert detector.metrics["clustered_users"] == 0 and detector.risky_clusters() == []
    scores = detector.score(features.iloc[:30])
    assert scores["score"].notna().any()
    # Without clusters only the evidence around the payments can flag, and it says which.
    assert not any(r.feature == "cluster" for reasons in scores["reasons"] for r in reasons)
    assert all(
        reasons and reasons[0].feature in ACCOUNT_EVIDENCE for reasons in scores.loc[scores["flagged"], "reasons"]
    )


def test_a_users_score_does_not_depend_on_who_else_is_scored(fitted: tuple[FraudDetector, pd.DataFrame]) -> None:
    detector, features = fitted
    everyone = detector.score(features).set_index("user_id")
    flagged = everyone.index[everyone["flagged"]][:3].tolist()
    alone = detector.score(features.loc[flagged + features.index[:5].tolist()]).set_index("user_id")
    pd.testing.assert_frame_equal(alone, everyone.loc[alone.index])


# --- payments scored from the sender's first payment -------------------------------------------
def _label(event_id: str, user: str, seconds: float) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "ts": T0 + timedelta(seconds=seconds),
        "user_id": user,
        "context": "risk",
        "event_type": "moderation",
        "action": "label",
        "actor_id": "risk-team",
        "label": "fraud",
        "reason": "account_takeover",
    }


def _with_labels(events: Events, labels: list[dict[str, Any]]) -> Events:
    table = pa.Table.from_pylist(labels, schema=ARROW_SCHEMAS["moderation"])
    events.frames["moderation"] = Events.from_tables({"moderation": table})["moderation"]
    return events


def _honest_background(n: int = 40) -> list[dict[str, Any]]:
    """Ordinary customers: two purchases each at one of a few merchants, each on its own card."""
    rows = []
    for i in range(n):
        for k in range(2):
            rows.append(_payment(f"bg{i}-{k}", f"bg{i}", i * 900 + k * 86_400, 20.0 + i % 7, instrument=f"card{i:04d}"))
    return rows


@pytest.fixture(scope="module")
def shared_payee() -> Events:
    """F (labelled fraud) pays P; X pays P once; Y pays an unrelated Q once; F, Z and 29 others log in
    behind one network (a carrier NAT) and Z pays an unrelated R once. Every account has its own card."""
    payments = [
        _transfer_to("f1", "F", "P", 0, 400.0) | {"instrument_id": "cardF"},
        _transfer_to("x1", "X", "P", 3_600, 120.0) | {"instrument_id": "cardX"},
        _transfer_to("y1", "Y", "Q", 3_600, 120.0) | {"instrument_id": "cardY"},
        _transfer_to("z1", "Z", "R", 3_600, 120.0) | {"instrument_id": "cardZ"},
        *_honest_background(),
    ]
    nat = [_login(f"n{i}", f"bg{i}", i * 60, f"dev{i:04d}", network="carriernat") for i in range(29)]
    nat += [_login("nF", "F", 0, "devF", network="carriernat"), _login("nZ", "Z", 0, "devZ", network="carriernat")]
    return _with_labels(_events(payments, nat), [_label("lab1", "F", 7_200)])


def test_known_outcomes_spread_through_a_shared_payee_not_a_carrier_network(shared_payee: Events) -> None:
    detector = FraudDetector()
    features = detector.features(shared_payee)
    # X shares payee P with F and P: one known-bad of two others, plus the prior's two.
    assert features.loc["X", "known_nearby"] == pytest.approx(1 / (2 + PROPAGATION_PRIOR))
    assert features.loc["Y", "known_nearby"] == 0.0
    # Z shares the NAT address with F and 29 others: one known-bad of 30 others.
    assert features.loc["Z", "known_nearby"] == pytest.approx(1 / (30 + PROPAGATION_PRIOR))
    scores = detector.fit(features).score(features).set_index("user_id")
    for user in ("X", "Y", "Z"):
        assert scores.loc[user, "status"] == f"{LOW_EVIDENCE}: 1 payment" and np.isfinite(scores.loc[user, "score"])
    assert scores.loc["X", "score"] > scores.loc["Y", "score"] + 0.1
    assert scores.loc["X", "score"] > scores.loc["Z", "score"] and not scores.loc["Z", "flagged"]
    assert any(r.feature == "known_nearby" for r in scores.loc["X", "reasons"])


def test_per_payment_scores_and_the_users_maximum(shared_payee: Events) -> None:
    detector = FraudDetector()
    features = detector.features(shared_payee)
    scores = detector.fit(features).score(features).set_index("user_id")
    items = detector.score_items(shared_payee, features)
    assert list(items.columns) == ITEM_COLUMNS
    assert len(items) == len(shared_payee["payment"]) and items["event_id"].is_unique
    assert items["score"].between(0, 1).all()
    # A sender's score is its payments' maximum (these senders receive nothing).
    best = items.groupby("user_id")["score"].max()
    for user in ("X", "Y", "Z", "bg3"):
        assert scores.loc[user, "score"] == pytest.approx(best[user])
    assert items.set_index("event_id").loc["x1", "user_id"] == "X"


def test_a_mule_scores_high_without_any_label() -> None:
    """M receives from five single-payment senders and forwards 95 % of each within the hour to K."""
    payments = _honest_background()
    for i in range(5):
        amount = 100.0 * (i + 1)
        payments.append(_transfer_to(f"in{i}", f"s{i}", "M", i * 7_200, amount) | {"instrument_id": f"cs{i}"})
        payments.append(_transfer_to(f"out{i}", "M", "K", i * 7_200 + 1_800, 0.95 * amount) | {"instrument_id": "cm"})
    events = _events(payments)
    detector = FraudDetector()
    features = detector.features(events)
    mule = (1 - np.exp(-5 / MULE_SCALE)) * 1.0 * np.sqrt(1 - 1 / 5)  # five matched forwards, all of them, five senders
    assert features.loc["M", "mule_pattern"] == pytest.approx(mule)
    assert features.loc["s0", "pays_mule"] == pytest.approx(mule)
    scores = detector.fit(features).score(features).set_index("user_id")
    assert scores.loc["M", "score"] >= mule and scores.loc["M", "flagged"]
    assert scores.loc["M", "reasons"][0].feature == "mule_pattern"
    # Its payers are not flagged on that alone (honest people are talked into paying mules too),
    # but they rank above the ordinary customers.
    assert not scores.loc[[f"s{i}" for i in range(5)], "flagged"].any()
    assert scores.loc["s0", "score"] > scores.loc[[f"bg{i}" for i in range(40)], "score"].max()


def test_a_single_payment_sender_is_scored_with_a_status(fitted: tuple[FraudDetector, pd.DataFrame]) -> None:
    detector, _ = fitted
    events = _events([_transfer_to("t1", "once", "friend", 0, 35.0)])
    features = detector.features(events)
    scores = detector.score(features).set_index("user_id")
    assert scores.loc["once", "status"] == f"{LOW_EVIDENCE}: 1 payment"
    assert scores.loc["friend", "status"] == f"{LOW_EVIDENCE}: 1 account sending it money"
    # An account that only receives money: its evidence (for alerts) is the transfer it received.
    assert features.loc["friend", "evidence"] == "t1" and features.loc["once", "evidence"] == "t1"
    assert scores["score"].notna().all()
    items = detector.score_items(events, features)
    assert items["event_id"].tolist() == ["t1"] and np.isfinite(items["score"].iloc[0])


def test_positive_unlabelled_model_generalises_to_unreported_payments() -> None:
    """Reported fraud: large night-time transfers to fresh payees; unreported ones rank above honest payments."""
    rng = np.random.default_rng(3)
    payments, labels = [], []
    for i in range(300):
        payments.append(
            _payment(f"h{i}", f"h{i}", rng.uniform(8, 20) * 3_600, float(rng.lognormal(3.5, 0.6)), instrument=f"ch{i}")
        )
    for i in range(40):
        seconds = 86_400 + rng.uniform(1, 4) * 3_600
        payments.append(_transfer_to(f"v{i}", f"v{i}", f"dst{i}", seconds, float(rng.lognormal(7, 0.3))))
        payments[-1]["instrument_id"] = f"cv{i}"
        if i < 12:
            labels.append(_label(f"l{i}", f"v{i}", 30 * 86_400))
    events = _with_labels(_events(payments), labels)
    detector = FraudDetector()
    features = detector.features(events)
    detector.fit(features)
    assert detector.metrics["pu_labelled_accounts"] == 12
    scores = detector.score(features).set_index("user_id")
    unreported = scores.loc[[f"v{i}" for i in range(12, 40)], "score"]
    honest = scores.loc[[f"h{i}" for i in range(300)], "score"]
    truth = np.r_[np.ones(len(unreported)), np.zeros(len(honest))]
    assert average_precision_score(truth, np.r_[unreported, honest]) >= 0.9


def test_detect_per_payment_writes_payment_rows(tmp_path: Any) -> None:
    import json

    from typer.testing import CliRunner

    from argus.cli import app
    from argus.world.config import WorldConfig
    from argus.world.generate import write_world

    write_world(
        World(WorldConfig(users=150, days=1, seed=5, events_per_user_day=20.0, profile="dense")), tmp_path / "w"
    )
    out = tmp_path / "payments.csv"
    result = CliRunner().invoke(
        app, ["detect", "fraud", "--events", str(tmp_path / "w"), "--out", str(out), "--per", "payment"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    items = pd.read_csv(out)
    assert list(items.columns) == ITEM_COLUMNS
    assert len(items) == summary["payments"] == items["event_id"].nunique() > 0
    users = pd.read_csv(out.with_suffix(".users.csv"))
    senders = users.set_index("user_id").loc[items["user_id"].unique()]
    assert senders["score"].notna().all()
    best = items.groupby("user_id")["score"].max()
    assert (senders["score"] >= best.reindex(senders.index) - 1e-6).all()


def test_takeover_pattern_needs_unusual_spend_after_the_shared_new_device() -> None:
    """Four accounts each first log in on their own device, then on one device new to all of them, and
    spend at m1 right after. At a café's shared machine they spend as usual; after a takeover, big."""
    from argus.detectors.fraud_payments import account_evidence, payment_features

    def world(amount: float) -> Events:
        payments = [_payment(f"bg{i}", f"bg{i}", i * 60.0, 20.0, instrument=f"cardbg{i}") for i in range(8)]
        logins = []
        for k, user in enumerate(("a", "b", "c", "d")):
            logins += [
                _login(f"l{user}0", user, k * 10.0, f"own{user}"),
                _login(f"l{user}1", user, 3_600 + k, "shared"),
            ]
            payments.append(_payment(f"p{user}", user, 3_700.0 + k, amount, instrument=f"card{user}"))
        return _events(payments, logins)

    def takeover(events: Events) -> pd.Series:
        known = pd.Series(dtype=bool)
        return account_evidence(payment_features(events), events, known)["takeover_pattern"]

    assert (takeover(world(20.0)).loc[["a", "b", "c", "d"]] == 0).all()
    assert (takeover(world(300.0)).loc[["a", "b", "c", "d"]] > 0.5).all()


def test_time_windows_stay_exact_past_a_million_accounts() -> None:
    from argus.detectors.fraud_features import _max_in_window
    from argus.detectors.fraud_payments import _around, window_pairs

    # Keys that put each account on its own stretch of one float line lose whole seconds here.
    accounts = np.array([f"u{i:07d}" for i in range(1_200_000)], dtype=object)
    last, start = accounts[-1], 1.79e9
    user_id = np.r_[accounts, [last, last]]
    t = np.r_[np.full(len(accounts), start), [start + 0.6, start + 1.2]]
    rows = pd.DataFrame({"user_id": user_id, "t": t})

    per_second = _max_in_window(rows, 1.0)
    assert (per_second[last], per_second[accounts[0]]) == (2, 1)
    assert list(_around(rows, np.ones(len(rows), dtype=bool), 1.0)[-3:]) == [2.0, 3.0, 2.0]
    i, j = window_pairs(user_id, t, user_id, t, 0.0, 1.0)
    assert np.round(np.c_[t[i], t[j]] - start, 3).tolist() == [[0.0, 0.6], [0.6, 1.2]]


# --- a few users' features from their neighbourhood (the stream's per-boundary path) ----------------------
def _assert_same_rows(part: pd.DataFrame, full: pd.DataFrame) -> None:
    """Bit for bit: every number (NaN where NaN), the payment rows and their ids, the evidence ids."""
    assert list(part.index) == list(full.index) and list(part.columns) == list(full.columns)
    numbers = [c for c in full.columns if c not in ("payment_rows", "payment_ids", "evidence")]
    pd.testing.assert_frame_equal(part[numbers], full[numbers], check_exact=True)
    assert list(part["evidence"]) == list(full["evidence"])
    assert list(part["payment_ids"]) == list(full["payment_ids"])
    for mine, everyones in zip(part["payment_rows"], full["payment_rows"], strict=True):
        np.testing.assert_array_equal(mine, everyones)


def test_features_for_some_users_equal_their_rows_of_everyones(
    fitted: tuple[FraudDetector, pd.DataFrame], small_world_events: Events
) -> None:
    detector, features = fitted
    rng = np.random.default_rng(5)
    users = features.index.to_numpy(dtype=str)
    subsets = [rng.choice(users, size, replace=False) for size in (1, 1, 1, 1, 2, 3, 5, 8, 20, 60)]
    # Users whose evidence reaches past their own events: crews, outcomes nearby, mules, their payers,
    # takeovers, and accounts seen only as payees.
    reaching = {c: features.index[features[c] > 0] for c in ACCOUNT_EVIDENCE}
    assert all(len(found) for found in reaching.values())
    subsets += [found[:3] for found in reaching.values()]
    subsets.append(features.index[(features["payments"] == 0) & (features["fan_in"] > 0)][:3])
    rolling = RollingPopulation()  # the stream's population, kept up to date instead of computed per boundary
    rolling.add(small_world_events)
    for subset in subsets:
        wanted = sorted({str(u) for u in subset})
        part = detector.features_for(small_world_events, [*wanted, "nobody-at-all"])
        _assert_same_rows(part, features.loc[wanted])
        _assert_same_rows(detector.features_for(small_world_events, wanted, rolling), features.loc[wanted])


@pytest.mark.parametrize("forward", [False, True])
def test_asof_times_match_merge_asof(forward: bool) -> None:
    """The matched times equal ``pd.merge_asof``'s (by key, on time; backward at or before, forward strictly
    after), ties and keys without a match on the other side included."""
    from argus.detectors.fraud_features import asof_times

    rng = np.random.default_rng(8)
    left = pd.DataFrame({"key": rng.choice(list("abcdef"), 400), "t": rng.integers(0, 60, 400) * 0.5})
    right = pd.DataFrame({"key": rng.choice(list("abcdeg"), 150), "t": rng.integers(0, 60, 150) * 0.5})
    matched = asof_times(left["key"], left["t"], right["key"], right["t"], forward=forward)
    merged = pd.merge_asof(
        left.reset_index().sort_values("t", kind="stable"),
        right.assign(t_right=right["t"]).sort_values("t", kind="stable"),
        on="t",
        by="key",
        direction="forward" if forward else "backward",
        allow_exact_matches=not forward,
    ).set_index("index")["t_right"]
    np.testing.assert_array_equal(matched, merged.reindex(left.index).to_numpy())
    assert np.isnan(matched).sum() > 10 and (~np.isnan(matched)).sum() > 200


def _assert_same_population(kept: FraudPopulation, full: FraudPopulation, accounts: list[str]) -> None:
    """Bit for bit: every per-entity figure (NaN where NaN) and the accounts' per-user rows."""
    figures = ("currency_norm", "hour_share", "context_median", "payee_median", "payee_fan_in", "instrument_accounts")
    for name in figures:
        mine, everyones = getattr(kept, name).sort_index(), getattr(full, name).sort_index()
        assert list(mine.index) == list(everyones.index), name
        np.testing.assert_array_equal(mine.to_numpy(dtype=float), everyones.to_numpy(dtype=float), err_msg=name)
    assert kept.embed_end == full.embed_end
    mine = kept.per_user.loc[accounts, list(SHARED_COLUMNS)].to_numpy(dtype=float)
    np.testing.assert_array_equal(mine, full.per_user.reindex(accounts)[list(SHARED_COLUMNS)].to_numpy(dtype=float))


def test_rolling_population_equals_the_population_of_its_window(small_world_events: Events) -> None:
    """A window sliding over three days, rows entering it (a tenth of them a step late) and leaving it: the
    kept figures equal ``fraud_population`` over the window's rows at every step, until the window is empty."""
    frames = {kind: small_world_events[kind] for kind in ("payment", "account")}
    first, last = frames["payment"]["ts"].min(), frames["payment"]["ts"].max()
    step, width = (last - first) / 8, (last - first) / 3
    rng = np.random.default_rng(3)
    late = {kind: rng.random(len(frame)) < 0.1 for kind, frame in frames.items()}
    counted = {kind: np.zeros(len(frame), dtype=bool) for kind, frame in frames.items()}
    rolling = RollingPopulation()
    sizes = []
    for k in range(1, 12):
        end = first + step * k
        start = end - width
        inside = {}
        for kind, frame in frames.items():
            ts = frame["ts"]
            arrived = (ts < end - step).to_numpy() | ((ts < end).to_numpy() & ~late[kind])
            inside[kind] = arrived & (ts >= start).to_numpy()
        rolling.remove(Events({kind: frames[kind][counted[kind] & ~inside[kind]] for kind in frames}))
        rolling.add(Events({kind: frames[kind][inside[kind] & ~counted[kind]] for kind in frames}))
        counted = inside
        window = Events({kind: frames[kind][inside[kind]] for kind in frames})
        payees = window["payment"]["counterparty_id"].dropna().astype(str)
        accounts = sorted(set(window.user_ids) | set(payees) | {"nobody-at-all"})
        _assert_same_population(rolling.population(accounts), fraud_population(window), accounts)
        sizes.append(len(window["payment"]))
    assert min(sizes[:-1]) > 100 and sizes[-1] == 0  # rows came and went


def test_features_for_reads_three_hops_and_no_further() -> None:
    """U shares a device with V, V pays the mule M: U's crew share comes from M's pattern, two accounts away.
    Its neighbourhood is U, V and M; the honest customers stay out."""
    from argus.detectors.fraud_features import _account_table, payment_table
    from argus.detectors.fraud_payments import feature_reach

    payments = [*_honest_background(), _payment("u1", "U", 0, 30.0, instrument="cardU")]
    payments.append(_transfer_to("v1", "V", "M", 600, 50.0) | {"instrument_id": "cardV"})
    for i in range(5):
        amount = 100.0 * (i + 1)
        payments.append(_transfer_to(f"in{i}", f"s{i}", "M", i * 7_200, amount) | {"instrument_id": f"cs{i}"})
        payments.append(_transfer_to(f"out{i}", "M", "K", i * 7_200 + 1_800, 0.95 * amount) | {"instrument_id": "cm"})
    logins = [_login("lu", "U", 0, "devUV", network="netU"), _login("lv", "V", 60, "devUV", network="netV")]
    events = _events(payments, logins)
    detector = FraudDetector()
    everyone = detector.features(events)
    assert everyone.loc["U", "crew_share"] == pytest.approx(everyone.loc["M", "mule_pattern"] / 3)  # V among 2 + prior

    reach = feature_reach(payment_table(events), _account_table(events), pd.Index(["U"]))
    assert list(reach) == ["M", "U", "V"]
    _assert_same_rows(detector.features_for(events, ["U"]), everyone.loc[["U"]])
    _assert_same_rows(detector.features_for(events, ["M", "V"]), everyone.loc[["M", "V"]])


def test_the_payment_model_is_fitted_on_one_openmp_thread(
    fitted: tuple[FraudDetector, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PU model's small trees run on one OpenMP thread (more only add hand-offs) and fit the same model."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_info, threadpool_limits

    from argus.detectors.fraud import _outcomes
    from argus.detectors.fraud_payments import fit_pu

    _, features = fitted
    threads: list[int] = []
    original = HistGradientBoostingClassifier.fit

    def fit(self: HistGradientBoostingClassifier, *args: Any, **kwargs: Any) -> Any:
        threads.extend(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "openmp")
        return original(self, *args, **kwargs)

    known = _outcomes(features, None).any(axis=1)
    sent = [(user, rows[rows[:, -1] == 0, :-1]) for user, rows in features["payment_rows"].items() if len(rows)]
    x = np.vstack([rows for _, rows in sent])
    groups = np.concatenate([np.full(len(rows), user, dtype=object) for user, rows in sent])
    labelled = np.concatenate([np.full(len(rows), bool(known.get(user, False))) for user, rows in sent])
    assert labelled.any() and not labelled.all()
    with threadpool_limits(2, user_api="openmp"):  # as a two-core driver would offer
        monkeypatch.setattr(HistGradientBoostingClassifier, "fit", fit)
        pu = fit_pu(x, labelled, groups, 7)
        monkeypatch.undo()
    assert pu is not None and threads and set(threads) == {1}
    with threadpool_limits(2, user_api="openmp"):
        two = HistGradientBoostingClassifier(**pu["model"].get_params()).fit(x, labelled)
    np.testing.assert_array_equal(two.predict_proba(x), pu["model"].predict_proba(x))


def test_payment_and_account_tables_are_built_by_several_tasks(spark: object, tmp_path: Any) -> None:
    """A night's payments and account events are each one partition as read from the lake; their tables
    are built by as many tasks as shuffle partitions, and hold the rows one task builds."""
    from pyspark.sql import functions as F

    from argus.jobs import fraud_blocks
    from argus.jobs.feature_blocks import type_columns
    from argus.jobs.score import night_window
    from argus.world.config import WorldConfig
    from argus.world.sinks import write_world

    config = WorldConfig(users=300, days=1, seed=5)
    write_world(World(config), tmp_path)
    day = config.start + timedelta(days=config.days - 1)
    window = night_window(spark, tmp_path, day, config.days)  # type: ignore[arg-type]
    columns = type_columns(spark, tmp_path, day)  # type: ignore[arg-type]
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))  # type: ignore[attr-defined]
    assert partitions > 1
    for build, event_type in ((fraud_blocks._payments, "payment"), (fraud_blocks._accounts, "account")):
        read = window.where(F.col("event_type") == event_type)
        assert read.select(F.spark_partition_id()).distinct().count() == 1  # as the lake gives it
        table = build(window, columns)
        used = table.groupBy(F.spark_partition_id().alias("p")).count().collect()
        assert len(used) == partitions, event_type
        one_task = read.coalesce(1)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(fraud_blocks, "_spread", lambda events, one=one_task: one)
            expected = build(window, columns).toPandas()
        got = table.toPandas()
        key = ["user_id", "t", *(["event_id"] if "event_id" in got else ["action", "device", "network"])]
        got, expected = (f.sort_values(key, ignore_index=True) for f in (got, expected))
        pd.testing.assert_frame_equal(got, expected)
