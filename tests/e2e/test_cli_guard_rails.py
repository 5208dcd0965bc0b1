"""The operator's guard rails: workdirs that exist, one run per workdir, Ctrl+C, resume, no secrets in tracebacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from typer.testing import CliRunner

from shared.cli import app as cli
from shared.engine.apply import apply_batch
from shared.engine.cursor_lease import pause_flow
from shared.engine.pull import pull_flow
from shared.engine.settle import settle


def _args(tmp_path) -> list[str]:  # noqa: ANN001
    return ["--config", str(tmp_path / "flows.yaml"), "--workdir", str(tmp_path / "state")]


def test_resume_makes_the_changes_held_while_paused_due_at_once(sample, tmp_path):
    app, _, _ = sample(accounts=30, contacts=0, bad=False)
    assert pull_flow(app, "accounts-to-customers").pulled == 30
    pause_flow(app.state, "accounts-to-customers", "maintenance")
    settle(app, app.bus.settler(app.queue), apply_batch(app, app.bus.receive(app.queue, max_messages=100, max_wait=0)))
    held = app.bus.counts(app.queue)
    assert (held.active, held.scheduled) == (0, 30)  # held for the pause, 5 minutes out

    resumed = CliRunner().invoke(cli, ["resume", "accounts-to-customers", *_args(tmp_path)])
    assert resumed.exit_code == 0, resumed.output
    assert "30 held changes due now" in resumed.output
    now = app.bus.counts(app.queue)
    assert (now.active, now.scheduled) == (30, 0)
