"""The Dataverse connector's pacing lives in `shared.connectors.odata.throttle` (every OData connector uses it);
these names stay importable from here."""

from shared.connectors.odata.throttle import (
    INITIAL_BATCH,
    AdaptiveBatchSize,
    ConcurrencyLimit,
    Pacer,
    cookieless_jar,
)

__all__ = ["INITIAL_BATCH", "AdaptiveBatchSize", "ConcurrencyLimit", "Pacer", "cookieless_jar"]
