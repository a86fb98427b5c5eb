"""Streaming adapters for sparse users: churn on silence, ban evaders on sign-up, trolls per message.

Like ``TrollStream`` and ``FraudStream`` (``pipelines/stream_detectors.py``, whose module doc
describes batches, key shards, alert windows and checkpoints), each adapter keeps per-shard state
around the functions of ``detectors/`` and scores with the model store's current version
(``LiveModel``). Every stateful stage here is a ``StageLogic`` run by ``StageFn``
(``pipelines/stage.py``): elements (source batches, or lists from an upstream stage) wait in a bag
until the watermark passes the event time at which their evidence is complete; one timer per such
time and shard (dynamic tag) then hands everything due to the adapter's logic in one call. A firing
may set further timers (churn's wake-ups). The state is held as pickled parts (``StageLogic.parts``:
per user, per account, per kept message), so with checkpoints a firing emits only the parts whose
bytes it changed, the elements that came or went, and the source ranges it took in (a numbered
delta the checkpoint stage folds; restored exactly).

**Churn** (``ChurnStream``, one stage keyed by user shard). A user-day is complete when the
watermark passes the end of the day plus the allowed lateness: the day's events then become the
users' ``daily_activity`` rows and the day's activity total (outage days are judged on totals,
as the nightly job does). For every user whose rows changed, the adapter asks the model when the
silence that follows would first be flagged: it scores the user's features as of each later day
in turn (``ChurnDetector.features_from_daily`` with the population's figures for that day, days
not seen yet counted as ordinary days), every day up to the end of the lookback in the daily mode
(past it the score no longer changes) and a widening ladder of days in the purchase mode. A
timer per user then fires when that day ends (grouped per day and shard); the user is scored again
on the features of that day, from the state as it is then, with the model current then, and an
alert is raised if flagged; otherwise the search goes on from the next day. New activity before the
wake-up moves it. The alert covers the day whose end completed the silence; one alert per silence.
The features equal ``ChurnDetector.at(day).features`` over the same events (tested), exactly with
one key shard (the default on Prism); with more, outage days and the purchase mode's BG/NBD are
judged on the shard's users. Cost: the search scores up to ``lookback + 1`` days for each user
active on a day, once per day.

**Ban evaders** (``EvaderStream``, one key). The nightly model holds the banned accounts'
profiles and the accounts on each device and network fingerprint (``EvaderDetector.fit``). The
stage adds what the stream shows: fingerprints from account events, bans (account ``ban``
events and moderators' ``ban`` actions, at their event time) and each account's recent events
(``RAW_LIMIT`` per type; chat and clicks, profile context only, are applied when their day ends,
so the stage fires per second of account activity, not per message). A new account (a
``signup`` in the stream) is scored as soon as the watermark passes its account event, against
the model's and the stream's banned accounts, with fingerprint specificity counted over both
(``EvaderDetector.score_accounts``); each later account event of a new account not yet flagged
(a login from another device) scores it again. The content
similarity's TF-IDF is fitted on the account and its candidates only, so scores can differ
slightly from the nightly job's, which fits it on all pairs of the night.

**Trolls per message** (``TrollMessageStream``, two stages). Keyed by channel shard (the same
split as ``TrollStream``'s context windows): messages wait until the watermark passes them, and
are then scored with the channel's trailing conversation (the last ``MAX_CONTEXT_S`` seconds the
stage keeps) by ``TrollDetector.score_items``: content and context signals combined by the
nightly model's message model. Keyed by user shard: each user's expected violating messages and
message count give the Beta-Binomial posterior of the nightly model (``rate_posterior`` with its
prior); an alert is raised when a message is flagged (violation more likely than not) or the
rate is credibly above the model's threshold. The alert's score is the posterior mean and its
first reason the evidence status, ``low evidence: 1 chat message ...`` for a one-message user.
Signals whose norm spans the whole night (a sender's burst against their own rate elsewhere)
see only the kept conversation.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
import pandas as pd
from apache_beam.metrics.metric import Metrics

from argus.detectors.alerts import EVIDENCE_LIMIT, alert_id, severity
from argus.detectors.base import LOW_EVIDENCE, SCORED, Detector
from argus.detectors.chat_messages import MAX_CONTEXT_S, rate_posterior
from argus.detectors.churn import ACTIVITY_CHANNELS, CHANNELS, NOT_USER_ACTIONS, ChurnDetector, daily_activity
from argus.detectors.evaders import EvaderDetector, account_profiles, profiles_from_records
from argus.detectors.events import Events
from argus.detectors.store import LiveModel, ModelStore
from argus.detectors.trolls import ITEM_FLAG, MESSAGE_MODEL_ATTR
from argus.pipelines.checkpoint import (
    Ranges,
    covers,
)
from argus.pipelines.kafka_io import SourceBatch
from argus.pipelines.sdk_workers import on_worker
from argus.pipelines.stage import StageLogic, dataclass_from_parts, dataclass_parts, stage_transform
from argus.pipelines.stream_detectors import (
    DAY_US,
    Event,
    ShardBatch,
    StreamingDetector,
    StreamOutputs,
    StreamSettings,
    alerts_by_day,
    feature_snapshot,
    one_native_thread,
    received_ranges,
    shard_of,
    with_restore,
)
from argus.pipelines.stream_detectors import (
    STREAMING_DETECTORS as ENGINE_DETECTORS,
)
from argus.schemas.models import Alert, AlertReason

__all__ = [
    "STREAMING_DETECTORS",
    "ChurnShard",
    "ChurnStream",
    "EvaderStream",
    "TrollMessageStream",
    "silence_days",
]

CHURN_STAGE, EVADER_STAGE = "churn.users", "evaders.accounts"
MESSAGE_CHANNELS_STAGE, MESSAGE_USERS_STAGE = "messages.channels", "messages.users"
EVADER_KEY = "accounts"
MESSAGE_ALERTS = "trolls-messages"  # alert ids of message-level troll alerts (apart from TrollStream's)
RAW_LIMIT = 200  # an account's events kept per type for its profile (the nightly profile reads up to 400 messages)


def _by_shard(
    batch: SourceBatch,
    shards: int,
    key_of: Callable[[str, dict[str, Any]], str | None],
    track: bool = False,
    received: dict[str, Ranges] | None = None,
) -> Iterator[tuple[str, ShardBatch]]:
    """One source batch -> the events of each shard (``key_of``: the key of an event, None to leave it out).

    With ``track`` every shard gets the batch's range, except shards whose restored state holds it."""
    out: dict[str, list[Event]] = {str(s): [] for s in range(shards)} if track else {}
    for event_type, row, t_us in batch.items:
        key = key_of(event_type, row)
        if key is not None:
            out.setdefault(shard_of(key, shards), []).append((event_type, row, t_us))
    for shard, rows in out.items():
        if received and covers(received.get(shard, {}), (batch.topic, batch.partition), batch.start, batch.end):
            continue
        yield shard, (batch.topic, batch.partition, batch.start, batch.end, rows)


def _user_key(event_type: str, row: dict[str, Any]) -> str | None:
    return str(row["user_id"])


def _stage(
    keyed: Any, settings: StreamSettings, logic: StageLogic, label: str, *outputs: str, main: str = "out"
) -> Any:
    restored = with_restore(keyed, settings, logic.stage)
    return restored | label >> on_worker(
        stage_transform(logic, settings.checkpoints, *outputs, main=main), settings.keyed_worker
    )


def _frames(rows: Iterable[Event]) -> Events:
    """Validated events as the detectors read them."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for event_type, row, _ in rows:
        grouped.setdefault(event_type, []).append(row)
    return Events.from_frames({kind: pd.DataFrame(part) for kind, part in grouped.items()})


def _by_second(rows: list[Event]) -> dict[int, list[Event]]:
    """Rows by the end of the event-time second they fall in: due once the watermark passes it
    (one timer per second with events, not per event; a batch spans many partitions' seconds)."""
    out: dict[int, list[Event]] = {}
    for row in rows:
        out.setdefault((row[2] // 1_000_000 + 1) * 1_000_000, []).append(row)
    return out


def _unique(rows: list[Event]) -> tuple[list[Event], int]:
    """``rows`` in event-time order, each event id once; and how many repeats were dropped."""
    seen: dict[str, Event] = {}
    for row in sorted(rows, key=lambda r: (r[2], str(r[1]["event_id"]))):
        seen.setdefault(str(row[1]["event_id"]), row)
    return list(seen.values()), len(rows) - len(seen)


# --- churn -------------------------------------------------------------------------------------
CHURN_TYPES = ("chat", "click", "payment", "account", "moderation")
# Purchase mode: silences (days) the search scores, ever wider apart (the score moves slowly there).
PURCHASE_LADDER = tuple(sorted({*range(1, 8), *(round(7 * 1.25**k) for k in range(1, 30))}))


def silence_days(mode: str, lookback_days: int, horizon_days: int) -> tuple[int, ...]:
    """Days of silence at which a wake-up search scores a user.

    Daily mode: each day to ``lookback + 1`` (past the lookback the user is ``silent`` and the score
    fixed); purchase mode: ``PURCHASE_LADDER`` up to ``lookback + horizon``.

    >>> silence_days("daily", 3, 14)
    (1, 2, 3, 4)
    >>> silence_days("purchase", 14, 14)[-3:]
    (17, 21, 27)
    """
    if mode == "purchase":
        return tuple(d for d in PURCHASE_LADDER if d <= lookback_days + horizon_days)
    return tuple(range(1, lookback_days + 2))


@dataclass
class ChurnShard:
    """One user shard's churn state (days are day numbers since the epoch, UTC)."""

    daily: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)  # user -> day -> CHANNELS
    totals: dict[int, float] = field(default_factory=dict)  # day -> the shard's own actions
    recent: dict[str, list[str]] = field(default_factory=dict)  # user -> own actions' event ids, oldest first
    wake: dict[str, int] = field(default_factory=dict)  # user -> the day whose end may flag the silence
    searched: dict[str, int] = field(default_factory=dict)  # user -> last day scored in the current silence
    alerted: dict[str, int] = field(default_factory=dict)  # user -> last active day of the silence alerted
    closed: int | None = None  # the last day applied
    version: str | None = None  # the model the wake-ups were planned with

    def last_active(self, user: str) -> int | None:
        own = [CHANNELS.index(c) for c in ACTIVITY_CHANNELS]
        days = [d for d, values in self.daily.get(user, {}).items() if values[own].sum() > 0]
        return max(days) if days else None


def _day_ts(day: int) -> pd.Timestamp:
    return pd.Timestamp(day * DAY_US, unit="us", tz="UTC")


class ChurnLogic(StageLogic):
    stage = CHURN_STAGE

    def __init__(self, settings: StreamSettings, name: str) -> None:
        self.store, self.name = settings.model_store, name
        self.lateness_us = int(settings.allowed_lateness_s * 1_000_000)
        self.publish_features = settings.publish_features
        self.evidence = settings.evidence_per_alert
        self._live: LiveModel | None = None
        self.late = Metrics.counter("stream", "late_events")
        self.duplicates = Metrics.counter("stream", "duplicate_events")
        self.scored = Metrics.counter("stream", f"{name}_scored")

    def setup(self) -> None:
        self._live = LiveModel(ModelStore(self.store), self.name)

    def new_state(self) -> ChurnShard:
        return ChurnShard()

    def close_us(self, day: int) -> int:
        """When day ``day`` is complete: its end plus the allowed lateness."""
        return (day + 1) * DAY_US + self.lateness_us

    def due_times(self, rows: list[Event], ts_us: int) -> dict[int, list[Event]]:
        out: dict[int, list[Event]] = {}
        for row in rows:
            out.setdefault(self.close_us(row[2] // DAY_US), []).append(row)
        return out

    def wake_times(self, state: ChurnShard) -> Iterable[int]:
        return {self.close_us(day) for day in state.wake.values()}

    # Per user: a firing changes the users active that day or woken, not the whole shard.
    KEYED = ("daily", "recent", "alerted", "searched", "wake")

    def parts(self, state: ChurnShard) -> dict[Hashable, Any]:
        return dataclass_parts(state, self.KEYED)

    def from_parts(self, parts: dict[Hashable, Any]) -> ChurnShard:
        return dataclass_from_parts(ChurnShard, parts, self.KEYED)  # type: ignore[no-any-return]

    def fire(
        self, state: ChurnShard, rows: list[Event], fired_us: int, set_timer: Callable[[int], None]
    ) -> Iterator[Any]:
        # Small batches of rows: the trees' OpenMP threads only spin against the other stages' work
        # (measured: a quarter of the scoring time with one thread on two busy cores).
        with one_native_thread():
            outputs = list(self._fire(state, rows, fired_us, set_timer))
        yield from outputs

    def _fire(
        self, state: ChurnShard, rows: list[Event], fired_us: int, set_timer: Callable[[int], None]
    ) -> Iterator[Any]:
        assert self._live is not None
        detector = self._live.get()
        assert isinstance(detector, ChurnDetector)
        fired_day = (fired_us - self.lateness_us) // DAY_US - 1
        replan: dict[str, int | None] = {}
        if state.version != self._live.version:  # a new model: plan every open silence again
            replan = {u: None for u in [*state.wake, *state.searched]}
            state.version = self._live.version
        snapshots: list[tuple[int, list[str]]] = []
        by_day: dict[int, list[Event]] = {}
        for row in rows:
            by_day.setdefault(row[2] // DAY_US, []).append(row)
        for day in sorted(by_day):
            touched = self._apply_day(state, day, by_day[day])
            for user in touched:  # new activity: a new silence
                state.wake.pop(user, None)
                state.searched.pop(user, None)
                replan[user] = None
            snapshots.append((day, sorted(touched)))
        if self.publish_features:
            for day, users in snapshots:
                yield from self._snapshots(detector, state, day, users)
        due = sorted((day, user) for user, day in state.wake.items() if day <= fired_day and user not in replan)
        for day in sorted({d for d, _ in due}):
            users = [u for d, u in due if d == day]
            yield from self._wake(detector, state, day, users, replan)
        if replan:
            for user in replan:
                state.wake.pop(user, None)
            for user, day in self._plan(detector, state, replan).items():
                state.wake[user] = day
                set_timer(self.close_us(day))

    def _apply_day(self, state: ChurnShard, day: int, rows: list[Event]) -> set[str]:
        """A complete (or late) day's events -> the users' daily rows, the day's total, the evidence."""
        rows, repeats = _unique(rows)
        self.duplicates.inc(repeats)
        if state.closed is not None and day <= state.closed:
            self.late.inc(len(rows))  # applied all the same; distinct sessions may count twice
        state.closed = day if state.closed is None else max(state.closed, day)
        daily = daily_activity(_frames(rows))
        own = [CHANNELS.index(c) for c in ACTIVITY_CHANNELS]
        touched: set[str] = set()
        for (user, _), values in zip(daily.index, daily.to_numpy(dtype=float), strict=True):
            days = state.daily.setdefault(str(user), {})
            days[day] = days.get(day, np.zeros(len(CHANNELS))) + values
            state.totals[day] = state.totals.get(day, 0.0) + float(values[own].sum())
            touched.add(str(user))
        for event_type, row, _ in rows:
            if event_type == "moderation" or (event_type == "account" and row.get("action") in NOT_USER_ACTIONS):
                continue  # evidence of churn is the user's own last actions
            ids = state.recent.setdefault(str(row["user_id"]), [])
            ids.append(str(row["event_id"]))
            del ids[: -self.evidence]
        return touched

    def _daily_frame(self, state: ChurnShard, users: Iterable[str]) -> pd.DataFrame:
        """``daily_activity`` rows of ``users`` from the state."""
        keys, values = [], []
        for user in users:
            for day, counts in sorted(state.daily.get(user, {}).items()):
                keys.append((user, _day_ts(day)))
                values.append(counts)
        index = pd.MultiIndex.from_tuples(keys, names=["user_id", "day"]) if keys else None
        if index is None:
            empty = pd.MultiIndex.from_arrays([pd.Index([], dtype=object), pd.DatetimeIndex([], tz="UTC")])
            return pd.DataFrame(columns=list(CHANNELS), index=empty.set_names(["user_id", "day"]), dtype=float)
        return pd.DataFrame(np.asarray(values, dtype=float), index=index, columns=list(CHANNELS))

    def _features(self, detector: ChurnDetector, state: ChurnShard, day: int, users: list[str]) -> pd.DataFrame:
        """``ChurnDetector.at(day).features`` of ``users``: their rows and the population's figures as of ``day``.

        Days after the last one applied (a planned wake-up) count as ordinary days, not outages."""
        mode, why = detector.fixed_mode() or ("daily", "")
        at = detector.at(_day_ts(day).date().isoformat())
        if mode == "purchase":  # BG/NBD over every customer of the shard, as the nightly job fits it
            population = at.population(self._daily_frame(state, state.daily))
        else:
            known = pd.Series(state.totals, dtype=float)
            known.index = pd.DatetimeIndex([_day_ts(d) for d in known.index])
            known = known.sort_index()
            if state.closed is not None and day > state.closed and len(known):
                first = int(min(state.totals))
                span = pd.DatetimeIndex([_day_ts(d) for d in range(first, day + 1)])
                seen = span <= _day_ts(state.closed)
                known = known.reindex(span, fill_value=0.0)
                known[~seen] = float(np.median(known[seen].to_numpy()))
            population = at.daily_population(why, _day_ts(day), known)
        return at.features_from_daily(self._daily_frame(state, users), pd.Index(users), population)

    def _snapshots(self, detector: ChurnDetector, state: ChurnShard, day: int, users: list[str]) -> Iterator[Any]:
        features = self._features(detector, state, day, users)
        scores = detector.score(features).set_index("user_id")
        rows = features.to_dict("records")
        for user, row in zip(features.index, rows, strict=True):
            score, flagged = scores.at[user, "score"], bool(scores.at[user, "flagged"])
            at_us = (day + 1) * DAY_US - 1
            yield beam.pvalue.TaggedOutput(
                "features", feature_snapshot(detector, str(user), at_us, row, score, flagged, self._version())
            )

    def _version(self) -> str | None:
        return self._live.version if self._live is not None else None

    def _wake(
        self, detector: ChurnDetector, state: ChurnShard, day: int, users: list[str], replan: dict[str, int | None]
    ) -> Iterator[Alert]:
        """Score the users whose silence may be flagged at the end of ``day``: alert, or plan on."""
        features = self._features(detector, state, day, users)
        scores = detector.score(features).reset_index(drop=True)
        self.scored.inc(len(scores))
        for i, user in enumerate(features.index.astype(str)):
            state.wake.pop(user, None)
            if bool(scores.at[i, "flagged"]):
                state.alerted[user] = state.last_active(user) or day
                state.searched.pop(user, None)
                evidence = {user: list(reversed(state.recent.get(user, [])))}
                yield from alerts_by_day(scores.iloc[[i]], detector, [day * DAY_US], evidence)
            else:
                state.searched[user] = day
                replan[user] = day

    def _plan(self, detector: ChurnDetector, state: ChurnShard, users: dict[str, int | None]) -> dict[str, int]:
        """Per user, the first day after their last activity (and after ``users[u]``) at whose end the model
        would flag the silence; users it would not flag within ``silence_days`` are left out."""
        mode, _ = detector.fixed_mode() or ("daily", "")
        steps = silence_days(mode, int(detector.params["lookback_days"]), int(detector.params["horizon_days"]))
        candidates: dict[int, list[str]] = {}
        for user, after in users.items():
            last = state.last_active(user)
            if last is None or state.alerted.get(user) == last:
                continue
            floor = max(after if after is not None else last, state.searched.get(user, last))
            for step in steps:
                if last + step > floor:
                    candidates.setdefault(last + step, []).append(user)
        if not candidates:
            return {}
        # The (user, day) rows scored in as few calls as possible (the model's cost is mostly per call):
        # one per set of columns (the daily series is shorter while the history is).
        groups: dict[tuple[str, ...], list[tuple[int, pd.DataFrame]]] = {}
        for day, scored in sorted(candidates.items()):
            frame = self._features(detector, state, day, scored)
            groups.setdefault(tuple(frame.columns), []).append((day, frame))
        first: dict[str, int] = {}
        for parts in groups.values():
            days = np.concatenate([np.full(len(frame), day) for day, frame in parts])
            scores = detector.score(pd.concat([frame for _, frame in parts]))
            for user, day, flagged in zip(scores["user_id"].astype(str), days, scores["flagged"], strict=True):
                if flagged and int(day) < first.get(user, int(day) + 1):
                    first[user] = int(day)
        return first


class ChurnStream(StreamingDetector):
    name = "churn"
    event_types = CHURN_TYPES

    def expand(self, batches: Any, settings: StreamSettings) -> StreamOutputs:
        keyed = batches | "ChurnByUserShard" >> beam.FlatMap(
            _by_shard, settings.key_shards, _user_key, settings.checkpoints, received_ranges(settings, CHURN_STAGE)
        )
        out = _stage(keyed, settings, ChurnLogic(settings, self.name), "ChurnUsers", "features", main="alerts")
        return StreamOutputs(
            out.alerts,
            out.features if settings.publish_features else None,
            (out.checkpoint,) if settings.checkpoints else (),
        )

    def source_stages(self, settings: StreamSettings) -> list[tuple[str, str]]:
        return [(CHURN_STAGE, str(s)) for s in range(settings.key_shards)]


# --- ban evaders -------------------------------------------------------------------------------
EVADER_TYPES = ("account", "moderation", "chat", "click")


@dataclass
class AccountsState:
    """The stream's view of accounts, on top of the model's banned profiles and fingerprints."""

    version: str | None = None
    banned: pd.DataFrame | None = None  # the model's banned accounts' profiles
    model_fingerprints: tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]] = ({}, {})
    fingerprints: tuple[dict[str, set[str]], dict[str, set[str]]] = field(default_factory=lambda: ({}, {}))
    raw: dict[str, dict[str, list[Event]]] = field(default_factory=dict)  # account -> type -> recent events
    bans: dict[str, tuple[int, str]] = field(default_factory=dict)  # account -> (ban time, ban event id)
    created: dict[str, int] = field(default_factory=dict)  # new account -> sign-up time (us)
    flagged: set[str] = field(default_factory=set)


class EvaderLogic(StageLogic):
    stage = EVADER_STAGE

    def __init__(self, settings: StreamSettings, name: str) -> None:
        self.store, self.name = settings.model_store, name
        self._live: LiveModel | None = None
        self.scored = Metrics.counter("stream", f"{name}_scored")
        self.duplicates = Metrics.counter("stream", "duplicate_events")

    def setup(self) -> None:
        self._live = LiveModel(ModelStore(self.store), self.name)

    def new_state(self) -> AccountsState:
        return AccountsState()

    # Per account: a firing changes a few accounts' events, not the model's profiles or the others.
    KEYED = ("raw", "bans", "created")

    def parts(self, state: AccountsState) -> dict[Hashable, Any]:
        return dataclass_parts(state, self.KEYED)

    def from_parts(self, parts: dict[Hashable, Any]) -> AccountsState:
        return dataclass_from_parts(AccountsState, parts, self.KEYED)  # type: ignore[no-any-return]

    def due_times(self, rows: list[Event], ts_us: int) -> dict[int, list[Event]]:
        # Account and moderation events when the watermark passes their second (every ban before a
        # sign-up has arrived by then); chat and clicks, only profile context, at the end of their day.
        accounts = [r for r in rows if r[0] in ("account", "moderation")]
        out = _by_second(accounts)
        for row in rows:
            if row[0] not in ("account", "moderation"):
                out.setdefault((row[2] // DAY_US + 1) * DAY_US, []).append(row)
        return out

    def fire(
        self, state: AccountsState, rows: list[Event], fired_us: int, set_timer: Callable[[int], None]
    ) -> Iterator[Alert]:
        if not rows:
            return
        assert self._live is not None
        detector = self._live.get()
        assert isinstance(detector, EvaderDetector)
        if state.version != self._live.version:
            model = detector.require_fitted()
            state.banned = profiles_from_records(model.get("banned_profiles", []))
            state.model_fingerprints = model.get("fingerprint_accounts", ({}, {}))
            state.version = self._live.version
        rows, repeats = _unique(rows)
        self.duplicates.inc(repeats)
        children: dict[str, int] = {}
        for event_type, row, t_us in rows:
            user = str(row["user_id"])
            kept = state.raw.setdefault(user, {}).setdefault(event_type, [])
            kept.append((event_type, row, t_us))
            del kept[:-RAW_LIMIT]
            action = row.get("action")
            if event_type == "account":
                for column, seen in zip(("device_fp", "network_fp"), state.fingerprints, strict=True):
                    if row.get(column):
                        seen.setdefault(str(row[column]), set()).add(user)
                if action == "signup":
                    state.created.setdefault(user, t_us)
                elif action == "unban":
                    state.bans.pop(user, None)
            if action == "ban" and event_type in ("account", "moderation"):
                state.bans[user] = (t_us, str(row["event_id"]))
            if event_type == "account" and user in state.created and user not in state.flagged:
                children[user] = t_us
        if children:
            yield from self._score(detector, state, children)

    def _profiles(self, state: AccountsState, children: Iterable[str]) -> pd.DataFrame:
        """The new accounts' and the stream-banned accounts' profiles, with the model's banned ones."""
        base = state.banned if state.banned is not None else profiles_from_records([])
        extra = [u for u in state.bans if u not in base.index and u in state.raw]
        users = sorted({*children, *extra})
        profiles = account_profiles(_frames(e for u in users for part in state.raw[u].values() for e in part))
        for user, (t_us, _) in state.bans.items():
            if user in profiles.index and pd.isna(profiles.at[user, "banned_ts"]):
                profiles.at[user, "banned_ts"] = pd.Timestamp(t_us, unit="us", tz="UTC")  # a moderator's ban
        return pd.concat([base[~base.index.isin(profiles.index)], profiles])

    def _fingerprint_counts(self, state: AccountsState) -> tuple[dict[str, int], dict[str, int]]:
        counts: list[dict[str, int]] = []
        for model, seen in zip(state.model_fingerprints, state.fingerprints, strict=True):
            counts.append({fp: len(set(model.get(fp, ())) | users) for fp, users in seen.items()})
        return counts[0], counts[1]

    def _score(self, detector: EvaderDetector, state: AccountsState, children: dict[str, int]) -> Iterator[Alert]:
        profiles = self._profiles(state, children)
        counts = self._fingerprint_counts(state)
        scores = detector.score_accounts(profiles, counts).set_index("user_id", drop=False)
        scores = scores.loc[[u for u in children if u in scores.index]].reset_index(drop=True)
        self.scored.inc(len(scores))
        if not scores["flagged"].any():
            return
        matches = detector.match(profiles, counts)
        best = matches[matches["rank"] == 1].set_index("child")["parent"].astype(str)
        for i in np.flatnonzero(scores["flagged"].to_numpy()):
            child = str(scores.at[i, "user_id"])
            state.flagged.add(child)
            raw = state.raw.get(child, {})
            own = [str(r["event_id"]) for _, r, _ in sorted(raw.get("account", []), key=lambda e: e[2])]
            ban = [state.bans[best[child]][1]] if child in best.index and best[child] in state.bans else []
            rest = sorted((e for kind, part in raw.items() if kind != "account" for e in part), key=lambda e: e[2])
            evidence = {child: list(dict.fromkeys([*own, *ban, *(str(r["event_id"]) for _, r, _ in rest)]))}
            yield from alerts_by_day(scores.iloc[[i]], detector, [children[child]], evidence)


def _account_key(event_type: str, row: dict[str, Any]) -> str | None:
    return EVADER_KEY if event_type in EVADER_TYPES else None


class EvaderStream(StreamingDetector):
    name = "evaders"
    event_types = EVADER_TYPES

    def expand(self, batches: Any, settings: StreamSettings) -> StreamOutputs:
        keyed = batches | "AccountsOneShard" >> beam.FlatMap(
            _by_shard, 1, _account_key, settings.checkpoints, received_ranges(settings, EVADER_STAGE)
        )
        out = _stage(keyed, settings, EvaderLogic(settings, self.name), "Accounts", main="alerts")
        return StreamOutputs(out.alerts, None, (out.checkpoint,) if settings.checkpoints else ())

    def source_stages(self, settings: StreamSettings) -> list[tuple[str, str]]:
        return [(EVADER_STAGE, shard_of(EVADER_KEY, 1))]


# --- trolls, per message -----------------------------------------------------------------------
# A scored message for the per-user stage: (user, event_id, t_us, score, flagged, reason texts)
ScoredMessage = tuple[str, str, int, float, bool, list[str]]


@dataclass
class ChannelsState:
    """One channel shard's trailing conversation: the messages of the last ``MAX_CONTEXT_S`` seconds."""

    recent: list[Event] = field(default_factory=list)


def _chat_key(event_type: str, row: dict[str, Any]) -> str | None:
    return str(row["context"]) if event_type == "chat" else None


class ChannelMessagesLogic(StageLogic):
    stage = MESSAGE_CHANNELS_STAGE

    def __init__(self, settings: StreamSettings, name: str, keep_s: int) -> None:
        self.store, self.name = settings.model_store, name
        self.user_shards, self.keep_us = settings.key_shards, keep_s * 1_000_000
        self._live: LiveModel | None = None
        self.scored = Metrics.counter("stream", "messages_scored")
        self.duplicates = Metrics.counter("stream", "duplicate_events")

    def setup(self) -> None:
        self._live = LiveModel(ModelStore(self.store), self.name)

    def new_state(self) -> ChannelsState:
        return ChannelsState()

    def parts(self, state: ChannelsState) -> dict[Hashable, Any]:
        """One part per kept message (ids are unique there): a firing adds the new second's messages and
        drops those that fell out of the conversation."""
        parts: dict[Hashable, Any] = {("recent", str(r[1]["event_id"])): r for r in state.recent}
        return parts if len(parts) == len(state.recent) else {("state",): state}

    def from_parts(self, parts: dict[Hashable, Any]) -> ChannelsState:
        if ("state",) in parts:
            return parts[("state",)]  # type: ignore[no-any-return]
        return ChannelsState(recent=list(parts.values()))

    def due_times(self, rows: list[Event], ts_us: int) -> dict[int, list[Event]]:
        return _by_second(rows)  # once the watermark passes a message, its conversation so far is complete

    def fire(
        self, state: ChannelsState, rows: list[Event], fired_us: int, set_timer: Callable[[int], None]
    ) -> Iterator[tuple[str, list[ScoredMessage]]]:
        if not rows:
            return
        assert self._live is not None
        detector = self._live.get()
        known = {str(r[1]["event_id"]) for r in state.recent}
        fresh, _ = _unique([r for r in rows if str(r[1]["event_id"]) not in known])
        self.duplicates.inc(len(rows) - len(fresh))
        if not fresh:
            return
        start = min(r[2] for r in fresh) - self.keep_us
        context = [r for r in state.recent if r[2] >= start]
        items = detector.score_items(_frames([*context, *fresh]), pd.DataFrame())
        new_ids = {str(r[1]["event_id"]) for r in fresh}
        items = items[items["event_id"].isin(new_ids)]
        self.scored.inc(len(items))
        newest = max(r[2] for r in [*state.recent, *fresh])
        state.recent = sorted(
            (r for r in [*state.recent, *fresh] if r[2] >= newest - self.keep_us),
            key=lambda r: (r[2], r[1]["event_id"]),
        )
        out: dict[str, list[ScoredMessage]] = {}
        times = {str(r[1]["event_id"]): r[2] for r in fresh}
        for row in items.itertuples(index=False):
            texts = [reason.text for reason in row.reasons]
            scored = (
                str(row.user_id),
                str(row.event_id),
                times[str(row.event_id)],
                float(row.score),
                bool(row.flagged),
            )
            out.setdefault(shard_of(str(row.user_id), self.user_shards), []).append((*scored, texts))
        yield from out.items()


@dataclass
class UserRate:
    """A user's message evidence: messages, expected violating messages, recent ids (most telling first)."""

    messages: int = 0
    violations: float = 0.0
    recent: list[str] = field(default_factory=list)


class UserMessagesLogic(StageLogic):
    stage = MESSAGE_USERS_STAGE
    source = False

    def __init__(self, settings: StreamSettings, name: str) -> None:
        self.store, self.name = settings.model_store, name
        self.evidence = settings.evidence_per_alert
        self._live: LiveModel | None = None

    def setup(self) -> None:
        self._live = LiveModel(ModelStore(self.store), self.name)

    def new_state(self) -> dict[str, UserRate]:
        return {}

    def parts(self, state: dict[str, UserRate]) -> dict[Hashable, Any]:
        return {("user", user): rate for user, rate in state.items()}

    def from_parts(self, parts: dict[Hashable, Any]) -> dict[str, UserRate]:
        return {key[1]: rate for key, rate in parts.items()}  # type: ignore[index]

    def due_times(self, rows: list[ScoredMessage], ts_us: int) -> dict[int, list[ScoredMessage]]:
        return {ts_us: rows} if rows else {}

    def fire(
        self, state: dict[str, UserRate], rows: list[ScoredMessage], fired_us: int, set_timer: Callable[[int], None]
    ) -> Iterator[Alert]:
        if not rows:
            return
        assert self._live is not None
        detector = self._live.get()
        model = detector.require_fitted()
        by_user: dict[str, list[ScoredMessage]] = {}
        for item in sorted(rows, key=lambda m: (m[2], m[1])):
            by_user.setdefault(item[0], []).append(item)
        users = sorted(by_user)
        for user in users:
            rate = state.setdefault(user, UserRate())
            for _, event_id, _, score, _, _ in by_user[user]:
                rate.messages += 1
                rate.violations += score
                rate.recent = [event_id, *(e for e in rate.recent if e != event_id)][: self.evidence]
        k = np.array([state[u].violations for u in users])
        n = np.array([float(state[u].messages) for u in users])
        interval = float(detector.params.get("interval", 0.8))
        mean, low, high = rate_posterior(k, n, model["rate_prior"], interval)
        for i, user in enumerate(users):
            flagged = [m for m in by_user[user] if m[4]]
            if not flagged and not low[i] > model["rate_threshold"]:
                continue
            trigger = max(flagged, key=lambda m: m[3]) if flagged else by_user[user][-1]
            yield self._alert(detector, user, state[user], trigger, flagged, (mean[i], low[i], high[i]), interval)

    def _alert(
        self,
        detector: Detector,
        user: str,
        rate: UserRate,
        trigger: ScoredMessage,
        flagged: list[ScoredMessage],
        posterior: tuple[float, float, float],
        interval: float,
    ) -> Alert:
        mean, low, high = (float(v) for v in posterior)
        model = detector.require_fitted()
        need = int(detector.params["min_messages"])
        n = rate.messages
        if n >= need:
            status = SCORED
        else:
            rests = "this one message" if n == 1 else f"these {n} messages"
            status = (
                f"{LOW_EVIDENCE}: {n} chat message{'s' * (n != 1)}: the alert rests on {rests}"
                f" (the rate's prior is fit on users with ≥ {need})"
            )
        prior_mean = float(model["rate_prior"].mean)
        reasons = [
            AlertReason(feature="status", value=float(n), norm=float(need), text=status),
            AlertReason(
                feature="violation_rate",
                value=mean,
                norm=prior_mean,
                text=f"violating messages {rate.violations:.1f} of {n}: rate {mean:.3f}"
                f" ({round(100 * interval)}% interval {low:.3f}-{high:.3f}) (norm {prior_mean:.3g})",
            ),
        ]
        for _, event_id, _, score, _, texts in sorted(flagged, key=lambda m: -m[3])[:3]:
            said = ", ".join(texts) or "a violation more likely than not"
            reasons.append(
                AlertReason(
                    feature="message", value=score, norm=ITEM_FLAG, text=f"message {event_id} {score:.2f}: {said}"
                )
            )
        day = trigger[2] // DAY_US * DAY_US
        start = pd.Timestamp(day, unit="us", tz="UTC")
        end = start + pd.Timedelta(days=1)
        telling = [m[1] for m in sorted(flagged, key=lambda m: -m[3])]
        assert self._live is not None
        return Alert(
            alert_id=alert_id(MESSAGE_ALERTS, user, start, end),
            kind="troll",
            user_id=user,
            score=round(float(np.clip(mean, 0.0, 1.0)), 6),
            severity=severity(mean),  # type: ignore[arg-type]
            reasons=reasons,
            model_version=self._live.version or detector.model_version,
            window_start=start.to_pydatetime(),
            window_end=end.to_pydatetime(),
            evidence_event_ids=list(dict.fromkeys([*telling, *rate.recent]))[:EVIDENCE_LIMIT],
        )


class TrollMessageStream(StreamingDetector):
    name = "trolls"
    event_types = ("chat",)

    @classmethod
    def model_problem(cls, detector: Detector) -> str | None:
        state = detector.require_fitted()
        if MESSAGE_MODEL_ATTR not in state or "rate_prior" not in state:
            return (
                "the published trolls model has no message-level part (message model and rate prior); "
                "publish one fitted on events, e.g. `argus detect trolls EVENTS --save-model DIR`, or rerun "
                "`argus batch score --detector trolls`"
            )
        return None

    def expand(self, batches: Any, settings: StreamSettings) -> StreamOutputs:
        detector = ModelStore(settings.model_store).load(self.name)
        keep_s = max(MAX_CONTEXT_S, int(detector.params.get("context_s", 0)), int(detector.params.get("burst_s", 0)))
        keyed = batches | "MessagesByChannelShard" >> beam.FlatMap(
            _by_shard,
            settings.key_shards,
            _chat_key,
            settings.checkpoints,
            received_ranges(settings, MESSAGE_CHANNELS_STAGE),
        )
        channels = _stage(keyed, settings, ChannelMessagesLogic(settings, self.name, keep_s), "MessageContext")
        users = _stage(channels.out, settings, UserMessagesLogic(settings, self.name), "MessageRates", main="alerts")
        checkpoints = (channels.checkpoint, users.checkpoint) if settings.checkpoints else ()
        return StreamOutputs(users.alerts, None, checkpoints)

    def source_stages(self, settings: StreamSettings) -> list[tuple[str, str]]:
        return [(MESSAGE_CHANNELS_STAGE, str(s)) for s in range(settings.key_shards)]


# Every streaming adapter, by the name `argus stream run --detectors` takes.
STREAMING_DETECTORS: dict[str, type[StreamingDetector]] = {
    **ENGINE_DETECTORS,
    "churn": ChurnStream,
    "evaders": EvaderStream,
    "troll-messages": TrollMessageStream,
}
