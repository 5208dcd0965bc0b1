"""The connectors, one per kind of system; `registry` says which kinds exist and builds them (lazily)."""

from shared.connectors.registry import build_connector

__all__ = ["build_connector"]
