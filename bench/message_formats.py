"""Cost of reading a message body through the format check (json.loads, upgrade, model_validate) against
pydantic's direct model_validate_json, per body, for this release's bodies and the previous release's."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from shared.messages import ChangeMessage, parse_body, to_envelope

N = 20_000


def _body(fields: int) -> bytes:
    payload = {f"field_{i}": f"value {i}" for i in range(fields)} | {"amount": 12.5, "count": 3}
    message = ChangeMessage(flow="accounts-to-customers", op="upsert", source_system="crm", entity="accounts",
                            key="acc-0000001", version="2026-01-01T00:00:00.000000|acc-0000001",
                            changed_at=datetime(2026, 1, 1, tzinfo=UTC), payload=payload, fingerprint="f" * 32)
    return to_envelope(message).body


def _time(fn, body: bytes) -> float:
    started = time.perf_counter()
    for _ in range(N):
        fn(body)
    return (time.perf_counter() - started) / N * 1e6


def main() -> None:
    for fields in (10, 100):
        current = _body(fields)
        previous = json.dumps({k: v for k, v in json.loads(current).items() if k != "v"}).encode()
        direct = _time(ChangeMessage.model_validate_json, current)
        print(f"{fields:>4} payload fields: model_validate_json {direct:6.1f} us/body, "
              f"parse_body {_time(parse_body, current):6.1f} us/body (this release), "
              f"{_time(parse_body, previous):6.1f} us/body (previous release, upgraded)")


if __name__ == "__main__":
    main()
