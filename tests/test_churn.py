"""The churn-risk detector: daily activity, labels at a cut-off, training without labels, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from argus.detectors.base import SCORED
from argus.detectors.churn import (
    CHANNELS,
    PRIOR_STATUS,
    ChurnDetector,
    activity_tensor,
    churn_labels,
    daily_activity,
    outage_days,
    window_inputs,
)
from argus.detectors.events import Events

START = pd.Timestamp("2026-10-01", tz="UTC")


def _chat(rows: list[tuple[str, int, int]]) -> pd.DataFrame:
    """Chat events: ``(user, day, count)`` -> ``count`` messages on day ``day`` after START, from 10:00."""
    users, ts = [], []
    for user, day, count in rows:
        for k in range(count):
            users.append(user)
            ts.append(START + pd.Timedelta(days=day, hours=10, minutes=k))
    return pd.DataFrame({"event_id": [f"e{i}" for i in range(len(users))], "user_id": users, "ts": ts})


def _synthetic_events(users: int = 240, days: int = 50, seed: int = 3) -> Events:
    """Daily Poisson chat; a quarter of the users fade over 10 days and leave, a quarter pause for 5 days."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, int, int]] = []
    for i in range(users):
        user = f"u{i:04d}"
        rate = rng.lognormal(1.0, 0.8)
        leave = float(rng.uniform(10, days + 15)) if i % 4 == 0 else np.inf
        pause = int(rng.integers(5, days)) if i % 4 == 1 else -100
        for day in range(days):
            fade = np.clip((leave - day) / 10.0, 0.0, 1.0) if day > leave - 10 else 1.0
            if day >= leave or pause <= day < pause + 5:
                continue
            count = int(rng.poisson(rate * max(fade, 0.1) * rng.gamma(8.0, 1 / 8.0)))
            if count:
                rows.append((user, day, count))
    return Events({"chat": _chat(rows)})


# --- daily activity and labels: hand computations ------------------------------------------
def test_daily_activity_counts_each_channel() -> None:
    chat = _chat([("u1", 0, 2), ("u2", 1, 1)])
    chat["session_id"] = ["s1", "s1", None]
    click = pd.DataFrame(
        {
            "event_id": ["c1", "c2"],
            "user_id": ["u1", "u1"],
            "ts": [START + pd.Timedelta(hours=23, minutes=59), START + pd.Timedelta(days=1)],
            "session_id": ["s2", "s3"],
        }
    )
    payment = pd.DataFrame(
        {
            "event_id": ["p1", "p2", "p3"],
            "user_id": ["u1", "u1", "u1"],
            "ts": [START + pd.Timedelta(hours=h) for h in (1, 2, 3)],
            "action": ["purchase", "purchase", "refund"],
            "status": ["approved", "declined", "approved"],
            "amount": [10.0, 5.0, 3.0],
        }
    )
    account = pd.DataFrame(
        {
            "event_id": ["a1", "a2"],
            "user_id": ["u2", "u2"],
            "ts": [START + pd.Timedelta(days=1, hours=1), START + pd.Timedelta(days=1, hours=2)],
            "action": ["login", "ban"],
        }
    )
    daily = daily_activity(Events({"chat": chat, "click": click, "payment": payment, "account": account}))
    assert list(daily.columns) == list(CHANNELS)
    assert list(daily.index) == [
        ("u1", START),
        ("u1", START + pd.Timedelta(days=1)),
        ("u2", START + pd.Timedelta(days=1)),
    ]
    expected = [
        # chat, click, payment, account, moderation, spend, sessions, ban
        [2, 1, 3, 0, 0, 10.0, 2, 0],
        [0, 1, 0, 0, 0, 0.0, 1, 0],
        [1, 0, 0, 1, 0, 0.0, 0, 1],
    ]
    np.testing.assert_array_equal(daily.to_numpy(), np.array(expected, dtype=float))


def test_activity_tensor_and_labels_at_a_cutoff() -> None:
    # u1: days 0-3 then gone; u2: days 0, 5; u3: only day 6; u4: days 0 and 3.
    daily = daily_activity(
        Events(
            {
                "chat": _chat(
                    [("u1", d, 1) for d in range(4)]
                    + [("u2", 0, 2), ("u2", 5, 1), ("u3", 6, 1), ("u4", 0, 1), ("u4", 3, 1)]
                )
            }
        )
    )
    users = pd.Index(["u1", "u2", "u3", "u4"])
    tensor = activity_tensor(daily, users, pd.date_range(START, periods=8, freq="D"))
    assert tensor.shape == (4, 8, len(CHANNELS))
    np.testing.assert_array_equal(tensor[1, :, 0], [2, 0, 0, 0, 0, 1, 0, 0])
    # Cut-off at the end of day 3, lookback 4 days (0-3), horizon 3 days (4-6).
    eligible, churned = churn_labels(tensor, cutoff=3, lookback_days=4, horizon_days=3)
    np.testing.assert_array_equal(eligible, [True, True, False, True])
    np.testing.assert_array_equal(churned, [True, False, False, True])
    with pytest.raises(ValueError, match="runs past"):
        churn_labels(tensor, cutoff=5, lookback_days=4, horizon_days=3)


def test_window_inputs_recency_gaps_and_trend() -> None:
    # One user, 10 days: active on days 0, 1, 4 and 6 (2, 2, 1, 1 events); cut-off day 9, lookback 10.
    tensor = np.zeros((1, 10, len(CHANNELS)))
    tensor[0, [0, 1, 4, 6], 0] = [2, 2, 1, 1]
    agg = window_inputs(tensor, cutoff=9, lookback_days=10).aggregates.iloc[0]
    assert agg["days_since_active"] == 3
    assert agg["tenure_days"] == 10
    assert agg["active_days"] == 4
    assert agg["active_share_7"] == pytest.approx(2 / 7)  # days 4 and 6 among days 3-9
    assert agg["events_per_day_7"] == pytest.approx(2 / 7)
    assert agg["activity_ratio_7"] == pytest.approx((2 / 7 + 0.1) / (4 / 3 + 0.1))  # days 0-2: 4 events
    assert agg["max_gap"] == 2  # days 2-3
    assert agg["mean_gap"] == pytest.approx((7 - 4) / 3)  # 3 inactive days between 4 active ones
    assert agg["recency_over_gap"] == pytest.approx(3 / 3)
    # An early cut-off pads the missing days and says so.
    early = window_inputs(tensor, cutoff=1, lookback_days=10).aggregates.iloc[0]
    assert (early["observed_days"], early["tenure_days"], early["days_since_active"]) == (2, 2, 0)


def test_outage_days_need_a_busy_median_day() -> None:
    np.testing.assert_array_equal(outage_days(np.array([1000, 0, 980, 40, 1020])), [False, True, False, True, False])
    np.testing.assert_array_equal(outage_days(np.array([50, 0, 40])), [False, False, False])  # too small to tell


# --- features ------------------------------------------------------------------------------
def test_features_ignore_events_after_as_of_and_keep_the_daily_series() -> None:
    events = Events({"chat": _chat([("u1", 0, 3), ("u1", 2, 1), ("u2", 1, 2), ("u2", 5, 4)])})
    features = ChurnDetector(as_of="2026-10-03", lookback_days=7).features(events)
    assert list(features.index) == ["u1", "u2"]
    assert features.index.name == "user_id"
    # Days 0-2 kept; lag 0 is as_of (day 2). u2's day-5 events come after as_of.
    assert features.loc["u1", ["chat_lag002", "chat_lag001", "chat_lag000"]].tolist() == [3, 0, 1]
    assert features.loc["u2", ["chat_lag002", "chat_lag001", "chat_lag000"]].tolist() == [0, 2, 0]
    assert "chat_lag003" not in features
    assert features.loc["u2", "days_since_active"] == 1


def test_outage_days_are_skipped_and_named_in_the_reasons() -> None:
    # 30 users active every day for 20 days, except day 15, when the whole feed is empty.
    rows = [(f"u{i:02d}", d, 5) for i in range(30) for d in range(20) if d != 15]
    rows += [("late", d, 1) for d in (17, 18, 19)]
    events = Events({"chat": _chat(rows)})
    detector = ChurnDetector(lookback_days=7, horizon_days=3)
    features = detector.features(events)
    assert features.attrs["outage_days"] == ["2026-10-16"]
    assert features["outage_days_skipped"].eq(1).all()
    assert features.loc["u00", "days_since_active"] == 0  # not "inactive since the outage"
    scores = detector.fit(features).score(features)
    reasons = scores.set_index("user_id").loc["u00", "reasons"]
    assert any(r.feature == "outage_days_skipped" and "outage" in r.text for r in reasons)


# --- fitting without labels ----------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic() -> Events:
    return _synthetic_events()


@pytest.fixture(scope="module")
def fitted_gbm(synthetic: Events) -> tuple[ChurnDetector, pd.DataFrame]:
    detector = ChurnDetector(as_of="2026-11-03", horizon_days=7, lookback_days=14, model="gbm")  # day 33 of 50
    features = detector.features(synthetic)
    return detector.fit(features), features


def test_fit_derives_labels_from_earlier_cutoffs_and_predicts_the_future(
    synthetic: Events, fitted_gbm: tuple[ChurnDetector, pd.DataFrame]
) -> None:
    detector, features = fitted_gbm
    assert detector.metrics["model"] == "gbm"
    assert detector.metrics["cutoffs"] >= 10
    assert 20 <= detector.metrics["positives"] < detector.metrics["examples"]
    scores = detector.score(features)
    scored = (scores["status"] == SCORED).to_numpy()
    assert scored.sum() >= 150
    # What happened in the 7 days after as_of (never shown to the detector):
    full = ChurnDetector(lookback_days=14).features(synthetic)
    days = sorted({c for c in full.columns if c.startswith("chat_lag")}, reverse=True)
    future = full[days].to_numpy()[:, 34:41]  # days 34-40
    churned = future.sum(axis=1) == 0
    assert churned[scored].sum() >= 5
    assert roc_auc_score(churned[scored], scores["score"][scored]) >= 0.9
    flagged = scores["flagged"].to_numpy()
    assert flagged[scored & churned].mean() >= 0.5
    assert flagged[scored & ~churned].mean() <= 0.1


def test_sequence_model_and_auto_choice(fitted_gbm: tuple[ChurnDetector, pd.DataFrame]) -> None:
    _, features = fitted_gbm
    auto = ChurnDetector(as_of="2026-11-03", horizon_days=7, lookback_days=14).fit(features)
    validation = auto.metrics["validation_auc"]
    assert set(validation) == {"gbm", "sequence"}
    assert min(validation.values()) >= 0.8
    assert auto.metrics["model"] == max(validation, key=lambda k: (validation[k], k == "gbm"))
    sequence = [ChurnDetector(**{**auto.params, "model": "sequence"}).fit(features) for _ in range(2)]
    assert sequence[0].metrics["model"] == "sequence"
    assert sequence[0].model_version == sequence[1].model_version  # seeded: the same weights twice


def test_reasons_compare_risky_users_with_the_norm(fitted_gbm: tuple[ChurnDetector, pd.DataFrame]) -> None:
    detector, features = fitted_gbm
    scores = detector.score(features).set_index("user_id")
    top = scores["score"].idxmax()
    reasons = scores.loc[top, "reasons"]
    assert reasons, "the riskiest user has no reasons"
    by_feature = {r.feature: r for r in reasons}
    assert {"days_since_active", "events_per_day_7", "activity_ratio_7", "active_share_7"} & set(by_feature)
    for name, reason in by_feature.items():
        riskier = (
            reason.value > reason.norm
            if name in ("days_since_active", "moderation_window")
            else reason.value < reason.norm
        )
        assert riskier, reason.text
        assert f"(norm {reason.norm:.3g})" in reason.text
    # The least risky user is at or better than the norm on every reason feature: no reasons.
    assert scores.loc[scores["score"].idxmin(), "reasons"] == []


def test_trained_model_round_trips_with_the_same_version(
    fitted_gbm: tuple[ChurnDetector, pd.DataFrame], tmp_path: Path
) -> None:
    detector, features = fitted_gbm
    loaded = ChurnDetector.load(detector.save(tmp_path / "model"))
    assert loaded.model_version == detector.model_version
    again = ChurnDetector(**detector.params).fit(features.copy())
    assert again.model_version == detector.model_version
    pd.testing.assert_frame_equal(loaded.score(features), detector.score(features))


def test_given_labels_train_on_the_as_of_windows(fitted_gbm: tuple[ChurnDetector, pd.DataFrame]) -> None:
    _, features = fitted_gbm
    labels = pd.Series(features["events_per_day_7"] < features["events_per_day_window"] / 2, index=features.index)
    detector = ChurnDetector(as_of="2026-11-03", horizon_days=7, lookback_days=14, model="gbm")
    detector.fit(features, labels)
    assert detector.metrics["cutoffs"] == 1
    assert detector.metrics["positives"] == int(labels[features["active_days"] >= 2].sum())


# --- bad input -----------------------------------------------------------------------------
def test_short_history_falls_back_to_the_activity_rate_prior() -> None:
    # 3 days of data cannot show a 14-day horizon.
    rows = [(f"u{i}", d, 2) for i in range(30) for d in range(3)] + [("gappy", 0, 1), ("gappy", 2, 1)]
    detector = ChurnDetector()
    features = detector.features(Events({"chat": _chat(rows)}))
    scores = detector.fit(features).score(features).set_index("user_id")
    assert detector.metrics["model"] == "prior"
    assert "need 20 of each" in detector.metrics["why"]
    assert (scores["status"] == PRIOR_STATUS).all()
    # (1 - p)^14 with p = (active days + 0.5) / (days + 1): 3 of 3 days, then 2 of 3.
    assert scores.loc["u0", "score"] == pytest.approx((1 - 3.5 / 4) ** 14)
    assert scores.loc["gappy", "score"] == pytest.approx((1 - 2.5 / 4) ** 14)


def test_short_data_trains_on_the_cutoffs_it_has() -> None:
    # 7 days, a 3-day horizon: cut-offs at the end of days 1 and 3 (horizons 2-4 and 4-6); 30 users each.
    rows = [(f"u{i}", d, 1) for i in range(30) for d in range(7)]
    detector = ChurnDetector(horizon_days=3)
    detector.fit(detector.features(Events({"chat": _chat(rows)})))
    assert (detector.metrics["cutoffs"], detector.metrics["examples"], detector.metrics["positives"]) == (2, 60, 0)
    assert detector.metrics["model"] == "prior"  # nobody left: nothing to learn churn from


SILENT_14 = "silent: no activity in the 14-day lookback; scored as the share of such users who stayed away"


def test_users_with_little_history_are_scored_with_a_status_naming_the_evidence(
    fitted_gbm: tuple[ChurnDetector, pd.DataFrame], synthetic: Events
) -> None:
    detector, _ = fitted_gbm
    extra = _chat([("one-event", 30, 1), ("newcomer", 40, 3)])  # newcomer: after as_of
    chat = pd.concat([synthetic["chat"], extra.assign(event_id=["x1", "x2", "x3", "x4"])], ignore_index=True)
    features = detector.features(Events({"chat": chat}))
    scores = detector.score(features).set_index("user_id")
    one = scores.loc["one-event"]
    assert one["status"] == "low evidence: 1 active day in the 14-day lookback (the model is fit on users with ≥ 2)"
    assert np.isfinite(one["score"]) and one["flagged"] == (one["score"] >= detector.state["threshold"])
    assert scores.loc["newcomer", "status"] == "no events on or before as_of"
    assert np.isnan(scores.loc["newcomer", "score"]) and not scores.loc["newcomer", "flagged"]
    # Users who went quiet before the lookback: the share of silent users who stayed away, +1/+2 smoothed.
    metrics = detector.metrics
    assert metrics["silent_examples"] > 0
    rate = (metrics["silent_stayed"] + 1) / (metrics["silent_examples"] + 2)
    gone = scores["status"] == SILENT_14
    assert gone.sum() >= 1 and np.allclose(scores.loc[gone, "score"].to_numpy(dtype=float), rate)
    # The fit is unchanged: only users with 2 active days or more are training examples.
    assert metrics["examples"] == fitted_gbm[0].metrics["examples"]


def test_a_purchase_long_before_as_of_is_silence_not_a_refusal(
    fitted_gbm: tuple[ChurnDetector, pd.DataFrame], synthetic: Events
) -> None:
    detector, _ = fitted_gbm
    purchase = pd.DataFrame(
        {
            "event_id": ["old-1"],
            "user_id": ["old-buyer"],
            "ts": [START - pd.Timedelta(days=200)],  # far outside the 90-day series
            "action": ["purchase"],
            "status": ["approved"],
            "amount": [30.0],
        }
    )
    features = detector.features(Events({"chat": synthetic["chat"], "payment": purchase}))
    assert features.loc["old-buyer", "days_with_events"] == 1
    scores = detector.score(features).set_index("user_id")
    assert scores.loc["old-buyer", "status"] == SILENT_14
    assert scores.loc["old-buyer", "score"] == pytest.approx(detector.state["silent_churn"])
    assert (scores["status"] != "no activity on or before as_of").all()


def test_as_of_before_any_event_scores_nobody(fitted_gbm: tuple[ChurnDetector, pd.DataFrame]) -> None:
    detector, _ = fitted_gbm
    early = detector.at("2026-09-01")
    assert early.params["horizon_days"] == 7 and early.state is detector.state
    features = early.features(Events({"chat": _chat([("u1", 0, 1), ("u2", 3, 2)])}))
    scores = early.score(features)
    assert list(scores["user_id"]) == ["u1", "u2"]
    assert scores["score"].isna().all()
    assert (scores["status"] == "no events on or before as_of").all()


def test_bad_parameters_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="horizon_days must be at least 1"):
        ChurnDetector(horizon_days=0)
    with pytest.raises(ValueError, match="model must be one of"):
        ChurnDetector(model="transformer")
    with pytest.raises(ValueError):
        ChurnDetector(as_of="not a date")
    with pytest.raises(ValueError, match=r"build them with ChurnDetector\.features"):
        ChurnDetector().fit(pd.DataFrame({"x": [1.0]}, index=pd.Index(["u1"], name="user_id")))


def test_evaluation_refuses_a_world_too_short_for_the_horizon(tmp_path: Path) -> None:
    from argus.evals.churn import run
    from argus.world.config import WorldConfig
    from argus.world.simulate import World
    from argus.world.sinks import write_world

    write_world(World(WorldConfig(users=50, days=2, events_per_user_day=5.0, profile="dense")), tmp_path / "world")
    with pytest.raises(ValueError, match=r"spans 2 days; the churn evaluation needs 66 \(argus generate --days\)"):
        run(tmp_path / "world")


# --- the non-contractual (purchase) mode ---------------------------------------------------
def test_bgnbd_closed_forms_on_hand_computable_cases() -> None:
    from argus.detectors.btyd import BGNBDParams, expected_purchases, log_likelihood, p_alive, p_no_purchase

    ones = BGNBDParams(r=1.0, alpha=1.0, a=1.0, b=1.0)
    # x = 0, T = 1: L = (alpha / (alpha + T))^r = 1/2. x = 1, t_x = 1, T = 2: L = 1/18 + 1/8 = 13/72.
    ll = log_likelihood(ones, np.array([0.0, 1.0]), np.array([0.0, 1.0]), np.array([1.0, 2.0]))
    assert np.allclose(ll, np.log([0.5, 13 / 72]))
    # P(alive) = 1 / (1 + a / (b + x - 1) * ((alpha + T) / (alpha + t_x))^(r + x)) = 1 / (1 + (3/2)^2) = 4/13.
    assert p_alive(ones, np.array([1.0, 0.0]), np.array([1.0, 0.0]), np.array([2.0, 5.0])) == pytest.approx([4 / 13, 1])
    # No purchase in 1 more day, x = 0, T = 1: alive for sure, (2/3)^1 for no Poisson arrival.
    assert p_no_purchase(ones, 1.0, np.array([0.0]), np.array([0.0]), np.array([1.0]))[0] == pytest.approx(2 / 3)
    assert np.isnan(expected_purchases(ones, 1.0, np.array([0.0]), np.array([0.0]), np.array([1.0]))[0])
    # a = 2: E = 2 * (1 - (2/3) 2F1(1, 1; 2; 1/3)) = 2 * (1 - 2 ln 1.5).
    two = BGNBDParams(r=1.0, alpha=1.0, a=2.0, b=1.0)
    expected = expected_purchases(two, 1.0, np.array([0.0]), np.array([0.0]), np.array([1.0]))[0]
    assert expected == pytest.approx(2 - 4 * np.log(1.5))


def test_bgnbd_fit_recovers_its_parameters_and_refuses_without_repeat_buyers() -> None:
    from argus.detectors.btyd import fit_bgnbd

    rng = np.random.default_rng(0)
    n = 4000
    lam, p = rng.gamma(0.5, 1 / 20.0, n), rng.beta(1.0, 3.0, n)
    age = rng.uniform(100, 200, n)
    x, t_x = np.zeros(n), np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1 / lam[i])
            if t > age[i]:
                break
            x[i], t_x[i] = x[i] + 1, t
            if rng.random() < p[i]:
                break
    params, _ = fit_bgnbd(x, t_x, age)
    assert params.r == pytest.approx(0.5, rel=0.25) and params.alpha == pytest.approx(20.0, rel=0.35)
    assert params.a / (params.a + params.b) == pytest.approx(0.25, abs=0.08)
    with pytest.raises(ValueError, match="at least 10 customers with a repeat purchase"):
        fit_bgnbd(np.zeros(50), np.zeros(50), np.full(50, 30.0))


def test_durations_in_days_weeks_and_months() -> None:
    from argus.detectors.churn import parse_duration

    assert [parse_duration(v) for v in ("14", "14d", "26w", "39w", "3m", "1M")] == [14, 14, 182, 273, 91, 30]
    for bad in ("x", "0d", "-3w", "2y", ""):
        with pytest.raises(ValueError, match=r"^--lookback .*: expected a duration of at least one day"):
            parse_duration(bad, "--lookback")


def test_cli_names_the_option_with_a_bad_duration() -> None:
    from argus.cli import UserError, _churn_params

    assert _churn_params(None, None, "39w", "26w", "purchase") == {
        "horizon_days": 273,
        "lookback_days": 182,
        "mode": "purchase",
    }
    assert _churn_params(None, 14, None, None, None) == {"horizon_days": 14}  # the --horizon-days alias
    with pytest.raises(UserError, match=r"^--horizon '3x': expected a duration"):
        _churn_params(None, None, "3x", None, None)
    with pytest.raises(UserError, match="--mode must be one of auto, daily, purchase"):
        _churn_params(None, None, None, None, "weekly")


SHOP_START = pd.Timestamp("2025-01-01", tz="UTC")
SHOP_AS_OF = SHOP_START + pd.Timedelta(days=199)


def _shop(customers: int = 400, days: int = 260, seed: int = 5) -> pd.DataFrame:
    """A purchase log: buyers every few weeks (gamma gaps) who may stop for good after any purchase, and
    half of them buying once; plus three hand-made customers (see the tests)."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, int]] = []
    for i in range(customers):
        day = int(rng.integers(0, 120))
        if i % 2:
            rows.append((f"c{i:04d}", day))
            continue
        gap, stop = rng.uniform(10, 40), rng.uniform(0.05, 0.4)
        while day < days:
            rows.append((f"c{i:04d}", day))
            if rng.random() < stop:
                break
            day += max(1, int(rng.gamma(4.0, gap / 4.0)))
    rows += [("once-long-ago", 20)]
    rows += [("weekly-gone", d) for d in range(60, 140, 7)]  # usual gap 7 days, silent for 62 before as_of
    rows += [("weekly-here", d) for d in range(120, 197, 7)]  # last bought 3 days before as_of
    return pd.DataFrame(
        {
            "event_id": [f"p{k}" for k in range(len(rows))],
            "user_id": [u for u, _ in rows],
            "ts": [SHOP_START + pd.Timedelta(days=d, hours=12) for _, d in rows],
            "action": "purchase",
            "status": "approved",
            "amount": 20.0,
        }
    )


@pytest.fixture(scope="module")
def shop() -> tuple[ChurnDetector, pd.DataFrame, pd.DataFrame]:
    detector = ChurnDetector(as_of=SHOP_AS_OF.date().isoformat(), horizon_days=42, lookback_days=56)
    features = detector.features(Events({"payment": _shop()}))
    detector.fit(features)
    return detector, features, detector.score(features).set_index("user_id")


def test_auto_mode_picks_purchase_on_a_purchase_log_and_daily_on_a_dense_world(
    shop: tuple[ChurnDetector, pd.DataFrame, pd.DataFrame], small_world_events: Events
) -> None:
    from argus.detectors.churn_purchase import detect_mode

    detector, features, _ = shop
    assert features.attrs["mode"] == "purchase" and detector.metrics["mode"] == "purchase"
    assert detector.metrics["mode_why"].startswith("median user active on 0.0")
    assert detector.run_summary()["mode"] == "purchase"
    assert detect_mode(daily_activity(small_world_events))[0] == "daily"
    assert ChurnDetector(mode="daily").features(Events({"payment": _shop()})).attrs["mode"] == "daily"


def test_every_customer_with_a_purchase_gets_a_score_and_a_status(
    shop: tuple[ChurnDetector, pd.DataFrame, pd.DataFrame],
) -> None:
    detector, features, scores = shop
    before = features["days_with_events"] > 0
    assert scores.loc[before.index[before], "score"].notna().all()
    assert (scores["status"] != "no activity on or before as_of").all()
    once = scores.loc["once-long-ago"]
    assert np.isfinite(once["score"])
    assert once["status"] == (
        "low evidence: 1 day with events, the last 179 days before as_of (the trees are fit on all customers;"
        " ≥ 2 days give a gap to compare with)"
    )
    assert features.loc["once-long-ago", "recency_days"] == 179 and features.loc["once-long-ago", "frequency"] == 0
    # A weekly buyer silent for 62 days is riskier than one who bought 3 days ago.
    assert features.loc["weekly-gone", "recency_over_gap"] == pytest.approx(62 / 7)  # last bought on day 137
    assert scores.loc["weekly-gone", "score"] > scores.loc["weekly-here", "score"]
    assert scores.loc["weekly-here", "status"] == SCORED
    assert detector.metrics["model"] in ("gbm", "bgnbd", "blend")
    assert set(detector.metrics["validation_auc"]) == {"gbm", "bgnbd", "blend"}


def test_purchase_mode_predicts_who_buys_again(shop: tuple[ChurnDetector, pd.DataFrame, pd.DataFrame]) -> None:
    _, features, scores = shop
    log = _shop()
    ts = pd.to_datetime(log["ts"], utc=True)
    later = set(
        log.loc[(ts > SHOP_AS_OF + pd.Timedelta(days=1)) & (ts <= SHOP_AS_OF + pd.Timedelta(days=43)), "user_id"]
    )
    kind = features.index[features["days_with_events"] > 0]
    truth = ~kind.isin(list(later))
    assert roc_auc_score(truth, scores.loc[kind, "score"]) > 0.75


def test_a_horizon_longer_than_the_history_allows_learns_from_the_longest_that_fits() -> None:
    detector = ChurnDetector(as_of=SHOP_AS_OF.date().isoformat(), horizon_days=273, lookback_days=30)
    features = detector.features(Events({"payment": _shop()}))
    detector.fit(features)
    # 200 days of history (2025-01-01 .. as_of): a training cut-off keeps half of it, 100 days, before it.
    assert detector.metrics["training_horizon_days"] == 100 and detector.metrics["cutoffs"] == 1
    note = detector.metrics["horizon_note"]
    assert note == (
        "the 200-day history is shorter than needed for a 273-day horizon after a training cut-off with 100 days"
        " of history before it; learned from the longest horizon that fits, 100 days"
    )
    assert detector.run_summary()["horizon_note"] == note
    scores = detector.score(features)
    assert scores.loc[features["days_with_events"].to_numpy() > 0, "score"].notna().all()


def test_purchase_model_round_trips_and_refuses_daily_features(
    shop: tuple[ChurnDetector, pd.DataFrame, pd.DataFrame], tmp_path: Path, synthetic: Events
) -> None:
    detector, _, scores = shop
    loaded = ChurnDetector.load(detector.save(tmp_path / "m"))
    assert loaded.model_version == detector.model_version
    again = loaded.features(Events({"payment": _shop()}))
    assert again.attrs["mode"] == "purchase"
    pd.testing.assert_series_equal(loaded.score(again).set_index("user_id")["score"], scores["score"])
    with pytest.raises(ValueError, match="history_days"):
        detector.score(ChurnDetector(mode="daily", horizon_days=7, lookback_days=14).features(synthetic))


def test_purchase_choice_keeps_the_blend_within_noise_and_a_clear_winner_beyond() -> None:
    from argus.detectors.churn import _auc_standard_error, _purchase_choice

    y = np.r_[np.ones(500, dtype=bool), np.zeros(1500, dtype=bool)]
    error = _auc_standard_error(0.85, y)
    assert 0.005 < error < 0.02  # Hanley-McNeil at 500 + 1500 examples
    near = {"gbm": 0.85 + error / 2, "bgnbd": 0.84, "blend": 0.85}
    assert _purchase_choice(near, y) == "blend"
    clear = {"gbm": 0.80, "bgnbd": 0.85 + 2 * error, "blend": 0.85}
    assert _purchase_choice(clear, y) == "bgnbd"
    assert _purchase_choice({"gbm": 0.8}, y) == "gbm"


def test_bgnbd_alone_reports_its_auc_and_pr_auc_against_who_went_away() -> None:
    from argus.detectors.churn import ACTIVITY_CHANNELS
    from argus.evals.churn import _bgnbd_alone

    as_of = pd.Timestamp("2026-10-30", tz="UTC")
    rng = np.random.default_rng(1)
    rows, away = [], []
    for u in range(300):
        regular = u % 3 != 0  # a third of the customers stop coming after their first week
        last = 29 if regular else 7
        for day in sorted({int(d) for d in rng.integers(0, last + 1, 8)} | {last}):
            rows.append((f"u{u:03d}", as_of - pd.Timedelta(days=29 - day)))
        away.append(not regular)
    daily = pd.DataFrame(
        {c: 1.0 for c in ACTIVITY_CHANNELS},
        index=pd.MultiIndex.from_tuples(rows, names=["user_id", "day"]),
    )
    users = pd.Index([f"u{u:03d}" for u in range(300)])
    truth = np.asarray(away)
    result = _bgnbd_alone(daily, users, as_of, 14, truth, np.ones(300, dtype=bool))
    assert set(result) == {"bgnbd_auc", "bgnbd_pr_auc"}
    # Three weeks of silence after eight visits in a week: BG/NBD gives them up, the regulars not.
    assert result["bgnbd_auc"] is not None and result["bgnbd_auc"] > 0.95
    assert result["bgnbd_pr_auc"] is not None and result["bgnbd_pr_auc"] > 0.9
    assert _bgnbd_alone(daily.iloc[:0], users, as_of, 14, truth, np.ones(300, dtype=bool)) == {
        "bgnbd_auc": None,
        "bgnbd_pr_auc": None,
    }


@pytest.mark.parametrize("users", [500, 501])
def test_population_figures_from_pooled_counts_equal_those_from_every_user(users: int) -> None:
    """The nightly job sends the driver counts of equal rows, not users: the figures must not change."""
    from argus.detectors.btyd import fit_bgnbd
    from argus.detectors.churn_purchase import median_share

    rng = np.random.default_rng(3)
    active = rng.integers(1, 20, users)
    span = active + rng.integers(0, 20, users)
    pairs = pd.DataFrame({"active": active, "span": span}).value_counts().reset_index()
    pooled_median = median_share(pairs["active"].to_numpy(), pairs["span"].to_numpy(), pairs["count"].to_numpy())
    assert pooled_median == float(pd.Series(active / span).median())
    assert median_share(np.zeros(0), np.zeros(0), np.zeros(0)) is None
    x = rng.integers(0, 5, users).astype(float)
    t = x + rng.integers(1, 10, users)
    t_x = np.minimum(x + rng.integers(0, 3, users), t - 1)
    rows = pd.DataFrame({"x": x, "t_x": t_x, "t": t}).value_counts().reset_index()
    assert len(rows) < users / 2
    pooled = fit_bgnbd(rows["x"], rows["t_x"], rows["t"], weights=rows["count"].to_numpy(dtype=float))
    assert pooled == fit_bgnbd(x, t_x, t)  # bit for bit
