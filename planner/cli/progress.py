"""Progress for solves and sweeps that take more than a second: nothing for a quick answer, a bar otherwise.

The bar (rich, on stderr, so stdout stays clean for `--format json|csv`) appears only once a step is still
running a second after the work began, and only on a terminal; it disappears when the work is done.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

SHOW_AFTER_S = 1.0


class DeferredProgress:
    """A rich progress bar that shows itself only for work lasting over `SHOW_AFTER_S`."""

    def __init__(self, console: Console, description: str, total: int | None = None) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),  # the solver's messages name groups like [te+dn]
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self._task = self._progress.add_task(description, total=total)
        self._started = time.perf_counter()
        self._shown = False

    def __enter__(self) -> DeferredProgress:
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._shown:
            self._progress.stop()

    def _maybe_show(self) -> None:
        if not self._shown and time.perf_counter() - self._started > SHOW_AFTER_S:
            self._progress.start()
            self._shown = True

    def message(self, text: str) -> None:
        """A step's description (the solver's progress callback), without advancing."""
        self._progress.update(self._task, description=text)
        self._maybe_show()

    def tick(self, text: str) -> None:
        """One step done."""
        self._progress.update(self._task, advance=1, description=text)
        self._maybe_show()

    def add(self, total: int) -> None:
        """More steps to come (a second sweep in the same bar)."""
        current = self._progress.tasks[0].total or 0
        self._progress.update(self._task, total=current + total)
