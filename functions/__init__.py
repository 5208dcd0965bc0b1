"""Azure Functions adapters: parse the binding, call one core function, settle. No business logic here."""

from __future__ import annotations

from functools import lru_cache

from shared import flow_health
from shared.app import SyncApp


@lru_cache(maxsize=1)
def sync_app() -> SyncApp:
    """One SyncApp per worker process: connectors keep their HTTP pools and token caches warm. Its flows'
    health (last successful pull, paused) is reported from then on."""
    app = SyncApp.from_settings()
    flow_health.watch(app)
    return app
