"""Local stand-ins for the systems dualsync connects."""

from __future__ import annotations

from typing import Annotated

import typer

from shared.cli.common import app

simulate_app = typer.Typer(no_args_is_help=True, help="Local stand-ins for the systems dualsync connects.")
app.add_typer(simulate_app, name="simulate")


@simulate_app.command("dataverse")
def simulate_dataverse(
    port: Annotated[int, typer.Option(help="loopback port")] = 5555,
    db: Annotated[str, typer.Option(help="SQLite file for the simulated org (default: in memory)")] = ":memory:",
    rate_429: Annotated[float, typer.Option(help="share of requests answered 429")] = 0.0,
) -> None:
    """Serve the Dataverse Web API simulator (the demo's CRM) until interrupted."""
    import dvsim

    dvsim.serve(port=port, db_path=db, rate_429=rate_429)
