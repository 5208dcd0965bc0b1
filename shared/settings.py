"""Every app setting the code reads, in one place.

The function app, the CLI and the local runtime read settings only through `setting()`, so
`local.settings.sample.json` and the Bicep app settings can be checked against `APP_SETTINGS`.
"""

from __future__ import annotations

import os

# name -> (default, what it is for). A default of None means "no default".
APP_SETTINGS: dict[str, tuple[str | None, str]] = {
    "DUALSYNC_CONFIG": ("flows.yaml", "path of the flows file the function app loads"),
    "PULL_SCHEDULE": ("0 */5 * * * *", "NCRONTAB schedule of the pull timer"),
    "STATE_BACKEND": ("sqlite", "sqlite | tables: where sync state is kept"),
    "STATE_SQLITE_PATH": (".dualsync/state.db", "SQLite state file (embedded runtime)"),
    "STATE_TABLES_CONNECTION": (None, "Table Storage connection string (alternative to the endpoint)"),
    "STATE_TABLES_ENDPOINT": (None, "Table Storage endpoint for identity-based access"),
    "STATE_TABLE_PREFIX": ("dualsync", "prefix of the state table names"),
    "BUS_BACKEND": ("sqlite", "sqlite | servicebus: which message bus carries changes"),
    "BUS_SQLITE_PATH": (".dualsync/bus.db", "SQLite queue file (embedded runtime)"),
    "APPLY_QUEUE": ("dualsync-changes", "queue that carries ChangeMessages"),
    "ServiceBusConnection": (None, "Service Bus connection string (alternative to the namespace)"),
    "ServiceBusConnection__fullyQualifiedNamespace": (None, "Service Bus namespace for identity-based access"),
    "PAYLOAD_BLOB_CONNECTION": (None, "Blob Storage connection string for messages too large for Service Bus"),
    "PAYLOAD_BLOB_ENDPOINT": (None, "Blob endpoint (identity-based) for messages too large for Service Bus"),
    "PAYLOAD_BLOB_CONTAINER": ("dualsync-payloads", "container holding the bodies of messages sent by reference"),
    "AZURE_CLIENT_ID": (None, "client id of the user-assigned managed identity"),
    "SETTLEMENT_MODE": ("extension", "extension | ledger: how the apply trigger dead-letters"),
    "MAX_ATTEMPTS": ("8", "apply attempts before RetriesExhausted, for flows that set no max_attempts"),
    "APPLICATIONINSIGHTS_CONNECTION_STRING": (None, "Application Insights; console telemetry when unset"),
    "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": ("false", "true on Azure: the Functions Python worker exports "
                                                             "our logs and metrics, so the app configures none"),
    "WEBSITE_AUTH_ENABLED": ("False", "set by App Service when its authentication (Entra ID) is on; the admin "
                                      "API's role routes refuse every call without it. Never set it yourself"),
}


def setting(name: str, environ: dict[str, str] | None = None) -> str | None:
    """Read an app setting, falling back to its declared default."""
    if name not in APP_SETTINGS:
        raise KeyError(f"undeclared app setting {name!r}: add it to shared/settings.py")
    env = os.environ if environ is None else environ
    value = env.get(name)
    return value if value not in (None, "") else APP_SETTINGS[name][0]
