"""The two opaque tokens the simulator hands out in links: delta tokens and skip tokens.

* Delta token (``$deltatoken`` in ``@odata.deltaLink``): Dataverse's look, ``<version>!<MM/dd/yyyy HH:mm:ss>``
  (e.g. ``919042!08/22/2017 08:10:44``): the version watermark of the snapshot plus the UTC time it was issued.
  Changes since the token are rows whose versionnumber is above the watermark.
* Skip token (``$skiptoken`` in ``@odata.nextLink``): shaped like Dataverse's paging cookie,
  ``<cookie pagenumber="2" dvsim="..." />``, so clients must URL-encode and pass it back untouched. The
  ``dvsim`` attribute carries the paging state as base64url JSON.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from . import errors

_DELTA_RE = re.compile(r"^(\d+)!(\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2})$")
_DELTA_TIME = "%m/%d/%Y %H:%M:%S"
_COOKIE_RE = re.compile(r'^<cookie pagenumber="(\d+)" dvsim="([A-Za-z0-9_\-=]+)" />$')


@dataclass(frozen=True)
class DeltaToken:
    version: int
    issued_at: datetime

    def __str__(self) -> str:
        return f"{self.version}!{self.issued_at.strftime(_DELTA_TIME)}"


def make_delta_token(version: int, now: datetime) -> DeltaToken:
    return DeltaToken(version, now.astimezone(timezone.utc).replace(microsecond=0))


def parse_delta_token(text: str) -> DeltaToken:
    m = _DELTA_RE.match(text)
    if not m:
        raise errors.invalid_delta_token(text)
    issued = datetime.strptime(m.group(2), _DELTA_TIME).replace(tzinfo=timezone.utc)
    return DeltaToken(int(m.group(1)), issued)


def quote_delta_token(token: DeltaToken | str) -> str:
    # Dataverse writes the escapes in lower case: 919042%2108%2f22%2f2017%2008%3a10%3a44
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(str(token), safe=""))


def make_skip_token(page_number: int, state: dict[str, Any]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode()
    return f'<cookie pagenumber="{page_number}" dvsim="{payload}" />'


def parse_skip_token(text: str) -> tuple[int, dict[str, Any]]:
    m = _COOKIE_RE.match(text.strip())
    if not m:
        raise errors.bad_request(f"The $skiptoken '{text}' is not valid.")
    try:
        state = json.loads(base64.urlsafe_b64decode(m.group(2)))
    except ValueError:
        raise errors.bad_request(f"The $skiptoken '{text}' is not valid.") from None
    return int(m.group(1)), state
