"""`dualsync`: the command line over the same core functions the Azure Functions call.

One module per group of commands; importing them registers their commands on `app`, in the order `--help`
lists them.
"""

from __future__ import annotations

import importlib
import sys

from rich.markup import escape

from shared.cli.common import app, err_console
from shared.errors import ConfigError

__all__ = ["app", "main"]

_IN_HELP_ORDER = ("init", "flows", "check", "run", "history", "dead_letters", "decisions", "console", "maintenance",
                  "simulate")
for _commands in _IN_HELP_ORDER:
    importlib.import_module(f"shared.cli.{_commands}")


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        for problem in exc.problems:
            err_console.print(f"[red]error[/red] {escape(problem)}")
        sys.exit(2)
