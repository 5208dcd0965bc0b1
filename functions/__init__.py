"""Azure Functions adapters: parse the binding, call one core function, settle. No business logic here."""

from __future__ import annotations

from functools import lru_cache

from shared.app import SyncApp


@lru_cache(maxsize=1)
def sync_app() -> SyncApp:
    """One SyncApp per worker process: connectors keep their HTTP pools and token caches warm."""
    return SyncApp.from_settings()
