"""Message-level troll signals, their unsupervised combination and the users' violation-rate posterior."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from argus.cli import app
from argus.detectors.base import ITEM_COLUMNS
from argus.detectors.chat_messages import (
    DEFAULT_MODEL,
    MIN_VIEW_USERS,
    SIGNALS,
    BetaPrior,
    _trailing_by_code,
    fit_message_model,
    fit_rate_prior,
    fit_user_views,
    message_signals,
    moderation_counts,
    rate_posterior,
)
from argus.detectors.events import Events
from argus.detectors.trolls import TrollDetector
from tests.test_trolls import chat


def test_content_signals_by_hand() -> None:
    frame = chat(
        [
            ("a", "ch", "you are a stupid idiot", 0),
            ("b", "ch", "good game everyone", 1),
            ("c", "ch", "free skins at www.win.shop", 2),
            ("d", "ch", "WHAT A PLAY THAT WAS", 3),
            ("e", "ch", "pog pog pog pog", 4),
            ("f", "ch", "@b you are a stupid idiot", 5),
        ]
    )
    s = message_signals(frame)
    assert list(s["toxic"]) == [1, 0, 0, 0, 0, 1]
    assert list(s["hostile_words"]) == [1, 0, 0, 0, 0, 1]
    assert list(s["link"]) == [0, 0, 1, 0, 0, 0]
    assert list(s["shouting"]) == [0, 0, 0, 1, 0, 0]
    assert list(s["emote_flood"]) == [0, 0, 0, 0, 1, 0]
    assert list(s["mention"]) == [0, 0, 0, 0, 0, 1]
    assert list(s["aimed_at_person"]) == [0, 0, 0, 0, 0, 1]
    # Channel rules are off unless a channel sets them: those signals abstain.
    assert s["backseating"].isna().all() and s["other_streamer"].isna().all()


def test_hostile_scores_above_friendly_and_aimed_above_unaimed() -> None:
    frame = chat(
        [
            ("a", "ch", "you are a stupid idiot", 0),
            ("b", "ch", "good game everyone", 1),
            ("c", "ch", "@b you are a stupid idiot", 2),
        ]
    )
    p = DEFAULT_MODEL.score(message_signals(frame))
    assert p[0] > p[1]
    assert p[2] > p[0]


def test_copypasta_across_users_and_self_repeat() -> None:
    pasta = "this streamer is the best wow"
    frame = chat(
        [
            ("a", "ch", pasta, 0),
            ("b", "ch", pasta.upper(), 10),  # case and spacing do not matter
            ("c", "ch", pasta, 20),
            ("a", "ch", pasta, 30),
            ("d", "ch", pasta, 400),  # outside the 2-minute context
            ("e", "other", pasta, 25),  # another channel
            ("f", "ch", "gg", 31),
            ("g", "ch", "gg", 32),  # too short to be a pasta
        ]
    )
    s = message_signals(frame)
    assert list(s["copypasta"]) == [0, 1, 1, 1, 0, 0, 0, 0]
    assert list(s["self_repeat"]) == [0, 0, 0, 1, 0, 0, 0, 0]


def test_off_topic_against_the_window_and_abstaining_without_context() -> None:
    rows = [(f"u{i}", "ch", "dragon boss fight", float(i)) for i in range(6)]
    rows += [
        ("x", "ch", "buy cheap watches", 10.0),
        ("y", "ch", "that boss again", 11.0),
        ("z", "quiet", "hello", 12.0),
    ]
    s = message_signals(chat(rows))
    assert s["off_topic"].iloc[6] == 1.0 and s["off_topic"].iloc[7] == 0.0
    assert s["off_topic"].iloc[:5].isna().all()  # fewer than 5 other messages before them
    assert np.isnan(s["off_topic"].iloc[8])


def test_off_topic_in_a_slow_channel_reaches_back_to_its_conversation() -> None:
    # A message every five minutes: two minutes hold no conversation, the last messages do (up to 30 minutes).
    rows = [(f"u{i}", "slow", "dragon boss fight", 300.0 * i) for i in range(6)]
    rows += [
        ("x", "slow", "buy cheap watches", 1800.0),  # the five-minute-old messages are its conversation
        ("y", "slow", "that boss again", 1801.0),
        ("z", "slow", "dragon boss", 1801.0 + 4000.0),  # over an hour of silence: nothing to be off
    ]
    s = message_signals(chat(rows))
    assert s["off_topic"].iloc[6] == 1.0 and s["off_topic"].iloc[7] == 0.0
    assert np.isnan(s["off_topic"].iloc[8])
    # With the old fixed two minutes the signal abstains on every message of such a channel.
    assert message_signals(chat(rows), max_context_s=120)["off_topic"].isna().all()


def test_conversation_span_by_hand() -> None:
    from argus.detectors.chat_messages import _conversation_span

    every_10s = np.arange(30) * 10.0
    span = _conversation_span(every_10s, pd.Series(["c"] * 30), 120, 20, 1800)
    # Before the 20th message the conversation is everything up to 30 minutes back; after, back to
    # the 20th previous message (200 s here), never shorter than two minutes.
    assert list(span[:20]) == [1800.0] * 20 and list(span[20:]) == [200.0] * 10
    busy = _conversation_span(np.arange(30) * 1.0, pd.Series(["c"] * 30), 120, 20, 1800)
    assert list(busy[20:]) == [120.0] * 10
    # Channels do not lend each other messages.
    mixed = _conversation_span(np.arange(4) * 10.0, pd.Series(["a", "b", "a", "b"]), 5, 1, 1800)
    assert list(mixed) == [1800.0, 1800.0, 20.0, 20.0]


def test_channel_rules_backseating_and_other_streamers() -> None:
    frame = chat(
        [("a", "speedrun", "you should go left here", 0), ("b", "speedrun", "come watch rival on twitch.tv/rival", 1)]
    )
    frame = pd.concat([frame, chat([("c", "rival", "hi", 2)]).assign(event_id="e9")], ignore_index=True)
    s = message_signals(frame, channel_rules={"speedrun": ["no_backseating", "no_other_streamers"]})
    assert list(s["backseating"].iloc[:2]) == [1, 0]
    assert list(s["other_streamer"].iloc[:2]) == [0, 1]
    assert np.isnan(s["backseating"].iloc[2])
    with pytest.raises(ValueError, match="unknown channel rule"):
        message_signals(frame, channel_rules={"speedrun": ["no_fun"]})


def test_trailing_counts_a_message_exactly_its_window_back_whatever_the_key() -> None:
    # The second message's window reaches exactly back to the first; a float key (code x span + time)
    # rounded this boundary away for a high key code.
    first, second = 1790074578.658, 1790074599.527
    seconds = np.array([first, second, 1_790_000_000.0, 1_790_086_400.0])
    codes = np.array([58731, 58731, 0, 0])
    counts = _trailing_by_code(seconds, codes, np.array([120.0, second - first, 120.0, 120.0]))
    assert list(counts) == [0, 1, 0, 0]


def test_em_recovers_planted_signal_rates() -> None:
    rng = np.random.default_rng(3)
    violation = rng.random(20_000) < 0.1
    values = np.zeros((20_000, len(SIGNALS)))
    values[:, 0] = rng.random(20_000) < np.where(violation, 0.8, 0.01)  # informative
    values[:, 1] = rng.random(20_000) < np.where(violation, 0.6, 0.02)  # informative
    values[:, 2] = rng.random(20_000) < 0.3  # noise
    values[:, 3] = rng.random(20_000) < np.where(violation, 0.5, 0.05)
    model = fit_message_model(pd.DataFrame(values, columns=list(SIGNALS)))
    assert model.prior == pytest.approx(0.1, abs=0.03)
    assert model.theta1[0] == pytest.approx(0.8, abs=0.08) and model.theta0[0] == pytest.approx(0.01, abs=0.01)
    assert abs(model.theta1[2] - model.theta0[2]) < 0.05  # noise carries no weight
    p = model.score(pd.DataFrame(values, columns=list(SIGNALS)))
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(violation, p) >= 0.9


def test_a_chant_the_chat_joins_does_not_take_the_violating_class() -> None:
    # A busy channel: a third of the messages are a chant everyone copies in capitals, a third
    # off-topic chatter, the rest on topic, and one insult. A two-class fit that lets the chant be
    # the "violating" class ranks the insult below every chant message.
    rng = np.random.default_rng(0)
    topic = ["boss", "fight", "dragon", "heal", "tank", "raid", "loot", "sword"]
    rows = []
    for i in range(600):
        user, draw = f"u{rng.integers(0, 120)}", rng.random()
        if draw < 0.3:
            text = "LETS GO TEAM LETS GO"
        elif draw < 0.6:
            text = " ".join(f"w{rng.integers(0, 10**6)}" for _ in range(3))
        else:
            text = " ".join(rng.choice(topic, 3))
        rows.append((user, "ch", text, 3.0 * i))
    rows.append(("troll", "ch", "you are a stupid idiot boss", 1801.0))
    signals = message_signals(chat(rows))
    assert signals["copypasta"].mean() > 0.25 and signals["off_topic"].mean() > 0.25
    model = fit_message_model(signals)
    p = model.score(signals)
    assert int(np.argmax(p)) == len(rows) - 1 and p[-1] > 0.5
    chant = np.array([r[2].startswith("LETS") for r in rows])
    assert p[chant].max() < 0.05
    lift = dict(zip(SIGNALS, model.weights()[:, 0], strict=True))
    assert lift["toxic"] > 1 and lift["hostile_words"] > 1
    assert lift["copypasta"] < 0.5 and lift["shouting"] < 0.5


def test_signals_that_never_fire_in_the_fit_carry_no_weight() -> None:
    rng = np.random.default_rng(4)
    violation = rng.random(5_000) < 0.1
    values = np.zeros((5_000, len(SIGNALS)))
    values[:, 0] = rng.random(5_000) < np.where(violation, 0.8, 0.01)
    values[:, 1] = rng.random(5_000) < np.where(violation, 0.6, 0.02)
    model = fit_message_model(pd.DataFrame(values, columns=list(SIGNALS)))
    silent = [SIGNALS.index(s) for s in ("link", "mention", "burst")]
    # Smoothing alone would give a never-seen signal the small class's higher rate: a mention in a
    # later batch would then count as evidence of a violation.
    assert np.all(model.weights()[silent] == 0.0)
    with pytest.raises(ValueError, match="classes must be at least 2"):
        fit_message_model(pd.DataFrame(values, columns=list(SIGNALS)), classes=1)
    with pytest.raises(ValueError, match="unknown anchor signal"):
        fit_message_model(pd.DataFrame(values, columns=list(SIGNALS)), anchors=("swearing",))


def test_rate_posterior_by_hand_rises_with_evidence_and_narrows() -> None:
    prior = BetaPrior(1.0, 9.0)
    # Beta(1 + k, 9 + n - k): half of 2 messages, then half of 20.
    mean, lo, hi = rate_posterior(np.array([0.0, 1.0, 10.0]), np.array([1.0, 2.0, 20.0]), prior)
    assert mean == pytest.approx([1 / 11, 2 / 12, 11 / 30])
    assert mean[0] < mean[1] < mean[2]
    assert (hi[2] - lo[2]) < (hi[1] - lo[1])
    # Method of moments: rates 0.1 and 0.3 over 10 messages each -> mean 0.2, excess spread 0.01 - 0.016 < 0:
    # no spread beyond binomial noise gives a weak prior worth two messages.
    weak = fit_rate_prior(np.array([1.0, 3.0]), np.array([10.0, 10.0]))
    assert (weak.a, weak.b) == pytest.approx((0.4, 1.6))


def _channel_with_a_troll(extra_troll_messages: int) -> pd.DataFrame:
    rows = [(f"r{u:02d}", "ch-a", f"nice play {u} gg", 60.0 * i + u) for u in range(20) for i in range(20)]
    rows.append(("once", "ch-a", "you are all stupid idiots", 30.0))
    rows += [("troll", "ch-a", "you are all stupid idiots", 61.0 * i + 7) for i in range(extra_troll_messages)]
    return chat(rows)


def test_one_message_user_is_scored_with_a_status_naming_one_message() -> None:
    frame = _channel_with_a_troll(0)
    detector = TrollDetector(min_messages=20)
    features = detector.features(Events({"chat": frame}))
    scores = detector.fit(features).score(features).set_index("user_id")
    assert scores.loc["once", "status"] == "low evidence: 1 chat message (norms are fit on users with ≥ 20)"
    assert scores.loc["once", "score"] > scores.drop(index="once")["score"].max()
    assert scores.loc["once", "reasons"][0].text.startswith("violating messages 1.0 of 1")


def test_rate_interval_reads_below_a_thousandth_instead_of_zero_to_zero() -> None:
    from argus.detectors.trolls import _interval_text

    assert _interval_text(1e-200, 2.5e-10) == "below 0.001"
    assert _interval_text(0.0851, 0.858) == "0.085-0.858"
    assert _interval_text(0.0, 0.0006) == "0.000-0.001"


def test_user_score_rises_with_violating_messages_and_uncertainty_shrinks() -> None:
    detector = TrollDetector(min_messages=20)
    features = detector.features(Events({"chat": _channel_with_a_troll(12)}))
    detector.fit(features)
    state = detector.state
    assert state is not None
    prior = state["rate_prior"]
    means, lows, highs = rate_posterior(np.array([1.0, 3.0, 12.0]), np.array([1.0, 3.0, 12.0]), prior)
    assert means[0] < means[1] < means[2]
    assert (highs - lows)[2] < (highs - lows)[0]
    scores = detector.score(features).set_index("user_id")
    assert scores.loc["troll", "score"] > scores.loc["once", "score"]
    assert scores.loc["troll", "flagged"] and not scores.loc["r00", "flagged"]


def test_score_items_sum_to_the_users_expected_violations() -> None:
    events = Events({"chat": _channel_with_a_troll(3)})
    detector = TrollDetector(min_messages=20)
    features = detector.features(events)
    items = detector.fit(features).score_items(events, features)
    assert list(items.columns) == ITEM_COLUMNS and len(items) == len(events["chat"])
    summed = items.groupby("user_id")["score"].sum()
    assert summed.loc["troll"] == pytest.approx(features.loc["troll", "msg_violations"])
    hostile = items[items["user_id"] == "troll"].iloc[0]
    assert hostile["flagged"] and {r.feature for r in hostile["reasons"]} >= {"toxic", "hostile_words"}
    # A loaded model scores the same messages the same way.
    assert detector.score_items(events, detector.features(events))["score"].tolist() == items["score"].tolist()


def test_detect_per_message_writes_one_row_per_message(tmp_path: Path) -> None:
    from argus.world.config import WorldConfig
    from argus.world.generate import write_world
    from argus.world.simulate import World

    world = World(WorldConfig(users=150, days=1, seed=5, events_per_user_day=20.0, profile="dense"))
    write_world(world, tmp_path / "w")
    out = tmp_path / "messages.csv"
    result = CliRunner().invoke(
        app, ["detect", "trolls", "--events", str(tmp_path / "w"), "--out", str(out), "--per", "message"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    items = pd.read_csv(out)
    assert list(items.columns) == ITEM_COLUMNS
    assert len(items) == summary["messages"] == items["event_id"].nunique() > 0
    users = pd.read_csv(out.with_suffix(".users.csv"))
    assert users["score"].notna().sum() == items["user_id"].nunique()


def moderation(rows: list[tuple[str, str, str, str | None]]) -> pd.DataFrame:
    """(subject, action, actor, label) rows as a moderation frame."""
    return pd.DataFrame(
        {
            "event_id": [f"m{i}" for i in range(len(rows))],
            "user_id": [r[0] for r in rows],
            "action": [r[1] for r in rows],
            "actor_id": [r[2] for r in rows],
            "label": [r[3] for r in rows],
            "ts": [pd.Timestamp("2026-10-02T00:00:00Z")] * len(rows),
        }
    )


def test_moderation_counts_by_hand() -> None:
    frame = moderation(
        [
            ("a", "report", "x", "troll"),
            ("a", "report", "x", "spam"),  # the same reporter twice counts once
            ("a", "report", "y", None),
            ("a", "warn", "mod1", "harassment"),
            ("b", "timeout", "mod1", "troll"),
            ("b", "ban", "mod2", None),
            ("c", "label", "risk-team", "fraud"),  # not about chat, not a sanction
            ("c", "report", "z", "fraud"),
        ]
    )
    counts = moderation_counts(frame)
    assert counts.loc["a", "mod_reporters"] == 2 and counts.loc["a", "mod_sanctions"] == 1
    assert counts.loc["b", "mod_reporters"] == 0 and counts.loc["b", "mod_sanctions"] == 2
    # Severity: a warning 1; a timeout 2 and a ban 3, summed.
    assert counts.loc["a", "mod_sanction_severity"] == 1 and counts.loc["b", "mod_sanction_severity"] == 5
    assert "c" not in counts.index


def test_a_ban_speaks_for_the_troll_class_more_than_a_warning() -> None:
    # Moderators warn the wrong person now and then but rarely ban them: with the sanctions' severity
    # as the view, a one-message user with a ban outranks the same user with a warning.
    rng = np.random.default_rng(8)
    users = 4000
    troll = rng.random(users) < 0.05
    content = np.where(troll, rng.beta(3, 4, users), rng.beta(2, 6, users))
    reporters = rng.poisson(np.where(troll, 1.2, 0.04)).astype(float)
    severity = np.where(
        troll,
        rng.choice([0, 1, 2, 3], users, p=[0.6, 0.1, 0.1, 0.2]),
        rng.choice([0, 1, 2, 3], users, p=[0.97, 0.02, 0.007, 0.003]),
    ).astype(float)
    model = fit_user_views(content, rng.integers(1, 40, users).astype(float), reporters, severity)
    assert model is not None
    one, content_, none = np.array([1.0]), np.array([0.5]), np.array([0.0])
    by_severity = [model.posterior(content_, one, none, np.array([float(v)]))[0] for v in (0, 1, 2, 3)]
    assert by_severity == sorted(by_severity)
    assert by_severity[3] > 0.5 > by_severity[1]
    # Beyond a ban, points add nothing (the view's last category).
    assert model.posterior(content_, one, none, np.array([7.0]))[0] == pytest.approx(by_severity[3])
    # A model saved with three sanction-count categories still scores, the severity capped at its last.
    rates1, rates0 = list(model.rates1), list(model.rates0)
    rates1[2], rates0[2] = rates1[2][:3], rates0[2][:3]
    older = replace(model, rates1=tuple(rates1), rates0=tuple(rates0))
    assert older.posterior(content_, one, none, np.array([3.0]))[0] == pytest.approx(
        older.posterior(content_, one, none, np.array([2.0]))[0]
    )


def _three_views(seed: int, users: int = 4000, share: float = 0.05) -> tuple[np.ndarray, ...]:
    """Users with a planted class: content scores, reporters and sanctions independent given the class."""
    rng = np.random.default_rng(seed)
    troll = rng.random(users) < share
    messages = rng.integers(1, 40, users).astype(float)
    content = np.where(troll, rng.beta(3, 4, users), rng.beta(2, 6, users))
    reporters = rng.poisson(np.where(troll, 1.2, 0.04))
    sanctions = rng.poisson(np.where(troll, 0.3, 0.02))
    return troll, content, messages, reporters.astype(float), sanctions.astype(float)


def test_user_views_recover_the_class_and_beat_each_view_alone() -> None:
    from sklearn.metrics import roc_auc_score

    troll, content, messages, reporters, sanctions = _three_views(3)
    model = fit_user_views(content, messages, reporters, sanctions)
    assert model is not None
    assert model.prior == pytest.approx(troll.mean(), abs=0.02)
    posterior = model.posterior(content, messages, reporters, sanctions)
    auc = roc_auc_score(troll, posterior)
    assert auc > max(roc_auc_score(troll, content), roc_auc_score(troll, reporters)) + 0.03
    # One message, the same content: two reporters and a sanction outweigh none.
    one = np.array([1.0])
    quiet = model.posterior(np.array([0.3]), one, np.array([0.0]), np.array([0.0]))[0]
    reported = model.posterior(np.array([0.3]), one, np.array([2.0]), np.array([1.0]))[0]
    assert reported > 0.5 > quiet
    # More reporters never speak less for the troll class (the rates are monotone).
    ratios = [model.posterior(np.array([0.3]), one, np.array([k]), np.array([0.0]))[0] for k in (0.0, 1.0, 2.0, 3.0)]
    assert ratios == sorted(ratios)


def test_user_view_content_bins_are_finest_in_the_upper_tail() -> None:
    from argus.detectors.chat_messages import CONTENT_QUANTILES

    rng = np.random.default_rng(6)
    users = 4000
    troll = rng.random(users) < 0.03
    content = np.where(troll, rng.uniform(0.98, 1.0, users), rng.uniform(0.0, 1.0, users))
    messages = np.ones(users)
    reporters = rng.poisson(np.where(troll, 1.2, 0.04)).astype(float)
    sanctions = rng.poisson(np.where(troll, 0.3, 0.02)).astype(float)
    model = fit_user_views(content, messages, reporters, sanctions)
    assert model is not None
    assert list(CONTENT_QUANTILES) == [0.5, 0.75, 0.875, 0.9375, 0.96875, 0.984375, 0.9921875]
    assert model.content_edges[0] == pytest.approx(tuple(np.quantile(content, CONTENT_QUANTILES)))
    # One report each: a message in the top 1 % reads as a troll's, one at the 90th percentile does
    # not (equal-mass bins put both in the top eighth and scored them alike).
    one, report, none = np.array([1.0]), np.array([1.0]), np.array([0.0])
    top = model.posterior(np.array([0.995]), one, report, none)[0]
    high = model.posterior(np.array([0.90]), one, report, none)[0]
    assert top > 0.5 > high


def test_user_views_are_not_learnt_without_moderation_or_users() -> None:
    _, content, messages, reporters, sanctions = _three_views(4)
    assert fit_user_views(content, messages, np.zeros_like(reporters), np.zeros_like(sanctions)) is None
    few = MIN_VIEW_USERS - 1
    assert fit_user_views(content[:few], messages[:few], reporters[:few], sanctions[:few]) is None


def test_reported_one_message_user_scores_above_the_same_message_unreported() -> None:
    rng = np.random.default_rng(5)
    texts = ["gg nice play", "hello chat", "lol", "what a run", "you all suck", "this is trash", "pog"]
    rows, reports = [], []
    for u in range(1200):
        user = f"u{u:04d}"
        troll = u % 20 == 0
        for k in range(1 + u % 3):
            text = texts[rng.integers(4, 6)] if troll and rng.random() < 0.5 else texts[rng.integers(0, 4)]
            rows.append((user, f"ch-{u % 8}", text, 30.0 * u + 7.0 * k))
        if rng.random() < (0.7 if troll else 0.03):
            reports.append((user, "report", f"r{rng.integers(0, 999)}", "troll"))
        if rng.random() < (0.3 if troll else 0.01):
            reports.append((user, "warn", "mod1", "troll"))
    rows += [("once_reported", "ch-0", "hello chat", 1.0), ("once_quiet", "ch-1", "hello chat", 2.0)]
    rows += [("once_banned", "ch-2", "hello chat", 3.0)]
    reports += [("once_reported", "report", "r1", "troll"), ("once_reported", "report", "r2", "spam")]
    reports += [("once_banned", "ban", "mod1", "troll")]
    events = Events.from_frames({"chat": chat(rows), "moderation": moderation(reports)})
    detector = TrollDetector()
    features = detector.features(events)
    scores = detector.fit(features).score(features).set_index("user_id")
    assert detector.metrics["user_views"] == "fitted"
    assert scores.loc["once_reported", "score"] > scores.loc["once_quiet", "score"]
    assert scores.loc["once_reported", "status"].startswith("low evidence: 1 chat message")
    assert scores.loc["once_reported", "reasons"][0].text == "reported by 2 users"
    assert scores.loc["once_banned", "score"] > scores.loc["once_quiet", "score"]
    ban = scores.loc["once_banned", "reasons"][0]
    assert (ban.feature, ban.value) == ("mod_sanction_severity", 3.0)
    assert ban.text == "1 moderator sanction, severity 3 (a warning 1, a timeout 2, a ban 3)"
