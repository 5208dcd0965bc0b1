"""Running the simulator in the foreground: ``python -m dvsim`` and ``dvsim.serve()``."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

from .identity import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_TENANT, IdentityProvider
from .server import DataverseSimulator


def serve(
    port: int = 5555,
    host: str = "127.0.0.1",
    db_path: str = ":memory:",
    schema_path: str | Path | None = None,
    *,
    rate_429: float = 0.0,
    rate_5xx: float = 0.0,
    latency_ms: float = 0.0,
    retry_after_s: int = 1,
    expire_tokens_after_s: float | None = None,
    seed: int | None = 0,
    accept_tokens: Sequence[str] | None = None,
    identity_port: int | None = None,
    tenant_id: str = DEFAULT_TENANT,
    client_id: str = DEFAULT_CLIENT_ID,
    client_secret: str = DEFAULT_CLIENT_SECRET,
    verbose: bool = False,
    ready: Callable[[DataverseSimulator, IdentityProvider | None], None] | None = None,
    stop_event: threading.Event | None = None,
    out: Callable[[str], None] = print,
) -> None:
    """Serve until Ctrl+C (or until ``stop_event`` is set).

    Tokens: any bearer token is accepted, unless ``accept_tokens`` lists the only valid ones, or
    ``identity_port`` is given: then an IdentityProvider runs there too (``identity_port=0`` picks a free
    port) and only tokens it issued to ``client_id``/``client_secret`` are accepted.
    ``ready(sim, idp)`` is called once both are listening.
    """
    idp: IdentityProvider | None = None
    verifier = None
    if identity_port is not None:
        idp = IdentityProvider(port=identity_port, host=host, tenant_id=tenant_id, clients={client_id: client_secret})
        idp.start()
        verifier = idp.verify_token
    elif accept_tokens:
        allowed = frozenset(accept_tokens)
        verifier = allowed.__contains__
    sim = DataverseSimulator(
        schema_path=schema_path,
        db_path=db_path,
        port=port,
        host=host,
        token_verifier=verifier,
        rate_429=rate_429,
        rate_5xx=rate_5xx,
        latency_ms=latency_ms,
        retry_after_s=retry_after_s,
        expire_tokens_after_s=expire_tokens_after_s,
        seed=seed,
        verbose=verbose,
    )
    sim.start()
    out(f"dvsim: Dataverse Web API at {sim.api} (organization URL {sim.url}), database {db_path}")
    if idp is not None:
        out(f"dvsim: identity provider at {idp.url}; MSAL authority {idp.authority} "
            f"(client_id {client_id}); see dvsim/identity.py for the MSAL settings")
    if ready is not None:
        ready(sim, idp)
    stop = stop_event or threading.Event()
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.close()
        if idp is not None:
            idp.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dvsim", description="Dataverse Web API simulator")
    p.add_argument("--port", type=int, default=5555)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--db", default=":memory:", help="SQLite file to keep data in (default: in memory)")
    p.add_argument("--schema", default=None, help="schema YAML (default: dvsim/schema.yaml)")
    p.add_argument("--rate-429", type=float, default=0.0, help="fraction of requests answered 429")
    p.add_argument("--rate-5xx", type=float, default=0.0, help="fraction of requests answered 503")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds sent with a 429")
    p.add_argument("--expire-tokens-after", type=float, default=None, metavar="SECONDS",
                   help="delta tokens older than this are expired")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accept-token", action="append", default=None, metavar="TOKEN",
                   help="accept only this bearer token (repeatable); default: any token")
    p.add_argument("--identity-port", type=int, default=None,
                   help="also run an identity provider on this port and accept only its tokens")
    p.add_argument("--tenant-id", default=DEFAULT_TENANT)
    p.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    p.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET)
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    a = p.parse_args(argv)
    serve(
        port=a.port, host=a.host, db_path=a.db, schema_path=a.schema,
        rate_429=a.rate_429, rate_5xx=a.rate_5xx, latency_ms=a.latency_ms, retry_after_s=a.retry_after,
        expire_tokens_after_s=a.expire_tokens_after, seed=a.seed, accept_tokens=a.accept_token,
        identity_port=a.identity_port, tenant_id=a.tenant_id, client_id=a.client_id,
        client_secret=a.client_secret, verbose=a.verbose,
        out=lambda line: print(line, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
