"""The settings of a kind of system defined outside shared/ (by a test): like every kind's settings module, it
imports only pydantic and `shared.config_base`, since it is imported while the flows model is built."""

from __future__ import annotations

from typing import Literal

from shared.config_base import Strict


class EchoSystem(Strict):
    kind: Literal["echo"]
    label: str
