"""The settings of a `kind: sql` system in the flows file: a SQLAlchemy database URL, never with a literal
password."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator

from shared.config_base import Strict

_URL_PASSWORD = re.compile(r"^[a-z0-9+]+://[^/:@]*:[^/@]+@", re.IGNORECASE)
# A password in the query string (`?password=`, `sslpassword=`, ODBC `PWD=` inside `odbc_connect`), URL-encoded
# or not.
_QUERY_SECRET = re.compile(r"(pass(word)?|pwd|secret|token|access_?key|sslkey)\s*(=|%3d)", re.IGNORECASE)


class SqlSystem(Strict):
    kind: Literal["sql"]
    url: str

    @field_validator("url")
    @classmethod
    def _no_literal_password(cls, value: str) -> str:
        if value.startswith("env:"):
            return value
        if _URL_PASSWORD.match(value):
            raise ValueError("a database URL with a password must be given as env:NAME")
        _, _, query = value.partition("?")
        if _QUERY_SECRET.search(query):
            raise ValueError("a database URL with a secret in its query string must be given as env:NAME")
        return value
