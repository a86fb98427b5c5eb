"""The profile job on a hand-made lake: every value below was computed by hand."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from argus.jobs.lake import read_pandas
from argus.schemas.arrow import ARROW_SCHEMAS
from argus.world.sinks import lake_path

DAY = date(2026, 10, 1)
T0 = datetime(2026, 10, 1, tzinfo=UTC)


def _event(event_type: str, user: str, at: timedelta | datetime, **fields: object) -> dict[str, object]:
    ts = at if isinstance(at, datetime) else T0 + at
    return {"event_type": event_type, "user_id": user, "ts": ts, "schema_version": 1, **fields}


def _write_lake(root: Path, events: list[dict[str, object]]) -> None:
    grouped: dict[tuple[str, date], list[dict[str, object]]] = defaultdict(list)
    for i, event in enumerate(events):
        event["event_id"] = f"h{i}"
        grouped[(str(event["event_type"]), event["ts"].date())].append(event)  # type: ignore[union-attr]
    for (event_type, day), rows in grouped.items():
        path = lake_path(root, event_type, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=ARROW_SCHEMAS[event_type]), path)


def _chat(user: str, seconds: int, text: str) -> dict[str, object]:
    return _event("chat", user, timedelta(seconds=seconds), context="c1", text=text)


def _pay(user: str, minutes: int, action: str, amount: float, **fields: object) -> dict[str, object]:
    defaults = {"context": "m1", "currency": "USD", "instrument_id": "abcdef01", "status": "approved"}
    return _event("payment", user, timedelta(minutes=minutes), action=action, amount=amount, **{**defaults, **fields})


@pytest.fixture(scope="module")
def profiles(spark: object, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    from argus.jobs.profiles import run_profile

    lake = tmp_path_factory.mktemp("lake")
    _write_lake(
        lake,
        [
            # One channel, one 10-minute window.
            _chat("A", 0, "alpha beta"),
            _chat("A", 60, "alpha beta"),
            _chat("A", 120, "alpha"),
            _chat("B", 30, "alpha"),
            _chat("B", 90, "GAMMA"),
            _chat("C", 100, "win bit.ly/x"),
            _pay("P", 60, "purchase", 10.0),
            _pay("P", 70, "purchase", 2.0, status="declined", decline_reason="do_not_honor"),
            _pay("P", 180, "purchase", 4.0, context="m2"),
            _pay("P", 240, "transfer", 50.0, context="p2p", counterparty_id="Q"),
            _pay("P", 300, "chargeback", 10.0, context="chargebacks"),
            _event("click", "A", datetime(2026, 9, 10, 12, tzinfo=UTC), context="/p/1", action="view", session_id="s1"),
            _event("click", "A", datetime(2026, 8, 1, 12, tzinfo=UTC), context="/p/2", action="view", session_id="s0"),
            _event(
                "account",
                "A",
                timedelta(0),
                context="web",
                action="signup",
                username="a",
                device_fp="d1",
                network_fp="n1",
            ),
            _event(
                "account",
                "A",
                timedelta(hours=1),
                context="web",
                action="login",
                username="a",
                device_fp="d1",
                network_fp="n1",
            ),
            _event(
                "account", "A", timedelta(hours=2), context="web", action="rename", username="a2", previous_username="a"
            ),
            _event(
                "account",
                "B",
                timedelta(hours=3),
                context="web",
                action="login",
                username="b",
                device_fp="d1",
                network_fp="n2",
            ),
            _event("account", "B", timedelta(hours=4), context="web", action="ban", username="b"),
            _event("account", "B", timedelta(hours=5), context="web", action="unban", username="b"),
            _event("account", "C", timedelta(hours=6), context="web", action="ban", username="c"),
        ],
    )
    result = run_profile(spark, lake, DAY)  # type: ignore[arg-type]
    published = read_pandas(lake, "profiles", DAY)
    assert published is not None and result["table"] == "profiles"
    table = pa.Table.from_pandas(published, preserve_index=False).to_pylist()  # NaN read back as None
    return {row["user_id"]: row for row in table}


def test_context_goal_shares(profiles: dict[str, dict[str, object]]) -> None:
    # Terms by messages: alpha 4, beta 2, then bit, gamma, ly, win 1 each (ties by name).
    a, b, c = profiles["A"], profiles["B"], profiles["C"]
    assert [a[f"chat_top{k}_share"] for k in (1, 2, 3)] == [1.0, 1.0, 1.0]
    assert [a[f"chat_bottom{k}_share"] for k in (1, 2, 3)] == [0.0, 0.0, 0.0]
    assert [b[f"chat_top{k}_share"] for k in (1, 2, 3)] == [0.5, 0.5, 0.5]
    assert [b[f"chat_bottom{k}_share"] for k in (1, 2, 3)] == [0.0, 0.5, 0.5]
    assert [c[f"chat_top{k}_share"] for k in (1, 2, 3)] == [0.0, 0.0, 1.0]
    assert [c[f"chat_bottom{k}_share"] for k in (1, 2, 3)] == [1.0, 1.0, 1.0]


def test_chat_style_rate_and_burstiness(profiles: dict[str, dict[str, object]]) -> None:
    a, b, c = profiles["A"], profiles["B"], profiles["C"]
    assert a["chat_spam_ratio"] == pytest.approx(1 / 3)  # the same text twice in one window
    assert c["chat_spam_ratio"] == 1.0 and c["chat_link_ratio"] == 1.0  # a link
    assert b["chat_spam_ratio"] == 0.0
    assert a["chat_repetition"] == pytest.approx(1 / 3)
    assert b["chat_caps_ratio"] == 0.5 and a["chat_caps_ratio"] == 0.0
    assert (a["chat_burstiness"], b["chat_burstiness"], c["chat_burstiness"]) == (-1.0, -1.0, None)
    assert (a["chat_rate_vs_window"], b["chat_rate_vs_window"], c["chat_rate_vs_window"]) == (1.5, 1.0, 0.5)
    assert (a["chat_messages"], a["chat_per_active_day"]) == (3, 3.0)
    assert a["chat_anarchy_mode_share"] is None  # no plays-style channel here


def test_payment_features(profiles: dict[str, dict[str, object]]) -> None:
    p = profiles["P"]
    assert (p["pay_count"], p["pay_purchases"], p["pay_chargebacks"]) == (5, 3, 1)
    assert (p["pay_amount_mean"], p["pay_amount_sd"], p["pay_amount_max"]) == (7.0, 3.0, 10.0)
    assert p["pay_decline_ratio"] == pytest.approx(0.2)
    assert p["pay_chargeback_ratio"] == pytest.approx(1 / 3)
    assert p["pay_small_share"] == pytest.approx(2 / 3)
    assert p["pay_transfer_share"] == pytest.approx(0.2)
    assert (p["pay_merchants"], p["pay_instruments"], p["pay_fan_out"], p["pay_max_per_hour"]) == (2, 1, 1, 2)
    assert p["pay_top_merchant_share"] == pytest.approx(2 / 3)
    assert profiles["Q"]["pay_fan_in"] == 1 and p["pay_fan_in"] is None


def test_windows_and_account(profiles: dict[str, dict[str, object]]) -> None:
    a, b, c = profiles["A"], profiles["B"], profiles["C"]
    # A clicked 21 days and 61 days before the profile date.
    assert [a[f"events_click_{w}"] for w in ("1d", "7d", "30d", "life")] == [0, 0, 1, 2]
    assert (a["click_sessions"], a["click_events_per_session"], a["click_pages"]) == (1, 1.0, 1)
    assert [a[f"events_chat_{w}"] for w in ("1d", "7d", "30d", "life")] == [3, 3, 3, 3]
    assert (a["acct_renames"], a["acct_logins"], a["acct_devices"], a["acct_age_days"]) == (1, 1, 1, 1.0)
    assert a["acct_device_shared_with"] == 1 and b["acct_device_shared_with"] == 1
    assert (a["acct_banned"], b["acct_banned"], c["acct_banned"]) == (False, False, True)
    assert all(str(row["profile_date"]) == "2026-10-01" for row in profiles.values())


def test_a_day_without_events_is_a_clear_error(spark: object, tmp_path: Path) -> None:
    from argus.jobs.profiles import run_profile

    _write_lake(tmp_path, [_chat("A", 0, "hello there")])
    with pytest.raises(ValueError, match="no events on 2026-10-05"):
        run_profile(spark, tmp_path, date(2026, 10, 5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no events in"):
        run_profile(spark, tmp_path / "empty", DAY)  # type: ignore[arg-type]
