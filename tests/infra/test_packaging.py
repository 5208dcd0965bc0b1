"""What ships to Azure: the function app's dependencies locked with hashes, and nothing it does not import."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI_ONLY = {"typer", "click", "rich"}


def _pins(text: str) -> dict[str, list[str]]:
    """name -> its hashes, from a pip requirements file with `\\` continuations."""
    pins: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([A-Za-z0-9_.\-]+)==\S+", line)
        if match:
            current = match.group(1).lower()
            pins[current] = []
        hashes = re.findall(r"--hash=sha256:[0-9a-f]{64}", line)
        if hashes and current:
            pins[current] += hashes
    return pins


def test_the_deployed_requirements_pin_every_package_with_hashes():
    text = (ROOT / "requirements.txt").read_text()
    pins = _pins(text)
    assert len(pins) > 30, "requirements.txt should hold every transitive dependency"
    assert all(pins.values()), f"pins without hashes: {[n for n, h in pins.items() if not h]}"
    top = {re.split(r"[=\[]", line)[0].lower() for line in (ROOT / "requirements.in").read_text().splitlines()
           if line and not line.startswith("#")}
    assert top <= set(pins), f"requirements.in not compiled into requirements.txt: {top - set(pins)}"
    assert not CLI_ONLY & set(pins), "the CLI's dependencies are not deployed"


def test_the_function_app_imports_none_of_the_cli_dependencies():
    code = ("import sys, function_app; import functions.apply, functions.pull, functions.admin; "
            f"print(sorted(set({sorted(CLI_ONLY)!r}) & {{m.split('.')[0] for m in sys.modules}}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_web_console_ships_with_the_function_app():
    """The admin function serves the console's page from shared/console: .funcignore leaves everything out, lets
    shared/ back in, then leaves out a few kinds of file again; none of those may be one of the console's."""
    from fnmatch import fnmatch

    lines = [line.strip() for line in (ROOT / ".funcignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert "!shared/**" in lines
    excluded_again = lines[lines.index("!shared/**") + 1:]
    served = ["shared/console/index.html", "shared/console/console.js", "shared/console/console.css"]
    assert all((ROOT / name).is_file() for name in served)
    for name in served:
        assert not [p for p in excluded_again if fnmatch(name, p.removeprefix("**/")) or fnmatch(Path(name).name,
                                                                                                  p.removeprefix("**/"))]
