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
