"""The one keyed stateful stage of the streaming pipeline, checkpointed as numbered deltas.

A stage is a ``StageLogic`` (what its state is, when elements are due, what a firing does) run by
``StageFn``: elements (source batches, or lists from an upstream stage) wait in one bag until the
watermark passes the event time at which their evidence is complete; one timer per such time and
key shard (dynamic tag) then hands everything due to the logic, one call per due time, earliest first
(a runner that fires several due times at once, or out of order, gives the outputs of in-order firings).
Per-element costs (a state append, a timer, a runner round trip) are paid per batch, and ``process``
never reads state.

The state is held as pickled parts (``StageLogic.parts``: per user, per channel, per kept message),
so with checkpoints a firing emits a ``StageSnapshot`` with only the parts whose bytes it changed,
the waiting elements that came or went, and the source ranges it took in: a delta numbered per
shard (``seq``) that the checkpoint stage folds onto the last cut (``fold_snapshots`` in
``pipelines/checkpoint.py``). A restored shard gets exactly the parts, order included, that it had.

Which waiting elements a snapshot carries: a source stage's all (the source is not asked for
batches the shard had taken in). A stage fed by another stage carries none: its elements are due
at their own timestamp, which is the upstream firing that produced them, so at a cut at ``X`` the
ones still waiting come from upstream firings after ``X``, and the restored upstream stage produces
them again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, ClassVar

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from argus.pipelines.checkpoint import ReceivedLog, Restore, StageSnapshot, part_delta, part_section

__all__ = ["WAITING", "StageFn", "StageLogic", "dataclass_from_parts", "dataclass_parts", "stage_transform"]


class StageLogic:
    """What one ``StageFn`` does: when elements are due, and what a firing does with them and the state."""

    stage: ClassVar[str]
    # Reads source batches (records their ranges for checkpoints). A stage fed by another stage must
    # make each element due at its own timestamp (see the module doc: its snapshots hold no waiting elements).
    source: ClassVar[bool] = True

    def setup(self) -> None:
        """Per worker, before the first element (load models)."""

    def new_state(self) -> Any:
        raise NotImplementedError

    def due_times(self, rows: list[Any], ts_us: int) -> dict[int, list[Any]]:
        """The rows of one element by the event time (us) after which they are due."""
        raise NotImplementedError

    def wake_times(self, state: Any) -> Iterable[int]:
        """Timers the state holds besides its waiting elements (restored after a restart)."""
        return ()

    def fire(self, state: Any, rows: list[Any], fired_us: int, set_timer: Callable[[int], None]) -> Iterator[Any]:
        """Apply the due ``rows`` to ``state`` (in place) at event time ``fired_us``; yield outputs."""
        raise NotImplementedError

    def parts(self, state: Any) -> dict[Hashable, Any]:
        """The state as parts keyed by tuples whose first item names a section (``("daily", user)``): a
        checkpoint snapshot carries only the parts a firing changed. Default: the whole state, one part."""
        return {("state",): state}

    def from_parts(self, parts: dict[Hashable, Any]) -> Any:
        """The state from ``parts`` (each section in the order ``parts`` gave it)."""
        return parts[("state",)]

    def changed_parts(self, rows: list[Any]) -> Iterable[Hashable] | None:
        """The existing parts a firing on ``rows`` may change in place (new parts need not be named; they
        are found); None: any. A stage whose firings touch a few of many parts (users) saves pickling
        the others again."""
        return None

    def from_whole(self, blob: bytes) -> tuple[Any, list[tuple[int, bytes]]]:
        """The state and waiting elements ``(due us, pickled rows)`` of a snapshot an earlier version wrote
        whole (``StageSnapshot.state``). Default: ``(state, waiting)`` pickled together."""
        state, waiting = pickle.loads(blob)
        return state, waiting


def dataclass_parts(state: Any, keyed: Iterable[str]) -> dict[Hashable, Any]:
    """A dataclass state's parts: one per entry of the dict fields named in ``keyed``, one per other field."""
    keyed = set(keyed)
    out: dict[Hashable, Any] = {}
    for item in dataclasses.fields(state):
        value = getattr(state, item.name)
        if item.name in keyed:
            out.update({(item.name, key): entry for key, entry in value.items()})
        else:
            out[(item.name,)] = value
    return out


def dataclass_from_parts(cls: type, parts: dict[Hashable, Any], keyed: Iterable[str]) -> Any:
    """The inverse of ``dataclass_parts``: each keyed dict filled in the parts' order."""
    maps: dict[str, dict[Any, Any]] = {name: {} for name in keyed}
    whole: dict[str, Any] = {}
    for key, value in parts.items():
        assert isinstance(key, tuple)
        if len(key) == 2 and key[0] in maps:
            maps[key[0]][key[1]] = value
        else:
            whole[key[0]] = value
    return cls(**whole, **maps)


WAITING = "\x00waiting"  # the section of a stage snapshot's parts holding the elements waiting for their time


def _digest(blob: bytes) -> bytes:
    return hashlib.blake2b(blob, digest_size=16).digest()


def _pickled_parts(
    current: dict[Hashable, Any], held: dict[Hashable, bytes], changed: Iterable[Hashable] | None
) -> dict[Hashable, bytes]:
    """``current`` pickled, in its order: the parts ``changed`` names (all when None) and new ones pickled,
    the others' bytes taken from ``held`` (the state's parts before the firing)."""
    if changed is None:
        return {key: pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL) for key, value in current.items()}
    again = set(changed)
    return {
        key: held[key] if key in held and key not in again else pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        for key, value in current.items()
    }


def _waiting_parts(waiting: list[tuple[int, bytes]], digests: list[bytes]) -> dict[Hashable, bytes]:
    """Waiting elements as parts, keyed by due time and content digest (a repeat numbered): the same key in
    every firing, so a snapshot sends an element once."""
    out: dict[Hashable, bytes] = {}
    for (at_us, blob), digest in zip(waiting, digests, strict=True):
        n = 0
        while (WAITING, at_us, digest, n) in out:
            n += 1
        out[(WAITING, at_us, digest, n)] = blob
    return out


class StageFn(beam.DoFn):  # type: ignore[misc]
    """Keyed by shard: elements wait in one bag; a timer per due time hands them to the logic in one call."""

    BUFFER = BagStateSpec("buffer", PickleCoder())
    FIRE = TimerSpec("fire", TimeDomain.WATERMARK)

    def __init__(self, logic: StageLogic, checkpoints: bool) -> None:
        self.logic, self.checkpoints = logic, checkpoints
        self._live: dict[str, tuple[bytes, Any]] = {}

    def setup(self) -> None:
        self.logic.setup()
        self._live = {}

    def _state(self, shard: str, written: bytes | None, parts: dict[Hashable, bytes]) -> Any:
        """The shard's state for its held ``parts``: the object the last firing here left, when the bag still
        holds what that firing wrote (its random ``written`` token: a retried bundle, or a firing on another
        worker, wrote another or none); otherwise unpickled. The token spares both unpickling every part per
        firing and holding the parts' bytes a second time to compare."""
        live = self._live.pop(shard, None)
        if live is not None and written is not None and live[0] == written:
            return live[1]
        return self.logic.from_parts({key: pickle.loads(blob) for key, blob in parts.items()})

    @staticmethod
    def _set(timer: Any, shard: str, at_us: int) -> None:
        timer.set(Timestamp(micros=at_us), dynamic_timer_tag=f"{shard}/{at_us}")

    def process(
        self,
        element: tuple[str, Any],
        ts: Any = beam.DoFn.TimestampParam,
        buffer: Any = beam.DoFn.StateParam(BUFFER),  # noqa: B008
        timer: Any = beam.DoFn.TimerParam(FIRE),  # noqa: B008
    ) -> None:
        shard, payload = element
        if isinstance(payload, Restore):
            self._restore(shard, payload.snapshot, buffer, timer)
            return
        if self.logic.source:
            topic, partition, start, end, rows = payload
            if self.checkpoints:
                buffer.add(("r", (topic, partition, start, end, ts.micros)))
                if not rows:  # a firing settles the range even for a shard without events of its own
                    self._set(timer, shard, ts.micros)
        else:
            rows = payload
        for at_us, part in self.logic.due_times(rows, ts.micros).items():
            blob = pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
            buffer.add(("b", (at_us, blob), _digest(blob) if self.checkpoints else b""))
            self._set(timer, shard, at_us)

    def _restore(self, shard: str, snapshot: StageSnapshot, buffer: Any, timer: Any) -> None:
        """The shard's state, waiting elements and timers back from its checkpoint snapshot."""
        if snapshot.parts is None:  # written whole (by an earlier version)
            state, waiting = self.logic.from_whole(snapshot.state)
            parts = {
                key: pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
                for key, value in self.logic.parts(state).items()
            }
            waiting_keys: tuple[Hashable, ...] = ()
        else:
            parts = {k: v for k, v in snapshot.parts.items() if part_section(k) != WAITING}
            waiting_keys = tuple(k for k in snapshot.parts if part_section(k) == WAITING)
            waiting = [(k[1], snapshot.parts[k]) for k in waiting_keys]  # type: ignore[index]
            state = self.logic.from_parts({key: pickle.loads(blob) for key, blob in parts.items()})
        buffer.add(("parts", snapshot.seq, parts, waiting_keys))
        if snapshot.received is not None:
            buffer.add(("received", snapshot.received))
        for item in waiting:
            buffer.add(("b", item, _digest(item[1])))
            self._set(timer, shard, item[0])
        for at_us in self.logic.wake_times(state):
            self._set(timer, shard, at_us)

    @on_timer(FIRE)
    def fire(
        self,
        fired: Any = beam.DoFn.TimestampParam,
        tag: Any = beam.DoFn.DynamicTimerTagParam,
        buffer: Any = beam.DoFn.StateParam(BUFFER),  # noqa: B008
        timer: Any = beam.DoFn.TimerParam(FIRE),  # noqa: B008
    ) -> Iterator[Any]:
        shard = str(tag).split("/")[0]
        # The state is held as pickled parts: unpickled here, pickled again after the firing, and the
        # parts whose bytes changed are the checkpoint delta (the snapshot costs no second pickling).
        seq: int = 0
        written: bytes | None = None  # the token of the firing that wrote the held parts
        parts: dict[Hashable, bytes] | None = None
        sent_waiting: tuple[Hashable, ...] = ()
        due_at: dict[int, list[Any]] = {}  # the due elements' rows by due time, each in the order they came
        waiting: list[tuple[int, bytes]] = []
        digests: list[bytes] = []  # of the waiting elements' bytes, taken once when they came
        received = ReceivedLog()
        fresh_ranges = False
        for entry in buffer.read():
            kind, item = entry[0], entry[1]
            if kind == "parts":
                seq, parts, sent_waiting = entry[1], entry[2], entry[3]
                written = entry[4] if len(entry) > 4 else None  # restored or older entries have none
            elif kind == "r":
                received.add(*item)
                fresh_ranges = True
            elif kind == "received":
                received.absorb(item)
            elif item[0] <= fired.micros:
                due_at.setdefault(item[0], []).extend(pickle.loads(item[1]))
            else:
                waiting.append(item)
                digests.append(entry[2])
        if parts is None:
            parts = {}
            state = self.logic.new_state()
        else:
            state = self._state(shard, written, parts)
        timers: list[int] = []
        # Each due time's elements in a call of its own, earliest first, as the timers would have fired one by one
        # in order: outputs do not depend on whether the runner fires several due times at once or out of order.
        outputs: list[Any] = []
        due_times = sorted(due_at)
        for at_us in (t for t in due_times if t < fired.micros):
            outputs += self.logic.fire(state, due_at[at_us], at_us, timers.append)
        outputs += self.logic.fire(state, due_at.get(fired.micros, []), fired.micros, timers.append)
        due = [row for at_us in due_times for row in due_at[at_us]]
        current = self.logic.parts(state)
        if not due and not outputs and not timers and not fresh_ranges and current.keys() == parts.keys():
            return  # another tag of the same time did the work (a firing that dropped parts did some)
        for at_us in timers:
            self._set(timer, shard, at_us)
        fresh = _pickled_parts(current, parts, self.logic.changed_parts(due))
        token = os.urandom(16)
        self._live[shard] = (token, state)
        held = _waiting_parts(waiting, digests) if self.checkpoints and self.logic.source else {}
        buffer.clear()
        buffer.add(("parts", seq + 1, fresh, tuple(held), token))
        for item, digest in zip(waiting, digests, strict=True):
            buffer.add(("b", item, digest))
        if self.checkpoints:
            log = None
            if self.logic.source:
                received.settle(fired.micros)
                buffer.add(("received", received))
                log = received
            # Only what this firing changed: the state's changed parts, the elements that came or went
            # (everything for the shard's first snapshot, or its first after a whole one was restored).
            if seq == 0:
                parts, sent_waiting = {}, ()
            changed, removed = part_delta(parts, fresh)
            sent: set[Hashable] = set(sent_waiting)
            changed.update({key: blob for key, blob in held.items() if key not in sent})
            removed += tuple(key for key in sent_waiting if key not in held)
            snapshot = StageSnapshot(
                self.logic.stage, shard, fired.micros, received=log, parts=changed, removed=removed,
                seq=seq + 1, base_seq=seq if seq > 0 else None,
            )  # fmt: skip
            yield beam.pvalue.TaggedOutput("checkpoint", snapshot)
        yield from outputs


def stage_transform(logic: StageLogic, checkpoints: bool, *outputs: str, main: str = "out") -> Any:
    """The ``ParDo`` running ``logic`` on ``(shard, element)`` pairs; tagged outputs ``checkpoint`` and ``outputs``."""
    fn = beam.ParDo(StageFn(logic, checkpoints)).with_input_types(beam.typehints.Tuple[str, Any])
    return fn.with_outputs("checkpoint", *outputs, main=main)
