"""Streaming adapters of the detectors: per-key state and event-time timers around ``detectors/``.

Each adapter is a ``StreamingDetector``: it names the event types it needs and turns the
stream of validated event *batches* into ``argus.schemas.Alert``s (and, when asked, feature
snapshots). The feature and scoring math stays in ``detectors/``; an adapter only decides what
state to keep, when the evidence is complete, and calls the same functions the nightly job calls.

**Batches and shards.** Elements are lists, never single events: the source emits one list per
partition and poll, each adapter splits it into one list per *key shard* (``crc32(key) % shards``),
and every stateful stage adds a whole list to its state in one call and fires one timer per
event-time point for all the keys of a shard. Per-element costs (a runner round trip, a state
append, a timer) are then paid per batch, and shards spread the keyed work over workers on
Flink or Dataflow. Shards are stable across processes and restarts (crc32, not Python's hash).

**Alert windows.** A streaming alert covers the event-time day (UTC) its evidence falls in:
``alert_id(detector, user, day, day + 1)``. A user flagged again later that day produces the same
id (deduplicated downstream); flagged the next day, a new alert. Snapshots are taken at
event-time points fixed by the data (the end of each chat window, each fraud interval), never by
when the runner happened to fire a timer, so replays give the same ids.

**Trolls** (``TrollStream``), two stateful stages:

1. keyed by channel shard: messages wait until the watermark passes the end of their 10-minute
   context window plus the allowed lateness; the closed windows of every channel of the shard
   then go through ``window_user_sums`` (what ``ChatContextState.add`` sums) in one batch (goal
   ranks, repetition and rate against the window's norm need every message of the window),
   giving each user's sums for each window;
2. keyed by user shard: those per-window sums are added in event-time order, gaps between
   messages continue from the user's last message, and after each window the user's running sums
   become a feature row (``features_from_sums``, as ``ChatContextState.features``), scored by the
   published troll model.

The final features equal ``chat_context_features`` over the same events (tested). A message
arriving after its window closed is counted in ``late_events`` and still applied. The channel
stage keeps a closed window's messages for the allowed lateness more (a timer then drops them): a
late message within that horizon joins its window, whose sums are emitted again whole, and the
user stage, which keeps each user's windows open until that horizon has passed, replaces the
window's earlier sums and adds the user's windows from it on again, each giving its snapshot
again. Every snapshot's features, score and alert id are then those of an arrival in time,
whatever the arrival order (tested); alerts raised by the earlier snapshots stay raised. A message
later than the horizon is summed as a window of its own (its goal ranks see only the late
messages; its gap is not counted).

**Fraud** (``FraudStream``): ring features need the payment graph around a user (shared devices,
instruments, payees), so one keyed stage holds the payment, account and moderation events of
the last ``lookback_days`` and, for chat and clicks, counts per user and interval (events per
active day is a fraud feature; the counts give it exactly); at every ``interval_s`` boundary of
event time that saw new payment or account activity it computes ``FraudDetector.features_for``
the users touched since the previous boundary (and their payees), equal to their rows of
``FraudDetector.features`` over the lookback, and scores them with ``FraudDetector.score``
(clusters assigned with ``FraudDetector.assign``). The held rows are frames, parsed once: each
boundary appends the rows that arrived since. The stage runs on one worker. What relates users to
everybody (``fraud_population``: norms, medians, accounts per entity) it keeps from boundary to
boundary (``RollingPopulation``, updated by the rows that entered and left the window; rebuilt from
the held rows on the first boundary, after a restore or a retried firing), so a boundary pays for
its new rows and the features of the touched users' neighbourhood (``feature_reach``), not a pass
over the lookback nor everyone's features. A payment, account or moderation event that arrives after
its boundary was scored (late: the source lets a partition at its log end fall behind the others) is
counted in ``late_events``, kept, and its boundary and every later scored one are scored again at
once, each for the users it scored, with the rows of its own lookback and one population moved on from
boundary to boundary (a late row changes its user's and payee's features, and through shared
entities and the population figures those of others): a boundary's last scoring has the features,
scores and alert ids of an arrival in time, whatever the arrival order (tested); alerts raised by
its earlier scorings stay raised. For that the stage holds the rows of ``fraud_rescore_s`` (a day)
more than the lookback: boundaries that far back from the last scored one are scored again, older
ones keep their scorings. A boundary that fires after a later one was scored has had its
users scored with that one.

**Checkpoints.** With ``StreamSettings.checkpoints`` the source stages (channel windows, payment
graph) record the source ranges each shard took in, and every stateful stage emits a
``StageSnapshot`` after each firing that changed it (tagged output ``checkpoint``): the trolls'
stages (``StageLogic``s run by ``pipelines/stage.py``) a numbered delta, only the channels and
users the firing changed and the messages that came or went; the payment graph its whole state.
After a restart each shard gets its snapshot back as a ``Restore`` element (state and timers) and
is not given again the batches it had (``StreamSettings.received``). See ``pipelines/checkpoint.py``.

**Feature snapshots.** With ``StreamSettings.publish_features`` every scored snapshot also goes
out as a ``FeatureSnapshot`` record (user, event time, model version, score, the numeric
features), keyed by user, on ``<features prefix>.<detector>``: a live feature feed, the
``state update`` that ``argus bench stream`` times, and what the batch/stream agreement test reads.
"""

from __future__ import annotations

import datetime as dt
import heapq
import math
import pickle
import zlib
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import apache_beam as beam
import numpy as np
import orjson
import pandas as pd
from apache_beam.coders import PickleCoder
from apache_beam.metrics.metric import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from argus.detectors.alerts import alerts_from_scores
from argus.detectors.base import Detector
from argus.detectors.chat_features import (
    CONTEXT_WINDOW_S,
    FEATURE_COLUMNS,
    GAP_COLUMNS,
    SUM_COLUMNS,
    features_from_sums,
    window_user_sums,
)
from argus.detectors.events import Events
from argus.detectors.fraud import FraudDetector
from argus.detectors.fraud_features import RollingPopulation
from argus.detectors.store import LiveModel, ModelStore
from argus.detectors.trolls import (
    TrollDetector,
)
from argus.pipelines.checkpoint import Ranges, ReceivedLog, Restore, StageSnapshot, covers, restore_input
from argus.pipelines.kafka_io import SourceBatch
from argus.pipelines.sdk_workers import on_worker
from argus.pipelines.stage import StageLogic, dataclass_from_parts, dataclass_parts, stage_transform
from argus.schemas.models import Alert

__all__ = [
    "STREAMING_DETECTORS",
    "ChatMessage",
    "FraudStream",
    "StreamOutputs",
    "StreamSettings",
    "StreamingDetector",
    "TrollStream",
    "UserChatState",
    "alerts_by_day",
    "apply_window_sums",
    "chat_feature_rows",
    "feature_snapshot",
    "received_ranges",
    "shard_of",
    "window_sums",
    "with_restore",
]

DAY_US = 86_400 * 1_000_000
# Keys are strings (deterministic coder for stateful stages).
StrKeyed = beam.typehints.Tuple[str, Any]
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# A validated event as the source emits it: (event_type, row, event time in epoch microseconds).
Event = tuple[str, dict[str, Any], int]


def epoch_us(ts: dt.datetime) -> int:
    """Exact integer microseconds since the epoch (float seconds would round across second edges)."""
    return (ts - EPOCH) // dt.timedelta(microseconds=1)


def shard_of(key: str, shards: int) -> str:
    """The shard of ``key``: the same in every process and after restarts (crc32, not ``hash``)."""
    return str(zlib.crc32(key.encode()) % shards)


_OPENMP: Any = None  # the loaded OpenMP runtimes (threadpoolctl), found once


@contextmanager
def one_native_thread() -> Iterator[None]:
    """Run the block with OpenMP (the PU model's trees, FAISS) at one thread in the calling thread.

    A firing scores tens of users: OpenMP's team start-up and spin-waiting then cost more than the
    work (on two busy cores the fraud PU model's 100 trees took 0.5 s per boundary instead of a few
    ms), and the runner already gives each bundle its own thread. Results do not change (each row
    is predicted alone). The runtimes are looked up once (~20 ms); a limit then costs microseconds.
    OpenMP keeps the setting per thread, hence a block, not a process-wide call in ``setup``.
    """
    global _OPENMP
    if _OPENMP is None:
        from threadpoolctl import ThreadpoolController

        found = ThreadpoolController().select(user_api="openmp")
        if not found.lib_controllers:  # nothing loaded yet: nothing to limit, look again next time
            yield
            return
        _OPENMP = found
    with _OPENMP.limit(limits=1):
        yield


@dataclass(frozen=True)
class StreamSettings:
    """What every adapter needs: the model store, the event-time tolerances and the key shards."""

    model_store: Path | str  # a folder or a URI (argus.detectors.store)
    allowed_lateness_s: float = 60.0
    fraud_interval_s: int = 3_600
    fraud_lookback_days: int = 30
    # How far back from the last scored boundary a late payment, account or moderation event still has boundaries
    # scored again: the fraud stage holds that much more than the lookback, so each sees exactly its own lookback.
    fraud_rescore_s: int = 86_400
    evidence_per_alert: int = 20
    key_shards: int = 1
    publish_features: bool = False
    checkpoints: bool = False  # record source ranges and emit stage snapshots
    resume: Any = None  # a argus.pipelines.checkpoint.ResumePlan: what to restore, which batches each shard has
    keyed_worker: str | None = None  # the Python worker of the detector's keyed stages (pipelines/sdk_workers.py)


def received_ranges(settings: StreamSettings, stage: str) -> dict[str, Ranges]:
    """Per shard of ``stage``: the source ranges its restored state already holds (empty on a fresh start)."""
    return settings.resume.received(stage) if settings.resume is not None else {}


def with_restore(keyed: Any, settings: StreamSettings, stage: str) -> Any:
    """``keyed`` and, after a restart, the stage's restore elements (one per shard in the checkpoint)."""
    restored = restore_input(keyed.pipeline, settings.resume, stage)
    return keyed if restored is None else (keyed, restored) | f"{stage}WithRestore" >> beam.Flatten()


class StreamOutputs(NamedTuple):
    """What an adapter's ``expand`` returns: alerts, feature snapshots (JSON records) or None, stage snapshots."""

    alerts: Any
    features: Any | None
    checkpoints: tuple[Any, ...] = ()


class StreamingDetector:
    """One detector in streaming mode; subclasses set the class attributes and ``expand``."""

    name: ClassVar[str]  # the model store's name (argus.detectors.registry)
    event_types: ClassVar[tuple[str, ...]]

    def expand(self, batches: Any, settings: StreamSettings) -> StreamOutputs:
        """``batches``: ``SourceBatch``es of ``(event_type, row, t_us)`` timestamped by their earliest event."""
        raise NotImplementedError

    def source_stages(self, settings: StreamSettings) -> list[tuple[str, str]]:
        """(stage, shard) of every stateful stage shard that reads the source (their ranges bound the offsets)."""
        raise NotImplementedError

    @classmethod
    def model_problem(cls, detector: Detector) -> str | None:
        """Why the published model cannot serve this adapter (one line), or None."""
        return None


def feature_snapshot(
    detector: Detector,
    user: str,
    at_us: int,
    features: dict[str, Any],
    score: float,
    flagged: bool,
    model_version: str | None = None,
) -> tuple[str, bytes]:
    """One feature snapshot as (key, JSON value); non-finite numbers become null.

    Give ``model_version`` when writing many: ``detector.model_version`` hashes the whole model.
    """

    def number(value: Any) -> float | None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    record = {
        "detector": detector.name,
        "user_id": user,
        "at_us": int(at_us),
        "model_version": model_version or detector.model_version,
        "score": number(score),
        "flagged": bool(flagged),
        "features": {k: number(v) for k, v in features.items() if not isinstance(v, str | np.ndarray | tuple)},
    }
    return user, orjson.dumps(record)


def _day_window(t_us: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    start = pd.Timestamp(t_us // DAY_US * DAY_US, unit="us", tz="UTC")
    return start, start + pd.Timedelta(days=1)


def alerts_by_day(
    scores: pd.DataFrame,
    detector: Detector,
    days_us: list[int],
    evidence: dict[str, list[str]],
    model_version: str | None = None,
) -> list[Alert]:
    """``alerts_from_scores`` per event-time day; ``days_us[i]`` is row i's evidence time.

    Give ``model_version`` (``detector.model_version``) when calling often: computing it hashes the whole model.
    """
    out: list[Alert] = []
    day_of = pd.Series([t // DAY_US for t in days_us], index=scores.index)
    for day in sorted(day_of[scores["flagged"].to_numpy()].unique()):
        start, end = _day_window(int(day) * DAY_US)
        out += alerts_from_scores(scores[day_of == day], detector, start, end, evidence, model_version=model_version)
    return out


# --- trolls: per-window sums, per-user accumulation ---------------------------------------------
# (event_id, user_id, ts in epoch microseconds, text, channel_mode, channel)
ChatMessage = tuple[str, str, int, str, str | None, str]


@dataclass
class WindowSums:
    """One user's sums over one closed (channel, window): ``SUM_COLUMNS`` (ChatContextState's columns less the gaps)."""

    slot: int
    sums: dict[str, float]
    texts: set[int]
    times: list[tuple[int, str]]  # (ts in epoch microseconds, event_id) of the user's messages
    late: bool = False  # summed alone, after its window was given up: added as a window of its own, without gaps
    channel: str = ""
    # The whole window again, late messages included: it replaces the window's earlier sums. ``alone`` is the
    # user's late messages summed alone (None: none of them are the user's), added instead where the user's
    # window is already settled.
    revised: bool = False
    alone: WindowSums | None = None


def window_sums(messages: list[ChatMessage], window_s: int, late: bool = False) -> list[tuple[str, WindowSums]]:
    """Per (user, channel, window) sums of closed windows, any number of channels, by one ``window_user_sums``.

    Sums are keyed by (user, channel, window) for the call, so one batch yields per-window rows;
    the window-level quantities (goal ranks, the window's rate norm, copies) group by (channel,
    window) and are unaffected. Rows come ordered by user, channel and window.
    """
    if not messages:
        return []
    window_us = window_s * 1_000_000
    keys = [(m[1], m[5], m[2] // window_us) for m in messages]
    found, sums, texts = window_user_sums(
        keys, [m[5] for m in messages], [k[2] for k in keys], [m[3] for m in messages], [m[4] for m in messages]
    )
    times: dict[tuple[str, str, int], list[tuple[int, str]]] = {}
    for key, m in zip(keys, messages, strict=True):
        times.setdefault(key, []).append((int(m[2]), str(m[0])))
    rows = sums.tolist()
    position = {key: i for i, key in enumerate(found)}
    out = []
    for key in sorted(times, key=lambda k: f"{k[0]}\x1f{k[1]}\x1f{k[2]}"):
        user, channel, slot = key
        row = dict(zip(SUM_COLUMNS, rows[position[key]], strict=True))
        out.append((str(user), WindowSums(int(slot), row, texts[key], times[key], late, str(channel))))
    return out


@dataclass
class OpenWindow:
    """A user's window that a late message may still revise: its sums by channel, and what undoes adding them
    (the user's sums, last message and evidence before it, and the distinct texts it brought first)."""

    parts: dict[str, WindowSums]
    sums: dict[str, float] = field(default_factory=dict)
    last_seen_s: int | None = None
    recent: list[str] = field(default_factory=list)
    texts: set[int] = field(default_factory=set)
    added: bool = False


@dataclass
class UserChatState:
    """A user's running ChatContextState sums, distinct texts, last message and recent evidence.

    In the stream, ``open`` holds the user's windows (by slot) that a late message may still revise.
    """

    sums: dict[str, float] = field(default_factory=dict)
    texts: set[int] = field(default_factory=set)
    last_seen_s: int | None = None
    recent: list[str] = field(default_factory=list)
    open: dict[int, OpenWindow] = field(default_factory=dict)
    settled_slot: int | None = None  # the newest window no longer open


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
        seconds = [t // 1_000_000 for t, _ in on_time]
        previous = state.last_seen_s
        gap_n = gap_sum = gap_sq = 0.0
        for second in seconds:
            if previous is not None:
                gap = float(second - previous)
                gap_n, gap_sum, gap_sq = gap_n + 1.0, gap_sum + gap, gap_sq + gap * gap
            previous = second
        state.sums["gap_n"] = state.sums.get("gap_n", 0.0) + gap_n
        state.sums["gap_sum"] = state.sums.get("gap_sum", 0.0) + gap_sum
        state.sums["gap_sq"] = state.sums.get("gap_sq", 0.0) + gap_sq
        state.last_seen_s = int(seconds[-1])
    ids = [e for part in parts for _, e in sorted(part.times)]
    state.recent = (state.recent + ids)[-keep_evidence:]
    return state


def chat_feature_rows(rows: list[tuple[str, dict[str, float], set[int]]], window_s: int) -> pd.DataFrame:
    """Feature rows (``chat_context_features`` columns) for (user, sums, texts) snapshots, in order.

    The index is the users' ids; one user may appear more than once (snapshots at different times).
    ``window_s`` is the features' window: the sums already hold everything it shapes.
    """
    columns = [*SUM_COLUMNS, *GAP_COLUMNS]
    values = np.array([[r[1].get(c, 0.0) for c in columns] for r in rows], dtype=float).reshape(len(rows), len(columns))
    values[np.isnan(values)] = 0.0
    distinct = np.array([len(r[2]) for r in rows], dtype=float)
    features = features_from_sums({c: values[:, j] for j, c in enumerate(columns)}, distinct)
    index = pd.Index([r[0] for r in rows], name="user_id")
    # One 2-D block: a frame built from a dict of columns costs more than the scoring of a small firing's rows.
    block = np.empty((len(rows), len(FEATURE_COLUMNS)))
    for j, column in enumerate(FEATURE_COLUMNS):
        block[:, j] = features[column]
    return pd.DataFrame(block, index=index, columns=list(FEATURE_COLUMNS))


CHANNELS_STAGE, USERS_STAGE, GRAPH_STAGE = "trolls.channels", "trolls.users", "fraud.graph"
# A source batch's share for one shard: (topic, partition, start, end, payload)
ShardBatch = tuple[str, int, int, int, Any]


def _chat_by_shard(
    batch: SourceBatch, shards: int, track: bool = False, received: dict[str, Ranges] | None = None
) -> Iterator[tuple[str, ShardBatch]]:
    """One source batch -> one list of chat messages per channel shard.

    With ``track`` every shard gets the batch's range, even with no message of its own (its
    checkpoints record what it took in), except shards whose restored state already holds it.
    """
    out: dict[str, list[ChatMessage]] = {str(s): [] for s in range(shards)} if track else {}
    for event_type, row, t_us in batch.items:
        if event_type == "chat":
            channel = str(row["context"])
            message = (row["event_id"], row["user_id"], t_us, row["text"], row.get("channel_mode"), channel)
            out.setdefault(shard_of(channel, shards), []).append(message)
    where = (batch.topic, batch.partition)
    for shard, messages in out.items():
        if received and covers(received.get(shard, {}), where, batch.start, batch.end):
            continue
        yield shard, (batch.topic, batch.partition, batch.start, batch.end, messages)


@dataclass
class ChannelWindowsState:
    """One channel shard's closed windows: per channel the newest window (slot) summed, and the messages of the
    windows late messages may still join, until their horizon has passed (``expired_us``)."""

    closed: dict[str, int] = field(default_factory=dict)
    kept: dict[tuple[str, int], list[ChatMessage]] = field(default_factory=dict)  # (channel, slot) -> messages
    expired_us: int = 0  # the newest firing: windows whose horizon ends by then are given up
    # (horizon us, channel, slot) of every kept window, a heap: a firing drops the passed ones without walking
    # the others. Derived from ``kept``: not checkpointed, rebuilt on restore.
    horizons: list[tuple[int, str, int]] = field(default_factory=list, compare=False)


class ChannelWindowsLogic(StageLogic):
    """Keyed by channel shard: hold messages until their window closes, then emit per-user window sums.

    Messages wait (pickled, by the time their window closes) until the watermark passes the end of
    their window plus the allowed lateness; one firing per such time closes that window for every
    channel of the shard, in one ``window_sums`` call. A closed window's messages are kept for the
    allowed lateness more (its *horizon*; a timer then drops them): a message of a closed window
    within its horizon is late, counted, and joins it, and the whole window is summed and emitted
    again (``WindowSums.revised``: the user stage replaces the window's earlier sums). One later than
    that is summed as a window of its own. Output: one list of (user, WindowSums) per user shard.
    Checkpoint parts: one per channel and kept window, and the waiting messages.
    """

    stage = CHANNELS_STAGE

    def __init__(self, window_s: int, lateness_s: float, user_shards: int) -> None:
        self.window_s, self.user_shards = window_s, user_shards
        self.window_us, self.lateness_us = window_s * 1_000_000, round(lateness_s * 1_000_000)
        self.late = Metrics.counter("stream", "late_events")
        self.duplicates = Metrics.counter("stream", "duplicate_events")

    def close_us(self, slot: int) -> int:
        """When window ``slot`` closes: its end plus the allowed lateness."""
        return (slot + 1) * self.window_us + self.lateness_us

    def horizon_us(self, slot: int) -> int:
        """When window ``slot`` is given up: the allowed lateness after it closed."""
        return self.close_us(slot) + self.lateness_us

    def new_state(self) -> ChannelWindowsState:
        return ChannelWindowsState()

    def parts(self, state: ChannelWindowsState) -> dict[Hashable, Any]:
        parts = dataclass_parts(state, ("closed", "kept"))
        del parts[("horizons",)]
        return parts

    def from_parts(self, parts: dict[Hashable, Any]) -> ChannelWindowsState:
        state: ChannelWindowsState = dataclass_from_parts(ChannelWindowsState, parts, ("closed", "kept"))
        state.horizons = [(self.horizon_us(slot), channel, slot) for channel, slot in state.kept]
        heapq.heapify(state.horizons)
        return state

    def changed_parts(self, rows: list[ChatMessage]) -> list[Hashable]:
        windows = [("kept", (m[5], m[2] // self.window_us)) for m in rows]
        return [("expired_us",), *windows, *(("closed", m[5]) for m in rows)]

    def wake_times(self, state: ChannelWindowsState) -> Iterable[int]:
        return {self.horizon_us(slot) for _, slot in state.kept}

    def from_whole(self, blob: bytes) -> tuple[ChannelWindowsState, list[tuple[int, bytes]]]:
        """A snapshot of an earlier version: bag entries ``("closed", {channel: slot})`` and ``("m", (first
        close in seconds, pickled messages))``, the messages regrouped here by the close of their own window."""
        state = ChannelWindowsState()
        messages: list[ChatMessage] = []
        for kind, item in pickle.loads(blob):
            if kind == "closed":
                for channel, slot in item.items():
                    state.closed[channel] = max(slot, state.closed.get(channel, slot))
            elif kind == "m":
                messages += pickle.loads(item[1])
        by_close = self.due_times(messages, 0).items()
        waiting = [(at, pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)) for at, rows in by_close]
        return state, waiting

    def due_times(self, rows: list[ChatMessage], ts_us: int) -> dict[int, list[ChatMessage]]:
        out: dict[int, list[ChatMessage]] = {}
        for message in rows:
            out.setdefault(self.close_us(message[2] // self.window_us), []).append(message)
        return out

    def _keep(self, state: ChannelWindowsState, window: tuple[str, int], messages: list[ChatMessage]) -> None:
        """Set a kept window's messages; a new window's horizon goes on the heap."""
        if window not in state.kept:
            heapq.heappush(state.horizons, (self.horizon_us(window[1]), *window))
        state.kept[window] = messages

    def _expire(self, state: ChannelWindowsState, fired_us: int) -> None:
        """Drop the kept windows whose horizon has passed by ``fired_us``."""
        state.expired_us = max(state.expired_us, fired_us)
        while state.horizons and state.horizons[0][0] <= state.expired_us:
            _, channel, slot = heapq.heappop(state.horizons)
            del state.kept[(channel, slot)]

    def _unique(self, state: ChannelWindowsState, rows: list[ChatMessage]) -> dict[str, ChatMessage]:
        """``rows`` by event id in event-time order, without repeats of each other or of kept messages (counted)."""
        windows = {(m[5], m[2] // self.window_us) for m in rows}
        kept_ids = {m[0] for w in windows if w in state.kept for m in state.kept[w]}
        unique: dict[str, ChatMessage] = {}
        for message in sorted(rows, key=lambda m: (m[2], m[0])):
            if message[0] in unique or message[0] in kept_ids:
                self.duplicates.inc()
            else:
                unique[message[0]] = message
        return unique

    def fire(
        self, state: ChannelWindowsState, rows: list[ChatMessage], fired_us: int, set_timer: Callable[[int], None]
    ) -> Iterator[tuple[str, list[tuple[str, WindowSums]]]]:
        if not rows:
            self._expire(state, fired_us)
            return
        unique = self._unique(state, rows)
        closed = state.closed
        on_time: list[ChatMessage] = []
        joining: dict[tuple[str, int], list[ChatMessage]] = {}  # late messages of windows within their horizon
        given_up: list[ChatMessage] = []  # late messages of windows beyond it
        newest: dict[str, int] = {}
        for message in unique.values():
            channel, slot = window = message[5], message[2] // self.window_us
            if self.horizon_us(slot) <= state.expired_us:
                given_up.append(message)
            elif window in state.kept or (channel in closed and slot <= closed[channel]):
                joining.setdefault(window, []).append(message)
            else:
                on_time.append(message)
            newest[channel] = max(slot, newest.get(channel, slot))
        for channel, slot in newest.items():
            closed[channel] = max(slot, closed.get(channel, slot))
        parts = window_sums(on_time, self.window_s)
        for message in on_time:
            window = (message[5], message[2] // self.window_us)
            if window in state.kept:
                state.kept[window].append(message)
            else:
                self._keep(state, window, [message])
        if joining:
            late = [m for messages in joining.values() for m in messages]
            alone = {(user, part.channel, part.slot): part for user, part in window_sums(late, self.window_s, True)}
            for window, messages in joining.items():
                self._keep(state, window, sorted(state.kept.get(window, []) + messages, key=lambda m: (m[2], m[0])))
            for user, part in window_sums([m for w in joining for m in state.kept[w]], self.window_s):
                part.revised, part.alone = True, alone.get((user, part.channel, part.slot))
                parts.append((user, part))
        if given_up:
            parts += window_sums(given_up, self.window_s, late=True)
        if joining or given_up:
            self.late.inc(len(unique) - len(on_time))
        for slot in {m[2] // self.window_us for m in on_time} | {w[1] for w in joining}:
            set_timer(self.horizon_us(slot))
        self._expire(state, fired_us)
        by_shard: dict[str, list[tuple[str, WindowSums]]] = {}
        for user, part in parts:
            by_shard.setdefault(shard_of(user, self.user_shards), []).append((user, part))
        yield from by_shard.items()


# A user's snapshot after one window: (user, sums, texts, recent evidence ids, event time in us).
ChatSnapshot = tuple[str, dict[str, float], set[int], list[str], int]


class UserChatLogic(StageLogic):
    """Keyed by user shard: add window sums in event-time order; one feature snapshot per user and window.

    The window sums of one channel-stage firing are due at its time (the element's timestamp): once
    the watermark passes it, every channel shard's sums for that time are in, and they are applied
    in order. A user's window stays open (``UserChatState.open``, with what undoes its adding) until
    ``settle_us``, just after the channel stage gave it up: the channel stage's timer for that holds
    this stage's watermark, so its last revision of the window is applied first (one that came later
    would be added alone, below). A revised window replaces the window's earlier sums: the user's
    state goes back to before it, and the open windows from it on are added again, each giving its
    snapshot again: the snapshots, so the scores and alert ids, of an arrival in time. Sums for a
    window the user already settled (a message later than its horizon) add their late messages
    alone, as a window of their own. Output: one list of snapshots per firing. Checkpoint parts: one
    per user.
    """

    stage = USERS_STAGE
    source = False

    def __init__(self, keep_evidence: int, window_s: int = CONTEXT_WINDOW_S, lateness_s: float = 60.0) -> None:
        self.keep_evidence = keep_evidence
        self.window_us, self.lateness_us = window_s * 1_000_000, round(lateness_s * 1_000_000)

    def settle_us(self, slot: int) -> int:
        """When a user's window ``slot`` is settled (no longer open): once the channel stage gave it up."""
        return (slot + 1) * self.window_us + 2 * self.lateness_us + 1

    def new_state(self) -> dict[str, UserChatState]:
        return {}

    def parts(self, state: dict[str, UserChatState]) -> dict[Hashable, Any]:
        return {("user", user): chat for user, chat in state.items()}

    def from_parts(self, parts: dict[Hashable, Any]) -> dict[str, UserChatState]:
        return _with_open_windows({key[1]: chat for key, chat in parts.items()})  # type: ignore[index]

    def changed_parts(self, rows: list[tuple[str, WindowSums]]) -> list[Hashable]:
        return [("user", user) for user, _ in rows]  # a firing changes the users it has sums for

    def from_whole(self, blob: bytes) -> tuple[dict[str, UserChatState], list[tuple[int, bytes]]]:
        """A snapshot of an earlier version: the users only (sums still waiting came again from the channels)."""
        return _with_open_windows(pickle.loads(blob)), []

    def due_times(self, rows: list[tuple[str, WindowSums]], ts_us: int) -> dict[int, list[tuple[str, WindowSums]]]:
        return {ts_us: rows} if rows else {}

    def fire(
        self,
        state: dict[str, UserChatState],
        rows: list[tuple[str, WindowSums]],
        fired_us: int,
        set_timer: Callable[[int], None],
    ) -> Iterator[list[ChatSnapshot]]:
        due: dict[str, list[WindowSums]] = {}
        for user, part in rows:
            due.setdefault(user, []).append(part)
        if not due:
            return
        snapshots: list[ChatSnapshot] = []
        for user, parts in due.items():
            snapshots += self._apply(user, state.setdefault(user, UserChatState()), parts, fired_us)
        yield snapshots

    def _apply(self, user: str, chat: UserChatState, parts: list[WindowSums], fired_us: int) -> list[ChatSnapshot]:
        """Add ``parts`` to the user's state; the snapshots of every window they changed, in event-time order."""
        first: int | None = None  # the earliest window the parts changed
        alone: list[WindowSums] = []  # added as windows of their own
        for part in parts:
            if part.late:
                alone.append(part)
            elif chat.settled_slot is not None and part.slot <= chat.settled_slot:
                if not part.revised:
                    alone.append(replace(part, late=True))
                elif part.alone is not None:
                    alone.append(part.alone)
            else:
                window = chat.open.get(part.slot)
                if window is None:
                    window = chat.open[part.slot] = OpenWindow({})
                window.parts[part.channel] = part
                first = part.slot if first is None else min(first, part.slot)
        if alone:
            self._add_alone(chat, alone)
        snapshots: list[ChatSnapshot] = []
        if first is not None:
            again = sorted(slot for slot in chat.open if slot >= first)
            added = [chat.open[slot] for slot in again if chat.open[slot].added]
            if added:  # undo the windows from the first revised one on, then add them again in order
                chat.sums, chat.last_seen_s, chat.recent = added[0].sums, added[0].last_seen_s, added[0].recent
                chat.texts -= set().union(*(window.texts for window in added))
            for slot in again:
                window = chat.open[slot]
                group = [window.parts[channel] for channel in sorted(window.parts)]
                window.sums, window.last_seen_s, window.recent = dict(chat.sums), chat.last_seen_s, list(chat.recent)
                window.texts, window.added = set().union(*(part.texts for part in group)) - chat.texts, True
                apply_window_sums(chat, group, self.keep_evidence)
                t_us = max(t for part in group for t, _ in part.times)
                snapshots.append((user, dict(chat.sums), set(chat.texts), list(chat.recent), int(t_us)))
        if alone:
            t_us = max(t for part in alone for t, _ in part.times)
            snapshots.append((user, dict(chat.sums), set(chat.texts), list(chat.recent), int(t_us)))
        for slot in sorted(slot for slot in chat.open if self.settle_us(slot) <= fired_us):
            del chat.open[slot]
            chat.settled_slot = slot
        return snapshots

    def _add_alone(self, chat: UserChatState, alone: list[WindowSums]) -> None:
        """Add late sums to the user's sums and to what undoing each open window restores, so they stay."""
        apply_window_sums(chat, alone, self.keep_evidence)
        texts = set().union(*(part.texts for part in alone))
        for window in chat.open.values():
            if window.added:
                before = UserChatState(window.sums, set(), window.last_seen_s, window.recent)
                window.recent = apply_window_sums(before, alone, self.keep_evidence).recent
                window.texts -= texts


def _with_open_windows(users: dict[str, UserChatState]) -> dict[str, UserChatState]:
    """``users`` with the fields an earlier version's pickles lack (no open windows, none settled)."""
    for chat in users.values():
        if "open" not in vars(chat):
            chat.open, chat.settled_slot = {}, None
    return users


class _ScoreBatchFn(beam.DoFn):  # type: ignore[misc]
    """Scores batches of snapshots with the store's current model (reloaded when a new one is published)."""

    def __init__(self, store: Path | str, name: str, publish_features: bool) -> None:
        self.store, self.name, self.publish_features = store, name, publish_features
        self._live: LiveModel | None = None
        self.scored = Metrics.counter("stream", f"{name}_scored")

    def setup(self) -> None:
        self._live = LiveModel(ModelStore(self.store), self.name)

    def live(self) -> LiveModel:  # a method, not a property: Beam reads every attribute of a DoFn when it is applied
        assert self._live is not None, "setup() runs before process()"
        return self._live


def _chat_scores(detector: Detector, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Score, flagged, and a frame that ``alerts_from_scores`` takes (row positions as its index) with at least
    the flagged rows: by ``TrollDetector.context_scores`` where it serves, else by ``detector.score``."""
    context = detector.context_scores(features) if isinstance(detector, TrollDetector) else None
    if context is None:
        scores = detector.score(features).reset_index(drop=True)
        return scores["score"].to_numpy(dtype=float), scores["flagged"].to_numpy(), scores
    rows = np.flatnonzero(context.flagged)
    alerting = pd.DataFrame(
        {
            "user_id": features.index[rows].astype(str),
            "score": context.score[rows],
            "flagged": True,
            "reasons": [context.reasons[i] for i in rows.tolist()],
        },
        index=rows,
    )
    return context.score, context.flagged, alerting


class _ScoreChatFn(_ScoreBatchFn):
    def process(self, batch: list[ChatSnapshot]) -> Iterator[Any]:
        live = self.live()
        detector = live.get()
        window_s = int(detector.params.get("window_s", CONTEXT_WINDOW_S))
        features = chat_feature_rows([(u, s, t) for u, s, t, _, _ in batch], window_s)
        with one_native_thread():
            score_of, flagged, scores = _chat_scores(detector, features)
        flagged_rows = np.flatnonzero(flagged)
        self.scored.inc(len(batch))
        if len(flagged_rows):
            version = live.model_version()
            for rows in _alert_runs(batch, flagged_rows.tolist()):
                evidence = {batch[i][0]: list(reversed(batch[i][3])) for i in rows}
                start, end = _day_window(batch[rows[0]][4])
                yield from alerts_from_scores(scores.loc[rows], detector, start, end, evidence, model_version=version)
        if self.publish_features:
            names = list(features.columns)
            values = features.to_numpy(dtype=float).tolist()
            score = score_of.tolist()
            store_version = live.version
            for j, (user, _, _, _, t_us) in enumerate(batch):
                row = dict(zip(names, values[j], strict=True))
                snapshot = feature_snapshot(detector, user, t_us, row, score[j], flagged[j], store_version)
                yield beam.pvalue.TaggedOutput("features", snapshot)


def _alert_runs(batch: list[ChatSnapshot], flagged: list[int]) -> Iterator[list[int]]:
    """The flagged rows in runs that one ``alerts_from_scores`` call can take, in order: one event-time day per
    run and each user once (evidence is per user, and a user's snapshots in one batch each get their alert)."""
    run: list[int] = []
    users: set[str] = set()
    for i in flagged:
        user, day = batch[i][0], batch[i][4] // DAY_US
        if run and (user in users or day != batch[run[0]][4] // DAY_US):
            yield run
            run, users = [], set()
        run.append(i)
        users.add(user)
    if run:
        yield run


class TrollStream(StreamingDetector):
    name = "trolls"
    event_types = ("chat",)

    def expand(self, batches: Any, settings: StreamSettings) -> StreamOutputs:
        window_s = int(ModelStore(settings.model_store).load(self.name).params.get("window_s", CONTEXT_WINDOW_S))
        shards, tracked = settings.key_shards, settings.checkpoints
        by_channel = batches | "ByChannelShard" >> beam.FlatMap(
            _chat_by_shard, shards, tracked, received_ranges(settings, CHANNELS_STAGE)
        )
        worker = settings.keyed_worker
        windows = with_restore(by_channel, settings, CHANNELS_STAGE) | "ChannelWindows" >> on_worker(
            stage_transform(ChannelWindowsLogic(window_s, settings.allowed_lateness_s, shards), tracked, main="sums"),
            worker,
        )
        users = with_restore(windows.sums, settings, USERS_STAGE) | "UserChat" >> on_worker(
            stage_transform(
                UserChatLogic(settings.evidence_per_alert, window_s, settings.allowed_lateness_s),
                tracked,
                main="snapshots",
            ),
            worker,
        )
        scored = users.snapshots | "ScoreTrolls" >> on_worker(
            beam.ParDo(_ScoreChatFn(settings.model_store, self.name, settings.publish_features)).with_outputs(
                "features", main="alerts"
            ),
            worker,
        )
        checkpoints = (windows.checkpoint, users.checkpoint) if tracked else ()
        return StreamOutputs(scored.alerts, scored.features if settings.publish_features else None, checkpoints)

    def source_stages(self, settings: StreamSettings) -> list[tuple[str, str]]:
        return [(CHANNELS_STAGE, str(s)) for s in range(settings.key_shards)]


# --- fraud: the payment graph on one key -----------------------------------------------------
GRAPH_TYPES = ("payment", "account", "moderation")
# (event_type, t_us, row) of a payment, account or moderation event
GraphRow = tuple[str, int, dict[str, Any]]
# (user_id, bucket start in us) -> chat and click events of that user in that bucket
ActivityCounts = dict[tuple[str, int], int]
# A bag entry: a source batch's rows, or the frames held since the last boundary (per event type), and counts
GraphEntry = tuple[list[GraphRow] | dict[str, pd.DataFrame], ActivityCounts]


GRAPH_KEY = "payments"


def _graph_batch(
    batch: SourceBatch, bucket_us: int, track: bool = False, received: dict[str, Ranges] | None = None
) -> Iterator[tuple[str, ShardBatch]]:
    """One source batch -> the graph rows and activity counts it adds to the payment graph.

    Payload: ``(graph rows, activity counts)``; with ``track`` even an empty one (the range counts).
    """
    if received and covers(received.get(GRAPH_KEY, {}), (batch.topic, batch.partition), batch.start, batch.end):
        return
    graph: list[GraphRow] = []
    activity: ActivityCounts = {}
    for event_type, row, t_us in batch.items:
        if event_type in GRAPH_TYPES:
            graph.append((event_type, t_us, row))
        else:
            key = (str(row["user_id"]), t_us // bucket_us * bucket_us)
            activity[key] = activity.get(key, 0) + 1
    if graph or activity or track:
        yield GRAPH_KEY, (batch.topic, batch.partition, batch.start, batch.end, (graph, activity))


class _PaymentGraphFn(beam.DoFn):  # type: ignore[misc]
    """One key: the payment graph of the lookback; scores touched users at each interval boundary."""

    ROWS = BagStateSpec("rows", PickleCoder())
    RANGES = BagStateSpec("ranges", PickleCoder())
    DONE = ReadModifyWriteStateSpec("done_us", PickleCoder())
    SCORE = TimerSpec("score", TimeDomain.WATERMARK)

    def __init__(self, settings: StreamSettings, name: str) -> None:
        self.interval_us = int(settings.fraud_interval_s) * 1_000_000
        self.lookback_us = int(settings.fraud_lookback_days) * DAY_US
        self.rescore_us = int(settings.fraud_rescore_s) * 1_000_000
        self.lateness_s = settings.allowed_lateness_s
        self.store, self.name = settings.model_store, name
        self.publish_features = settings.publish_features
        self.checkpoints = settings.checkpoints
        self._live: LiveModel | None = None
        self._rolling: _RollingCache | None = None
        self.late = Metrics.counter("stream", "late_events")
        self.scored = Metrics.counter("stream", f"{name}_scored")

    def setup(self) -> None:
        self._live = LiveModel(ModelStore(self.store), self.name)

    def _boundary(self, t_us: int) -> int:
        return (t_us // self.interval_us + 1) * self.interval_us

    def _rolling_at(
        self, boundary: int, done_us: int | None, kept: list[dict[str, pd.DataFrame]], fresh: dict[str, pd.DataFrame]
    ) -> RollingPopulation:
        """The population over the held rows of ``[boundary - lookback, boundary)``: the one kept since the last
        boundary, updated by the rows that entered and left the window, while it matches the state (the bag holds
        the entry it was kept for and ``done`` its boundary); otherwise (the first boundary, a restore, a retried
        bundle) built from the held rows."""
        start = boundary - self.lookback_us
        cached, self._rolling = self._rolling, None  # never left half updated
        current = cached is not None and done_us == cached.boundary and len(kept) == 1
        if cached is not None and current and _fingerprint(kept[0]) == cached.held:
            rolling, last = cached.rolling, cached.boundary
            rolling.remove(_rows_between([(kept[0], last - self.lookback_us, min(last, start))]))
            rolling.add(_rows_between([(kept[0], max(last, start), boundary), (fresh, start, boundary)]))
            return rolling
        rolling = RollingPopulation()
        rolling.add(_rows_between([(_joined_graph(kept, fresh), start, boundary)]))
        return rolling

    def process(
        self,
        element: tuple[str, ShardBatch | Restore],
        ts: Any = beam.DoFn.TimestampParam,
        rows: Any = beam.DoFn.StateParam(ROWS),  # noqa: B008
        ranges: Any = beam.DoFn.StateParam(RANGES),  # noqa: B008
        done: Any = beam.DoFn.StateParam(DONE),  # noqa: B008
        timer: Any = beam.DoFn.TimerParam(SCORE),  # noqa: B008
    ) -> None:
        if isinstance(element[1], Restore):
            snapshot = element[1].snapshot
            entry, done_us = pickle.loads(snapshot.state)
            rows.add(entry)
            ranges.add(snapshot.received or ReceivedLog())
            if done_us is not None:
                done.write(done_us)
            self._set_timers(timer, [t for t in _entry_times(entry[0]) if done_us is None or t >= done_us])
            return
        topic, partition, start, end, (graph, activity) = element[1]
        if self.checkpoints:
            log = ReceivedLog()
            log.add(topic, partition, start, end, ts.micros)
            ranges.add(log)
        if graph or activity:
            rows.add((graph, activity))
        done_us = done.read()
        if done_us is not None and (late := sum(self._boundary(t_us) <= done_us for _, t_us, _ in graph)):
            self.late.inc(late)  # their boundary was scored before they came: scored again for them (``_rescore``)
        self._set_timers(timer, [t_us for _, t_us, _ in graph])

    def _set_timers(self, timer: Any, times_us: Iterable[int]) -> None:
        """A timer per boundary of ``times_us``. A late row sets its own boundary's timer again, behind the
        watermark: the firing comes at once and scores that boundary again for it (``_rescore``)."""
        for boundary in {self._boundary(t_us) for t_us in times_us}:
            timer.set(Timestamp(boundary / 1e6 + self.lateness_s), dynamic_timer_tag=str(boundary))

    def _touched(self, held: dict[str, pd.DataFrame], boundary: int, done_us: int | None) -> dict[str, int]:
        """The users to score at ``boundary``: those with rows since the last scored boundary, with payees."""
        start = boundary - self.lookback_us if done_us is None else done_us
        return _fresh_users(held, _utc(start), _utc(boundary))

    def _rescore(
        self, held: dict[str, pd.DataFrame], activity: ActivityCounts, late: dict[str, pd.DataFrame], done_us: int
    ) -> Iterator[Any]:
        """Score again every scored boundary from the late rows' first to ``done_us``, each for the users it scored
        (rows in its interval, and their payees), with the rows held now: a late row changes its own user's and
        payee's features and, through shared devices, instruments and payees and the population figures, those
        of others. A boundary's last scoring then has every row of its lookback (held back to the oldest boundary
        that can be scored again, ``fraud_rescore_s`` before ``done_us``), so its features, scores and alert ids
        are those of an arrival in time; alerts its earlier scorings raised stay raised. Boundaries older than
        that keep their scorings; the later ones still see the late rows in their lookback."""
        oldest = done_us - self.rescore_us
        first = max(oldest, min(self._boundary(t_us) for t_us in _entry_times(late)))
        since = _entry_times(_frames_between(held, first - self.interval_us, done_us))
        boundaries = sorted(b for b in {self._boundary(t_us) for t_us in since} if b >= oldest)
        assert self._live is not None, "setup() runs before a firing"
        detector = self._live.get()
        # One population for a walk over several boundaries, moved on from each to the next by the rows that
        # entered and left the lookback (as ``_rolling_at`` does); one boundary gets ``fraud_population``'s pass.
        rolling = RollingPopulation() if len(boundaries) > 1 else None
        previous: int | None = None
        for boundary in boundaries:
            start = boundary - self.lookback_us
            if rolling is not None and previous is not None:  # the lookback of ``previous`` moved on to this one
                rolling.remove(_rows_between([(held, previous - self.lookback_us, min(previous, start))]))
                rolling.add(_rows_between([(held, max(previous, start), boundary)]))
            elif rolling is not None:
                rolling.add(_rows_between([(held, start, boundary)]))
            previous = boundary
            users = _fresh_users(held, _utc(boundary - self.interval_us), _utc(boundary))
            yield from self._score_users(detector, held, activity, boundary, users, rolling)

    def _score_users(
        self,
        detector: Detector,
        held: dict[str, pd.DataFrame],
        activity: ActivityCounts,
        boundary: int,
        users: Iterable[str],
        rolling: RollingPopulation | None = None,
    ) -> list[Any]:
        """The alerts (and feature snapshots) of ``users`` scored at ``boundary``. Of the chat and click counts,
        ``features_for`` reads only theirs (their events per active day): the rows of everyone else would be built
        and filtered out again."""
        users = set(users)
        theirs = {key: n for key, n in activity.items() if key[0] in users}
        frames = {**held, "activity": _activity_frame(theirs)} if theirs else dict(held)
        with one_native_thread():
            return list(self._score_at(detector, frames, boundary, users, rolling))

    def _with_late(
        self, done_us: int, kept: list[dict[str, pd.DataFrame]], late: dict[str, pd.DataFrame]
    ) -> RollingPopulation | None:
        """The population kept for ``done_us`` with the late rows of its lookback counted in, while it matches the
        state (as in ``_rolling_at``); None otherwise (the next boundary builds it from the held rows)."""
        cached, self._rolling = self._rolling, None
        if cached is None or cached.boundary != done_us or len(kept) != 1 or _fingerprint(kept[0]) != cached.held:
            return None
        cached.rolling.add(_rows_between([(late, done_us - self.lookback_us, done_us)]))
        return cached.rolling

    @on_timer(SCORE)
    def score(
        self,
        tag: Any = beam.DoFn.DynamicTimerTagParam,
        fired: Any = beam.DoFn.TimestampParam,
        rows: Any = beam.DoFn.StateParam(ROWS),  # noqa: B008
        ranges: Any = beam.DoFn.StateParam(RANGES),  # noqa: B008
        done: Any = beam.DoFn.StateParam(DONE),  # noqa: B008
    ) -> Iterator[Any]:
        assert self._live is not None
        boundary = int(tag)
        done_us = done.read()
        kept_parts, fresh, activity = _graph_parts(rows.read())
        # Rows that came after their boundary was scored: that boundary is scored again for their users.
        late = {} if done_us is None else _frames_between(fresh, None, done_us)
        ahead = done_us is None or boundary > done_us
        if not ahead and not late:
            # A boundary already scored (a timer set before a restore, one that fired after a later boundary and
            # was scored with it, or a late row's boundary whose rows a firing already took): nothing to do.
            return
        held = _joined_graph(kept_parts, fresh)
        if late:
            assert done_us is not None
            yield from self._rescore(held, activity, late, done_us)
        rolling: RollingPopulation | None
        if ahead:
            touched = self._touched(held, boundary, done_us)
            done.write(boundary)
            rolling = self._rolling_at(boundary, done_us, kept_parts, fresh)
            if touched:
                yield from self._score_users(self._live.get(), held, activity, boundary, touched, rolling)
        else:
            assert done_us is not None
            rolling = self._with_late(done_us, kept_parts, late)
            boundary = done_us  # the state's last scored boundary stays
        # One bag entry of held frames from now on (rows parsed once, fewer and larger reads), without what
        # fell out of the lookback of every boundary a late row may still have scored again (``_rescore``).
        cutoff = boundary - self.rescore_us - self.lookback_us
        kept = {kind: frame[frame["ts"] >= _utc(cutoff)].reset_index(drop=True) for kind, frame in held.items()}
        kept = {kind: frame for kind, frame in kept.items() if len(frame)}
        entry = (kept, {k: n for k, n in activity.items() if k[1] >= cutoff})
        rows.clear()
        rows.add(entry)
        self._rolling = None if rolling is None else _RollingCache(_fingerprint(kept), boundary, rolling)
        if self.checkpoints:
            received = ReceivedLog()
            for log in ranges.read():
                received.absorb(log)
            received.settle(fired.micros)
            ranges.clear()
            ranges.add(received)
            state = pickle.dumps((entry, boundary), protocol=pickle.HIGHEST_PROTOCOL)
            yield beam.pvalue.TaggedOutput(
                "checkpoint", StageSnapshot(GRAPH_STAGE, GRAPH_KEY, fired.micros, state, received)
            )

    def _score_at(
        self,
        detector: Detector,
        frames: dict[str, pd.DataFrame],
        boundary: int,
        touched: set[str],
        rolling: RollingPopulation | None = None,
    ) -> Iterator[Any]:
        end = pd.Timestamp(boundary, unit="us", tz="UTC")
        start = end - pd.Timedelta(microseconds=self.lookback_us)
        events = Events(frames).restrict(start, end)
        assert isinstance(detector, FraudDetector), f"the fraud stage got a {type(detector).__name__}"
        # Only the touched users' neighbourhood, equal to their rows of ``features`` over the lookback.
        features = detector.features_for(events, touched, rolling)
        if features.empty:
            return
        scores = detector.score(features)
        self.scored.inc(len(scores))
        evidence = {u: str(v).split() for u, v in features["evidence"].items()}
        model_version = self._live.model_version() if self._live is not None else None  # hashed once per model
        yield from alerts_by_day(scores, detector, [boundary - 1] * len(scores), evidence, model_version)
        if self.publish_features:
            numeric = features.select_dtypes("number")
            by_user = scores.set_index("user_id")
            version = self._live.version if self._live is not None else None
            for user, row in zip(numeric.index, numeric.to_dict("records"), strict=True):
                score, flagged = by_user.at[user, "score"], by_user.at[user, "flagged"]
                snapshot = feature_snapshot(detector, str(user), boundary, row, score, bool(flagged), version)
                yield beam.pvalue.TaggedOutput("features", snapshot)


def _utc(t_us: int) -> pd.Timestamp:
    return pd.Timestamp(t_us, unit="us", tz="UTC")


def _held_graph(entries: Iterable[GraphEntry]) -> tuple[dict[str, pd.DataFrame], ActivityCounts]:
    """The bag's entries as one Events frame per event type (event time, then event id) and summed counts.

    An entry holds either the rows a source batch added or the frames held since the last boundary:
    only the new rows are parsed into a frame; the held ones are appended to, never rebuilt."""
    kept, fresh, activity = _graph_parts(entries)
    return _joined_graph(kept, fresh), activity


def _graph_parts(
    entries: Iterable[GraphEntry],
) -> tuple[list[dict[str, pd.DataFrame]], dict[str, pd.DataFrame], ActivityCounts]:
    """The bag's entries apart: the held entries' frames, the new rows parsed into one frame per event type, and
    the summed counts."""
    kept: list[dict[str, pd.DataFrame]] = []
    new: dict[str, list[dict[str, Any]]] = {}
    times: dict[str, list[int]] = {}
    activity: ActivityCounts = {}
    for graph, counts in entries:
        if isinstance(graph, dict):
            kept.append(graph)
        else:
            for kind, t_us, row in graph:
                new.setdefault(kind, []).append(row)
                times.setdefault(kind, []).append(t_us)
        for key, n in counts.items():
            activity[key] = activity.get(key, 0) + n
    fresh = {}
    for kind, rows in new.items():
        frame = pd.DataFrame(rows)
        # The event times the source computed, exact to the microsecond: parsing the rows' datetimes costs more.
        frame["ts"] = pd.to_datetime(np.array(times[kind], dtype=np.int64), unit="us", utc=True)
        fresh[kind] = Events.from_frames({kind: frame}).frames[kind]
    return kept, fresh, activity


def _joined_graph(kept: list[dict[str, pd.DataFrame]], fresh: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Held frames and new rows as one frame per event type (event time, then event id)."""
    held: dict[str, list[pd.DataFrame]] = {}
    for graph in [*kept, fresh]:
        for kind, frame in graph.items():
            held.setdefault(kind, []).append(frame)
    frames = {}
    for kind, parts in sorted(held.items()):
        if len(parts) == 1:
            frames[kind] = parts[0]
        else:  # held frames first, as the rows arrived: ties keep that order
            joined = pd.concat(parts, ignore_index=True)
            frames[kind] = joined.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)
    return frames


class _RollingCache(NamedTuple):
    """The fraud stage's population and the state it was kept for: the held entry's fingerprint and boundary."""

    held: tuple[tuple[str, int, str, str], ...]
    boundary: int
    rolling: RollingPopulation


def _fingerprint(frames: dict[str, pd.DataFrame]) -> tuple[tuple[str, int, str, str], ...]:
    """What tells held entries apart cheaply: per event type its rows and first and last event ids."""
    return tuple(
        (kind, len(frame), str(frame["event_id"].iat[0]), str(frame["event_id"].iat[-1]))
        for kind, frame in sorted(frames.items())
        if len(frame)
    )


def _rows_between(parts: list[tuple[dict[str, pd.DataFrame], int | None, int]]) -> Events:
    """The payment and account rows of each ``(frames, start_us, end_us)`` with ``start_us <= ts < end_us`` (no
    lower bound for None), together (in no particular order: they are counted)."""
    cut: dict[str, list[pd.DataFrame]] = {}
    for frames, start_us, end_us in parts:
        for kind in ("payment", "account"):
            frame = frames.get(kind)
            if frame is None or not len(frame):
                continue
            inside = frame["ts"] < _utc(end_us)
            if start_us is not None:
                inside &= frame["ts"] >= _utc(start_us)
            if inside.any():
                cut.setdefault(kind, []).append(frame[inside.to_numpy()])
    joined = {kind: pd.concat(rows, ignore_index=True) if len(rows) > 1 else rows[0] for kind, rows in cut.items()}
    return Events(joined)


def _frames_between(frames: dict[str, pd.DataFrame], start_us: int | None, end_us: int) -> dict[str, pd.DataFrame]:
    """The rows of each frame with ``start_us <= ts < end_us`` (no lower bound for None); empty frames left out."""
    out = {}
    for kind, frame in frames.items():
        inside = frame["ts"] < _utc(end_us)
        if start_us is not None:
            inside &= frame["ts"] >= _utc(start_us)
        if inside.any():
            out[kind] = frame[inside.to_numpy()]
    return out


def _entry_times(graph: dict[str, pd.DataFrame]) -> list[int]:
    """Event times (epoch microseconds) of a checkpointed bag entry's held frames."""
    stamps = [frame["ts"].astype("datetime64[us, UTC]").array.asi8 for frame in graph.values() if len(frame)]
    return np.concatenate(stamps).tolist() if stamps else []


def _activity_frame(activity: ActivityCounts) -> pd.DataFrame:
    """Chat and click counts as one (user_id, ts) row per event: events per active day reads them so."""
    keys = list(activity)
    counts = np.fromiter(activity.values(), dtype=np.int64, count=len(keys))
    users = np.repeat(np.array([k[0] for k in keys], dtype=object), counts)
    starts = np.repeat(np.array([k[1] for k in keys], dtype=np.int64), counts)
    order = np.argsort(starts, kind="stable")  # as ``Events`` orders rows: event time, then (empty) event id
    ts = pd.to_datetime(starts[order], unit="us", utc=True)
    return pd.DataFrame({"user_id": users[order], "ts": ts, "event_id": ""})


def _fresh_users(frames: dict[str, pd.DataFrame], start: pd.Timestamp, end: pd.Timestamp) -> dict[str, int]:
    """Users with payment/account/moderation rows in ``[start, end)`` and the payees of those transfers,
    each with its number of such rows."""
    touched: dict[str, int] = {}
    for frame in frames.values():
        fresh = frame[(frame["ts"] >= start) & (frame["ts"] < end)]
        for user in fresh["user_id"].astype(str):
            touched[user] = touched.get(user, 0) + 1
        if "counterparty_id" in fresh:
            for payee in fresh["counterparty_id"]:
                if isinstance(payee, str) and payee:
                    touched.setdefault(payee, 0)
    return touched


class FraudStream(StreamingDetector):
    name = "fraud"
    event_types = ("payment", "account", "moderation", "chat", "click")

    def expand(self, batches: Any, settings: StreamSettings) -> StreamOutputs:
        # Activity counts per bucket that divides both the interval and the day, so the lookback's
        # cut and events per active day see exactly what one row per event would give.
        bucket_us = math.gcd(int(settings.fraud_interval_s), 86_400) * 1_000_000
        graph = batches | "OneGraph" >> beam.FlatMap(
            _graph_batch, bucket_us, settings.checkpoints, received_ranges(settings, GRAPH_STAGE)
        )
        scored = with_restore(graph, settings, GRAPH_STAGE) | "PaymentGraph" >> on_worker(
            beam.ParDo(_PaymentGraphFn(settings, self.name))
            .with_input_types(StrKeyed)
            .with_outputs("features", "checkpoint", main="alerts"),
            settings.keyed_worker,
        )
        return StreamOutputs(
            scored.alerts,
            scored.features if settings.publish_features else None,
            (scored.checkpoint,) if settings.checkpoints else (),
        )

    def source_stages(self, settings: StreamSettings) -> list[tuple[str, str]]:
        return [(GRAPH_STAGE, GRAPH_KEY)]


STREAMING_DETECTORS: dict[str, type[StreamingDetector]] = {"trolls": TrollStream, "fraud": FraudStream}
