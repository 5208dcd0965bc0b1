"""Every app setting the code reads is declared in shared/settings.py APP_SETTINGS, and listed in
local.settings.sample.json (the Bicep side is tests/infra/test_bicep_structure.py).

The code is scanned, not trusted: `setting("X")`, `os.environ["X"]`, `os.environ.get("X")`, `os.getenv("X")`,
binding expressions `%X%` and `connection="X"` in shared/, functions/ and function_app.py. A read whose name is
not a literal is only allowed where listed in DYNAMIC_READS, with the reason.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from shared.settings import APP_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["shared", "functions", "function_app.py"]

# (file, enclosing function) -> why a non-literal name is read there.
DYNAMIC_READS = {
    ("shared/config_base.py", "secret_if_set"): (
        "secret references from flows.yaml (env:NAME): the names come from the operator's flows file, e.g. "
        "CRM_CLIENT_SECRET, set as Key Vault references in Azure"
    ),
}
# Names in local.settings.sample.json that are not in APP_SETTINGS, and why.
SAMPLE_EXTRAS = {
    "FUNCTIONS_WORKER_RUNTIME": "the local Functions host needs it (Flex Consumption sets the runtime itself)",
    "AzureWebJobsStorage": "the local Functions host's storage (Azurite)",
    "CRM_CLIENT_SECRET": "example connector secret referenced from flows.yaml as env:CRM_CLIENT_SECRET",
    "ERP_DB_URL": "example connector secret referenced from flows.yaml as env:ERP_DB_URL",
}

_BINDING_EXPRESSION = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)%")


@dataclass
class Reads:
    names: dict[str, set[str]] = field(default_factory=dict)  # setting -> where ("file:line")
    connections: dict[str, set[str]] = field(default_factory=dict)  # connection prefix -> where
    dynamic: set[tuple[str, str]] = field(default_factory=set)  # (file, function)

    def add(self, bucket: dict[str, set[str]], name: str, where: str) -> None:
        bucket.setdefault(name, set()).add(where)


def _is_os_environ(node: ast.AST) -> bool:
    """os.environ, or a bare `environ` (from os import environ)."""
    if isinstance(node, ast.Attribute) and node.attr == "environ":
        return isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id == "environ"


def module_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level `NAME = "text"` assignments, so `queue_name=QUEUE` reads as the text it names."""
    constants: dict[str, str] = {}
    for statement in tree.body:
        targets = statement.targets if isinstance(statement, ast.Assign) else (
            [statement.target] if isinstance(statement, ast.AnnAssign) else []
        )
        value = getattr(statement, "value", None)
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            constants.update({t.id: value.value for t in targets if isinstance(t, ast.Name)})
    return constants


class _Scanner(ast.NodeVisitor):
    def __init__(self, relpath: str, reads: Reads, constants: dict[str, str]) -> None:
        self.relpath = relpath
        self.reads = reads
        self.constants = constants
        self.functions: list[str] = []

    def _literal(self, node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return self.constants.get(node.id)
        return None

    def _where(self, node: ast.AST) -> str:
        return f"{self.relpath}:{node.lineno}"

    def _read(self, arg: ast.AST | None, node: ast.AST) -> None:
        name = self._literal(arg)
        if name is not None:
            self.reads.add(self.reads.names, name, self._where(node))
        else:
            self.reads.dynamic.add((self.relpath, self.functions[-1] if self.functions else "<module>"))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        first = node.args[0] if node.args else None
        if isinstance(func, ast.Name) and func.id in {"setting", "getenv"}:
            self._read(first, node)
        elif isinstance(func, ast.Attribute):
            os_getenv = func.attr == "getenv" and isinstance(func.value, ast.Name) and func.value.id == "os"
            if func.attr == "setting" or os_getenv:
                self._read(first, node)
            elif func.attr in {"get", "pop", "setdefault"} and _is_os_environ(func.value):
                self._read(first, node)
        for keyword in node.keywords:
            value = self._literal(keyword.value)
            if value is None:
                continue
            if keyword.arg == "connection":
                self.reads.add(self.reads.connections, value, self._where(node))
            for name in _BINDING_EXPRESSION.findall(value):
                self.reads.add(self.reads.names, name, self._where(node))
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if _is_os_environ(node.value) and isinstance(node.ctx, ast.Load):
            self._read(node.slice, node)
        self.generic_visit(node)


def scan_source(relpath: str, source: str, reads: Reads | None = None) -> Reads:
    reads = reads if reads is not None else Reads()
    tree = ast.parse(source, filename=relpath)
    _Scanner(relpath, reads, module_constants(tree)).visit(tree)
    return reads


def scan_code() -> Reads:
    reads = Reads()
    for entry in SOURCES:
        path = ROOT / entry
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for file in files:
            scan_source(str(file.relative_to(ROOT)), file.read_text(), reads)
    return reads


# -- the scanner finds what it should -------------------------------------------------------------------------


def test_scanner_finds_every_kind_of_read():
    source = '''
import os
from os import environ
from shared.settings import setting
import shared.settings as s

A = setting("S1")
B = s.setting("S2", env)
C = os.environ["E1"]
D = os.environ.get("E2", "x")
E = os.getenv("E3")
F = environ.get("E4")

QUEUE = "%Q1%"
CONNECTION: str = "CONN"
NAME = "S3"
G = setting(NAME)

@bp.service_bus_queue_trigger(arg_name="msg", queue_name=QUEUE, connection=CONNECTION)
@bp.timer_trigger(arg_name="t", schedule="%T1%")
def handler(name):
    log.info("%s done", name)      # a format string is not a binding expression
    return os.environ.get(name)    # dynamic
'''
    reads = scan_source("x.py", source)
    assert set(reads.names) == {"S1", "S2", "S3", "E1", "E2", "E3", "E4", "Q1", "T1"}
    assert set(reads.connections) == {"CONN"}
    assert reads.dynamic == {("x.py", "handler")}


# -- the code against APP_SETTINGS ----------------------------------------------------------------------------


def test_the_scan_sees_the_known_reads():
    reads = scan_code()
    assert {"APPLY_QUEUE", "PULL_SCHEDULE", "STATE_BACKEND", "BUS_BACKEND", "AZURE_CLIENT_ID"} <= set(reads.names)
    assert "ServiceBusConnection" in reads.connections


def test_every_setting_the_code_reads_is_declared():
    reads = scan_code()
    undeclared = {name: sorted(where) for name, where in reads.names.items() if name not in APP_SETTINGS}
    assert not undeclared, f"declare these in shared/settings.py APP_SETTINGS: {undeclared}"


def test_every_binding_connection_is_declared():
    # connection="X": the host reads X (a connection string) or X__fullyQualifiedNamespace & co. (identity).
    for prefix, where in scan_code().connections.items():
        declared = prefix in APP_SETTINGS or any(name.startswith(f"{prefix}__") for name in APP_SETTINGS)
        assert declared, f"connection {prefix!r} ({sorted(where)}) has no setting in APP_SETTINGS"


def test_non_literal_reads_only_where_allowed():
    dynamic = scan_code().dynamic
    unexpected = dynamic - set(DYNAMIC_READS)
    assert not unexpected, f"env reads with a computed name (use setting('NAME') instead): {sorted(unexpected)}"
    assert set(DYNAMIC_READS) <= dynamic, f"stale DYNAMIC_READS entries: {sorted(set(DYNAMIC_READS) - dynamic)}"


# -- local.settings.sample.json --------------------------------------------------------------------------------


def sample() -> dict:
    return json.loads((ROOT / "local.settings.sample.json").read_text())


def test_sample_local_settings_list_every_app_setting():
    values = sample()["Values"]
    missing = set(APP_SETTINGS) - set(values)
    assert not missing, f"add to local.settings.sample.json: {sorted(missing)}"
    extra = set(values) - set(APP_SETTINGS) - set(SAMPLE_EXTRAS)
    assert not extra, f"not app settings the code reads: {sorted(extra)}"


def test_sample_local_settings_format():
    data = sample()
    assert data["IsEncrypted"] is False
    values = data["Values"]
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert all(isinstance(v, str) for v in values.values()), "the Functions host reads every value as a string"
