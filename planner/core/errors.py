"""Errors a person can act on: each says what was wrong and ends with how to fix it."""

from __future__ import annotations


class PlannerError(Exception):
    """Base of the project's expected errors; the CLI prints them without a traceback and exits non-zero."""

    exit_code = 1


class CatalogError(PlannerError):
    """A catalog data file (families, models, recipes) is malformed or names something unknown."""


class ConfigError(PlannerError):
    """The settings are unsafe or inconsistent."""


class InputError(PlannerError):
    """A user's input (file, flag, request) is invalid; the message names where and what."""

    exit_code = 2


class NotFoundError(PlannerError):
    """Something looked up by its id or name does not exist; the message says what was looked for."""

    def __init__(self, kind: str, key: object, *, hint: str = "") -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} {key!r} not found" + (f"; {hint}" if hint else ""))


class ConflictError(PlannerError):
    """The request contradicts the store's state (a name taken, a request no longer queued)."""


class FieldError(InputError):
    """Invalid input at known places: each problem names its field (`measurements.3.stage`) and says what."""

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(str(p) for p in loc)}: {msg}" for loc, msg in problems))

    @classmethod
    def at(cls, loc: tuple[str | int, ...], message: str) -> FieldError:
        return cls([(loc, message)])


class ForbiddenError(PlannerError):
    """Valid credentials without the right to this (an agent on an admin route or on another host's data)."""
