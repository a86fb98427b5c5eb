"""Streaming adapters of the detectors: per-key state and event-time timers around ``detectors/``.

Each adapter is a ``StreamingDetector``: it names the event types it needs and turns the
stream of validated events into ``schemas.Alert``s. The feature and scoring math stays in
``detectors/``; an adapter only decides what state to keep, when the evidence is complete, and
calls the same functions the nightly job calls.

**Alert windows.** A streaming alert covers the event-time day (UTC) its evidence falls in:
``alert_id(detector, user, day, day + 1)``. A user flagged again later that day produces the same
id (deduplicated downstream); flagged the next day, a new alert. Snapshots are taken at
event-time points fixed by the data (the end of each chat window, each fraud interval), never by
when the runner happened to fire a timer, so replays give the same ids.

**Trolls** (``TrollStream``), two stateful stages:

1. keyed by channel: messages wait until the watermark passes the end of their 10-minute
   context window plus the allowed lateness; the closed windows then go through
   ``ChatContextState.add`` in one batch (goal ranks, repetition and rate against the window's
   norm need every message of the window), giving each user's sums for each window;
2. keyed by user: those per-window sums are added in event-time order, gaps between messages
   continue from the user's last message, and after each window the user's running sums become
   a feature row (``ChatContextState.features``), scored by the published troll model.

The final features equal ``chat_context_features`` over the same events (tested). A message
arriving after its window closed is counted in ``late_events`` and still applied, as a window of
its own (its goal ranks see only the late messages; its gap is not counted).

**Fraud** (``FraudStream``): ring features need the payment graph around a user (shared devices,
instruments, payees), so one keyed stage holds the payment, account and moderation events of
the last ``lookback_days`` and a per-day activity count; at every ``interval_s`` boundary of
event time that saw new payment or account activity it computes ``FraudDetector.features`` over
the lookback and scores the users touched since the previous boundary (and their payees) with
``FraudDetector.score`` (clusters assigned with ``FraudDetector.assign``). The stage runs on one
worker: its cost is one feature pass over the lookback per boundary.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import apache_beam as beam
import numpy as np
import pandas as pd
from apache_beam.coders import PickleCoder
from apache_beam.metrics.metric import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from detectors.alerts import alerts_from_scores
from detectors.base import Detector
from detectors.chat_features import CONTEXT_WINDOW_S, ChatContextState
from detectors.events import Events
from detectors.store import LiveModel, ModelStore
from schemas.models import Alert

__all__ = [
    "STREAMING_DETECTORS",
    "ChatMessage",
    "FraudStream",
    "StreamSettings",
    "StreamingDetector",
    "TrollStream",
    "UserChatState",
    "apply_window_sums",
    "chat_feature_rows",
    "window_sums",
]

DAY_US = 86_400 * 1_000_000
# Keys are strings (deterministic coder for stateful stages).
StrKeyed = beam.typehints.Tuple[str, Any]
GAP_COLUMNS = ("gap_n", "gap_sum", "gap_sq")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def epoch_us(ts: dt.datetime) -> int:
    """Exact integer microseconds since the epoch (float seconds would round across second edges)."""
    return (ts - EPOCH) // dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class StreamSettings:
    """What every adapter needs: the model store and the event-time tolerances."""

    model_store: Path
    allowed_lateness_s: float = 60.0
    fraud_interval_s: int = 3_600
    fraud_lookback_days: int = 30
    evidence_per_alert: int = 20


class StreamingDetector:
    """One detector in streaming mode; subclasses set the class attributes and ``expand``."""

    name: ClassVar[str]  # the model store's name (detectors.registry)
    event_types: ClassVar[tuple[str, ...]]

    def expand(self, events: Any, settings: StreamSettings) -> Any:
        """``events``: (event_type, row) elements timestamped by event time -> ``Alert`` elements."""
        raise NotImplementedError


def _day_window(t_us: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    start = pd.Timestamp(t_us // DAY_US * DAY_US, unit="us", tz="UTC")
    return start, start + pd.Timedelta(days=1)


def _alerts_by_day(
    scores: pd.DataFrame, detector: Detector, days_us: list[int], evidence: dict[str, list[str]]
) -> list[Alert]:
    """``alerts_from_scores`` per event-time day; ``days_us[i]`` is row i's evidence time."""
    out: list[Alert] = []
    day_of = pd.Series([t // DAY_US for t in days_us], index=scores.index)
    for day in sorted(day_of[scores["flagged"].to_numpy()].unique()):
        start, end = _day_window(int(day) * DAY_US)
        out += alerts_from_scores(scores[day_of == day], detector, start, end, evidence)
    return out


# --- trolls: per-window sums, per-user accumulation ---------------------------------------------
# (event_id, user_id, ts in epoch microseconds, text, channel_mode)
ChatMessage = tuple[str, str, int, str, str | None]


@dataclass
class WindowSums:
    """One user's sums over one closed (channel, window): ChatContextState's columns less the gaps."""

    slot: int
    sums: dict[str, float]
    texts: set[int]
    times: list[tuple[int, str]]  # (ts in epoch microseconds, event_id) of the user's messages
    late: bool = False


def window_sums(
    channel: str, messages: list[ChatMessage], window_s: int, late: bool = False
) -> list[tuple[str, WindowSums]]:
    """Per (user, window) sums of a channel's closed windows, by one ``ChatContextState.add``.

    Users are renamed ``user\\x1fslot`` for the call, so one batch yields per-window rows; the
    window-level quantities (goal ranks, the window's rate norm, copies) group by (channel,
    window) and are unaffected.
    """
    if not messages:
        return []
    frame = pd.DataFrame(messages, columns=["event_id", "user_id", "t_us", "text", "channel_mode"])
    slot = frame["t_us"] // (window_s * 1_000_000)
    frame["ts"] = pd.to_datetime(frame["t_us"], unit="us", utc=True)
    frame["context"] = channel
    frame["user_id"] = frame["user_id"] + "\x1f" + slot.astype(str)
    state = ChatContextState(window_s)
    state.add(frame[["event_id", "user_id", "context", "ts", "text", "channel_mode"]])
    sums = state.sums.drop(columns=[c for c in GAP_COLUMNS if c in state.sums.columns])
    times: dict[str, list[tuple[int, str]]] = {}
    for pseudo, t, event_id in zip(frame["user_id"], frame["t_us"], frame["event_id"], strict=True):
        times.setdefault(pseudo, []).append((int(t), str(event_id)))
    out = []
    for pseudo, row in zip(sums.index, sums.to_dict("records"), strict=True):
        user, slot_text = str(pseudo).split("\x1f")
        out.append((user, WindowSums(int(slot_text), row, set(state.texts.get(pseudo, set())), times[pseudo], late)))
    return out


@dataclass
class UserChatState:
    """A user's running ChatContextState sums, distinct texts, last message and recent evidence."""

    sums: dict[str, float] = field(default_factory=dict)
    texts: set[int] = field(default_factory=set)
    last_seen_s: int | None = None
    recent: list[str] = field(default_factory=list)


def apply_window_sums(state: UserChatState, parts: Iterable[WindowSums], keep_evidence: int = 20) -> UserChatState:
    """Add one event-time point's window sums (possibly from several channels) to a user's state.

    Gaps continue from the user's previous message exactly as ``ChatContextState`` computes them
    (whole seconds, ordered by time then event id); late parts add no gap.
    """
    parts = list(parts)
    for part in parts:
        for column, value in part.sums.items():
            state.sums[column] = state.sums.get(column, 0.0) + float(value)
        state.texts |= part.texts
    on_time = sorted(t for part in parts if not part.late for t in part.times)
    if on_time:
        seconds = np.array([t // 1_000_000 for t, _ in on_time], dtype=np.int64)
        previous = np.r_[np.nan if state.last_seen_s is None else float(state.last_seen_s), seconds[:-1]]
        gaps = (seconds - previous)[~np.isnan(previous)]
        state.sums["gap_n"] = state.sums.get("gap_n", 0.0) + float(len(gaps))
        state.sums["gap_sum"] = state.sums.get("gap_sum", 0.0) + float(gaps.sum())
        state.sums["gap_sq"] = state.sums.get("gap_sq", 0.0) + float((gaps**2).sum())
        state.last_seen_s = int(seconds[-1])
    ids = [e for part in parts for _, e in sorted(part.times)]
    state.recent = (state.recent + ids)[-keep_evidence:]
    return state


def chat_feature_rows(rows: list[tuple[str, dict[str, float], set[int]]], window_s: int) -> pd.DataFrame:
    """Feature rows (``chat_context_features`` columns) for (user, sums, texts) snapshots, in order.

    The index is the users' ids; one user may appear more than once (snapshots at different times).
    """
    keys = [f"{i:09d}" for i in range(len(rows))]
    state = ChatContextState(window_s)
    sums = pd.DataFrame([r[1] for r in rows], index=pd.Index(keys)).fillna(0.0).astype(float)
    for column in GAP_COLUMNS:
        if column not in sums.columns:
            sums[column] = 0.0
    state.sums = sums
    state.texts = {k: r[2] for k, r in zip(keys, rows, strict=True)}
    features = state.features().reindex(keys)
    features.index = pd.Index([r[0] for r in rows], name="user_id")
    return features


class _ChannelWindowsFn(beam.DoFn):  # type: ignore[misc]
    """Keyed by channel: hold messages until their window closes, then emit per-user window sums.

    One bag holds the waiting messages and the last closed window, and one timer per window
    (dynamic tag) closes it: a firing reads state once, and ``process`` never reads state (each
    read is a round trip to the runner on Prism, which has no state cache).
    """

    BUFFER = BagStateSpec("buffer", PickleCoder())
    CLOSE = TimerSpec("close", TimeDomain.WATERMARK)

    def __init__(self, window_s: int, lateness_s: float) -> None:
        self.window_s, self.lateness_s = window_s, lateness_s
        self.late = Metrics.counter("stream", "late_events")
        self.duplicates = Metrics.counter("stream", "duplicate_events")

    def _fire_at(self, slot: int) -> float:
        return (slot + 1) * self.window_s + self.lateness_s

    def process(
        self,
        element: tuple[str, ChatMessage],
        buffer: Any = beam.DoFn.StateParam(BUFFER),  # noqa: B008
        timer: Any = beam.DoFn.TimerParam(CLOSE),  # noqa: B008
    ) -> None:
        message = element[1]
        slot = message[2] // (self.window_s * 1_000_000)
        buffer.add(("m", message))
        timer.set(Timestamp(self._fire_at(slot)), dynamic_timer_tag=str(slot))

    @on_timer(CLOSE)
    def close(
        self,
        key: Any = beam.DoFn.KeyParam,
        fired: Any = beam.DoFn.TimestampParam,
        buffer: Any = beam.DoFn.StateParam(BUFFER),  # noqa: B008
    ) -> Iterator[Any]:
        now = fired.micros / 1e6
        window_us = self.window_s * 1_000_000
        closed: int | None = None
        due: list[ChatMessage] = []
        keep: list[ChatMessage] = []
        for kind, item in buffer.read():
            if kind == "closed":
                closed = item if closed is None else max(closed, item)
            elif self._fire_at(item[2] // window_us) <= now:
                due.append(item)
            else:
                keep.append(item)
        if not due:
            return
        unique: dict[str, ChatMessage] = {}
        for message in sorted(due, key=lambda m: (m[2], m[0])):
            if message[0] in unique:
                self.duplicates.inc()
            else:
                unique[message[0]] = message
        on_time = [m for m in unique.values() if closed is None or m[2] // window_us > closed]
        late = [m for m in unique.values() if closed is not None and m[2] // window_us <= closed]
        last = max(m[2] // window_us for m in due)
        buffer.clear()
        buffer.add(("closed", last if closed is None else max(closed, last)))
        for message in keep:
            buffer.add(("m", message))
        yield from window_sums(key, on_time, self.window_s)
        if late:
            self.late.inc(len(late))
            yield from window_sums(key, late, self.window_s, late=True)


class _UserChatFn(beam.DoFn):  # type: ignore[misc]
    """Keyed by user: add window sums in event-time order; one feature snapshot per window.

    One bag holds the user's running state and the window sums waiting for the watermark; a
    timer per arrival time (dynamic tag) applies them in order once every channel's sums for
    that time are in.
    """

    BUFFER = BagStateSpec("buffer", PickleCoder())
    APPLY = TimerSpec("apply", TimeDomain.WATERMARK)

    def __init__(self, keep_evidence: int) -> None:
        self.keep_evidence = keep_evidence

    def process(
        self,
        element: tuple[str, WindowSums],
        ts: Any = beam.DoFn.TimestampParam,
        buffer: Any = beam.DoFn.StateParam(BUFFER),  # noqa: B008
        timer: Any = beam.DoFn.TimerParam(APPLY),  # noqa: B008
    ) -> None:
        buffer.add(("p", ts.micros, element[1]))
        timer.set(ts, dynamic_timer_tag=str(ts.micros))

    @on_timer(APPLY)
    def apply(
        self,
        key: Any = beam.DoFn.KeyParam,
        fired: Any = beam.DoFn.TimestampParam,
        buffer: Any = beam.DoFn.StateParam(BUFFER),  # noqa: B008
    ) -> Iterator[Any]:
        user = UserChatState()
        due: list[WindowSums] = []
        keep: list[tuple[str, int, WindowSums]] = []
        for entry in buffer.read():
            if entry[0] == "state":
                user = entry[1]
            elif entry[1] <= fired.micros:
                due.append(entry[2])
            else:
                keep.append(entry)
        if not due:
            return
        by_slot: dict[tuple[bool, int], list[WindowSums]] = {}
        for part in due:
            by_slot.setdefault((part.late, part.slot), []).append(part)
        # On-time windows in event-time order; late parts after them.
        for (_, _slot), parts in sorted(by_slot.items()):
            apply_window_sums(user, parts, self.keep_evidence)
            t_us = max(t for part in parts for t, _ in part.times)
            yield (key, dict(user.sums), set(user.texts), list(user.recent), int(t_us))
        buffer.clear()
        buffer.add(("state", user))
        for entry in keep:
            buffer.add(entry)


class _ScoreBatchFn(beam.DoFn):  # type: ignore[misc]
    """Scores batches of snapshots with the store's current model (reloaded when a new one is published)."""

    def __init__(self, store: Path, name: str) -> None:
        self.store, self.name = store, name
        self._live: LiveModel | None = None
        self.scored = Metrics.counter("stream", f"{name}_scored")

    def setup(self) -> None:
        self._live = LiveModel(ModelStore(self.store), self.name)

    def detector(self) -> Detector:
        assert self._live is not None
        return self._live.get()


class _ScoreChatFn(_ScoreBatchFn):
    def process(self, batch: list[tuple[str, dict[str, float], set[int], list[str], int]]) -> Iterator[Alert]:
        detector = self.detector()
        window_s = int(detector.params.get("window_s", CONTEXT_WINDOW_S))
        features = chat_feature_rows([(u, s, t) for u, s, t, _, _ in batch], window_s)
        scores = detector.score(features).reset_index(drop=True)
        self.scored.inc(len(scores))
        flagged = scores["flagged"].to_numpy()
        for i in np.flatnonzero(flagged):
            user, _, _, recent, t_us = batch[i]
            yield from _alerts_by_day(scores.iloc[[i]], detector, [t_us], {user: list(reversed(recent))})


class TrollStream(StreamingDetector):
    name = "trolls"
    event_types = ("chat",)

    def expand(self, events: Any, settings: StreamSettings) -> Any:
        window_s = int(ModelStore(settings.model_store).load(self.name).params.get("window_s", CONTEXT_WINDOW_S))
        by_channel = (
            events
            | "ChatOnly" >> beam.Filter(lambda e: e[0] == "chat")
            | "ByChannel" >> beam.Map(lambda e: (e[1]["context"], _chat_message(e[1])))
        )
        return (
            by_channel
            | "ChannelWindows"
            >> beam.ParDo(_ChannelWindowsFn(window_s, settings.allowed_lateness_s)).with_input_types(StrKeyed)
            | "UserChat" >> beam.ParDo(_UserChatFn(settings.evidence_per_alert)).with_input_types(StrKeyed)
            | "BatchSnapshots" >> beam.BatchElements(min_batch_size=1, max_batch_size=500)
            | "ScoreTrolls" >> beam.ParDo(_ScoreChatFn(settings.model_store, self.name))
        )


def _chat_message(row: dict[str, Any]) -> ChatMessage:
    return (row["event_id"], row["user_id"], epoch_us(row["ts"]), row["text"], row.get("channel_mode"))


# --- fraud: the payment graph on one key -----------------------------------------------------
GRAPH_TYPES = ("payment", "account", "moderation")


class _PaymentGraphFn(beam.DoFn):  # type: ignore[misc]
    """One key: the payment graph of the lookback; scores touched users at each interval boundary."""

    ROWS = BagStateSpec("rows", PickleCoder())
    DONE = ReadModifyWriteStateSpec("done_us", PickleCoder())
    SCORE = TimerSpec("score", TimeDomain.WATERMARK)

    def __init__(self, settings: StreamSettings, name: str) -> None:
        self.interval_us = int(settings.fraud_interval_s) * 1_000_000
        self.lookback_us = int(settings.fraud_lookback_days) * DAY_US
        self.lateness_s = settings.allowed_lateness_s
        self.store, self.name = settings.model_store, name
        self._live: LiveModel | None = None
        self.late = Metrics.counter("stream", "late_events")
        self.scored = Metrics.counter("stream", f"{name}_scored")

    def setup(self) -> None:
        self._live = LiveModel(ModelStore(self.store), self.name)

    def _boundary(self, t_us: int) -> int:
        return (t_us // self.interval_us + 1) * self.interval_us

    def process(
        self,
        element: tuple[str, tuple[str, dict[str, Any]]],
        rows: Any = beam.DoFn.StateParam(ROWS),  # noqa: B008
        timer: Any = beam.DoFn.TimerParam(SCORE),  # noqa: B008
    ) -> None:
        event_type, row = element[1]
        t_us = epoch_us(row["ts"])
        if event_type in GRAPH_TYPES:
            rows.add((event_type, t_us, row))
            boundary = self._boundary(t_us)
            timer.set(Timestamp(boundary / 1e6 + self.lateness_s), dynamic_timer_tag=str(boundary))
        else:  # only counted: events per active day is a fraud feature
            rows.add(("activity", t_us, {"user_id": row["user_id"], "event_id": row["event_id"]}))

    @on_timer(SCORE)
    def score(
        self,
        tag: Any = beam.DoFn.DynamicTimerTagParam,
        rows: Any = beam.DoFn.StateParam(ROWS),  # noqa: B008
        done: Any = beam.DoFn.StateParam(DONE),  # noqa: B008
    ) -> Iterator[Alert]:
        assert self._live is not None
        boundary = int(tag)
        done_us = done.read()
        items = list(rows.read())
        times = np.array([t for _, t, _ in items], dtype=np.int64)
        graph = np.array([k != "activity" for k, _, _ in items], dtype=bool)
        fresh = graph & (times >= boundary - self.interval_us) & (times < boundary)
        if done_us is not None and boundary <= done_us:
            # Evidence for a boundary already scored: kept for later boundaries, counted as late.
            self.late.inc(int(fresh.sum()))
            return
        done.write(boundary)
        if fresh.any():
            touched = _touched_users([items[i] for i in np.flatnonzero(fresh)])
            yield from self._score_at(self._live.get(), _graph_frames(items), boundary, touched)
        cutoff = boundary - self.lookback_us
        if (times < cutoff).any():
            rows.clear()
            for item in items:
                if item[1] >= cutoff:
                    rows.add(item)

    def _score_at(
        self, detector: Detector, frames: dict[str, pd.DataFrame], boundary: int, touched: set[str]
    ) -> list[Alert]:
        end = pd.Timestamp(boundary, unit="us", tz="UTC")
        start = end - pd.Timedelta(microseconds=self.lookback_us)
        events = Events(frames).restrict(start, end)
        features = detector.features(events)
        features = features[features.index.isin(touched)]
        if features.empty:
            return []
        scores = detector.score(features)
        self.scored.inc(len(scores))
        evidence = {u: str(v).split() for u, v in features["evidence"].items()}
        return _alerts_by_day(scores, detector, [boundary - 1] * len(scores), evidence)


def _graph_frames(items: list[tuple[str, int, dict[str, Any]]]) -> dict[str, pd.DataFrame]:
    """The held rows as Events frames; chat and click activity as (user_id, ts) rows under ``activity``."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for kind, t_us, row in items:
        grouped.setdefault(kind, []).append(row if kind != "activity" else {**row, "ts": t_us})
    frames = {}
    for kind, rows in grouped.items():
        frame = pd.DataFrame(rows)
        if kind == "activity":
            frame["ts"] = pd.to_datetime(frame["ts"], unit="us", utc=True)
        frames[kind] = Events.from_frames({kind: frame}).frames[kind]
    return frames


def _touched_users(items: list[tuple[str, int, dict[str, Any]]]) -> set[str]:
    """Users with new payment/account/moderation rows, and the payees of new transfers."""
    users = set()
    for _, _, row in items:
        users.add(str(row["user_id"]))
        if row.get("counterparty_id"):
            users.add(str(row["counterparty_id"]))
    return users


class FraudStream(StreamingDetector):
    name = "fraud"
    event_types = ("payment", "account", "moderation", "chat", "click")

    def expand(self, events: Any, settings: StreamSettings) -> Any:
        return (
            events
            | "OneGraph" >> beam.Map(lambda e: ("payments", e))
            | "PaymentGraph" >> beam.ParDo(_PaymentGraphFn(settings, self.name)).with_input_types(StrKeyed)
        )


STREAMING_DETECTORS: dict[str, type[StreamingDetector]] = {"trolls": TrollStream, "fraud": FraudStream}
