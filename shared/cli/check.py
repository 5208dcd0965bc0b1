"""`dualsync check`: the flows file against the systems it names (shared.engine.preflight), also run by
`dualsync run` before it starts."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shared.cli.common import ConfigOption, app, console, err_console, load_flows
from shared.config import Config

if TYPE_CHECKING:
    from shared.engine.preflight import Finding
    from shared.ports.connector import Connector


@app.command()
def check(
    config: ConfigOption = Path("flows.yaml"),
    flow: Annotated[list[str] | None, typer.Option(
        "--flow", "-f", help="check only this flow and its systems (repeatable)", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the findings as JSON")] = False,
) -> None:
    """Resolve every env: reference, connect to every system and compare each flow's fields with the real
    columns; exits 2 if anything is wrong.

    Example: dualsync check -c flows.yaml --flow accounts-to-customers
    """
    from shared.engine.preflight import has_errors

    cfg = load_flows(config)
    unknown = [f for f in flow or [] if f not in cfg.flows]
    if unknown:
        err_console.print(f"error: no flow named {unknown[0]!r}; flows: {', '.join(cfg.flows)}", markup=False)
        raise typer.Exit(2)
    findings = _findings(cfg, flow or None)
    if as_json:
        console.print_json(json.dumps({"ok": not has_errors(findings), "findings": [
            asdict(f) | {"path": f.path} for f in findings]}))
    else:
        print_findings(findings)
        if not has_errors(findings):
            console.print(f"ok {config}: {len(flow or cfg.flows)} flows match their systems", markup=False)
    if has_errors(findings):
        raise typer.Exit(2)


def print_findings(findings: list[Finding]) -> None:
    for finding in findings:
        err_console.print(f"{finding.severity} {finding.line()}", markup=False, highlight=False)


def _findings(cfg: Config, flows: list[str] | None) -> list[Finding]:
    """The preflight over connectors of its own, closed after (nothing else is opened or created)."""
    from shared.connectors import build_connector
    from shared.engine.preflight import preflight

    built: dict[str, Connector] = {}

    def connector_for(system: str) -> Connector:
        built[system] = build_connector(system, cfg.systems[system])
        return built[system]

    try:
        return preflight(cfg, connector_for, flows)
    finally:
        for connector in built.values():
            connector.close()


def refuse_unless_ready(cfg: Config) -> None:
    """`dualsync run`'s start: the same checks for the enabled flows; exit 2 (nothing read, written or created)
    on any error, so an unset env: reference or a misspelt column stops the run here rather than in every
    record."""
    from shared.engine.preflight import has_errors

    findings = _findings(cfg, [name for name, f in cfg.flows.items() if f.enabled])
    print_findings(findings)
    if has_errors(findings):
        err_console.print("not started: fix the above (`dualsync check` shows the same)", markup=False)
        raise typer.Exit(2)
