"""Progress for long work, on stderr so that JSON on stdout stays clean.

Two displays, both shown only when stderr is a terminal (logs and pipes stay quiet):

* ``progress_bar(description, total)``: a bar with counts, elapsed and remaining time, for work
  that knows its size (writing a world, producing to Kafka).
* ``working(title)``: the steps of a longer command (load, features, fit, score...), each with
  its counts and the elapsed time. Code anywhere below the command says what it is doing with
  ``step("fitting", total=...)`` and ``advance(n)``; with no display active those calls do nothing,
  so library code can report progress without knowing who, if anyone, is watching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


@contextmanager
def progress_bar(description: str, total: float | None) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``; the bar is hidden when stderr is not a terminal."""
    console = Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if total:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


class _SizedBar(ProgressColumn):
    """A bar only for steps that know their size; a step without one shows just its spinner."""

    def __init__(self, bar_width: int) -> None:
        super().__init__()
        self.bar = BarColumn(bar_width=bar_width)

    def render(self, task: Task) -> RenderableType:
        return self.bar.render(task) if task.total is not None else Text("")


class _SizedCount(ProgressColumn):
    def render(self, task: Task) -> RenderableType:
        return Text(f"{task.completed:,.0f}/{task.total:,.0f}") if task.total is not None else Text("")


@dataclass
class _Steps:
    progress: Progress
    title: str
    task: TaskID
    number: int = 0

    def step(self, description: str, total: float | None) -> None:
        self.number += 1
        self.progress.update(
            self.task,
            description=f"{self.title}: {description}",
            total=total,
            completed=0,
            step=f"step {self.number}",
        )

    def advance(self, n: float) -> None:
        self.progress.advance(self.task, n)


_active: ContextVar[_Steps | None] = ContextVar("argus_progress_steps", default=None)


@contextmanager
def working(title: str, console: Console | None = None) -> Iterator[None]:
    """Show the steps announced by ``step`` while the block runs: spinner, step, counts, elapsed."""
    console = console or Console(stderr=True)
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("[dim]{task.fields[step]}[/]"),
        _SizedBar(bar_width=24),
        _SizedCount(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        steps = _Steps(progress, title, progress.add_task(title, total=None, step=""))
        token = _active.set(steps)
        try:
            yield
        finally:
            _active.reset(token)


def step(description: str, total: float | None = None) -> None:
    """Say what the command does now (and how many items it will go through, if known)."""
    steps = _active.get()
    if steps is not None:
        steps.step(description, total)


def advance(n: float = 1) -> None:
    """``n`` more items of the current step are done."""
    steps = _active.get()
    if steps is not None:
        steps.advance(n)
