"""Shapes every resource shares: bounded numbers and strings, JSON objects, pages, error bodies.

Every number has bounds and no NaN or infinity; every string has a length and no NUL (PostgreSQL text cannot
hold one); free-form JSON objects are checked for both, so nothing a client sends can make the store fail.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from planner.catalog.schema import ID_PATTERN

T = TypeVar("T")

TEXT_PATTERN = r"^[^\x00]*$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:+-]*$"
MAX_INT32 = 2**31 - 1

Ident = Annotated[str, Field(pattern=ID_PATTERN, min_length=1, max_length=64, examples=["h100-sxm-80gb"])]
"""A catalog id: GPU family, model, recipe."""
Name = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=200)]
"""A name people choose (host, workload): letters, digits and `._:+-`, starting with a letter or digit."""
Version = Annotated[str, Field(pattern=TEXT_PATTERN, max_length=64)]
ShortText = Annotated[str, Field(pattern=TEXT_PATTERN, max_length=255)]
LongText = Annotated[str, Field(pattern=TEXT_PATTERN, max_length=2000)]
GpuUuid = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$", min_length=1, max_length=96, examples=["GPU-8f6c2a1e"])
]
"""An NVML UUID (`GPU-...`, `MIG-...`)."""
Id32 = Annotated[int, Field(ge=1, le=MAX_INT32)]


def _bounded(lo: float, hi: float, *, strict_lo: bool = False) -> Any:
    if strict_lo:
        return Field(gt=lo, le=hi, allow_inf_nan=False)
    return Field(ge=lo, le=hi, allow_inf_nan=False)


Fraction = Annotated[float, _bounded(0.0, 1.0)]
Percent = Annotated[float, _bounded(0.0, 100.0)]
Gib = Annotated[float, _bounded(0.0, 65536.0, strict_lo=True)]
GibOrZero = Annotated[float, _bounded(0.0, 65536.0)]
Watts = Annotated[float, _bounded(0.0, 100000.0)]
Tflops = Annotated[float, _bounded(0.0, 1e6)]
PricePerHour = Annotated[float, _bounded(0.0, 1e5, strict_lo=True)]
Money = Annotated[float, _bounded(0.0, 1e12)]
Rate = Annotated[float, _bounded(0.0, 1e6, strict_lo=True)]
Seconds = Annotated[float, _bounded(0.0, 1e7, strict_lo=True)]
Count = Annotated[int, Field(ge=0, le=MAX_INT32)]

MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9000, 1, 1, tzinfo=UTC)


def _sane_time(value: datetime) -> datetime:
    if not MIN_TIME <= value <= MAX_TIME:
        raise ValueError("must be between 1970 and 9000 (UTC)")
    return value.astimezone(UTC)


Timestamp = Annotated[AwareDatetime, AfterValidator(_sane_time)]
"""An ISO-8601 time with a UTC offset (a time without one is refused: the fleet spans time zones)."""

JSON_MAX_DEPTH = 8
JSON_MAX_ITEMS = 2000


def check_json(value: Any, depth: int = 0, budget: list[int] | None = None) -> None:
    budget = budget if budget is not None else [JSON_MAX_ITEMS]
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"has more than {JSON_MAX_ITEMS} values")
    if depth > JSON_MAX_DEPTH:
        raise ValueError(f"nests deeper than {JSON_MAX_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("holds NaN or infinity; JSON numbers must be finite")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        raise ValueError("holds an integer beyond 2^53 (not exact in JSON)")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("holds a NUL character")
        if len(value) > 10000:
            raise ValueError("holds a string longer than 10000 characters")
    if isinstance(value, dict):
        for key, item in value.items():
            check_json(key, depth + 1, budget)
            check_json(item, depth + 1, budget)
    elif isinstance(value, list):
        for item in value:
            check_json(item, depth + 1, budget)


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    check_json(value)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]
"""A free-form JSON object: finite numbers, no NUL, bounded size and depth."""

Labels = Annotated[
    dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", max_length=63)],
        Annotated[str, Field(pattern=TEXT_PATTERN, max_length=255)],
    ],
    Field(max_length=64),
]


class Strict(BaseModel):
    """A request body: unknown keys are refused, so a typo is a 422, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    """A response body built from store rows (read by their column names, e.g. `gpu_family_id`, or by field name)."""

    model_config = ConfigDict(from_attributes=True, validate_by_name=True, validate_by_alias=True)


class Page(BaseModel, Generic[T]):
    """One page of a list: `items`, and `total` matching the filters (page with `limit` and `offset`)."""

    items: list[T]
    total: int
    limit: int
    offset: int


class ErrorOut(BaseModel):
    """An error that is not about one field: 401, 403, 404, 409, 503."""

    detail: str = Field(examples=["host '4b0c...' not found"])


class FieldProblem(BaseModel):
    loc: list[str | int] = Field(description="where, as a path: body, then keys and list indices")
    field: str = Field(description="the same path without its first part, dotted", examples=["measurements.3.stage"])
    msg: str
    type: str


class ValidationErrorOut(BaseModel):
    """422: the request is well-formed JSON but some fields are wrong; each problem names its field."""

    detail: list[FieldProblem]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "the body is not JSON"},
    401: {"model": ErrorOut, "description": "no credentials, or unknown ones"},
    403: {"model": ErrorOut, "description": "valid credentials without the right to this"},
    413: {"model": ValidationErrorOut, "description": "the body is larger than the route's limit (checked unread)"},
    422: {"model": ValidationErrorOut, "description": "invalid input; each problem names its field"},
    503: {"model": ErrorOut, "description": "the store did not answer in time; retry after Retry-After seconds"},
}


def responses(*codes: int, extra: dict[int | str, dict[str, Any]] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error codes a route can answer besides 401/403/422 (and `extra` ones)."""
    described = {
        404: "not found: the detail says what was looked for",
        409: "conflicts with the store's state",
        429: "too many of these requests now; retry after Retry-After seconds",
        503: "a part the request needs is not available",
    }
    out: dict[int | str, dict[str, Any]] = dict(extra or {})
    out.update({code: {"model": ErrorOut, "description": described[code]} for code in codes})
    return out
