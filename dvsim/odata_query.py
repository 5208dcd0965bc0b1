"""OData query options and key predicates: ``$filter`` to SQL, ``$orderby``, ``$select``, ``(key='v')``.

Supported ``$filter`` grammar (the subset the connector uses, and what Dataverse accepts for it)::

    expr    := and_expr ('or' and_expr)*
    and_expr:= unary ('and' unary)*
    unary   := 'not' unary | '(' expr ')' | func '(' prop ',' string ')' | operand op operand
    op      := eq | ne | gt | ge | lt | le
    func    := contains | startswith | endswith
    operand := property | 'string' (quotes doubled) | number | null | true | false | guid | datetime

Comparisons follow Dataverse, which runs on SQL Server: string comparisons are case-insensitive, and
``ne`` does not match nulls (``x ne 'a'`` is SQL ``x <> 'a'``). Only ``eq null`` / ``ne null`` match nulls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import errors
from .schema import Attribute, Entity
from .values import is_guid, norm_guid, parse_datetime

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-]))
  | (?P<datetime>\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?(?![\w:-]))
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[mMdDfFlL]?(?![\w.]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[(),=])
    """,
    re.VERBOSE,
)

_COMPARISONS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_OPERATOR_KINDS = {
    "eq": "Equal", "ne": "NotEqual", "gt": "GreaterThan", "ge": "GreaterThanOrEqual",
    "lt": "LessThan", "le": "LessThanOrEqual",
}
_FUNCTIONS = {"contains": ("%", "%"), "startswith": ("", "%"), "endswith": ("%", "")}


@dataclass(frozen=True)
class Token:
    kind: str  # string, guid, datetime, number, ident, punct, end
    text: str
    pos: int


@dataclass(frozen=True)
class Literal:
    kind: str  # string, number, null, bool, guid, datetime
    value: Any
    text: str

    @property
    def edm_type(self) -> str:
        if self.kind == "number":
            return "Edm.Int32" if isinstance(self.value, int) else "Edm.Decimal"
        return {
            "string": "Edm.String", "null": "null", "bool": "Edm.Boolean",
            "guid": "Edm.Guid", "datetime": "Edm.DateTimeOffset",
        }[self.kind]


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise errors.bad_request(f"Syntax error at position {pos} in '{text}'.")
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _literal(tok: Token) -> Literal | None:
    if tok.kind == "string":
        return Literal("string", tok.text[1:-1].replace("''", "'"), tok.text)
    if tok.kind == "guid":
        return Literal("guid", norm_guid(tok.text), tok.text)
    if tok.kind == "datetime":
        return Literal("datetime", tok.text, tok.text)
    if tok.kind == "number":
        raw = tok.text.rstrip("mMdDfFlL")
        value: Any = float(raw) if any(c in raw for c in ".eE") else int(raw)
        return Literal("number", value, tok.text)
    if tok.kind == "ident" and tok.text in ("null", "true", "false"):
        if tok.text == "null":
            return Literal("null", None, tok.text)
        return Literal("bool", tok.text == "true", tok.text)
    return None


class _FilterParser:
    """Recursive descent over the tokens, emitting a parameterised SQL WHERE fragment."""

    def __init__(self, entity: Entity, text: str):
        self.entity = entity
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.params: list[Any] = []

    # token helpers
    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            self.syntax_error(tok)

    def syntax_error(self, tok: Token) -> None:
        raise errors.bad_request(f"Syntax error at position {tok.pos} in '{self.text}'.")

    def is_keyword(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "ident" and tok.text == word

    # grammar
    def parse(self) -> str:
        sql = self.or_expr()
        if self.peek().kind != "end":
            self.syntax_error(self.peek())
        return sql

    def or_expr(self) -> str:
        parts = [self.and_expr()]
        while self.is_keyword("or"):
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def and_expr(self) -> str:
        parts = [self.unary()]
        while self.is_keyword("and"):
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def unary(self) -> str:
        tok = self.peek()
        if tok.kind == "ident" and tok.text == "not":
            self.take()
            return f"(NOT {self.unary()})"
        if tok.text == "(":
            self.take()
            inner = self.or_expr()
            self.expect(")")
            return inner
        if tok.kind == "ident" and tok.text in _FUNCTIONS and self.tokens[self.i + 1].text == "(":
            return self.function()
        return self.comparison()

    def function(self) -> str:
        name = self.take().text
        self.expect("(")
        attr = self.property(self.take())
        self.expect(",")
        lit_tok = self.take()
        lit = _literal(lit_tok)
        self.expect(")")
        if attr.type != "string" or lit is None or lit.kind != "string":
            raise errors.bad_request(f"The function '{name}' requires a string property and a string literal.")
        prefix, suffix = _FUNCTIONS[name]
        escaped = lit.value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        self.params.append(f"{prefix}{escaped}{suffix}")
        return f"\"{attr.name}\" LIKE ? ESCAPE '\\'"

    def comparison(self) -> str:
        left_tok = self.take()
        op_tok = self.take()
        right_tok = self.take()
        if op_tok.kind != "ident" or op_tok.text not in _COMPARISONS:
            self.syntax_error(op_tok)
        op = op_tok.text
        left_lit, right_lit = _literal(left_tok), _literal(right_tok)
        if left_lit is None and right_lit is not None:
            attr, lit = self.property(left_tok), right_lit
        elif right_lit is None and left_lit is not None:
            # literal op property: mirror the operator so the column stays on the left
            attr, lit = self.property(right_tok), left_lit
            op = {"gt": "lt", "lt": "gt", "ge": "le", "le": "ge"}.get(op, op)
        else:
            self.syntax_error(right_tok if left_lit is None else left_tok)
            raise AssertionError  # unreachable
        column = column_sql(attr)
        if lit.kind == "null":
            if op == "eq":
                return f"{column} IS NULL"
            if op == "ne":
                return f"{column} IS NOT NULL"
            return "0"  # ordering against null is never true
        self.params.append(self.convert(attr, lit, op))
        return f"{column} {_COMPARISONS[op]} ?"

    def property(self, tok: Token) -> Attribute:
        if tok.kind != "ident":
            self.syntax_error(tok)
        attr = self.entity.by_wire.get(tok.text)
        if attr is None:
            raise errors.property_not_found(self.entity.type_name, tok.text)
        return attr

    def convert(self, attr: Attribute, lit: Literal, op: str) -> Any:
        """The literal as a column value, or Dataverse's incompatible-types error."""
        t = attr.type
        ok = False
        value: Any = None
        if t == "string" and lit.kind == "string":
            ok, value = True, lit.value
        elif t in ("int", "optionset") and lit.kind == "number" and float(lit.value).is_integer():
            ok, value = True, int(lit.value)
        elif t == "decimal" and lit.kind == "number":
            ok, value = True, float(lit.value)
        elif t == "bool" and lit.kind == "bool":
            ok, value = True, 1 if lit.value else 0
        elif t == "datetime" and lit.kind in ("datetime", "string"):
            try:
                ok, value = True, parse_datetime(lit.value)
            except ValueError:
                ok = False
        elif t in ("guid", "lookup") and lit.kind == "guid":
            ok, value = True, lit.value
        if not ok:
            raise errors.bad_request(
                "A binary operator with incompatible types was detected. Found operand types "
                f"'{attr.edm_type}' and '{lit.edm_type}' for operator kind '{_OPERATOR_KINDS[op]}'."
            )
        return value


def column_sql(attr: Attribute) -> str:
    """The column as SQL: decimals are stored as exact text, so they are compared and ordered as numbers."""
    column = f'"{attr.name}"'
    return f"CAST({column} AS REAL)" if attr.type == "decimal" else column


def parse_filter(entity: Entity, text: str) -> tuple[str, list[Any]]:
    """``$filter`` text to (SQL boolean expression, parameters)."""
    parser = _FilterParser(entity, text)
    return parser.parse(), parser.params


def parse_orderby(entity: Entity, text: str) -> list[tuple[str, bool]]:
    """``$orderby`` text to [(column, descending)]."""
    result: list[tuple[str, bool]] = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise errors.bad_request(f"Syntax error in $orderby '{text}'.")
        attr = entity.by_wire.get(words[0])
        if attr is None:
            raise errors.property_not_found(entity.type_name, words[0])
        result.append((column_sql(attr) if attr.type == "decimal" else attr.name,
                       len(words) == 2 and words[1] == "desc"))
    return result


def parse_select(entity: Entity, text: str) -> list[Attribute]:
    attrs: list[Attribute] = []
    for name in (p.strip() for p in text.split(",")):
        attr = entity.by_wire.get(name)
        if attr is None:
            raise errors.property_not_found(entity.type_name, name)
        if attr not in attrs:
            attrs.append(attr)
    return attrs


# --- key predicates: accounts(<guid>), accounts(accountnumber='A-1'), contacts(a='x',b='y') ----------

class GuidLiteral(str):
    """A bare GUID in a key predicate (``_x_value=<guid>``), told apart from a quoted string."""


def parse_key_predicate(entity: Entity, text: str) -> str | dict[str, Any]:
    """The text between the parentheses: a GUID (returned as str) or alternate key values (a dict).

    String values use OData quoting, so ``'O''Brien'`` is ``O'Brien``.
    """
    tokens = tokenize(text)
    if len(tokens) == 2 and tokens[0].kind == "guid":
        return norm_guid(tokens[0].text)
    values: dict[str, Any] = {}
    i = 0
    while True:
        name, eq, val = tokens[i], tokens[i + 1], tokens[i + 2]
        lit = _literal(val)
        if name.kind != "ident" or eq.text != "=" or lit is None or lit.kind in ("null", "bool"):
            raise errors.bad_request(f"Invalid key predicate '({text})'.")
        values[name.text] = GuidLiteral(lit.value) if lit.kind == "guid" else lit.value
        i += 3
        if tokens[i].kind == "end":
            break
        if tokens[i].text != ",":
            raise errors.bad_request(f"Invalid key predicate '({text})'.")
        i += 1
    if set(values) == {entity.id_attr} and is_guid(values[entity.id_attr]):
        return norm_guid(str(values[entity.id_attr]))
    return values


def format_key_value(value: Any) -> str:
    """A key value as OData literal text (for URLs the simulator writes)."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)
