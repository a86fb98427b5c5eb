"""In-memory stand-ins for Beam's user state and timers, to drive a stateful DoFn's methods by hand."""

from __future__ import annotations

from typing import Any


class FakeBag:
    """A ``BagStateSpec`` cell."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def read(self) -> list[Any]:
        return list(self.items)

    def add(self, item: Any) -> None:
        self.items.append(item)

    def clear(self) -> None:
        self.items = []


class FakeValue:
    """A ``ReadModifyWriteStateSpec`` cell."""

    def __init__(self) -> None:
        self.value: Any = None

    def read(self) -> Any:
        return self.value

    def write(self, value: Any) -> None:
        self.value = value

    def clear(self) -> None:
        self.value = None


class FakeTimer:
    """A timer (or a dynamic timer family): every time set, the pending times in microseconds, the pending tags,
    and per tag the time it fires at (setting a tag again moves it, as in Beam)."""

    def __init__(self) -> None:
        self.times: list[Any] = []
        self.due: set[int] = set()
        self.tags: set[str] = set()
        self.by_tag: dict[str, int] = {}

    def set(self, at: Any, dynamic_timer_tag: str = "") -> None:
        self.times.append(at)
        if hasattr(at, "micros"):
            self.due.add(at.micros)
            self.by_tag[dynamic_timer_tag] = at.micros
        if dynamic_timer_tag:
            self.tags.add(dynamic_timer_tag)

    def clear(self, dynamic_timer_tag: str = "") -> None:
        self.times, self.due, self.tags, self.by_tag = [], set(), set(), {}
