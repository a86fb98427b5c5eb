"""Ban evasion: username and pair features by hand, candidate sets, out-of-sample quality, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from argus.cli import app
from argus.detectors.evaders import (
    FINGERPRINTS_ONLY,
    MIN_MATCHED,
    PAIR_FEATURES,
    SAMPLED_ONE_IN,
    SPECIFIC_MATCH,
    EvaderDetector,
    account_profiles,
    accounts_per_fingerprint,
    candidate_pairs,
    name_core,
    name_similarity,
    pair_features,
    sample_new_accounts,
)
from argus.detectors.events import Events
from argus.evals.common import world_events as events_of
from argus.evals.evaders import first_actions
from argus.world.config import WorldConfig
from argus.world.simulate import World
from argus.world.sinks import write_world

T0 = pd.Timestamp("2026-10-01T00:00:00Z")


@pytest.mark.parametrize(
    ("name", "core"),
    [
        ("th3_m1l0_kn1ght", "miloknight"),
        ("the_milo_knight", "miloknight"),
        ("xblazex4764", "blaze"),
        ("leo_hawk_again", "leohawk"),
        ("notivy_moon", "ivymoon"),
        ("remy", "remy"),
    ],
)
def test_name_core(name: str, core: str) -> None:
    assert name_core(name) == core


def test_name_similarity_by_hand() -> None:
    same = name_similarity("the_milo_knight", "th3_m1l0_kn1ght")
    assert same["name_core_similarity"] == 1.0
    assert same["name_contains"] == 1.0
    # "abc" vs "abd": 3-grams of ^abc$ {^ab, abc, bc$} and ^abd$ {^ab, abd, bd$}: 1 shared of 5.
    assert name_similarity("abc", "abd")["name_ngram_jaccard"] == pytest.approx(1 / 5)
    unrelated = name_similarity("nova_pilot", "zed")
    assert unrelated["name_contains"] == 0.0
    assert unrelated["name_core_similarity"] < 0.3


def _account(
    user: str, action: str, seconds: float, username: str, device: str = "aa00", network: str = "bb00"
) -> dict:
    return {
        "event_id": f"{user}-{action}-{seconds}",
        "ts": T0 + pd.Timedelta(seconds=seconds),
        "user_id": user,
        "session_id": None,
        "context": "web",
        "schema_version": 1,
        "event_type": "account",
        "action": action,
        "username": username,
        "previous_username": None,
        "device_fp": device,
        "network_fp": network,
        "reason": None,
    }


def _chat(user: str, seconds: float, text: str, channel: str = "ch-1") -> dict:
    return {
        "event_id": f"{user}-chat-{seconds}",
        "ts": T0 + pd.Timedelta(seconds=seconds),
        "user_id": user,
        "session_id": None,
        "context": channel,
        "schema_version": 1,
        "event_type": "chat",
        "text": text,
        "channel_mode": None,
        "reply_to": None,
    }


def _hand_events() -> Events:
    accounts = [
        _account("p1", "login", 0, "stormrider", "d1", "n1"),
        _account("p1", "ban", 1000, "stormrider"),
        _account("p2", "login", 0, "quietfox", "d2", "n2"),
        _account("p2", "ban", 2000, "quietfox"),
        _account("p3", "login", 0, "latebird", "d3", "n3"),
        _account("p3", "ban", 9000, "latebird"),
        _account("c1", "signup", 3000 + 3600, "st0rmrider_back", "d1", "n9"),
    ]
    chats = [
        _chat("p1", 10, "that boss fight was rigged"),
        _chat("c1", 7000, "that boss fight was rigged again"),
        _chat("p2", 20, "hello friends", "ch-2"),
    ]
    return Events({"account": pd.DataFrame(accounts), "chat": pd.DataFrame(chats)})


def test_a_new_account_with_no_earlier_ban_scores_zero_with_low_evidence() -> None:
    events = _hand_events()
    early = _account("e1", "signup", 500, "first_comer", "d7", "n7")  # before any ban
    events = Events({"account": pd.concat([events["account"], pd.DataFrame([early])]), "chat": events["chat"]})
    detector = EvaderDetector()
    features = detector.features(events)
    scores = detector.fit(features).score(features).set_index("user_id")
    assert scores.loc["e1", "status"] == "low evidence: no account was banned before this one was created"
    assert scores.loc["e1", "score"] == 0.0 and not scores.loc["e1", "flagged"]
    assert scores.loc["c1", "status"] == "scored" and np.isfinite(scores.loc["c1", "score"])
    assert scores.loc["p1", "status"] == "not a new account: no sign-up in these events"
    assert np.isnan(scores.loc["p1", "score"])


def test_profiles_and_candidates_by_hand() -> None:
    profiles = account_profiles(_hand_events())
    assert profiles.loc["c1", "created_ts"] == T0 + pd.Timedelta(seconds=6600)
    assert pd.isna(profiles.loc["p1", "created_ts"])
    assert profiles.loc["p1", "banned_ts"] == T0 + pd.Timedelta(seconds=1000)
    assert profiles.loc["c1", "devices"] == frozenset({"d1"})
    # Only accounts banned before c1 was created are candidates; the closest first when limited.
    pairs = candidate_pairs(profiles, candidates=50, retrieved=0)
    assert pairs.to_dict("records") == [{"child": "c1", "parent": "p1"}, {"child": "c1", "parent": "p2"}]
    assert candidate_pairs(profiles, candidates=1, retrieved=0)["parent"].tolist() == ["p2"]
    x = pair_features(profiles, pairs).set_index(pairs["parent"])
    assert x.loc["p1", "shared_device"] == 1.0 and x.loc["p2", "shared_device"] == 0.0
    assert x.loc["p1", "shared_network"] == 0.0
    assert x.loc["p1", "channel_cosine"] == 1.0 and x.loc["p2", "channel_cosine"] == 0.0
    assert x.loc["p1", "hours_after_ban_log"] == pytest.approx(np.log1p((6600 - 1000) / 3600))
    assert x.loc["p1", "content_cosine"] > 0.5 > x.loc["p2", "content_cosine"]
    assert x.loc["p1", "name_core_similarity"] == 1.0


def test_a_network_many_accounts_share_is_weak_evidence() -> None:
    """A carrier NAT address used by twelve accounts says little; a home router of two says a lot."""
    events = _hand_events()
    # p2 and c1 are both behind a carrier NAT address that ten other accounts also use.
    nat = [_account(f"m{i}", "login", 100 + i, f"mobile{i}", f"dm{i}", "nat1") for i in range(10)]
    nat += [
        _account("p2", "login", 50, "quietfox", "d2", "nat1"),
        _account("c1", "login", 6700, "st0rmrider_back", "d1", "nat1"),
    ]
    events = Events({"account": pd.concat([events["account"], pd.DataFrame(nat)]), "chat": events["chat"]})
    profiles = account_profiles(events)
    pairs = pd.DataFrame({"child": ["c1", "c1"], "parent": ["p1", "p2"]})
    x = pair_features(profiles, pairs).set_index(pairs["parent"])
    assert x.loc["p2", "shared_network"] == pytest.approx(1 / 11)  # 12 accounts on nat1: 1 in 11 others
    assert x.loc["p1", "shared_device"] == 1.0  # d1: only p1 and c1
    detector = EvaderDetector()
    features = detector.features(events)
    reasons = detector.fit(features).score(features).set_index("user_id").loc["c1", "reasons"]
    assert "same network" not in [r.text for r in reasons]


def test_first_actions_keeps_signup_and_three_events() -> None:
    events = _hand_events()
    more = [_chat("c1", 7000 + i, f"message {i}") for i in range(1, 6)]
    events.frames["chat"] = pd.concat([events["chat"], pd.DataFrame(more)], ignore_index=True)
    early = first_actions(events, 3)
    assert len(early["chat"][early["chat"]["user_id"] == "c1"]) == 3
    assert (early["account"]["user_id"] == "c1").sum() == 1
    assert len(early["chat"][early["chat"]["user_id"] == "p1"]) == 1


EVASIVE = dict(users=900, days=4, events_per_user_day=25.0, troll_fraction=0.12, profile="dense")


@pytest.fixture(scope="module")
def trained() -> EvaderDetector:
    world = World(WorldConfig(seed=21, **EVASIVE))  # type: ignore[arg-type]
    detector = EvaderDetector()
    features = detector.features(events_of(world))
    labels = pd.Series(
        world.pop.user_id[world.pop.parent[world.pop.parent >= 0]], index=world.pop.user_id[world.pop.parent >= 0]
    )
    return detector.fit(features, labels)


def test_children_are_detected_and_matched_out_of_sample(trained: EvaderDetector) -> None:
    world = World(WorldConfig(seed=22, **EVASIVE))  # type: ignore[arg-type]
    features = trained.features(events_of(world))
    scores = trained.score(features).set_index("user_id")
    new = scores[scores["score"].notna()]
    children = set(world.pop.user_id[world.pop.parent >= 0])
    y = new.index.isin(children)
    assert y.sum() >= 8
    assert roc_auc_score(y, new["score"]) >= 0.9
    matches = trained.match(features)
    best = matches[matches["rank"] == 1].set_index("child")["parent"]
    parent_of = dict(
        zip(
            world.pop.user_id[world.pop.parent >= 0],
            world.pop.user_id[world.pop.parent[world.pop.parent >= 0]],
            strict=True,
        )
    )
    present = features.index[features["created_ts"].notna()]
    right = [best.get(c) == p for c, p in parent_of.items() if c in present]  # some sign up after the world ends
    assert len(right) >= 8
    assert np.mean(right) >= 0.9
    assert trained.metrics["supervision"] == "labels"


def test_unsupervised_fit_learns_from_fingerprint_matches() -> None:
    world = World(WorldConfig(seed=23, **EVASIVE))  # type: ignore[arg-type]
    detector = EvaderDetector()
    features = detector.features(events_of(world))
    scores = detector.fit(features).score(features).set_index("user_id")
    assert detector.metrics["supervision"] == "shared fingerprints"
    assert not {"shared_device", "shared_network"} & set(detector.metrics["coefficients"])
    new = scores[scores["score"].notna()]
    y = new.index.isin(world.pop.user_id[world.pop.parent >= 0])
    assert roc_auc_score(y, new["score"]) >= 0.8


def test_the_model_is_fitted_on_one_thread_whatever_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """BLAS and OpenMP group their sums by the thread count: a fit on a two-core driver gave another model
    version than on one core. The fit runs on one thread, whatever the process offers."""
    from threadpoolctl import threadpool_info, threadpool_limits

    import argus.detectors.evaders as evaders

    features = EvaderDetector().features(events_of(World(WorldConfig(seed=23, **EVASIVE))))  # type: ignore[arg-type]
    threads: list[int] = []
    original = evaders.fit_pair_model

    def fit_pair_model(*args: Any, **kwargs: Any) -> Any:
        threads.extend(pool["num_threads"] for pool in threadpool_info())
        return original(*args, **kwargs)

    monkeypatch.setattr(evaders, "fit_pair_model", fit_pair_model)
    with threadpool_limits(2):  # as a two-core driver offers
        two_cores = EvaderDetector().fit(features)
    assert two_cores.metrics["model"] == "logistic regression" and threads and set(threads) == {1}
    with threadpool_limits(1):
        assert EvaderDetector().fit(features).model_version == two_cores.model_version


def _fingerprint_matched(detector: EvaderDetector, features: pd.DataFrame) -> pd.Series:
    """Per new account with a candidate parent: does a specific device or network match tie it to a banned one?"""
    pairs = detector.match(features)
    on_fingerprint = pairs[["shared_device", "shared_network"]].max(axis=1) >= SPECIFIC_MATCH
    return on_fingerprint.groupby(pairs["child"]).any()


@pytest.mark.parametrize(
    ("config", "binding"),
    [
        # Sparse and heavy-tailed: 19 of 877 new accounts matched; the taught pairs' 20th percentile
        # flagged 589 of them. The share binds.
        (dict(users=12_000, days=10, seed=7), "share"),
        # Dense: fewer of the others than that share are as likely as most matched pairs. The floor binds.
        (dict(seed=21, **EVASIVE), "floor"),
    ],
)
def test_unsupervised_fit_flags_the_fingerprint_share_floored_at_the_matched_pairs(
    config: dict[str, Any], binding: str
) -> None:
    """Without labels the model flags at most the share of the other new accounts that fingerprint
    matches tie to a banned account, and none whose best pair is less likely (model probability,
    fingerprints left out) than the 20th percentile of the matched pairs."""
    detector = EvaderDetector()
    features = detector.features(events_of(World(WorldConfig(**config))))  # type: ignore[arg-type]
    detector.fit(features)
    matched = _fingerprint_matched(detector, features)
    assert matched.sum() >= MIN_MATCHED
    assert detector.metrics["flag_rate"] == matched.mean()
    pairs, x = detector.pairs(features)
    state: dict[str, Any] = detector.state  # type: ignore[assignment]
    probability = pd.Series(state["model"].predict_proba(x[state["columns"]].to_numpy())[:, 1])
    on_fingerprint = x[["shared_device", "shared_network"]].max(axis=1) >= SPECIFIC_MATCH
    floor = np.quantile(probability[on_fingerprint], 0.2)
    best = probability.groupby(pairs["child"]).max()
    scores = detector.score(features).set_index("user_id")
    assert scores.loc[matched.index[matched], "flagged"].all()
    others = matched.index[~matched]
    flagged = others[scores.loc[others, "flagged"].to_numpy(dtype=bool)]
    share = int(np.ceil(matched.mean() * len(others)))
    assert 0 < len(flagged) <= share
    assert (best[flagged] >= floor).all()
    assert (len(flagged) == share) == (binding == "share")


@pytest.mark.parametrize("kept", [1, 5])
def test_unsupervised_fit_with_few_fingerprint_matches_flags_only_them(kept: int) -> None:
    """Fewer than ``MIN_MATCHED`` matched new accounts set no threshold for the model: the matches are
    flagged, every other new account scores below 0.5 and the scores still rank them."""
    features = EvaderDetector().features(events_of(World(WorldConfig(seed=23, **EVASIVE))))  # type: ignore[arg-type]
    taught = _fingerprint_matched(EvaderDetector().fit(features), features)
    dropped = taught.index[taught][kept:]  # these new accounts come on fresh devices and networks
    for column in ("devices", "networks"):
        empty = pd.Series([frozenset()] * len(features), index=features.index)
        features[column] = features[column].where(~features.index.isin(dropped), empty)
    detector = EvaderDetector().fit(features)
    matched = _fingerprint_matched(detector, features)
    assert matched.sum() == kept < MIN_MATCHED
    assert detector.metrics["operating_point"] == FINGERPRINTS_ONLY
    scores = detector.score(features).set_index("user_id")
    assert set(scores.index[scores["flagged"]]) == set(matched.index[matched])
    others = scores.loc[matched.index[~matched], "score"]
    assert (others < 0.5).all() and others.nunique() > 1


def test_detect_command_with_jsonl_and_a_bad_line(tmp_path: Path) -> None:
    world = World(WorldConfig(users=300, days=2, seed=4, events_per_user_day=20.0, troll_fraction=0.2, profile="dense"))
    write_world(world, tmp_path / "w", "jsonl")
    lines = b"".join(p.read_bytes() for p in sorted((tmp_path / "w" / "events").rglob("*.jsonl")))
    events = tmp_path / "events.jsonl"
    events.write_bytes(lines + b'{"event_type": "chat", "oops": 1}\n')
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(app, ["detect", "evaders", "--events", str(events), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["rejected_events"] == 1
    rejected = [json.loads(line) for line in Path(summary["rejected_out"]).read_text().splitlines()]
    assert rejected[0]["reason_code"] in ("missing_field", "unexpected_field")
    table = pd.read_csv(out)
    assert list(table.columns) == ["user_id", "score", "flagged", "status", "reasons"]
    assert len(table) == summary["users"]
    assert table.loc[table["score"].isna(), "status"].str.len().gt(0).all()


def test_detect_command_user_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["detect", "gremlins", "--events", str(tmp_path), "--out", str(tmp_path / "o.csv")])
    assert result.exit_code != 0
    from argus.cli import UserError

    assert isinstance(result.exception, UserError) and "unknown detector" in str(result.exception)
    result = runner.invoke(
        app, ["detect", "trolls", "--events", str(tmp_path / "none"), "--out", str(tmp_path / "o.csv")]
    )
    assert isinstance(result.exception, UserError) and "no events at" in str(result.exception)


def test_psycholinguistic_profile_by_hand() -> None:
    from argus.detectors.evaders import PSYCHOLINGUISTIC_CATEGORIES, psycholinguistic_profile

    chat = pd.DataFrame(
        [_chat("a", 0, "I love this, you know"), _chat("a", 1, "no way"), _chat("b", 2, "why so stupid")]
    )
    profile = psycholinguistic_profile(chat)
    names = list(PSYCHOLINGUISTIC_CATEGORIES)
    a = dict(zip(names, profile["a"], strict=True))
    # Two messages: "i" once, "you" once, "love" (positive) once, "no" (negation) once -> 0.5 each.
    assert a["i"] == a["you"] == a["positive"] == a["negation"] == 0.5
    assert a["anger"] == 0.0
    b = dict(zip(names, profile["b"], strict=True))
    assert b["anger"] == 1.0 and b["question"] == 1.0
    assert psycholinguistic_profile(chat.iloc[:0]).empty


# The pair features as they were computed one pair at a time (dict and set lookups per pair): the
# reference the array version must reproduce.
def _reference_pair_features(
    profiles: pd.DataFrame, pairs: pd.DataFrame, fingerprint_accounts: tuple[dict, dict] | None = None
) -> pd.DataFrame:
    from sklearn.feature_extraction.text import TfidfVectorizer

    involved = pd.Index(pd.unique(pd.concat([pairs["child"], pairs["parent"]])))
    sub = profiles.loc[involved]
    position = {u: i for i, u in enumerate(involved)}
    ci = np.array([position[c] for c in pairs["child"]])
    pi = np.array([position[p] for p in pairs["parent"]])
    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=1, ngram_range=(1, 2), max_features=50_000)
    text = tfidf.fit_transform(sub["text"].to_numpy())
    content = np.asarray(text[ci].multiply(text[pi]).sum(axis=1)).ravel()
    device_users, network_users = fingerprint_accounts or accounts_per_fingerprint(profiles)

    def specificity(shared: frozenset, accounts: dict) -> float:
        return max((1.0 / max(accounts.get(f, 2) - 1, 1) for f in shared), default=0.0)

    def cosine(a: dict, b: dict) -> float:
        if not a or not b:
            return 0.0
        dot = sum(v * b.get(k, 0) for k, v in a.items())
        return float(dot / (np.sqrt(sum(v * v for v in a.values())) * np.sqrt(sum(v * v for v in b.values()))))

    def vector_cosine(a: object, b: object) -> float:
        if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
            return 0.0
        norm = float(np.linalg.norm(a) * np.linalg.norm(b))
        return float(a @ b / norm) if norm > 0 else 0.0

    def style(p: pd.Series, c: pd.Series) -> float:
        if not (p["messages"] > 0 and c["messages"] > 0):
            return 0.0
        caps = abs(p["caps_ratio"] - c["caps_ratio"])
        length = abs(p["message_length"] - c["message_length"]) / max(p["message_length"], c["message_length"], 1.0)
        value = 1.0 - (caps + length) / 2
        return float(value) if np.isfinite(value) else 0.0

    rows = []
    for child, parent in zip(pairs["child"], pairs["parent"], strict=True):
        c, p = sub.loc[child], sub.loc[parent]
        hours = (c["created_ts"] - p["banned_ts"]).total_seconds() / 3600
        rows.append(
            {
                **name_similarity(p["username"], c["username"]),
                "channel_cosine": cosine(p["channels"], c["channels"]),
                "page_jaccard": len(p["pages"] & c["pages"]) / len(p["pages"] | c["pages"])
                if p["pages"] or c["pages"]
                else 0.0,
                "style_similarity": style(p, c),
                "psycholinguistic_similarity": vector_cosine(p["psycholinguistic"], c["psycholinguistic"]),
                "hours_after_ban_log": float(np.log1p(max(hours, 0.0))),
                "shared_device": specificity(p["devices"] & c["devices"], device_users),
                "shared_network": specificity(p["networks"] & c["networks"], network_users),
            }
        )
    out = pd.DataFrame(rows)
    out["content_cosine"] = content
    return out[PAIR_FEATURES].astype(float)


@pytest.fixture(scope="module")
def realistic_profiles() -> pd.DataFrame:
    """A small realistic world's profiles, a few usernames salted-hashed as ``[privacy] hash_fields`` stores them."""
    profiles = account_profiles(events_of(World(WorldConfig(users=3000, days=2, seed=5))))
    hashed = profiles.index[::40]
    profiles.loc[hashed, "username"] = [f"{i:032x}" for i in range(len(hashed))]
    profiles.loc[hashed[:3], "username"] = f"{7:032x}"  # the same digest: equal hashed names match
    return profiles


@pytest.mark.parametrize("world", ["realistic", "dense"])
def test_pair_features_equal_the_pair_by_pair_computation(world: str, realistic_profiles: pd.DataFrame) -> None:
    if world == "dense":  # everyone chats and clicks: every feature takes many values
        config = WorldConfig(users=600, days=3, seed=5, events_per_user_day=25.0, troll_fraction=0.12, profile="dense")
        profiles = account_profiles(events_of(World(config)))
    else:
        profiles = realistic_profiles
    pairs = candidate_pairs(profiles)
    # Accounts the night does not know on a device count as two (the pair's own); some counts are given.
    devices, networks = accounts_per_fingerprint(profiles)
    partial = (dict(list(devices.items())[::2]), {f: n + 3 for f, n in networks.items()})
    for counts in (None, partial):
        expected = _reference_pair_features(profiles, pairs, counts)
        got = pair_features(profiles, pairs, counts)
        assert list(got.columns) == PAIR_FEATURES and len(got) == len(pairs) > 900
        for column in PAIR_FEATURES:
            assert world == "realistic" or (expected[column] != 0).sum() >= 5, column  # every feature is exercised
            if column in ("psycholinguistic_similarity", "hours_after_ban_log"):  # a dot product's rounding
                np.testing.assert_allclose(got[column], expected[column], rtol=1e-12, atol=1e-12, err_msg=column)
            else:
                np.testing.assert_array_equal(got[column], expected[column], err_msg=column)
    hashed = pairs["child"].map(profiles["username"]).str.fullmatch("[0-9a-f]{32}")
    assert world == "dense" or hashed.any()


def test_candidate_pairs_equal_the_child_by_child_computation(realistic_profiles: pd.DataFrame) -> None:
    profiles = realistic_profiles
    children = profiles[profiles["created_ts"].notna()]
    ban_order = profiles["banned_ts"].dropna().sort_values(kind="stable")
    rows = []
    for child, created in children["created_ts"].items():
        before = int(np.searchsorted(ban_order.to_numpy(), created, side="left"))
        rows += [(child, parent) for parent in ban_order.index[max(0, before - 5) : before]]
    expected = pd.DataFrame(rows, columns=["child", "parent"]).sort_values(["child", "parent"], ignore_index=True)
    pd.testing.assert_frame_equal(candidate_pairs(profiles, candidates=5, retrieved=0), expected)
    # Retrieval adds at most ``retrieved`` pairs per child, each with an account banned before the child came.
    more = candidate_pairs(profiles, candidates=5, retrieved=3).merge(expected, how="left", indicator=True)
    extra = more[more["_merge"] == "left_only"]
    assert len(extra) > 0 and extra.groupby("child").size().max() <= 3
    banned = profiles.loc[extra["parent"], "banned_ts"].to_numpy()
    assert (banned < profiles.loc[extra["child"], "created_ts"].to_numpy()).all()


def test_match_for_some_children_equals_their_rows_of_the_whole_match(realistic_profiles: pd.DataFrame) -> None:
    detector = EvaderDetector().fit(realistic_profiles)
    whole = detector.match(realistic_profiles)
    some = sorted(whole["child"].unique())[::7]
    expected = whole[whole["child"].isin(some)].reset_index(drop=True)
    pd.testing.assert_frame_equal(detector.match(realistic_profiles, children=some), expected)


def test_scoring_a_share_of_the_accounts_at_a_time_gives_the_scores_of_all_at_once(
    realistic_profiles: pd.DataFrame,
) -> None:
    """What lets several tasks score one population: each share scored among everyone (its new accounts'
    pairs with every banned account, fingerprints counted over all, words weighed over the accounts of
    every share's pairs) scores as all at once."""
    detector = EvaderDetector().fit(realistic_profiles)
    whole = detector.score(realistic_profiles).set_index("user_id")
    users = [realistic_profiles.index[share::3] for share in range(3)]
    involved = pd.Index(sorted(set().union(*(detector.pair_accounts(realistic_profiles, u) for u in users))))
    shares = [detector.score_accounts(realistic_profiles, users=u, text_accounts=involved) for u in users]
    assert all((share["status"] == "scored").sum() >= 20 for share in shares)  # every share has new accounts paired
    pd.testing.assert_frame_equal(pd.concat(shares).set_index("user_id").loc[whole.index], whole)
    assert whole["flagged"].sum() >= 2  # the two new accounts on a banned account's device or network


def test_a_share_scored_with_the_pairs_found_for_it_finds_none_again(
    realistic_profiles: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pairs that weigh the words (``share_pairs``) are the ones each share's scoring takes: found once."""
    from argus.detectors import evaders

    detector = EvaderDetector().fit(realistic_profiles)
    users = [realistic_profiles.index[share::3] for share in range(3)]
    found = [detector.share_pairs(realistic_profiles, u) for u in users]
    involved = pd.Index(sorted(set().union(*(set(f["child"]) | set(f["parent"]) for f in found))))
    expected = [detector.score_accounts(realistic_profiles, users=u, text_accounts=involved) for u in users]

    def no_search(*args: object, **kwargs: object) -> pd.DataFrame:
        raise AssertionError("candidate pairs searched again")

    monkeypatch.setattr(evaders, "candidate_pairs", no_search)
    for u, pairs, share in zip(users, found, expected, strict=True):
        scored = detector.score_accounts(realistic_profiles, users=u, text_accounts=involved, children_pairs=pairs)
        pd.testing.assert_frame_equal(scored, share)


def test_sample_new_accounts_bounds_pairs_and_keeps_fingerprints_and_candidates(
    realistic_profiles: pd.DataFrame,
) -> None:
    profiles = realistic_profiles
    new = profiles["created_ts"].notna() & profiles["banned_ts"].isna()
    assert sample_new_accounts(profiles, int(new.sum())) is profiles  # within the limit: everyone
    sample = sample_new_accounts(profiles, 40)
    kept = sample["created_ts"].notna() & sample["banned_ts"].isna()
    assert 25 <= kept.sum() <= 60 < new.sum()  # about 40, by user hash
    pd.testing.assert_frame_equal(sample_new_accounts(profiles, 40), sample)  # the same sample every time
    # New accounts whose pairs with a banned account share a specific fingerprint (what an
    # unsupervised fit learns from) are all kept.
    matching = pair_features(profiles, candidate_pairs(profiles))[["shared_device", "shared_network"]].max(axis=1)
    teaching = set(candidate_pairs(profiles)["child"][matching.to_numpy() >= 0.3]) & set(new.index[new])
    assert teaching and teaching <= set(kept.index[kept])
    left_out = new & ~kept
    assert (sample.loc[left_out, "text"] == "").all() and sample.loc[left_out, "pages"].map(len).eq(0).all()
    # Nobody leaves the population: fingerprint counts, banned accounts and the kept accounts are untouched.
    assert accounts_per_fingerprint(sample) == accounts_per_fingerprint(profiles)
    pd.testing.assert_frame_equal(sample[~left_out], profiles[~left_out])
    pairs = candidate_pairs(sample)
    assert set(pairs["child"]) <= set(sample.index[sample["created_ts"].notna()])
    whole = candidate_pairs(profiles)
    pd.testing.assert_frame_equal(pairs, whole[whole["child"].isin(pairs["child"])].reset_index(drop=True))
    # The fit weighs the one-in-N accounts' pairs by N, so that the sample stands for the population.
    weighted = EvaderDetector().fit(sample)
    assert weighted.metrics["sampled_new_accounts_one_in"] == sample.attrs[SAMPLED_ONE_IN] == 6
    unweighted = sample.copy()
    unweighted.attrs = {}
    assert EvaderDetector().fit(unweighted).metrics["coefficients"] != weighted.metrics["coefficients"]
    with pytest.raises(ValueError, match="limit"):
        sample_new_accounts(profiles, 0)


def test_the_fitted_model_does_not_depend_on_the_order_of_the_rows() -> None:
    """Spark builds a block's rows in the order its partitions arrive: the same accounts in another order
    must give the same model (its version hashes the fitted state)."""
    features = EvaderDetector().features(events_of(World(WorldConfig(users=1500, days=2, seed=5))))
    shuffled = features.iloc[np.random.default_rng(1).permutation(len(features))]
    assert EvaderDetector().fit(shuffled).model_version == EvaderDetector().fit(features).model_version
