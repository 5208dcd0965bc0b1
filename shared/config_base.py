"""What every model of the flows file shares: strictness (unknown keys are errors) and secret references.

Kept apart from `shared.config` so a connector's own settings model (`shared.connectors.*_settings`) can use it
without importing the flows model, which imports every registered kind's settings.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from shared.errors import ConfigError

# How a value is compared and converted (a field's `type:`, a CSV column's type).
FieldType = Literal["string", "int", "decimal", "bool", "datetime", "date"]

SECRET_REF = re.compile(r"^env:[A-Za-z_][A-Za-z0-9_]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def secret_ref(value: str | None) -> str | None:
    """A field validator for secrets: only `env:NAME` references, never values."""
    if value is not None and not SECRET_REF.match(value):
        raise ValueError("secrets must be references of the form env:NAME, never literal values")
    return value


def resolve_secret(ref: str) -> str:
    """`env:NAME` -> the variable's value; a plain string is returned as it is (non-secret values)."""
    value = secret_if_set(ref)
    if value is None:
        raise ConfigError([f"environment variable {ref[4:]} (referenced as {ref}) is not set"])
    return value


def secret_if_set(ref: str) -> str | None:
    """As `resolve_secret`, but None for an unset variable (what `validate` may look at, and may do without)."""
    if not ref.startswith("env:"):
        return ref
    return os.environ.get(ref[4:]) or None
