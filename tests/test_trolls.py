"""Troll detection: the paper's mode by hand, context features on hand-made chat, raids, quality floors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from argus.cli import app
from argus.detectors.chat_features import chat_context_features
from argus.detectors.events import Events
from argus.detectors.trolls import SCORED_FEATURES, USER_VIEWS, TrollDetector, find_raids, paper_scores
from argus.evals.common import world_events as events_of
from argus.world.config import WorldConfig
from argus.world.simulate import World

T0 = pd.Timestamp("2026-10-01T12:00:00Z")


def chat(rows: list[tuple[str, str, str, float]], mode: str | None = None) -> pd.DataFrame:
    """(user, channel, text, seconds after T0) rows as a chat frame."""
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(rows))],
            "user_id": [r[0] for r in rows],
            "context": [r[1] for r in rows],
            "text": [r[2] for r in rows],
            "ts": [T0 + pd.Timedelta(seconds=r[3]) for r in rows],
            "channel_mode": [mode] * len(rows),
        }
    )


def test_paper_scores_by_hand() -> None:
    # Mean (1, 1); squared distances 2, 0, 2, 8 -> min-max over 0..8.
    data = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])[:, [0, 1]]
    data[3] = [3.0, 3.0]
    data[1] = [1.0, 1.0]
    mean = data.mean(axis=0)
    expected = ((data - mean) ** 2).sum(axis=1)
    expected = (expected - expected.min()) / (expected.max() - expected.min()) * 100
    assert np.allclose(paper_scores(data), expected)
    # k-th neighbour on a line 0, 1, 2, 10 with k=1: squared gaps 1, 1, 1, 64 -> 0, 0, 0, 100.
    line = np.array([[0.0], [1.0], [2.0], [10.0]])
    assert np.allclose(paper_scores(line, "knn", k=1), [0, 0, 0, 100])
    assert np.allclose(paper_scores(np.ones((3, 2))), 0)
    with pytest.raises(ValueError, match="centroid' or 'knn'"):
        paper_scores(line, "median")


def test_context_features_by_hand() -> None:
    # One 10-minute window in ch-a: "gg" in three messages (top 1), "pog" in two (top 2), "trash" once.
    frame = chat(
        [
            ("u1", "ch-a", "gg pog", 0),
            ("u1", "ch-a", "gg", 10),
            ("u2", "ch-a", "gg pog", 20),
            ("u3", "ch-a", "YOU TRASH", 30),
            ("u3", "ch-a", "YOU TRASH", 40),
            ("u3", "ch-a", "see www.spam.shop", 50),
        ]
    )
    f = chat_context_features(frame)
    assert list(f.index) == ["u1", "u2", "u3"]
    assert f.loc["u1", "chat_top1_share"] == 1.0
    # u3: terms you/trash (two messages, counted twice each), see/www/spam/shop once: none in the top 1.
    assert f.loc["u3", "chat_top1_share"] == 0.0
    assert f.loc["u3", "chat_caps_ratio"] == pytest.approx(2 / 3)
    assert f.loc["u3", "chat_hostile_ratio"] == pytest.approx(2 / 3)
    assert f.loc["u3", "chat_link_ratio"] == pytest.approx(1 / 3)
    # Spam: the link, plus the second copy of the same text in the same window.
    assert f.loc["u3", "chat_spam_ratio"] == pytest.approx(2 / 3)
    assert f.loc["u3", "chat_repetition"] == pytest.approx(1 - 2 / 3)
    assert f.loc["u1", "chat_messages"] == 2
    # Window norm: 2, 1, 3 messages (mean 2) -> u2 posts at 0.5 of the norm.
    assert f.loc["u2", "chat_rate_vs_window"] == pytest.approx(0.5)
    # Gaps of u3: 10 s, 10 s -> sd 0, burstiness -1.
    assert f.loc["u3", "chat_burstiness"] == pytest.approx(-1.0)


def test_plays_mode_features() -> None:
    frame = chat(
        [("u1", "plays-0", "start", 0), ("u1", "plays-0", "anarchy", 5), ("u1", "plays-0", "up", 9)], "anarchy"
    )
    f = chat_context_features(frame)
    assert f.loc["u1", "chat_start_share"] == pytest.approx(1 / 3)
    assert f.loc["u1", "chat_anarchy_vote_share"] == pytest.approx(1 / 3)
    assert f.loc["u1", "chat_anarchy_mode_share"] == 1.0


def test_low_evidence_users_are_scored_on_shrunk_features(small_world: World) -> None:
    events = events_of(small_world)
    detector = TrollDetector(min_messages=20)
    features = detector.features(events)
    scores = detector.fit(features).score(features).set_index("user_id")
    quiet = features.index[(features["chat_messages"] > 0) & (features["chat_messages"] < 20)]
    assert len(quiet) > 0
    assert scores.loc[quiet, "score"].notna().all()
    assert scores.loc[quiet, "status"].str.startswith("low evidence: ").all()
    # The norms are unchanged: they come from the users with 20 messages or more only (the
    # three-view model learns from every user with a score and is left out of the comparison).
    evidenced = features[features["chat_messages"] >= 20]
    assert detector.metrics["users_fitted"] == len(evidenced)
    alone = TrollDetector(min_messages=20).fit(evidenced)
    assert alone.state is not None and detector.state is not None
    np.testing.assert_equal(
        {k: v for k, v in alone.state.items() if k != USER_VIEWS},
        {k: v for k, v in detector.state.items() if k != USER_VIEWS},
    )
    silent = features.index[features["chat_messages"] == 0]
    assert scores.loc[silent, "score"].isna().all() and (scores.loc[silent, "status"] == "no chat messages").all()


def test_one_chat_message_gets_a_shrunk_score_and_a_status_naming_it() -> None:
    # 20 regulars of one channel fit the norm; "once" writes one all-caps message.
    rows = [(f"r{u:02d}", "ch-a", "gg pog nice", 60.0 * i + u) for u in range(20) for i in range(20)]
    rows.append(("once", "ch-a", "YOU ALL TRASH", 30.0))
    frame = chat(rows)
    detector = TrollDetector(min_messages=20, prior_messages=20.0)
    features = detector.features(Events({"chat": frame}))
    scores = detector.fit(features).score(features).set_index("user_id")
    assert scores.loc["once", "status"] == "low evidence: 1 chat message (norms are fit on users with ≥ 20)"
    # Every regular is the median user (no deviation, score 0); the caps share of "once" (1.0)
    # counts as 0 + 1 / (1 + 20) * (1.0 - 0), in units of the floored spread 1e-3, capped at 4.
    state = detector.state
    assert state is not None
    values = features.loc[["once"], list(SCORED_FEATURES)].to_numpy(dtype=float)
    shrunk = detector.shrink(values, np.array([1.0]), state)
    caps = list(SCORED_FEATURES).index("chat_caps_ratio")
    assert shrunk[0, caps] == pytest.approx(1 / 21)
    assert np.isnan(values[0, list(SCORED_FEATURES).index("chat_burstiness")])  # one message: no gap
    assert np.isfinite(scores.loc["once", "score"]) and scores.loc["once", "score"] > 0
    assert (scores.drop(index="once")["status"] == "scored").all()


def test_trolls_rank_above_normal_users(small_world: World) -> None:
    events = events_of(small_world)
    detector = TrollDetector()
    features = detector.features(events)
    scores = detector.fit(features).score(features).set_index("user_id")
    scored = scores[scores["status"] == "scored"]
    from sklearn.metrics import roc_auc_score

    trolls = small_world.pop.user_id[small_world.pop.is_troll]
    y = scored.index.isin(trolls)
    assert y.sum() >= 5
    assert roc_auc_score(y, scored["score"]) >= 0.9
    # With the low-evidence users (shrunk toward the norm, so ranked lower) it stays high.
    everyone = scores[scores["score"].notna()]
    assert roc_auc_score(everyone.index.isin(trolls), everyone["score"]) >= 0.85
    flagged = scored[scored["flagged"]]
    assert flagged.index.isin(trolls).mean() >= 0.6
    top = flagged.iloc[0]
    assert top["reasons"] and "(norm " in top["reasons"][0].text


def test_refit_reports_relabelled_users() -> None:
    detector = TrollDetector(min_messages=1)
    before = pd.DataFrame({"user_id": ["a", "b", "c"], "flagged": [True, False, False]})
    after = pd.DataFrame({"user_id": ["a", "b", "d"], "flagged": [True, True, False]})
    changed = detector.relabelled(before, after)
    assert changed.to_dict("records") == [{"user_id": "b", "was": False, "now": True}]


def test_raid_is_found_as_one_group() -> None:
    rng = np.random.default_rng(0)
    rows = []
    # 40 regulars chatting about the channel's topic all day; 6 raiders flood it for 5 minutes.
    topic = ["boss", "fight", "heal", "tank", "loot", "raid", "pull", "wipe"]
    for user in range(40):
        for t in rng.uniform(0, 6 * 3600, 20):
            words = rng.choice(topic, 3)
            rows.append((f"reg{user:02d}", "ch-a", " ".join(words), float(t)))
    for user in range(6):
        for t in rng.uniform(3 * 3600, 3 * 3600 + 300, 10):
            rows.append((f"raider{user}", "ch-a", "UNINSTALL THE GAME", float(t)))
    raids = find_raids(chat(rows))
    assert len(raids) == 1
    assert raids[0].members == [f"raider{u}" for u in range(6)]
    assert raids[0].channel == "ch-a"
    assert raids[0].rate_vs_norm > 4
    assert find_raids(chat([])) == []


def test_raid_in_a_quiet_channel_is_found_though_it_fills_the_whole_window() -> None:
    # A channel with a few messages an hour; six new accounts flood it for five minutes and are the
    # only senders of that window, so the window's own median is the raid's (no burst against it).
    rng = np.random.default_rng(2)
    rows = []
    topic = ["boss", "fight", "heal", "tank", "loot", "raid", "pull", "wipe"]
    for user in range(12):
        for t in rng.uniform(0, 12 * 3600, 4):
            rows.append((f"reg{user:02d}", "quiet", " ".join(rng.choice(topic, 3)), float(t)))
    rows = [r for r in rows if not 6 * 3600 - 900 <= r[3] <= 6 * 3600 + 1800]  # the raid's windows hold nobody else
    for user in range(6):
        for t in rng.uniform(6 * 3600, 6 * 3600 + 300, 8):
            rows.append((f"raider{user}", "quiet", "you all suck", float(t)))
    raids = find_raids(chat(rows))
    assert [r.members for r in raids] == [[f"raider{u}" for u in range(6)]]
    assert raids[0].channel == "quiet" and raids[0].rate_vs_norm >= 4


def test_raid_recall_on_a_world_with_raids() -> None:
    world = World(WorldConfig(users=600, days=2, seed=5, events_per_user_day=40.0, raid_groups=4, profile="dense"))
    raids = find_raids(events_of(world)["chat"])
    truth = [set(world.pop.user_id[r.members]) for r in world.pop.raids]
    found = [any(len(t & set(g.members)) > len(t) / 2 for g in raids) for t in truth]
    assert sum(found) >= 3
    right = [any(len(t & set(g.members)) > len(g.members) / 2 for t in truth) for g in raids]
    assert np.mean(right) >= 0.75


def test_paper_command(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    values = rng.random((50, 10)) * 0.1
    values[:3] += 0.8
    frame = pd.DataFrame(values, columns=[f"f{i}" for i in range(1, 11)])
    frame.insert(0, "user", [f"u{i}" for i in range(50)])
    path = tmp_path / "features.csv"
    frame.to_csv(path, index=False)
    result = CliRunner().invoke(app, ["trolls", "paper", str(path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    expected = int((paper_scores(values) > 40).sum())
    assert out == {"users": 50, "flagged": expected, "fraction": expected / 50, "threshold": 40.0, "method": "centroid"}
    assert expected == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("f1,f2,f3\n1,2,3\n", "missing column f4"),
        ("f2,f1,f3,f4,f5,f6,f7,f8,f9,f10\n" + ",".join("0" * 10) + "\n", "in that order"),
        ("f1,f2,f3,f4,f5,f6,f7,f8,f9,f10\n0,0,0,0,0,0,x,0,0,0\n", "row 2, column f7: 'x' is not a number"),
        ("f1,f2,f3,f4,f5,f6,f7,f8,f9,f10\n", "no rows"),
        ("", "empty file"),
    ],
)
def test_paper_command_bad_csv(tmp_path: Path, content: str, message: str) -> None:
    from argus.detect import paper_mode

    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        paper_mode(path, "centroid", 5, 40.0)


def test_incremental_state_equals_the_batch_features(small_world: World) -> None:
    from argus.detectors.chat_features import ChatContextState

    chat = events_of(small_world)["chat"]
    batch = chat_context_features(chat)
    state = ChatContextState()
    hour = chat["ts"].dt.floor("h")  # whole 10-minute windows per batch, in event-time order
    for _, part in chat.groupby(hour, sort=True):
        state.add(part)
    streamed = state.features()
    pd.testing.assert_index_equal(streamed.index, batch.index)
    for column in batch.columns:
        assert np.allclose(streamed[column], batch[column], equal_nan=True, atol=1e-9), column


@pytest.mark.parametrize("method", ["centroid", "knn"])
def test_context_scores_equal_the_detectors_score_without_its_frames(method: str, small_world_events: Events) -> None:
    """The firing's one-array scoring gives ``TrollDetector.score``'s scores, flags and flagged rows' reasons,
    for scored, low-evidence (burstiness undefined or not), incomplete and message-less rows alike."""
    from argus.detectors.chat_features import FEATURE_COLUMNS
    from argus.detectors.trolls import MESSAGE_COLUMNS

    features = chat_context_features(small_world_events["chat"])[FEATURE_COLUMNS]
    detector = TrollDetector(method=method).fit(features)
    rows = features.head(300).copy()
    need = detector.params["min_messages"]
    rows.iloc[0:20, rows.columns.get_loc("chat_messages")] = 1.0  # low evidence
    rows.iloc[20:40, rows.columns.get_loc("chat_messages")] = float(need - 1)
    rows.iloc[10:30, rows.columns.get_loc("chat_burstiness")] = np.nan  # undefined for few messages: still scored
    rows.iloc[40:50, rows.columns.get_loc("chat_messages")] = 0.0
    rows.iloc[50:60, rows.columns.get_loc("chat_top3_share")] = np.nan  # incomplete: not scored
    expected = detector.score(rows)
    fast = detector.context_scores(rows)
    assert fast is not None
    np.testing.assert_array_equal(fast.score, expected["score"].to_numpy(dtype=float))
    np.testing.assert_array_equal(fast.flagged, expected["flagged"].to_numpy())
    flagged = np.flatnonzero(fast.flagged).tolist()
    assert flagged and sorted(fast.reasons) == flagged
    assert [fast.reasons[i] for i in flagged] == [expected["reasons"].iloc[i] for i in flagged]
    low = expected["status"].str.startswith("low evidence").to_numpy()
    assert low[0:40].all() and np.isfinite(fast.score[0:40]).all() and np.isnan(fast.score[40:60]).all()
    with_messages = rows.assign(**{column: 0.0 for column in MESSAGE_COLUMNS})
    assert detector.context_scores(with_messages) is None  # the message mode needs ``score`` itself
