"""Errors a person can act on: each says what was wrong and ends with how to fix it."""

from __future__ import annotations

from collections.abc import Sequence


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

    def __init__(self, problems: Sequence[tuple[tuple[str | int, ...], str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{'.'.join(str(p) for p in loc)}: {msg}" for loc, msg in problems))

    @classmethod
    def at(cls, loc: tuple[str | int, ...], message: str) -> FieldError:
        return cls([(loc, message)])


class ForbiddenError(PlannerError):
    """Valid credentials without the right to this (an agent on an admin route or on another host's data)."""


class UnauthorizedError(PlannerError):
    """No credentials, or credentials nobody issued."""


class RateLimitedError(PlannerError):
    """Too many requests of a kind in a window; `retry_after_s` says when one fits again."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)
