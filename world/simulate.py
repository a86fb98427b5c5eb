"""Day-by-day event generation for a planned population, vectorised with numpy and Arrow.

Each simulated day is generated from its own random stream (seed, day), so any day can be
produced alone, in any order, and the same seed always gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from argus.schemas.arrow import ARROW_SCHEMAS, TS_TYPE
from argus.schemas.models import EVENT_TYPES
from argus.world import text
from argus.world.config import WorldConfig
from argus.world.population import CURRENCIES, DAY, MAX_CARDS, Population, build_population

MESSAGES_PER_TOPIC = 40
TOPICS_PER_CHANNEL = 6
PLAYS_COMBOS = [(a, b) for a in range(6) for b in range(a + 1, 6)]
DECLINE_REASONS = np.array(["insufficient_funds", "do_not_honor", "expired_card", "invalid_cvv"])
MODERATORS = [f"mod{i:02d}" for i in range(12)]
_CHANNEL_KEY = 1e8  # channel * key + seconds: one sorted key for (channel, time)
# Realistic world: how likely a user is to visit on each weekday (Monday first), relative to the
# average day: entertainment and chat traffic peaks on Friday to Sunday evenings.
WEEKDAY_VISITS = np.array([0.93, 0.92, 0.94, 0.97, 1.04, 1.12, 1.08])
SESSION_GAP_S = 45.0  # mean seconds between two events of one session


@dataclass
class ChatContext:
    """Channels, their topics and the goal segments that set each window's context."""

    channel_names: pa.Array
    plays_channels: int  # channels [0, plays) are plays-style (commands, votes, modes)
    channel_topics: np.ndarray  # (channels, TOPICS_PER_CHANNEL)
    topic_count: int
    seg_key: np.ndarray
    seg_goal: np.ndarray  # topic id, or index into PLAYS_COMBOS for plays channels
    seg_mode: np.ndarray  # 0 none, 1 anarchy, 2 democracy
    pool: pa.Array  # every message text; upper-case copies follow the originals
    pool_base: int
    chatter_at: int
    provocation_at: int
    spam_at: int
    plays_at: int

    def goals(self, channel: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seg = np.searchsorted(self.seg_key, channel * _CHANNEL_KEY + t, side="right") - 1
        return self.seg_goal[seg], self.seg_mode[seg]


def build_chat_context(cfg: WorldConfig, rng: np.random.Generator) -> ChatContext:
    channels = cfg.channel_count
    plays = max(1, channels // 10)
    topics = channels * 3
    vocabularies = text.topic_vocabularies(rng, topics)
    messages: list[str] = []
    for vocab in vocabularies:
        messages += text.topic_messages(rng, vocab, MESSAGES_PER_TOPIC)
    chatter_at = len(messages)
    messages += text.CHATTER
    provocation_at = len(messages)
    messages += text.PROVOCATION
    spam_at = len(messages)
    messages += text.link_spam(rng, 60)
    plays_at = len(messages)
    messages += [*text.PLAYS_COMMANDS, text.PLAYS_START, *text.PLAYS_VOTES]
    pool = pa.array(messages + [m.upper() for m in messages], pa.string())

    channel_topics = np.stack([rng.choice(topics, TOPICS_PER_CHANNEL, replace=False) for _ in range(channels)])
    keys, goals, modes = [], [], []
    for c in range(channels):
        starts = [-DAY]
        while starts[-1] < (cfg.days + 1) * DAY:
            starts.append(starts[-1] + float(np.clip(rng.exponential(50 * 60), 600, 3 * 3600)))
        starts_arr = np.array(starts)
        keys.append(c * _CHANNEL_KEY + starts_arr)
        if c < plays:
            goals.append(rng.integers(0, len(PLAYS_COMBOS), starts_arr.size))
            modes.append(rng.integers(1, 3, starts_arr.size))
        else:
            goals.append(channel_topics[c, rng.integers(0, TOPICS_PER_CHANNEL, starts_arr.size)])
            modes.append(np.zeros(starts_arr.size, dtype=int))
    return ChatContext(
        channel_names=pa.array([f"{'plays' if c < plays else 'ch'}-{c:04d}" for c in range(channels)]),
        plays_channels=plays,
        channel_topics=channel_topics,
        topic_count=topics,
        seg_key=np.concatenate(keys),
        seg_goal=np.concatenate(goals),
        seg_mode=np.concatenate(modes),
        pool=pool,
        pool_base=len(messages),
        chatter_at=chatter_at,
        provocation_at=provocation_at,
        spam_at=spam_at,
        plays_at=plays_at,
    )


class World:
    """A seeded synthetic world: ``day(d)`` gives that day's events, one Arrow table per type."""

    def __init__(self, cfg: WorldConfig) -> None:
        self.cfg = cfg
        plan_rng = np.random.default_rng([cfg.seed, 0])
        self.pop: Population = build_population(cfg, plan_rng)
        self.chat = build_chat_context(cfg, plan_rng)
        self.epoch_ms = int(datetime(cfg.start.year, cfg.start.month, cfg.start.day, tzinfo=UTC).timestamp() * 1000)
        self._user_ids = pa.array(self.pop.user_id.tolist(), pa.string())
        # Worlds with the same seed but other settings must not share event ids.
        self._world_tag = hashlib.blake2b(
            json.dumps(cfg.tag_json(), sort_keys=True).encode(), digest_size=3
        ).hexdigest()
        self._renames = self._plan_renames(plan_rng)
        self._specials = self._plan_special_events(plan_rng)

    # --- public -------------------------------------------------------------------------
    def dates(self) -> list[date]:
        return [self.cfg.start + timedelta(days=d) for d in range(self.cfg.days)]

    def days(self) -> Iterator[tuple[date, dict[str, pa.Table]]]:
        for d, day_date in enumerate(self.dates()):
            yield day_date, self.day(d)

    def day(self, d: int) -> dict[str, pa.Table]:
        rng = np.random.default_rng([self.cfg.seed, 1, d])
        if self.cfg.profile == "realistic":
            u, t, kind = self._session_activity(rng, d)
        else:
            u, t, kind = self._bulk_activity(rng, d)
        columns = {
            "chat": self._chat(rng, u[kind == 0], t[kind == 0]),
            "click": self._clicks(rng, d, u[kind == 1], t[kind == 1]),
            "payment": self._payments(rng, u[kind == 2], t[kind == 2]),
            "account": self._logins(rng, d, np.unique(u)),
            "moderation": {},
        }
        for event_type, rows in self._specials.get(d, {}).items():
            columns[event_type] = _concat_columns(event_type, columns[event_type], rows)
        return {event_type: self._finish(event_type, d, columns[event_type]) for event_type in EVENT_TYPES}

    # --- bulk activity ------------------------------------------------------------------
    def _bulk_activity(self, rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pop, horizon = self.pop, self.cfg.days * DAY
        mid = (d + 0.5) * DAY
        mult = np.full(pop.n, 1.15 if (self.cfg.start + timedelta(days=d)).weekday() >= 5 else 1.0)
        left = pop.churn_s - mid
        with np.errstate(invalid="ignore"):
            fading = left < pop.churn_len_s
        mult[fading] *= 0.1 + 0.9 * np.clip(left[fading] / pop.churn_len_s[fading], 0, 1) ** 1.2
        mult *= 1 - (1 - pop.decline_to) * (mid / horizon)
        mult *= rng.gamma(8.0, 1 / 8.0, pop.n)
        counts = rng.poisson(pop.rate * mult)
        u = np.repeat(np.arange(pop.n), counts)
        t = d * DAY + self._diurnal_seconds(rng, u)
        cum = np.cumsum(pop.type_share, axis=1)[u]
        r = rng.random(u.size)
        kind = (r > cum[:, 0]).astype(np.int8) + (r > cum[:, 1])
        keep = self._active(u, t)
        return u[keep], t[keep], kind[keep]

    def _session_activity(self, rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Realistic world: who visits today (a per-user return probability with a weekday rhythm),
        how many sessions each visitor has, and a geometric number of events per session."""
        pop, horizon = self.pop, self.cfg.days * DAY
        mid = (d + 0.5) * DAY
        p = pop.visit_prob * WEEKDAY_VISITS[(self.cfg.start + timedelta(days=d)).weekday()]
        left = pop.churn_s - mid
        with np.errstate(invalid="ignore"):
            fading = left < pop.churn_len_s
        p[fading] *= 0.1 + 0.9 * np.clip(left[fading] / pop.churn_len_s[fading], 0, 1) ** 1.2
        p *= 1 - (1 - pop.decline_to) * (mid / horizon)
        visits = rng.random(pop.n) < p
        sessions = np.where(visits, 1 + rng.poisson(pop.extra_sessions), 0)
        su = np.repeat(np.arange(pop.n), sessions)
        per_session = np.maximum(pop.rate[su] / (1 + pop.extra_sessions[su]), 1.0)
        size = rng.geometric(1 / per_session)
        u = np.repeat(su, size)
        first_at = np.cumsum(size) - size
        gaps = rng.exponential(SESSION_GAP_S, u.size)
        gaps[first_at] = 0.0
        offset = np.cumsum(gaps)
        offset -= np.repeat(offset[first_at], size)
        span = offset[first_at + size - 1]
        start = np.clip(self._diurnal_seconds(rng, su), 0.0, np.maximum(DAY - 1.0 - span, 0.0))  # within the day
        t = d * DAY + np.minimum(np.repeat(start, size) + offset, DAY - 0.001)
        cum = np.cumsum(pop.type_share, axis=1)[u]
        r = rng.random(u.size)
        kind = (r > cum[:, 0]).astype(np.int8) + (r > cum[:, 1])
        keep = self._active(u, t)
        return u[keep], t[keep], kind[keep]

    def _diurnal_seconds(self, rng: np.random.Generator, u: np.ndarray) -> np.ndarray:
        """Seconds into the UTC day: evening peak in the user's local time, some at any hour."""
        local = np.where(rng.random(u.size) < 0.75, rng.normal(20.0, 3.5, u.size), rng.uniform(0, 24, u.size))
        return ((local - self.pop.tz_hours[u]) % 24.0) * 3600.0

    def _active(self, u: np.ndarray, t: np.ndarray) -> np.ndarray:
        pop = self.pop
        paused = (t >= pop.pause_start_s[u]) & (t < pop.pause_end_s[u])
        return (t >= pop.signup_s[u]) & (t < pop.until_s[u]) & ~paused

    # --- chat ---------------------------------------------------------------------------
    def _chat(self, rng: np.random.Generator, u: np.ndarray, t: np.ndarray) -> dict[str, Any]:
        pop, ctx = self.pop, self.chat
        m = u.size
        slot = np.searchsorted([0.6, 0.9], rng.random(m))
        channel = pop.channels[u, slot]
        goal, mode = ctx.goals(channel, t)
        plays = channel < ctx.plays_channels

        on = rng.random(m) < pop.on_goal[u]
        mix = np.cumsum(pop.off_goal_mix[u], axis=1)
        r = rng.random(m)[:, None]
        category = np.where(on, -1, (r > mix[:, :3]).sum(axis=1))  # -1 on, 0 chatter, 1 off, 2 prov, 3 spam

        topic_msg = rng.integers(0, MESSAGES_PER_TOPIC, m)
        other_topic = ctx.channel_topics[channel, rng.integers(0, TOPICS_PER_CHANNEL, m)]
        other_topic = np.where(other_topic == goal, ctx.channel_topics[channel, 0] + 1, other_topic) % ctx.topic_count
        wander = pop.is_troll[u] & (rng.random(m) < 0.5)
        other_topic[wander] = rng.integers(0, ctx.topic_count, int(wander.sum()))
        idx = np.select(
            [category == -1, category == 0, category == 1, category == 2],
            [
                goal * MESSAGES_PER_TOPIC + topic_msg,
                ctx.chatter_at + rng.integers(0, len(text.CHATTER), m),
                other_topic * MESSAGES_PER_TOPIC + topic_msg,
                ctx.provocation_at + rng.integers(0, len(text.PROVOCATION), m),
            ],
            ctx.spam_at + rng.integers(0, 60, m),
        )
        if plays.any():
            combo = np.array(PLAYS_COMBOS)[np.where(plays, goal, 0)]
            command = np.select(
                [category == -1, category == 0, category == 1, category == 2],
                [
                    combo[np.arange(m), rng.integers(0, 2, m)],
                    7 + rng.integers(0, 2, m),
                    rng.integers(0, 6, m),
                    np.full(m, 6),
                ],
                np.full(m, 7),
            )
            idx = np.where(plays, ctx.plays_at + command, idx)

        caps = rng.random(m) < pop.caps_prob[u]
        pet = np.where(rng.random(m) < pop.pet_prob[u], pop.pets[u, rng.integers(0, 2, m)], 0)
        idx = np.where(caps & ~plays, idx + ctx.pool_base, idx)
        pet = np.where(plays, 0, pet)

        # Repetition: copy the user's previous message of the day, pet phrase and all.
        order = np.lexsort((t, u))
        uo = u[order]
        first = np.r_[True, uo[1:] != uo[:-1]]
        repeat = (rng.random(m) < pop.repeat_prob[uo]) & ~first
        source = np.maximum.accumulate(np.where(repeat, 0, np.arange(m)))
        idx[order] = idx[order][source]
        pet[order] = pet[order][source]

        raid_rows = self._raid_messages(rng, t.min() if m else 0.0, t.max() if m else 0.0)
        if raid_rows is not None:
            ru, rt, rc, ridx = raid_rows
            u, t, channel, idx = (np.concatenate(p) for p in ((u, ru), (t, rt), (channel, rc), (idx, ridx)))
            pet = np.concatenate([pet, np.zeros(ru.size, dtype=pet.dtype)])
            mode = np.concatenate([mode, self.chat.goals(rc, rt)[1]])

        message = pc.binary_join_element_wise(ctx.pool.take(idx), _PETS.take(pet), " ")
        modes = pa.array(np.array([None, "anarchy", "democracy"], dtype=object)[mode], pa.string())
        return {
            "u": u,
            "t": t,
            "context": ctx.channel_names.take(channel),
            "text": pc.utf8_rtrim_whitespace(message),
            "channel_mode": modes,
        }

    def _raid_messages(
        self, rng: np.random.Generator, lo: float, hi: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        parts = []
        for raid in self.pop.raids:
            if not lo <= raid.start_s < hi:
                continue
            message = self.chat.provocation_at + int(rng.integers(0, len(text.PROVOCATION)))
            per_member = rng.integers(5, 16, raid.members.size)
            ru = np.repeat(raid.members, per_member)
            rt = raid.start_s + rng.uniform(0, 600, ru.size)
            keep = self._active(ru, rt)
            ru, rt = ru[keep], rt[keep]
            shout = rng.random(ru.size) < 0.5
            idx = np.where(shout, message + self.chat.pool_base, message)
            parts.append((ru, rt, np.full(ru.size, raid.channel), idx))
        if not parts:
            return None
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]

    # --- click --------------------------------------------------------------------------
    def _clicks(self, rng: np.random.Generator, d: int, u: np.ndarray, t: np.ndarray) -> dict[str, Any]:
        m = u.size
        page = self.pop.pages[u, np.searchsorted([0.5, 0.75, 0.9], rng.random(m))]
        action = np.searchsorted([0.6, 0.88, 0.94], rng.random(m))
        item = page * 20 + np.minimum(rng.geometric(0.25, m) - 1, 19)
        has_item = (action == 1) | (action == 3)
        item_ids = pc.if_else(pa.array(has_item), _prefixed("i", item), pa.nulls(m, pa.string()))
        duration = np.round(rng.lognormal(8.5, 1.0, m)).astype(np.int64)
        # Sessions: a new one after 30 minutes without a click.
        order = np.lexsort((t, u))
        uo, to = u[order], t[order]
        new_session = np.r_[True, (uo[1:] != uo[:-1]) | (np.diff(to) > 1800)]
        count = np.cumsum(new_session) - 1
        first_of_user = np.r_[True, uo[1:] != uo[:-1]]
        session_no = np.empty(m, dtype=np.int64)
        session_no[order] = count - np.maximum.accumulate(np.where(first_of_user, count, 0))
        session_ids = pc.binary_join_element_wise(
            "s", self._user_ids.take(u), pa.scalar(f"-{d}-"), pc.cast(pa.array(session_no), pa.string()), ""
        )
        return {
            "u": u,
            "t": t,
            "context": _prefixed("/p/", page),
            "session_id": session_ids,
            "action": pa.array(np.array(["view", "click", "search", "add_to_cart"])[action]),
            "item_id": item_ids,
            "duration_ms": pa.array(duration),
        }

    # --- payment ------------------------------------------------------------------------
    def _payments(self, rng: np.random.Generator, u: np.ndarray, t: np.ndarray) -> dict[str, Any]:
        pop = self.pop
        m = u.size
        action = np.searchsorted([0.87, 0.96, 0.998], rng.random(m))  # purchase, transfer, refund, chargeback
        merchant = pop.merchants[u, np.searchsorted([0.35, 0.6, 0.78, 0.9], rng.random(m))]
        amount = np.exp(pop.amount_mu[u] + rng.normal(0, 0.6, m))
        amount = np.where(action == 1, np.exp(rng.normal(3.6, 0.8, m)), amount)
        amount = np.where(action == 2, amount * 0.7, amount)
        currency = pop.currency[u]
        currency = np.where(rng.random(m) < 0.05, 0, currency)
        amount = np.where(CURRENCIES[currency] == "JPY", np.round(amount * 100), np.round(amount, 2))
        declined = (action < 2) & (rng.random(m) < pop.decline_rate[u])
        reasons = np.where(declined, DECLINE_REASONS[rng.integers(0, 4, m)], None)
        friend = pop.friends[u, rng.integers(0, 3, m)]
        is_transfer = action == 1
        if self.cfg.profile == "realistic":
            cards = pop.card_count[u]
            card = np.where(cards > 2, rng.integers(0, MAX_CARDS, m) % cards, rng.random(m) < 0.15)
        else:
            card = (rng.random(m) < 0.15).astype(int)
        return {
            "u": u,
            "t": t,
            "context": pc.if_else(pa.array(is_transfer), "p2p", _prefixed("m", merchant)),
            "action": pa.array(np.array(["purchase", "transfer", "refund", "chargeback"])[action]),
            "amount": pa.array(amount),
            "currency": pa.array(CURRENCIES[currency]),
            "instrument_id": pa.array(pop.instruments[u, card.astype(int)].tolist(), pa.string()),
            "status": pa.array(np.where(declined, "declined", "approved")),
            "decline_reason": pa.array(reasons.tolist(), pa.string()),
            "counterparty_id": pc.if_else(pa.array(is_transfer), self._user_ids.take(friend), pa.nulls(m, pa.string())),
        }

    # --- account logins -----------------------------------------------------------------
    def _logins(self, rng: np.random.Generator, d: int, active: np.ndarray) -> dict[str, Any]:
        pop = self.pop
        u = np.repeat(active, 1 + rng.poisson(0.4, active.size))
        t = d * DAY + self._diurnal_seconds(rng, u)
        keep = self._active(u, t)
        u, t = u[keep], t[keep]
        m = u.size
        roaming = rng.random(m) < 0.12
        network = pop.network[u].copy()
        network[roaming] = np.char.mod("%016x", rng.integers(0, 2**62, int(roaming.sum())))
        renamed_s, new_name = self._renames
        names = np.where(t >= renamed_s[u], new_name[u], pop.username[u])
        return {
            "u": u,
            "t": t,
            "context": pa.array(np.full(m, "web")),
            "action": pa.array(np.full(m, "login")),
            "username": pa.array(names.tolist(), pa.string()),
            "device_fp": pa.array(pop.devices[u, (rng.random(m) < 0.2).astype(int)].tolist(), pa.string()),
            "network_fp": pa.array(network.tolist(), pa.string()),
        }

    # --- planned sparse events ----------------------------------------------------------
    def _plan_renames(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pop = self.pop
        renamed_s = np.full(pop.n, np.inf)
        who = np.flatnonzero(rng.random(pop.n) < 0.005)
        renamed_s[who] = rng.uniform(0, self.cfg.days * DAY, who.size)
        new_name = pop.username.copy()
        for i in who:
            new_name[i] = text.username(rng) if rng.random() < 0.5 else text.evasion_username(rng, pop.username[i])
        return renamed_s, new_name

    def _plan_special_events(self, rng: np.random.Generator) -> dict[int, dict[str, dict[str, Any]]]:
        """Sign-ups, renames, reports, bans, fraud campaigns: few, planned once, bucketed by day."""
        rows: dict[str, list[dict[str, Any]]] = {t: [] for t in EVENT_TYPES}
        pop, horizon = self.pop, self.cfg.days * DAY
        add = _RowAdder(rows, horizon, self._active)
        for i in np.flatnonzero((pop.signup_s >= 0) & (pop.signup_s < horizon)):
            add(
                "account",
                i,
                pop.signup_s[i],
                context="web",
                action="signup",
                username=pop.username[i],
                device_fp=pop.devices[i, 0],
                network_fp=pop.network[i],
            )
        renamed_s, new_name = self._renames
        for i in np.flatnonzero(np.isfinite(renamed_s)):
            add(
                "account",
                i,
                renamed_s[i],
                context="web",
                action="rename",
                username=new_name[i],
                previous_username=pop.username[i],
                device_fp=pop.devices[i, 0],
                network_fp=pop.network[i],
            )
        self._plan_moderation(rng, add)
        for ring in pop.rings:
            _FRAUD_PLANNERS[ring.pattern](self, rng, add, ring)
        return add.by_day()

    def _plan_moderation(self, rng: np.random.Generator, add: _RowAdder) -> None:
        pop, horizon = self.pop, self.cfg.days * DAY
        labels = np.array(["troll", "harassment", "spam"])
        # Reports and moderator warnings/timeouts per user-day, for trolls and for everyone else.
        if self.cfg.profile == "realistic":
            # Moderators see a fraction of what happens, and sometimes act on the wrong person.
            troll_report, other_report = self.cfg.troll_report_rate, 0.003
            troll_action, other_action = self.cfg.troll_action_rate, self.cfg.false_action_rate
        else:
            troll_report, other_report, troll_action, other_action = 0.6, 0.01, 0.1, 0.0
        for i in range(pop.n):
            lo = max(pop.signup_s[i], 0.0)
            hi = min(pop.until_s[i], horizon)
            if hi <= lo:
                continue
            report_rate = troll_report if pop.is_troll[i] else other_report
            for ts in rng.uniform(lo, hi, rng.poisson(report_rate * (hi - lo) / DAY)):
                add(
                    "moderation",
                    i,
                    ts,
                    context="reports",
                    action="report",
                    actor_id=pop.user_id[rng.integers(0, pop.n)],
                    label=labels[rng.integers(0, 3)],
                )
            action_rate = troll_action if pop.is_troll[i] else other_action
            if action_rate > 0:
                for ts in rng.uniform(lo, hi, rng.poisson(action_rate * (hi - lo) / DAY)):
                    add(
                        "moderation",
                        i,
                        ts,
                        context="moderation",
                        action=("warn", "timeout")[rng.integers(0, 2)],
                        actor_id=MODERATORS[rng.integers(0, len(MODERATORS))],
                        label="troll" if pop.is_troll[i] else labels[rng.integers(0, 3)],
                    )
        for i in np.flatnonzero(~np.isnan(pop.banned_s)):
            label = "troll" if pop.is_troll[i] else ("spam", "harassment")[rng.integers(0, 2)]
            moderator = MODERATORS[rng.integers(0, len(MODERATORS))]
            add(
                "moderation",
                i,
                pop.banned_s[i],
                context="moderation",
                action="ban",
                actor_id=moderator,
                label=label,
                reason="repeated violations",
            )
            add(
                "account",
                i,
                pop.banned_s[i] + 1,
                by_user=False,
                context="web",
                action="ban",
                username=pop.username[i],
                reason=label,
            )
            if not np.isnan(pop.unbanned_s[i]):
                add(
                    "account",
                    i,
                    pop.unbanned_s[i],
                    by_user=False,
                    context="web",
                    action="unban",
                    username=pop.username[i],
                    reason="appeal accepted",
                )

    def _plan_card_testing(self, rng: np.random.Generator, add: _RowAdder, ring: Any) -> None:
        pop = self.pop
        for i in ring.members:
            t0 = pop.fraud_s[i]
            approved_big = []
            for k, ts in enumerate(np.sort(t0 + rng.uniform(0, rng.uniform(1200, 2400), rng.integers(8, 31)))):
                declined = rng.random() < 0.65
                add(
                    "payment",
                    i,
                    ts,
                    context=f"m{rng.choice(ring.merchants)}",
                    action="purchase",
                    amount=float(np.round(rng.uniform(0.5, 5.0), 2)),
                    currency="USD",
                    instrument_id=ring.instruments[rng.integers(0, len(ring.instruments))],
                    status="declined" if declined else "approved",
                    decline_reason=DECLINE_REASONS[rng.integers(0, 4)] if declined else None,
                    session_id=f"s{pop.user_id[i]}-ct{k // 10}",
                )
            for ts in t0 + 2400 + rng.uniform(0, 7200, rng.integers(1, 4)):
                instrument = ring.instruments[rng.integers(0, len(ring.instruments))]
                amount = float(np.round(rng.uniform(40, 300), 2))
                add(
                    "payment",
                    i,
                    ts,
                    context=f"m{rng.choice(ring.merchants)}",
                    action="purchase",
                    amount=amount,
                    currency="USD",
                    instrument_id=instrument,
                    status="approved",
                )
                approved_big.append((ts, instrument, amount))
            self._chargebacks(rng, add, i, approved_big, 0.7)
        self._fraud_labels(rng, add, ring)

    def _plan_account_takeover(self, rng: np.random.Generator, add: _RowAdder, ring: Any) -> None:
        pop = self.pop
        mules = [r for r in pop.rings if r.pattern == "money_mule"]
        cash_out = mules[0].members if mules else rng.integers(0, pop.n, 3)
        for i in ring.members:
            t0 = pop.fraud_s[i]
            add(
                "account",
                i,
                t0,
                context="web",
                action="login",
                username=pop.username[i],
                device_fp=ring.devices[rng.integers(0, 2)],
                network_fp=ring.networks[rng.integers(0, 2)],
            )
            bought = []
            for ts in np.sort(t0 + rng.uniform(300, 5400, rng.integers(2, 7))):
                amount = float(np.round(rng.uniform(100, 500), 2))
                approved = rng.random() < 0.85
                add(
                    "payment",
                    i,
                    ts,
                    context=f"m{rng.choice(ring.merchants)}",
                    action="purchase",
                    amount=amount,
                    currency=str(CURRENCIES[pop.currency[i]]),
                    instrument_id=pop.instruments[i, 0],
                    status="approved" if approved else "declined",
                    decline_reason=None if approved else "do_not_honor",
                )
                if approved:
                    bought.append((ts, pop.instruments[i, 0], amount))
            for ts in t0 + rng.uniform(1800, 7200, rng.integers(1, 3)):
                add(
                    "payment",
                    i,
                    ts,
                    context="p2p",
                    action="transfer",
                    amount=float(np.round(rng.uniform(200, 1500), 2)),
                    currency=str(CURRENCIES[pop.currency[i]]),
                    instrument_id=pop.instruments[i, 0],
                    status="approved",
                    counterparty_id=pop.user_id[rng.choice(cash_out)],
                )
            self._chargebacks(rng, add, i, bought, 0.6)
        self._fraud_labels(rng, add, ring)

    def _plan_money_mules(self, rng: np.random.Generator, add: _RowAdder, ring: Any) -> None:
        pop = self.pop
        layer = ring.extra["layer"]
        first, second = ring.members[layer == 0], ring.members[layer == 1]
        for i in ring.members:
            add(
                "account",
                i,
                ring.start_s - rng.uniform(0, 3600),
                context="web",
                action="login",
                username=pop.username[i],
                device_fp=ring.devices[rng.integers(0, 2)],
                network_fp=ring.networks[rng.integers(0, 2)],
            )
        for i in first:
            senders = rng.choice(pop.n, rng.integers(8, 26), replace=False)
            for sender, ts in zip(senders, ring.start_s + rng.uniform(0, 3 * DAY, senders.size), strict=True):
                amount = float(np.round(rng.uniform(50, 800), 2))
                add(
                    "payment",
                    sender,
                    ts,
                    context="p2p",
                    action="transfer",
                    amount=amount,
                    currency="USD",
                    instrument_id=pop.instruments[sender, 0],
                    status="approved",
                    counterparty_id=pop.user_id[i],
                )
                forward_ts = ts + rng.uniform(300, 7200)
                onward = rng.choice(second)
                forwarded = float(np.round(amount * rng.uniform(0.9, 0.97), 2))
                add(
                    "payment",
                    i,
                    forward_ts,
                    context="p2p",
                    action="transfer",
                    amount=forwarded,
                    currency="USD",
                    instrument_id=pop.instruments[i, 0],
                    status="approved",
                    counterparty_id=pop.user_id[onward],
                )
                add(
                    "payment",
                    onward,
                    forward_ts + rng.uniform(1800, 6 * 3600),
                    context=f"m{rng.choice(ring.merchants)}",
                    action="purchase",
                    amount=float(np.round(forwarded * rng.uniform(0.95, 0.99), 2)),
                    currency="USD",
                    instrument_id=pop.instruments[onward, 0],
                    status="approved",
                )
        self._fraud_labels(rng, add, ring)

    def _chargebacks(
        self, rng: np.random.Generator, add: _RowAdder, i: int, purchases: list[tuple[float, str, float]], p: float
    ) -> None:
        """Victims dispute some fraudulent purchases days (realistic: weeks) later."""
        lo, hi = self.cfg.chargeback_days if self.cfg.profile == "realistic" else (3.0, 20.0)
        for ts, instrument, amount in purchases:
            if rng.random() < p:
                add(
                    "payment",
                    i,
                    ts + rng.uniform(lo, hi) * DAY,
                    context="chargebacks",
                    action="chargeback",
                    amount=amount,
                    currency="USD",
                    instrument_id=instrument,
                    status="approved",
                )

    def _fraud_labels(self, rng: np.random.Generator, add: _RowAdder, ring: Any) -> None:
        """Known outcomes arrive late and only in part: the risk team labels about a third of a ring
        (realistic: a minority, weeks later)."""
        realistic = self.cfg.profile == "realistic"
        share = self.cfg.fraud_label_share if realistic else 0.35
        lo, hi = self.cfg.fraud_label_days if realistic else (1.0, 10.0)
        for i in ring.members[rng.random(ring.members.size) < share]:
            add(
                "moderation",
                i,
                self.pop.fraud_s[i] + rng.uniform(lo, hi) * DAY,
                context="risk",
                action="label",
                actor_id="risk-team",
                label="fraud",
                reason=ring.pattern,
            )

    # --- assembly -----------------------------------------------------------------------
    def _finish(self, event_type: str, d: int, cols: dict[str, Any]) -> pa.Table:
        schema = ARROW_SCHEMAS[event_type]
        if not cols:
            return schema.empty_table()
        u, t = np.asarray(cols["u"]), np.asarray(cols["t"], dtype=np.float64)
        order = np.lexsort((u, t))
        m = u.size
        ts_ms = self.epoch_ms + np.floor(t[order] * 1000).astype(np.int64)
        seq = pa.array(np.arange(m))
        prefix = f"e{self.cfg.seed}-{self._world_tag}-{d:04d}-{event_type[:2]}"
        arrays: dict[str, pa.Array] = {
            "event_id": pc.binary_join_element_wise(prefix, pc.cast(seq, pa.string()), ""),
            "ts": pa.array(ts_ms, pa.int64()).cast(TS_TYPE),
            "user_id": self._user_ids.take(u[order]),
            "schema_version": pa.array(np.ones(m, dtype=np.int64)),
            "event_type": pa.array(np.full(m, event_type)),
        }
        take = pa.array(order)
        for field in schema:
            if field.name in arrays:
                continue
            value = cols.get(field.name)
            arrays[field.name] = pa.nulls(m, field.type) if value is None else _as_arrow(value, field.type).take(take)
        return pa.table([arrays[f.name] for f in schema], schema=schema)


_FRAUD_PLANNERS = {
    "card_testing": World._plan_card_testing,
    "account_takeover": World._plan_account_takeover,
    "money_mule": World._plan_money_mules,
}
_PETS = pa.array(["", *text.PET_PHRASES], pa.string())


class _RowAdder:
    """Collects planned events as rows; drops those outside the world's days, and the subject's own
    actions at times the account is not active (moderation and ban records are about, not by, the user)."""

    def __init__(
        self,
        rows: dict[str, list[dict[str, Any]]],
        horizon: float,
        active: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ) -> None:
        self.rows = rows
        self.horizon = horizon
        self.active = active

    def __call__(self, event_type: str, user: int, ts: float, by_user: bool = True, **fields: Any) -> None:
        if not 0 <= ts < self.horizon:
            return
        if by_user and event_type != "moderation" and not self.active(np.array([user]), np.array([ts]))[0]:
            return
        self.rows[event_type].append({"u": int(user), "t": float(ts), **fields})

    def by_day(self) -> dict[int, dict[str, dict[str, list[Any]]]]:
        grouped: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for event_type, rows in self.rows.items():
            for row in rows:
                grouped.setdefault(int(row["t"] // DAY), {}).setdefault(event_type, []).append(row)
        out: dict[int, dict[str, dict[str, list[Any]]]] = {}
        for day, by_type in grouped.items():
            for event_type, rows in by_type.items():
                keys = set().union(*(row.keys() for row in rows))
                out.setdefault(day, {})[event_type] = {k: [row.get(k) for row in rows] for k in sorted(keys)}
        return out


def _as_arrow(value: Any, arrow_type: pa.DataType) -> pa.Array:
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks()
    if isinstance(value, pa.Array):
        return value.cast(arrow_type) if value.type != arrow_type else value
    if isinstance(value, np.ndarray) and value.dtype != object:
        return pa.array(value).cast(arrow_type)
    return pa.array(list(value), arrow_type)


def _concat_columns(event_type: str, bulk: dict[str, Any], rows: dict[str, list[Any]]) -> dict[str, Any]:
    """Append planned rows to a day's generated columns."""
    if not bulk:
        return rows
    schema = ARROW_SCHEMAS[event_type]
    n_bulk, n_rows = len(bulk["u"]), len(rows["u"])
    out: dict[str, Any] = {"u": np.concatenate([bulk["u"], rows["u"]]), "t": np.concatenate([bulk["t"], rows["t"]])}
    for key in (bulk.keys() | rows.keys()) - {"u", "t"}:
        arrow_type = schema.field(key).type
        head = bulk.get(key)
        head_array = pa.nulls(n_bulk, arrow_type) if head is None else _as_arrow(head, arrow_type)
        tail = [v.item() if isinstance(v, np.generic) else v for v in rows.get(key, [None] * n_rows)]
        out[key] = pa.concat_arrays([head_array, pa.array(tail, arrow_type)])
    return out


def _prefixed(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")
