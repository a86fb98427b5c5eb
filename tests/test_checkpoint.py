"""Part-wise checkpoint snapshots: stages send what a firing changed, the checkpoint stage folds it back exactly.

No broker, no runner: the stage and checkpoint DoFns are driven with in-memory state, as a runner would.
"""

from __future__ import annotations

import copy
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
    part_section,
    restore_elements,
)
from argus.pipelines.stage import WAITING, StageFn, StageLogic, dataclass_from_parts, dataclass_parts
from argus.pipelines.stream_adapters import (
    AccountsState,
    ChannelMessagesLogic,
    ChannelsState,
    ChurnLogic,
    ChurnShard,
    EvaderLogic,
    UserMessagesLogic,
    UserRate,
)
from argus.pipelines.stream_detectors import (
    CHANNELS_STAGE,
    USERS_STAGE,
    ChannelWindowsLogic,
    ChannelWindowsState,
    ChatMessage,
    StreamSettings,
    UserChatLogic,
    UserChatState,
)
from tests.beam_state import FakeBag, FakeTimer, FakeValue


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


def _live_state(fn: StageFn, bag: FakeBag) -> tuple[int, dict[Hashable, bytes]]:
    [(_, seq, parts, *_)] = [e for e in bag.read() if e[0] == "parts"]
    return seq, parts


def test_a_stage_restored_from_folded_deltas_has_exactly_its_state(tmp_path: Path) -> None:
    """A shard fires many times; its deltas, folded by the checkpoint stage, restore to the same parts (bytes
    and order), state, waiting elements and timers as the live shard; the deltas are small."""
    rng = random.Random(3)
    fn = StageFn(_CountLogic(), checkpoints=True)
    bag, timers = FakeBag(), FakeTimer()
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
    again, again_timers = FakeBag(), FakeTimer()
    StageFn(_CountLogic(), checkpoints=True).process((shard, restore), Timestamp(micros=0), again, again_timers)
    seq, parts = _live_state(fn, again)
    assert seq == live_seq and parts == live_parts
    assert _sections(parts) == _sections(live_parts)  # each section in the live order
    assert [e[1] for e in again.read() if e[0] == "b"] == waiting
    assert again_timers.due == {at for at, _ in waiting}
    live = fn.logic.from_parts({k: pickle.loads(v) for k, v in live_parts.items()})
    restored = fn.logic.from_parts({k: pickle.loads(v) for k, v in parts.items()})
    assert restored == live and list(restored.order) == list(live.order)


def test_a_shard_fired_by_several_workers_and_retried_bundles_gets_the_state_its_bag_holds() -> None:
    """Workers keep a shard's state between firings: a firing on a bag another worker moved on, or rolled
    back after a failed bundle, gives exactly what unpickling the bag's parts gives (a fresh worker each time)."""
    rng = random.Random(5)
    workers = [StageFn(_CountLogic(), checkpoints=True) for _ in range(2)]
    bag, timers = FakeBag(), FakeTimer()
    users = [f"u{i}" for i in range(40)]
    offset, reused = 0, 0
    for step in range(60):
        rows = [(rng.choice(users), 1_000 * (step + rng.randrange(2)), rng.choice([1, 2, -3])) for _ in range(8)]
        workers[0].process(("0", ("t", 0, offset, offset + 8, rows)), Timestamp(micros=1_000 * step), bag, timers)
        offset += 8
        fire_at = min(timers.due)
        timers.due.discard(fire_at)
        fired, tag = Timestamp(micros=fire_at), f"0/{fire_at}"
        worker = rng.choice(workers)
        if rng.random() < 0.3:  # an attempt whose bundle fails (on other input): the runner keeps the bag as it was
            attempt = copy.deepcopy(bag)
            workers[0].process(("0", ("t", 0, 0, 0, [("x", fire_at, 1)])), fired, attempt, FakeTimer())
            list(worker.fire(fired, tag, attempt, FakeTimer()))
            worker = rng.choice(workers)
        oracle_bag = copy.deepcopy(bag)
        expected = list(StageFn(_CountLogic(), checkpoints=True).fire(fired, tag, oracle_bag, FakeTimer()))
        held = worker._live.get("0")
        got = list(worker.fire(fired, tag, bag, timers))
        reused += held is not None and worker._live["0"][1] is held[1]
        assert _untokened(bag.items) == _untokened(oracle_bag.items)
        assert [getattr(o, "value", o) for o in got] == [getattr(o, "value", o) for o in expected]
    assert reused > 10  # the kept state was used, not unpickled every time


@pytest.mark.parametrize("firing", ["together", "reversed"])
def test_due_times_fired_together_or_out_of_order_give_the_outputs_and_state_of_in_order_firings(firing: str) -> None:
    """A runner may fire several due times of a shard at once (the watermark passed them all) or in any order: each
    due time's elements are still applied in a call of their own, earliest first, as one-by-one firings apply them."""
    rng = random.Random(11)
    users = [f"u{i}" for i in range(12)]
    batches = [[(rng.choice(users), 1_000 * (step + 1), rng.choice([1, 2, -3])) for _ in range(6)] for step in range(5)]

    def run(order: list[int]) -> tuple[list[Any], bytes]:
        fn, bag, timers = StageFn(_CountLogic(), checkpoints=False), FakeBag(), FakeTimer()
        for offset, rows in enumerate(batches):
            fn.process(("0", ("t", 0, offset, offset + 1, rows)), Timestamp(micros=0), bag, timers)
        # The outputs of the firings that had elements due (a later timer of a time already applied finds none).
        outputs = []
        for at in order:
            due = any(e[0] == "b" and e[1][0] <= at for e in bag.read())
            fired = list(fn.fire(Timestamp(micros=at), f"0/{at}", bag, timers))
            outputs += fired if due else []
        [(_, _, parts, *_)] = [e for e in bag.read() if e[0] == "parts"]
        return outputs, pickle.dumps(fn.logic.from_parts({k: pickle.loads(v) for k, v in parts.items()}))

    times = sorted({row[1] for rows in batches for row in rows})
    in_order = run(times)
    assert in_order[0] == [("fired", at) for at in times]
    assert run([times[-1]] if firing == "together" else times[::-1]) == in_order


def _untokened(items: list[Any]) -> list[Any]:
    """Bag entries without the random token each firing writes with its parts."""
    return [entry[:4] if entry[0] == "parts" else entry for entry in items]


def test_a_checkpoint_written_whole_by_an_earlier_version_still_restores() -> None:
    fn = StageFn(_CountLogic(), checkpoints=True)
    state = _Shard(counts={"a": 2, "b": 1}, order={"b": 5, "a": 7}, total=3)
    old = StageSnapshot("toy.users", "0", 7, pickle.dumps((state, [(9, pickle.dumps([("a", 9, 1)]))])), ReceivedLog())
    bag, timers = FakeBag(), FakeTimer()
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

    class Timer:
        def set(self, *args: Any, **kwargs: Any) -> None:
            pass

        def clear(self) -> None:
            pass

    fn = _CheckpointFn(tmp_path, None, "g", {"t": {0: 0}}, [], interval_s=0.0)  # type: ignore[arg-type]
    fn._consumer = Commits()
    bag, progress, bases = FakeBag(), FakeValue(), FakeValue()
    steps = [_delta(1, 100, {("a", 1): b"1"}), _delta(2, 200, {("a", 2): b"2"}), _delta(3, 300, {("a", 1): b"3"})]
    for snapshot in steps:
        fn.process(("checkpoint", snapshot), bag, Timer(), Timer())
    fn.write(Timestamp(micros=201), bag, progress, Timer(), bases)
    assert [s.seq for s in bag.read()] == [3]  # folded ones leave the bag; their state is the base
    fn.write(Timestamp(micros=301), bag, progress, Timer(), bases)
    [(_, first), (_, second)] = sorted(load_checkpoints(tmp_path), key=lambda pc: pc[1].at_us)
    assert first.snapshots[("s", "0")].parts == {("a", 1): b"1", ("a", 2): b"2"}
    assert second.snapshots[("s", "0")].parts == {("a", 1): b"3", ("a", 2): b"2"} and not bag.read()


# --- the trolls' stages: channel windows and per-user sums, driven as a runner would -----------------
WINDOW_S, LATENESS_S, USER_SHARDS = 60, 5.0, 2
TEXTS = ("gg", "nice play", "lol", "go go go", "what a save", "spam spam spam")


def _chat_batches(seed: int, count: int, size: int = 12) -> list[list[ChatMessage]]:
    """Chat batches over 5 channels and 200 users, mostly in order; some messages repeated, some late."""
    rng = random.Random(seed)
    batches, now_us, n = [], 1_700_000_000_000_000, 0
    for _ in range(count):
        batch: list[ChatMessage] = []
        for _ in range(size):
            now_us += rng.randrange(1, 4_000_000)
            behind = rng.choice([0, 0, 0, 0, 0, 0, 0, 0, 20, 150]) * 1_000_000  # 150 s: past its window's close
            n += 1
            message = (
                f"m{n}",
                f"u{rng.randrange(200)}",
                now_us - behind,
                rng.choice(TEXTS),
                None,
                f"c{rng.randrange(5)}",
            )
            batch.append(message)
            if rng.random() < 0.05:
                batch.append(message)  # delivered twice
        batches.append(batch)
    return batches


@dataclass
class _TrollStages:
    """Both troll stages on their shards: bags, timers, every snapshot in arrival order, every output."""

    channels: StageFn = field(
        default_factory=lambda: StageFn(ChannelWindowsLogic(WINDOW_S, LATENESS_S, USER_SHARDS), True)
    )
    users: StageFn = field(default_factory=lambda: StageFn(UserChatLogic(5), True))
    bags: dict[tuple[str, str], FakeBag] = field(default_factory=dict)
    timers: dict[tuple[str, str], FakeTimer] = field(default_factory=dict)
    snapshots: list[StageSnapshot] = field(default_factory=list)
    outputs: list[tuple[str, int, Any]] = field(default_factory=list)  # (stage, fired us, output)
    offset: int = 0

    def _bag(self, key: tuple[str, str]) -> tuple[FakeBag, FakeTimer]:
        return self.bags.setdefault(key, FakeBag()), self.timers.setdefault(key, FakeTimer())

    def restore(self, path: Path) -> None:
        for stage, fn in ((CHANNELS_STAGE, self.channels), (USERS_STAGE, self.users)):
            for shard, restore in restore_elements(str(path), stage):
                fn.process((shard, restore), Timestamp(micros=0), *self._bag((stage, shard)))

    def read(self, batch: list[ChatMessage], watermark_us: int) -> None:
        """One source batch into channel shard 0, then every timer up to ``watermark_us`` fired in time order."""
        ts = Timestamp(micros=min(m[2] for m in batch))
        self.channels.process(
            ("0", ("t", 0, self.offset, self.offset + len(batch), batch)), ts, *self._bag((CHANNELS_STAGE, "0"))
        )
        self.offset += len(batch)
        while True:
            due = [(at, key) for key, timers in self.timers.items() for at in timers.due if at <= watermark_us]
            if not due:
                return
            at, (stage, shard) = min(due)
            bag, timers = self._bag((stage, shard))
            timers.due.discard(at)
            fn = self.channels if stage == CHANNELS_STAGE else self.users
            for out in fn.fire(Timestamp(micros=at), f"{shard}/{at}", bag, timers):
                if getattr(out, "tag", None) == "checkpoint":
                    self.snapshots.append(out.value)
                elif stage == CHANNELS_STAGE:
                    self.outputs.append((stage, at, out))
                    self.users.process(out, Timestamp(micros=at), *self._bag((USERS_STAGE, out[0])))
                else:
                    self.outputs.append((stage, at, out))

    def live_parts(self) -> dict[tuple[str, str], dict[Hashable, bytes]]:
        """Each shard's state as it holds it (its parts, bytes and order), with a source shard's waiting messages."""
        out = {}
        for key, bag in self.bags.items():
            [(_, _, parts, *_)] = [e for e in bag.read() if e[0] == "parts"]
            waiting = [(e[1][0], e[1][1]) for e in bag.read() if e[0] == "b"]
            if key[0] == CHANNELS_STAGE:
                keys = [k for k, _ in _waiting_keyed(waiting)]
                parts = {**parts, **dict(zip(keys, (blob for _, blob in waiting), strict=True))}
            out[key] = parts
        return out


def _waiting_keyed(waiting: list[tuple[int, bytes]]) -> list[tuple[Hashable, bytes]]:
    from argus.pipelines.stage import _digest, _waiting_parts

    return list(_waiting_parts(waiting, [_digest(blob) for _, blob in waiting]).items())


def _sections(parts: dict[Hashable, Any]) -> dict[Hashable, list[Hashable]]:
    out: dict[Hashable, list[Hashable]] = {}
    for key in parts:
        out.setdefault(part_section(key), []).append(key)
    return out


def _watermark(batch: list[ChatMessage]) -> int:
    return max(m[2] for m in batch) - 30_000_000  # 30 s of out-of-orderness


def _states(stages: _TrollStages) -> dict[tuple[str, str], Any]:
    out = {}
    for key, parts in stages.live_parts().items():
        logic = stages.channels.logic if key[0] == CHANNELS_STAGE else stages.users.logic
        out[key] = logic.from_parts({k: pickle.loads(v) for k, v in parts.items() if k[0] != WAITING})  # type: ignore[index]
    return out


def test_the_troll_stages_restored_from_folded_deltas_have_exactly_their_state(tmp_path: Path) -> None:
    """Channel windows and per-user sums send numbered deltas; folded, they equal each shard's whole state
    (parts, order, waiting messages), and a restore from them goes on exactly as the uninterrupted stages."""
    batches = _chat_batches(seed=5, count=60)
    live = _TrollStages()
    for batch in batches[:40]:
        live.read(batch, _watermark(batch))
    assert {s.stage for s in live.snapshots} == {CHANNELS_STAGE, USERS_STAGE}
    assert all(not s.complete for s in live.snapshots if s.seq > 1)  # deltas after each shard's first
    at_us = max(s.at_us for s in live.snapshots)
    arrival = list(live.snapshots)
    random.Random(1).shuffle(arrival)  # the checkpoint stage gets them in any order
    latest, later, complete = fold_snapshots({}, arrival, at_us)
    assert complete and not later and set(latest) == set(live.bags)
    whole = live.live_parts()
    for key, folded in latest.items():  # each section (channels, kept windows, ...) in the live order
        assert folded.parts == whole[key] and _sections(folded.parts) == _sections(whole[key])
    assert any(k[0] == WAITING for k in latest[(CHANNELS_STAGE, "0")].parts)  # type: ignore[index]
    # Deltas, not states: the user shards' last deltas carry a fraction of their users.
    for shard in ("0", "1"):
        last = [s for s in live.snapshots if (s.stage, s.shard) == (USERS_STAGE, shard)][-1]
        assert 0 < len(last.parts) < len(whole[(USERS_STAGE, shard)]) / 2

    from argus.pipelines.checkpoint import Checkpoint, save_checkpoint

    path = save_checkpoint(tmp_path, Checkpoint("g", at_us, {}, latest))
    restored = _TrollStages(offset=live.offset)
    restored.restore(path)
    assert restored.live_parts() == whole and _states(restored) == _states(live)
    assert {k: t.due for k, t in restored.timers.items() if t.due} == {
        k: t.due for k, t in live.timers.items() if t.due
    }
    state = _states(live)[(USERS_STAGE, "0")]
    assert isinstance(state, dict) and all(isinstance(v, UserChatState) for v in state.values())
    assert isinstance(_states(live)[(CHANNELS_STAGE, "0")], ChannelWindowsState)
    # The rest of the stream: the same outputs and the same state as the stages that ran on.
    done = len(live.outputs)
    for batch in batches[40:]:
        live.read(batch, _watermark(batch))
        restored.read(batch, _watermark(batch))
    assert len(live.outputs) > done and restored.outputs == live.outputs[done:]
    assert restored.live_parts() == live.live_parts()
    # Pickling again only the parts a firing names (``changed_parts``) holds what pickling all of them would
    # (the same state; not always the same bytes: a set unpickled may iterate in another order).
    everything = _TrollStages()
    for fn in (everything.channels, everything.users):
        fn.logic.changed_parts = lambda rows: None  # type: ignore[method-assign]
    for batch in batches:
        everything.read(batch, _watermark(batch))
    assert everything.outputs == live.outputs and _states(everything) == _states(live)


def test_a_dropped_troll_delta_is_caught_not_folded_over() -> None:
    """Without one delta the cut is incomplete (no checkpoint is written); folding the rest regardless
    would lose what it wrote (a user, or a waiting message, that no later firing of its shard rewrote)."""
    live = _TrollStages()
    for batch in _chat_batches(seed=9, count=30):
        live.read(batch, _watermark(batch))
    at_us = max(s.at_us for s in live.snapshots)
    whole = live.live_parts()
    for key in whole:
        chain = sorted((s for s in live.snapshots if (s.stage, s.shard) == key), key=lambda s: s.seq)
        dropped = next(
            s
            for i, s in enumerate(chain[1:-1], start=1)
            if any(k in whole[key] and all(k not in (t.parts or {}) for t in chain[i + 1 :]) for k in s.parts or {})
        )
        rest = [s for s in live.snapshots if s is not dropped]
        _, later, complete = fold_snapshots({}, rest, at_us)
        assert not complete and next(s.seq for s in later if (s.stage, s.shard) == key) == dropped.seq + 1
        parts: dict[Hashable, bytes] = {}
        for snapshot in chain:
            if snapshot is not dropped:
                apply_parts(parts, snapshot.parts or {}, snapshot.removed)
        assert parts != whole[key]


def test_a_user_shard_snapshot_holds_no_sums_the_channels_send_again() -> None:
    """Sums waiting in the per-user stage come from channel firings after its snapshot; a restored
    channel stage sends them again, so the user stage's snapshot must not hold them too."""
    fn = StageFn(UserChatLogic(5), checkpoints=True)
    bag, timers = FakeBag(), FakeTimer()
    messages = [("a", "u1", 1_000_000, "gg", None, "c0"), ("b", "u1", 70_000_000, "lol", None, "c0")]
    logic = ChannelWindowsLogic(WINDOW_S, LATENESS_S, 1)
    [(_, first)] = list(logic.fire(logic.new_state(), messages[:1], 65_000_000, lambda _: None))
    [(_, second)] = list(logic.fire(logic.new_state(), messages[1:], 125_000_000, lambda _: None))
    fn.process(("0", first), Timestamp(micros=65_000_000), bag, timers)
    fn.process(("0", second), Timestamp(micros=125_000_000), bag, timers)  # arrived before the first firing
    out = list(fn.fire(Timestamp(micros=65_000_000), "0/65000000", bag, timers))
    [snapshot] = [o.value for o in out if getattr(o, "tag", None) == "checkpoint"]
    assert [k for k in snapshot.parts or {} if k[0] == WAITING] == []  # type: ignore[index]
    assert list(snapshot.parts or {}) == [("user", "u1")]
    assert [e for e in bag.read() if e[0] == "b"]  # still waiting in the live stage


def test_troll_checkpoints_written_whole_by_an_earlier_version_still_restore() -> None:
    """Channel snapshots were bag entries (closed slots, pickled message batches); user snapshots the users' dict."""
    logic = ChannelWindowsLogic(WINDOW_S, LATENESS_S, 1)
    messages = [("a", "u1", 61_000_000, "gg", None, "c0"), ("b", "u2", 130_000_000, "lol", None, "c1")]
    entries = [("closed", {"c0": 0}), ("m", (logic.close_us(1) / 1e6, pickle.dumps(messages)))]
    old = StageSnapshot(CHANNELS_STAGE, "0", 65_000_000, pickle.dumps(entries), ReceivedLog())
    fn, bag, timers = StageFn(logic, checkpoints=True), FakeBag(), FakeTimer()
    fn.process(("0", Restore(old)), Timestamp(micros=0), bag, timers)
    assert timers.due == {logic.close_us(1), logic.close_us(2)}  # each message by its own window's close
    out = list(fn.fire(Timestamp(micros=logic.close_us(1)), f"0/{logic.close_us(1)}", bag, timers))
    [(_, sums)] = [o for o in out if getattr(o, "tag", None) is None]
    assert [(user, part.slot, part.late) for user, part in sums] == [("u1", 1, False)]
    users = {"u1": UserChatState(sums={"n": 2.0}, texts={1}, last_seen_s=60, recent=["a"])}
    old_users = StageSnapshot(USERS_STAGE, "0", 65_000_000, pickle.dumps(users))
    user_fn, user_bag = StageFn(UserChatLogic(5), checkpoints=True), FakeBag()
    user_fn.process(("0", Restore(old_users)), Timestamp(micros=0), user_bag, FakeTimer())
    [(_, _, parts, *_)] = [e for e in user_bag.read() if e[0] == "parts"]
    assert user_fn.logic.from_parts({k: pickle.loads(v) for k, v in parts.items()}) == users
