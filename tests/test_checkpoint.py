"""Part-wise checkpoint snapshots: stages send what a firing changed, the checkpoint stage folds it back exactly.

No broker, no runner: the stage and checkpoint DoFns are driven with in-memory state, as a runner would.
"""

from __future__ import annotations

import itertools
import pickle
import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
from apache_beam.utils.timestamp import Timestamp

from argus.pipelines.checkpoint import (
    ReceivedLog,
    Restore,
    StageSnapshot,
    apply_parts,
    fold_snapshots,
    load_checkpoints,
    merge_snapshots,
    part_delta,
    restore_elements,
)
from argus.pipelines.stream_adapters import (
    AccountsState,
    ChannelMessagesLogic,
    ChannelsState,
    ChurnLogic,
    ChurnShard,
    EvaderLogic,
    StageLogic,
    UserMessagesLogic,
    UserRate,
    _StageFn,
    dataclass_from_parts,
    dataclass_parts,
)
from argus.pipelines.stream_detectors import StreamSettings


def _sections(parts: dict[Hashable, Any]) -> dict[Hashable, list[tuple[Hashable, Any]]]:
    out: dict[Hashable, list[tuple[Hashable, Any]]] = {}
    for key, value in parts.items():
        out.setdefault(key[0], []).append((key, value))  # type: ignore[index]
    return out


def _random_parts(rng: random.Random, previous: dict[Hashable, bytes]) -> dict[Hashable, bytes]:
    """The next state: some parts changed, dropped, added, moved to the end (a dict's pop and re-insert)."""
    parts = dict(previous)
    for key in list(parts):
        roll = rng.random()
        if roll < 0.15:
            parts[key] = bytes([rng.randrange(256)])
        elif roll < 0.25:
            del parts[key]
        elif roll < 0.32:
            parts[key] = parts.pop(key)
    for _ in range(rng.randrange(4)):
        section = rng.choice(["a", "b", "c"])
        parts[(section, rng.randrange(40))] = bytes([rng.randrange(256)])
    if rng.random() < 0.3:  # a section rebuilt in another order
        keys = [k for k in parts if k[0] == "b"]  # type: ignore[index]
        rng.shuffle(keys)
        parts = {**{k: v for k, v in parts.items() if k[0] != "b"}, **{k: parts[k] for k in keys}}  # type: ignore[index]
    return parts


def test_deltas_applied_or_merged_give_each_section_back_in_order() -> None:
    rng = random.Random(7)
    states: list[dict[Hashable, bytes]] = [{}]
    for _ in range(200):
        states.append(_random_parts(rng, states[-1]))
    deltas = []
    for seq, (old, new) in enumerate(itertools.pairwise(states), start=1):
        changed, removed = part_delta(old, new)
        deltas.append(StageSnapshot("s", "0", seq, parts=changed, removed=removed, seq=seq, base_seq=seq - 1))
        applied = dict(old)
        apply_parts(applied, changed, removed)
        assert applied == new and _sections(applied) == _sections(new)
        assert sum(len(v) for v in changed.values()) < sum(len(v) for v in new.values()) or len(new) < 8
    # Merged in any grouping (the checkpoint stage merges runs of deltas while a cut waits), same result.
    start = StageSnapshot("s", "0", 0, parts={}, seq=0)
    for size in (1, 3, 17):
        merged = start
        for at in range(0, len(deltas), size):
            run = deltas[at]
            for delta in deltas[at + 1 : at + size]:
                run = merge_snapshots(run, delta)
            merged = merge_snapshots(merged, run)
        assert merged.complete and merged.seq == len(deltas)
        assert merged.parts == states[-1] and _sections(merged.parts) == _sections(states[-1])


def _delta(seq: int, at_us: int, parts: dict[Hashable, bytes], removed: tuple[Hashable, ...] = ()) -> StageSnapshot:
    return StageSnapshot("s", "0", at_us, parts=parts, removed=removed, seq=seq, base_seq=seq - 1 if seq > 1 else None)


def test_the_cut_folds_deltas_in_firing_order_and_waits_for_one_in_flight() -> None:
    first = _delta(1, 100, {("a", 1): b"x", ("a", 2): b"y"})
    second = _delta(2, 200, {("a", 1): b"z"})
    third = _delta(3, 300, {("a", 3): b"w"}, removed=(("a", 2),))
    # Arrived out of order: folded by seq all the same.
    latest, later, complete = fold_snapshots({}, [second, first, third], at_us=250)
    assert complete and later == [third]
    assert latest[("s", "0")].parts == {("a", 1): b"z", ("a", 2): b"y"} and latest[("s", "0")].seq == 2
    # The next cut goes on from that base with what is still held.
    latest, later, complete = fold_snapshots(latest, later, at_us=300)
    assert complete and not later and latest[("s", "0")].parts == {("a", 1): b"z", ("a", 3): b"w"}
    # A delta labelled within the cut whose predecessor has not arrived: no cut yet.
    _, later, complete = fold_snapshots({}, [first, third], at_us=300)
    assert not complete and later == [third]
    # A restored complete snapshot and the deltas after it; a stale repeat of a folded one is dropped.
    restored = StageSnapshot("s", "0", 200, parts={("a", 1): b"z", ("a", 2): b"y"}, seq=2, restored=True)
    latest, later, complete = fold_snapshots({}, [third, restored, second], at_us=400)
    assert complete and not later
    assert latest[("s", "0")].parts == {("a", 1): b"z", ("a", 3): b"w"} and not latest[("s", "0")].restored


@dataclass
class _Shard:
    counts: dict[str, int] = field(default_factory=dict)
    recent: dict[str, list[str]] = field(default_factory=dict)  # the bulk of the state
    order: dict[str, int] = field(default_factory=dict)  # popped and re-inserted: iteration order moves
    total: int = 0


class _CountLogic(StageLogic):
    """Counts events per user and keeps their recent ids; ``order`` moves each touched user to the end;
    a user whose count falls to zero is dropped."""

    stage: ClassVar[str] = "toy.users"
    KEYED = ("counts", "recent", "order")

    def new_state(self) -> _Shard:
        return _Shard()

    def due_times(self, rows: list[Any], ts_us: int) -> dict[int, list[Any]]:
        out: dict[int, list[Any]] = {}
        for row in rows:
            out.setdefault(row[1], []).append(row)
        return out

    def fire(self, state: _Shard, rows: list[Any], fired_us: int, set_timer: Any) -> Any:
        for user, _, delta in rows:
            state.counts[user] = state.counts.get(user, 0) + delta
            state.recent[user] = [*state.recent.get(user, []), f"event-{fired_us}-{delta}"][-20:]
            if state.counts[user] <= 0:
                del state.counts[user]
                del state.recent[user]
            state.order.pop(user, None)
            state.order[user] = fired_us
            state.total += delta
        yield ("fired", fired_us)

    def parts(self, state: _Shard) -> dict[Hashable, Any]:
        return dataclass_parts(state, self.KEYED)

    def from_parts(self, parts: dict[Hashable, Any]) -> _Shard:
        return dataclass_from_parts(_Shard, parts, self.KEYED)  # type: ignore[no-any-return]


class _Bag:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def read(self) -> list[Any]:
        return list(self.items)

    def add(self, item: Any) -> None:
        self.items.append(item)

    def clear(self) -> None:
        self.items = []


class _Timers:
    def __init__(self) -> None:
        self.due: set[int] = set()

    def set(self, at: Timestamp, dynamic_timer_tag: str = "") -> None:
        self.due.add(at.micros)


def _live_state(fn: _StageFn, bag: _Bag) -> tuple[int, dict[Hashable, bytes]]:
    [(_, seq, parts, _)] = [e for e in bag.read() if e[0] == "parts"]
    return seq, parts


def test_a_stage_restored_from_folded_deltas_has_exactly_its_state(tmp_path: Path) -> None:
    """A shard fires many times; its deltas, folded by the checkpoint stage, restore to the same parts (bytes
    and order), state, waiting elements and timers as the live shard; the deltas are small."""
    rng = random.Random(3)
    fn = _StageFn(_CountLogic(), checkpoints=True)
    bag, timers = _Bag(), _Timers()
    snapshots: list[StageSnapshot] = []
    users = [f"u{i}" for i in range(300)]
    offset = 0
    for step in range(40):
        rows = [(rng.choice(users), 1_000 * (step + rng.randrange(3)), rng.choice([1, 1, 2, -3])) for _ in range(25)]
        fn.process(("0", ("t", 0, offset, offset + 25, rows)), Timestamp(micros=1_000 * step), bag, timers)
        offset += 25
        fire_at = min(timers.due)
        timers.due.discard(fire_at)
        out = list(fn.fire(Timestamp(micros=fire_at), f"0/{fire_at}", bag, timers))
        snapshots += [o.value for o in out if getattr(o, "tag", None) == "checkpoint"]
    assert [s.seq for s in snapshots] == list(range(1, len(snapshots) + 1))
    live_seq, live_parts = _live_state(fn, bag)
    assert live_seq == snapshots[-1].seq
    latest, later, complete = fold_snapshots({}, reversed(snapshots), at_us=snapshots[-1].at_us)
    assert complete and not later
    folded = latest[("toy.users", "0")]
    # Waiting elements (due after the last firing) are in the snapshot too.
    waiting = [e[1] for e in bag.read() if e[0] == "b"]
    assert waiting and sorted(k for k in folded.parts if k[0] == "\x00waiting") != []  # type: ignore[index]
    whole = len(pickle.dumps((fn.logic.from_parts({k: pickle.loads(v) for k, v in live_parts.items()}), waiting)))
    assert sum(len(v) for s in snapshots[-10:] for v in s.parts.values()) < 10 * whole / 3  # deltas, not states
    # Restored on a fresh worker through a checkpoint file.
    from argus.pipelines.checkpoint import Checkpoint, save_checkpoint

    path = save_checkpoint(tmp_path, Checkpoint("g", folded.at_us, {}, latest))
    [(shard, restore)] = list(restore_elements(str(path), "toy.users"))
    again, again_timers = _Bag(), _Timers()
    _StageFn(_CountLogic(), checkpoints=True).process((shard, restore), Timestamp(micros=0), again, again_timers)
    seq, parts = _live_state(fn, again)
    assert seq == live_seq and parts == live_parts
    assert _sections(parts) == _sections(live_parts)  # each section in the live order
    assert [e[1] for e in again.read() if e[0] == "b"] == waiting
    assert again_timers.due == {at for at, _ in waiting}
    live = fn.logic.from_parts({k: pickle.loads(v) for k, v in live_parts.items()})
    restored = fn.logic.from_parts({k: pickle.loads(v) for k, v in parts.items()})
    assert restored == live and list(restored.order) == list(live.order)


def test_a_checkpoint_written_whole_by_an_earlier_version_still_restores() -> None:
    fn = _StageFn(_CountLogic(), checkpoints=True)
    state = _Shard(counts={"a": 2, "b": 1}, order={"b": 5, "a": 7}, total=3)
    old = StageSnapshot("toy.users", "0", 7, pickle.dumps((state, [(9, pickle.dumps([("a", 9, 1)]))])), ReceivedLog())
    bag, timers = _Bag(), _Timers()
    fn.process(("0", Restore(old)), Timestamp(micros=0), bag, timers)
    assert timers.due == {9}
    out = list(fn.fire(Timestamp(micros=9), "0/9", bag, timers))
    [snapshot] = [o.value for o in out if getattr(o, "tag", None) == "checkpoint"]
    assert snapshot.complete and snapshot.seq == 1  # the first delta after it is a complete one
    assert fn.logic.from_parts({k: pickle.loads(v) for k, v in snapshot.parts.items()}).counts == {"a": 3, "b": 1}


def _churn_shard() -> ChurnShard:
    shard = ChurnShard(closed=20, version="v1")
    for i in range(5):
        shard.daily[f"u{i}"] = {d: np.arange(3.0) * d for d in range(i + 2)}
        shard.recent[f"u{i}"] = [f"e{i}-{j}" for j in range(3)]
        shard.totals[i] = float(i)
    shard.wake = {"u3": 25, "u1": 22}
    shard.searched = {"u1": 21}
    shard.alerted = {"u4": 18}
    return shard


def _accounts() -> AccountsState:
    state = AccountsState(version="v2", banned=pd.DataFrame({"user_id": ["b1"], "x": [1.0]}).set_index("user_id"))
    state.raw = {"a1": {"account": [("account", {"event_id": "s"}, 5)]}, "a2": {"chat": []}}
    state.bans = {"a2": (7, "ban-1")}
    state.created = {"a1": 5}
    state.fingerprints[0]["d1"] = {"a1", "a2"}
    state.flagged = {"a1"}
    return state


@pytest.mark.parametrize(
    ("logic", "state"),
    [
        (ChurnLogic, _churn_shard()),
        (EvaderLogic, _accounts()),
        (ChannelMessagesLogic, ChannelsState(recent=[("chat", {"event_id": f"m{i}"}, i) for i in range(4)])),
        (
            UserMessagesLogic,
            {"u2": UserRate(3, 1.5, ["m1"]), "u1": UserRate(1, 0.0, []), "u0": UserRate(2, 0.2, ["m2", "m3"])},
        ),
    ],
)
def test_every_adapter_stage_comes_back_from_its_parts(logic: type[StageLogic], state: Any, tmp_path: Path) -> None:
    settings = StreamSettings(model_store=tmp_path)
    stage = logic(settings, "x", 60) if logic is ChannelMessagesLogic else logic(settings, "x")  # type: ignore[call-arg]
    parts = {k: pickle.loads(pickle.dumps(v)) for k, v in stage.parts(state).items()}
    back = stage.from_parts(parts)
    assert pickle.dumps(back) == pickle.dumps(state) or _equal(back, state)
    assert len(stage.parts(state)) > 2  # split, not one whole part


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, pd.DataFrame):
        return a.equals(b)
    if hasattr(a, "__dataclass_fields__"):
        return all(_equal(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    return bool(a == b)


def test_the_checkpoint_stage_writes_folded_state(tmp_path: Path) -> None:
    """Through ``_CheckpointFn``: deltas in, a checkpoint file with each shard's complete state out."""
    from argus.pipelines.checkpoint import _CheckpointFn

    class Commits:
        def commit(self, offsets: list[Any], asynchronous: bool) -> None:
            pass

    class Value:
        def __init__(self) -> None:
            self.value: Any = None

        def read(self) -> Any:
            return self.value

        def write(self, value: Any) -> None:
            self.value = value

    class Timer:
        def set(self, *args: Any, **kwargs: Any) -> None:
            pass

        def clear(self) -> None:
            pass

    fn = _CheckpointFn(tmp_path, None, "g", {"t": {0: 0}}, [], interval_s=0.0)  # type: ignore[arg-type]
    fn._consumer = Commits()
    bag, progress, bases = _Bag(), Value(), Value()
    steps = [_delta(1, 100, {("a", 1): b"1"}), _delta(2, 200, {("a", 2): b"2"}), _delta(3, 300, {("a", 1): b"3"})]
    for snapshot in steps:
        fn.process(("checkpoint", snapshot), bag, Timer(), Timer())
    fn.write(Timestamp(micros=201), bag, progress, Timer(), bases)
    assert [s.seq for s in bag.read()] == [3]  # folded ones leave the bag; their state is the base
    fn.write(Timestamp(micros=301), bag, progress, Timer(), bases)
    [(_, first), (_, second)] = sorted(load_checkpoints(tmp_path), key=lambda pc: pc[1].at_us)
    assert first.snapshots[("s", "0")].parts == {("a", 1): b"1", ("a", 2): b"2"}
    assert second.snapshots[("s", "0")].parts == {("a", 1): b"3", ("a", 2): b"2"} and not bag.read()
