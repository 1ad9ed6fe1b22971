"""Base class for every config model: unknown keys are errors and configs are immutable.

Every number a config accepts must be one the simulator can compute with: floats are finite
(``nan`` and ``inf`` are refused, ``allow_inf_nan=False``) and integers fit in 64 bits, since
sizes, times and counts end up in numpy ``int64`` arrays and SimPy timeouts. Each field adds
its own sane range on top (units in the field name and in the message).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

INT64_MAX = 2**63 - 1


class Strict(BaseModel):
    """A config section: unknown keys are errors (``extra="forbid"``) and it is immutable;
    floats must be finite and integers fit in 64 bits."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )

    @field_validator("*", mode="after")
    @classmethod
    def _fits_64_bits(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and not -INT64_MAX - 1 <= v <= INT64_MAX:
            raise ValueError("does not fit in 64 bits; use a smaller number")
        return v
