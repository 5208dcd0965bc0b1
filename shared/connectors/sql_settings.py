"""The settings of a `kind: sql` system in the flows file: a SQLAlchemy database URL, never with a literal
secret in it."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import unquote_plus

from pydantic import Field, field_validator

from shared.config_base import Strict

_URL_PASSWORD = re.compile(r"^[a-z0-9+_.-]+://[^/:@?]*:[^@?]*@", re.IGNORECASE)
# A secret anywhere after the scheme once decoded: `?password=`, `sslpassword=`, an ODBC `PWD=` inside
# `odbc_connect` (URL-encoded once or twice) or in a DSN-style host (`dsn;UID=u;PWD=p`).
_SECRET_SETTING = re.compile(r"(pass(word)?|pwd|secret|token|access_?key|sslkey)\s*=", re.IGNORECASE)


class SqlSystem(Strict):
    """A SQL database (PostgreSQL, SQL Server, SQLite, ...), reached through SQLAlchemy."""

    kind: Literal["sql"] = Field(description="sql: a database reached through SQLAlchemy.")
    url: str = Field(description=(
        "SQLAlchemy URL (dialect+driver://user@host/db). With a password or any secret in it: env:NAME."))

    @field_validator("url")
    @classmethod
    def _no_literal_password(cls, value: str) -> str:
        if value.startswith("env:"):
            return value
        if _URL_PASSWORD.match(value):
            raise ValueError("a database URL with a password must be given as env:NAME")
        if _SECRET_SETTING.search(_decoded(value.partition("://")[2])):
            raise ValueError("a database URL with a secret in it (password=, ODBC PWD=, token=, ...) must be "
                             "given as env:NAME")
        return value


def _decoded(text: str, rounds: int = 3) -> str:
    """URL-decoded until it stops changing (an `odbc_connect` value is often encoded twice)."""
    for _ in range(rounds):
        decoded = unquote_plus(text)
        if decoded == text:
            break
        text = decoded
    return text
