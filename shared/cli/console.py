"""`dualsync ui`: the web console over the embedded runtime (or Azure's stores, when the settings choose them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shared.cli import common
from shared.cli.common import ConfigOption, WorkdirOption, app, console


@app.command()
def ui(
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
    port: Annotated[int, typer.Option(min=0, max=65535, help="0: any free port")] = 8765,
) -> None:
    """Serve the web console on 127.0.0.1: flows, dead letters (replay), conflicts, change requests and runs.

    Open the URL it prints: it carries a token made for this launch, which every request must show, so other
    pages open in your browser cannot use the console. Example: `dualsync ui --workdir .dualsync --port 8765`.
    """
    from shared.console_server import ConsoleServer

    with common.session(config, workdir) as sync:
        server = ConsoleServer(sync, port=port)
        console.print(f"dualsync console: {server.url}", soft_wrap=True, markup=False)
        console.print("Ctrl+C stops it.", markup=False)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            console.print("stopped", markup=False)
        finally:
            server.close()
