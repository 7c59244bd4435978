"""What every planner command shares: consoles, the store option, and errors printed for a person."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from planner.core.errors import PlannerError

P = ParamSpec("P")
R = TypeVar("R")

console = Console()
err_console = Console(stderr=True)

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="PLANNER_DATABASE_URL",
        help="Store to use: sqlite:///file (embedded default) or postgresql://... (a fleet's store).",
        show_default=False,
    ),
]


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Print a PlannerError's message (no traceback) and exit with its code: 1, or 2 for bad input."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except PlannerError as exc:
            # The message is plain text: `[te+dn+vae]` in it is a topology, not rich markup.
            err_console.print(Text.assemble(("error:", "bold red"), " ", str(exc)), highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)

    return wrapper
