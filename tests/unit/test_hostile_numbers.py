"""Numbers that would exhaust memory or overflow are refused while they are still short text, with the
record, the field and the rule; the rest of the batch goes on."""

from __future__ import annotations

import resource

import pytest
import sqlalchemy as sa

from shared.config import TargetSpec
from shared.connectors.sql import SqlConnector
from shared.engine.values import FieldRule
from shared.ports.connector import WriteOp
from tests.unit.conftest import account, deliver

HOSTILE = ["1e999999999", "-1e999999999", "1e-999999999", "9" * 100, "1E+400"]


def _rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


@pytest.mark.parametrize("number", HOSTILE)
def test_a_decimal_field_beyond_any_column_is_dead_lettered_naming_the_field(app, memory, number):
    before = _rss_mb()
    outcomes = deliver(app, account("bad", 1, creditlimit=number), account("ok", 1, creditlimit="12.50"))
    by_key = {o.message.key: o for o in outcomes}
    assert (by_key["bad"].kind.value, str(by_key["bad"].reason)) == ("dead_letter", "ValidationFailed")
    assert "record bad" in by_key["bad"].description and "creditlimit" in by_key["bad"].description
    assert by_key["ok"].kind.value == "applied"
    assert _rss_mb() - before < 100


def test_comparing_such_a_value_neither_raises_nor_expands_it():
    rule = FieldRule()
    assert rule.same("1e999999999", "1e999999999") and not rule.same("1e999999999", "5")
    assert rule.stored("1e999999999") == "1e999999999"


def test_the_sql_connector_refuses_them_per_op_for_text_numeric_and_integer_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'erp.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id TEXT PRIMARY KEY, note TEXT, amount NUMERIC(10, 2), n INTEGER)")
    engine.dispose()
    connector = SqlConnector(url)
    target = TargetSpec(system="erp", entity="t", key=["id"])
    from decimal import Decimal

    ops = [
        WriteOp("upsert", {"id": "a"}, {"id": "a", "note": Decimal("1e999999999")}),
        WriteOp("upsert", {"id": "b"}, {"id": "b", "amount": "1e999999999"}),
        WriteOp("upsert", {"id": "c"}, {"id": "c", "n": "1e999999999"}),
        WriteOp("upsert", {"id": "d"}, {"id": "d", "amount": "123456789.5"}),  # 9 digits before the point: 8 fit
        WriteOp("upsert", {"id": "e"}, {"id": "e", "n": "99999999999999999999"}),  # past a 64-bit integer
        WriteOp("upsert", {"id": "ok"}, {"id": "ok", "note": "fine", "amount": "12345678.25", "n": "7"}),
    ]
    before = _rss_mb()
    try:
        results = connector.write_batch(target, ops)
    finally:
        connector.close()
    assert [r.ok for r in results] == [False, False, False, False, False, True]
    assert all(str(r.error.reason) == "TargetRejected" for r in results[:5])
    assert "NUMERIC(10,2)" in str(results[3].error) and "64-bit" in str(results[4].error)
    assert _rss_mb() - before < 100
