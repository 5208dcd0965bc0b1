"""SqlConnector.iter_keys: every key once, in Python's string order, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from shared.config import SourceSpec
from shared.connectors import keysort
from shared.connectors.keysort import ascending, sorted_keys
from shared.connectors.sql import SqlConnector
from shared.errors import ConfigError
from shared.keys import format_key

TRICKY = [
    "a", "A", "b", "B", "Z", "z", "aa", "aA", "Aa", "ab",  # case: binary order puts all capitals first
    "1", "10", "100", "9", "09", "0", "-1", "+1", "1.5",  # digits as text
    "a b", " a", "a ", "  ", "a\tb", "a-b", "a_b", "a~b", "a.b", "a/b", "a\\b", "a'b", 'a"b', "a%b", "a#b",
    "é", "e", "É", "ß", "ss", "Straße", "strasse", "ñ", "日本", "中文", "한국어", "Ωmega", "ωmega",
    "zebra",
    "\u00a0nbsp", "e\u0301", "😀", "😀a", "\U0001f600b", "\ufb01", "ﬀ", "ÿ", "Ā", "\x7f", "~",
]


def _spec(entity: str, key: list[str]) -> SourceSpec:
    return SourceSpec(system="erp", entity=entity, key=key)


def _table(engine: sa.Engine, name: str, *columns: sa.Column) -> sa.Table:
    table = sa.Table(name, sa.MetaData(), *columns)
    table.create(engine)
    return table


def _urls(request) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{request.getfixturevalue('tmp_path') / 'keys.db'}"
    return request.getfixturevalue("postgres_database")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request):
    url = _urls(request)
    engine = sa.create_engine(url)
    connector = SqlConnector(url)
    yield request.param, engine, connector
    connector.close()
    engine.dispose()


def _text_collation(engine: sa.Engine) -> str | None:
    """A collation that orders differently from code points, to prove iter_keys does not rely on it."""
    if engine.dialect.name == "sqlite":
        return "NOCASE"
    with engine.connect() as conn:
        names = {r[0] for r in conn.execute(sa.text("SELECT collname FROM pg_collation"))}
    for name in ("und-x-icu", "en-x-icu", "en_US.utf8", "en_US"):
        if name in names:
            return name
    return None


def test_single_text_key_comes_in_code_point_order(db):
    dialect, engine, connector = db
    collation = _text_collation(engine)
    # Not the primary key: under NOCASE, 'a' and 'A' would collide. The key needs no unique index.
    table = _table(engine, "customers", sa.Column("id", sa.Integer, primary_key=True),
                   sa.Column("code", sa.String(40, collation=collation), nullable=False))
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [{"id": i, "code": k} for i, k in enumerate(reversed(TRICKY))])
        database_order = [r[0] for r in conn.execute(sa.select(table.c.code).order_by(table.c.code))]
    if collation is not None:
        assert database_order != sorted(TRICKY), f"{dialect} {collation} should not be code point order"
    assert list(connector.iter_keys(_spec("customers", ["code"]))) == sorted(TRICKY)


def test_integer_keys_are_sorted_as_their_text(db):
    _, engine, connector = db
    table = _table(engine, "orders", sa.Column("order_no", sa.BigInteger, primary_key=True, autoincrement=False))
    numbers = [1, 2, 9, 10, 11, 99, 100, 1000, -5, 0, 123456789012]
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [{"order_no": n} for n in numbers])
    assert list(connector.iter_keys(_spec("orders", ["order_no"]))) == sorted(str(n) for n in numbers)


def test_composite_keys_are_sorted_as_formatted_json(db, monkeypatch):
    _, engine, connector = db
    table = _table(engine, "lines", sa.Column("doc", sa.String(20), primary_key=True),
                   sa.Column("line", sa.Integer, primary_key=True, autoincrement=False))
    rows = [{"doc": d, "line": n} for d in ("a", "a b", "A", "é", "b", "ab") for n in (1, 2, 10)]
    with engine.begin() as conn:
        conn.execute(sa.insert(table), rows)
    monkeypatch.setattr(keysort, "RUN_SIZE", 4)  # spill to temporary files and merge
    expected = sorted(format_key([r["doc"], r["line"]]) for r in rows)
    got = list(connector.iter_keys(_spec("lines", ["doc", "line"])))
    assert got == expected
    assert expected[0] == '["A","1"]' and '["a b","1"]' in got  # JSON order differs from (doc, line) order


def test_char_key_is_sorted_here_not_by_the_database(db):
    _, engine, connector = db
    table = _table(engine, "codes", sa.Column("code", sa.CHAR(3), primary_key=True))
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [{"code": c} for c in ("b", "a!", "A", "a")])
    keys = list(connector.iter_keys(_spec("codes", ["code"])))
    assert keys == sorted(keys) and len(keys) == 4


def test_nullable_text_key_with_nulls_falls_back_to_sorting(db):
    _, engine, connector = db
    table = _table(engine, "loose", sa.Column("id", sa.Integer, primary_key=True),
                   sa.Column("ref", sa.String(10), nullable=True))
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [{"id": 1, "ref": "b"}, {"id": 2, "ref": None}, {"id": 3, "ref": "a"}])
    assert list(connector.iter_keys(_spec("loose", ["ref"]))) == ["None", "a", "b"]


def test_many_keys_stream_in_order(db):
    _, engine, connector = db
    table = _table(engine, "big", sa.Column("k", sa.String(20), primary_key=True))
    keys = [f"k{i}" for i in range(12_000)]
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [{"k": k} for k in keys])
    got = connector.iter_keys(_spec("big", ["k"]))
    assert next(got) == "k0"
    assert list(got) == sorted(keys)[1:]


def test_sorted_keys_spills_and_merges_and_drops_repeats():
    keys = [f"{i % 97:03d}-{i}\n" for i in range(1000)] * 2
    assert list(sorted_keys(keys, run_size=64)) == sorted(set(keys))
    assert list(sorted_keys([], run_size=3)) == []


def test_ascending_refuses_a_step_backwards():
    assert list(ascending(["a", "b", "b", "c"], "x")) == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="not in ascending"):
        list(ascending(["a", "c", "b"], "orders"))
