"""Numbers and times that callers send, bounded and checked the same way on every surface.

Every integer and float a caller can send has a lower and an upper bound, so nothing downstream meets a
number it cannot hold: the store keeps whole numbers as SQLite INTEGERs (64-bit), JSON readers in other
languages lose precision past 2**53, and a float may not be NaN or infinite. The bounds are declared
with pydantic's `Field(ge=..., le=...)`, so they are published as `minimum`/`maximum` in the tools'
input schemas and the OpenAPI document; `IN_RANGE`, placed after them, turns pydantic's one-sided
message ("Input should be less than or equal to 50") into one that says the whole range, which is what
a caller needs to correct the call. Times are ISO 8601 text only: pydantic would also read a number as
seconds since 1970, which no schema says and no caller means.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, GetCoreSchemaHandler, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError, core_schema

MAX_INT = 2**63 - 1
"""The largest whole number the store can hold (an SQLite INTEGER); a cursor over events is one."""
MAX_JSON_INT = 2**53 - 1
"""The largest whole number every JSON reader keeps exactly; a number kept for callers (metadata) stays in it."""
MAX_WAIT_PARAM_S = 3600
"""Waits are capped at 50 s; larger numbers up to this are taken (and capped), beyond it they are refused."""


def _number(value: float) -> str:
    """A bound as a person writes it: 50, not 50.0; 9223372036854775807, not 9.22e+18."""
    return str(int(value)) if float(value).is_integer() and abs(value) >= 1 else f"{value:g}"


def range_text(schema: core_schema.CoreSchema) -> str:
    """What a number schema takes, in words: 'a whole number between 0 and 50'."""
    inner: Any = schema
    while inner.get("type") in ("nullable", "default"):
        inner = inner["schema"]
    kind = "a whole number" if inner.get("type") == "int" else "a finite number"
    low = inner.get("ge", inner.get("gt"))
    high = inner.get("le", inner.get("lt"))
    if low is None or high is None:
        raise TypeError(f"IN_RANGE needs a lower and an upper bound before it, found {inner}")
    if "gt" in inner:
        return f"{kind} greater than {_number(low)} and at most {_number(high)}"
    return f"{kind} between {_number(low)} and {_number(high)}"


class InRange:
    """Place after `Field(ge=..., le=...)` in `Annotated[...]`: any error of that number says the range."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        schema = handler(source)
        message = "must be " + range_text(schema)
        whole = schema.get("type") == "int"

        def check(value: Any, inner: core_schema.ValidatorFunctionWrapHandler) -> Any:
            try:
                if isinstance(value, bool):  # pydantic would read true as 1: no schema says so, no caller means it
                    raise PydanticCustomError("out_of_range", message)
                if whole and isinstance(value, float) and value.is_integer():
                    value = int(value)  # JSON Schema counts 2.0 as an integer, and so do strict REST bodies here
                return inner(value)
            except ValidationError:
                raise PydanticCustomError("out_of_range", message) from None

        return core_schema.no_info_wrap_validator_function(check, schema)


IN_RANGE = InRange()

Seq = Annotated[int, Field(ge=0, le=MAX_INT), IN_RANGE]
"""An event's sequence number, as a cursor: events after it."""
WaitS = Annotated[float, Field(ge=0, le=MAX_WAIT_PARAM_S, allow_inf_nan=False), IN_RANGE]
"""Seconds to wait; the server waits at most 50 of them."""
PageSize = Annotated[int, Field(ge=1, le=200), IN_RANGE]


def _metadata_value(value: Any, inner: core_schema.ValidatorFunctionWrapHandler) -> Any:
    try:
        return inner(value)
    except ValidationError:
        raise PydanticCustomError(
            "metadata_value", f"must be text, a boolean, null, or a finite number between {-MAX_JSON_INT} and {MAX_JSON_INT}"
        ) from None


MetadataValue = Annotated[
    str
    | bool
    | Annotated[int, Field(ge=-MAX_JSON_INT, le=MAX_JSON_INT)]
    | Annotated[float, Field(ge=-MAX_JSON_INT, le=MAX_JSON_INT, allow_inf_nan=False)]
    | None,
    WrapValidator(_metadata_value),
]
"""A metadata value: text, a boolean, null, or a number every JSON reader keeps exactly; one error for all
the ways a value can be wrong, not one per kind it is not."""


def _iso_only(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value.strip() or _is_number(value):
        raise PydanticCustomError("iso_time", "must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


IsoTime = Annotated[datetime, BeforeValidator(_iso_only)]
"""A time as ISO 8601 text (UTC if no offset is given)."""


def one_line(error: ValidationError, whole: str = "value") -> str:
    """A validation error as one sentence per field ('events_after: must be ...'), without pydantic's links
    or the values sent; `whole` names what an error of the input as a whole is about."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}" for e in error.errors(include_url=False))
