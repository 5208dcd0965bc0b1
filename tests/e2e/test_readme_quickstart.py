"""The README's five-minute quickstart, run exactly as it is written, so it stays true."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- quickstart:"


def quickstart_script() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    after = readme[readme.index(MARKER):]
    return re.search(r"```bash\n(.*?)```", after, re.DOTALL).group(1)


def test_the_readme_quickstart_runs_as_written(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # `dualsync` and `python3` as an installed checkout has them, running this checkout's code.
    (bin_dir / "dualsync").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m shared.cli "$@"\n')
    (bin_dir / "python3").symlink_to(sys.executable)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    env.pop("COLUMNS", None)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", quickstart_script()], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = " ".join(done.stdout.split())
    assert "ok flows.yaml: 2 systems, 1 flows" in out
    assert "dead-lettered 1 ValidationFailed" in out and "adds up yes" in out  # run --once
    assert re.search(r"accounts-to-customers running queued 0 lag \S+ last pull ok, 3 pulled", out)  # status
    assert re.search(r"accounts-to-customers pull [\d:\- ]+ to [\d:\- ]+ pulled 3 applied 2 dead-lettered 1", out)  # runs
    assert re.search(r"accounts-to-customers: 1 .* A3 ValidationFailed name: is required but empty", out)  # dead-letters
    erp = sqlite3.connect(work / "erp.db")
    assert erp.execute("SELECT number, name FROM customers ORDER BY number").fetchall() == [
        ("A1", "Contoso"), ("A2", "Fabrikam")]
    erp.close()
