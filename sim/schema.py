"""Base class for every config model: unknown keys are errors and configs are immutable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A config section: unknown keys are errors (``extra="forbid"``) and it is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
