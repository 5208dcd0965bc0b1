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


def _args(tmp_path) -> list[str]:
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


def test_a_workdir_that_does_not_exist_or_is_a_file_is_refused_in_one_line(sample, tmp_path):
    sample(accounts=5, contacts=0, bad=False)
    runner = CliRunner()
    flows = ["--config", str(tmp_path / "flows.yaml")]
    missing = runner.invoke(cli, ["status", *flows, "--workdir", str(tmp_path / "typo")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    assert not (tmp_path / "typo").exists()  # not silently made into an empty one
    (tmp_path / "afile").write_text("x")
    for command in (["status"], ["runs"], ["run", "--once"], ["dead-letters", "list"]):
        refused = runner.invoke(cli, [*command, *flows, "--workdir", str(tmp_path / "afile")])
        assert refused.exit_code == 2, refused.output
        assert refused.output.strip().count("\n") == 0 and "not a directory" in refused.output, refused.output
    made = runner.invoke(cli, ["run", "--once", "--workers", "0", *flows, "--workdir", str(tmp_path / "new" / "wd")])
    assert made.exit_code == 0 and (tmp_path / "new" / "wd" / "state.db").exists()


def test_an_unexpected_error_prints_no_local_variables(sample, tmp_path, monkeypatch):
    sample(accounts=5, contacts=0, bad=False)
    secret = "s3cr3t-Pa55word-value"
    monkeypatch.setenv("ERP_CLIENT_SECRET", secret)
    # A bug in a command, in a terminal, where typer's pretty tracebacks would show every frame's locals.
    script = ("import shared.engine.status as status\n"
              "import os\ndef broken(app):\n    secret = os.environ['ERP_CLIENT_SECRET']\n    raise RuntimeError('unexpected')\n"
              "status.collect_status = broken\nfrom shared.cli import main\nmain()\n")
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "200", "FORCE_COLOR": "1"}
    done = subprocess.run([sys.executable, "-c", script, "status", *_args(tmp_path)], env=env, capture_output=True, check=False,
                          text=True, timeout=60)
    assert done.returncode == 1 and "RuntimeError" in done.stderr
    assert secret not in done.stderr + done.stdout


def test_a_second_run_on_one_workdir_is_refused_naming_the_first(sample, tmp_path):
    sample(accounts=5, contacts=0, bad=False)
    cmd = [sys.executable, "-m", "shared.cli", "run", "--workers", "0", *_args(tmp_path)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_file(tmp_path / "state" / "run.lock")
        second = subprocess.run([*cmd, "--once"], capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 2
        assert f"in use by pid {first.pid} since" in second.stderr.replace("\n", " ")
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)


def test_ctrl_c_says_what_is_queued_and_how_to_go_on(sample, tmp_path):
    sample(accounts=2000, contacts=0, bad=False)
    cmd = [sys.executable, "-m", "shared.cli", "run", "--workers", "1", *_args(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_file(tmp_path / "state" / "run.lock")
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    text = " ".join((out + err).split())
    assert "interrupted" in text and "to continue: dualsync run --config" in text, text
    assert "Traceback" not in err
    queued = CliRunner().invoke(cli, ["status", "--json", *_args(tmp_path)])
    waiting = json.loads(queued.output)["flows"][0]["queued"]
    assert ("nothing is queued" in text) == (waiting == 0)
    if waiting:
        assert f"accounts-to-customers {waiting}" in text


def _wait_for_file(path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
