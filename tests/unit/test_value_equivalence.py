"""The one equivalence the echo check, the no-op check and conflict detection share."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from shared.config import parse_config
from shared.engine.conflicts import decide
from shared.engine.values import DIGEST_OVER, EXACT, Equivalence, FieldRule, equivalence, is_digest
from shared.ports.connector import ValuePrecision
from shared.ports.tables import Entity
from shared.state.store import RecordState


@pytest.mark.parametrize(("a", "b"), [
    ("2024-05-01T10:00:00Z", "2024-05-01 10:00:00"),  # Dataverse vs a SQL DATETIME (naive = UTC)
    ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
    (Decimal("100.00"), 100), ("10", 10), ("0.0", 0),
    (True, 1), (False, "0"), ("true", True),
    (None, None),
])
def test_same_business_value_in_another_form(a, b):
    assert EXACT.same(a, b) and EXACT.same(b, a)


@pytest.mark.parametrize(("a", "b"), [
    ("2024-05-01T10:00:00Z", "2024-05-01T10:00:01Z"), ("10", 11), (True, 2), ("abc", "abd"), (None, ""),
    ("a ", "a"),
])
def test_different_values_stay_different(a, b):
    assert not EXACT.same(a, b)


def test_datetimes_compare_at_the_coarser_precision():
    seconds = FieldRule("datetime", datetime_digits=0)
    assert seconds.same("2024-06-02 08:30:15.250000", "2024-06-02T08:30:15Z")
    assert not FieldRule("datetime").same("2024-06-02 08:30:15.250000", "2024-06-02T08:30:15Z")


def test_decimals_compare_at_the_target_scale_and_text_by_its_rules():
    assert FieldRule("decimal", decimal_scale=2).same("1.234", Decimal("1.23"))
    assert not FieldRule("decimal").same("1.234", Decimal("1.23"))
    assert FieldRule("string", trims=True).same("ACME  ", "ACME")
    assert not FieldRule("string").same("007", "7")  # declared text is never read as a number


def test_a_mapped_source_value_and_its_label_are_one_value():
    rule = FieldRule(labels={"0": "active", "1": "inactive"})
    assert rule.same(0, "active") and rule.same("1", "inactive") and not rule.same(0, "inactive")


def test_a_long_value_is_remembered_as_a_digest_compared_under_the_same_rule():
    rule = FieldRule("string", trims=True)
    long = "x" * (DIGEST_OVER + 1)
    stored = rule.stored(long + "   ")
    assert is_digest(stored)
    assert rule.same(long, stored) and not rule.same(long + "y", stored)


def test_rules_take_the_coarser_precision_of_both_connectors():
    config = parse_config({
        "systems": {"crm": {"kind": "sql", "url": "sqlite://"}, "erp": {"kind": "sql", "url": "sqlite://"}},
        "flows": {"f": {"source": {"system": "crm", "entity": "a", "key": "id"},
                        "target": {"system": "erp", "entity": "b", "key": "id"},
                        "fields": [{"from": "id", "to": "id"},
                                   {"from": "at", "to": "stamp", "type": "datetime"},
                                   {"from": "amount", "to": "total", "type": "decimal"}]}}})

    class Declares:
        def __init__(self, **by_field: ValuePrecision) -> None:
            self.by_field = by_field

        def precision(self, entity: str, field: str) -> ValuePrecision:
            return self.by_field.get(field, ValuePrecision())

    rules = equivalence(config.flows["f"], Declares(at=ValuePrecision(datetime_digits=0)),
                        Declares(total=ValuePrecision(decimal_scale=2)))
    assert rules.target("stamp").datetime_digits == rules.source("at").datetime_digits == 0
    assert rules.target("total").decimal_scale == 2


def test_record_state_fits_one_table_entity_whatever_the_values():
    state = RecordState("crm|1", values={"crm": {f"f{i}": "y" * 40 for i in range(3000)},
                                         "erp": {"body": "z" * 200_000}})
    data = state.to_data()
    parts = [v for k, v in data.items() if k.startswith("values_")]
    assert all(len(p) <= 30_000 for p in parts) and sum(map(len, parts)) < 1_000_000
    back = RecordState.from_entity(Entity("records", "crm|1", data))
    assert is_digest(back.values["erp"]["body"]) and back.values["crm"]["f1"] == "y" * 40


def test_last_writer_wins_without_a_change_time_says_the_master_won():
    config = parse_config({
        "systems": {"crm": {"kind": "sql", "url": "sqlite://"}, "erp": {"kind": "sql", "url": "sqlite://"}},
        "flows": {"f": {"source": {"system": "erp", "entity": "a", "key": "id"},
                        "target": {"system": "crm", "entity": "b", "key": "id"}, "master": "erp",
                        "conflicts": "last_writer_wins",
                        "fields": [{"from": "id", "to": "id"}, {"from": "name", "to": "name"}]}}})
    decision = decide(config.flows["f"], Equivalence(), {"id": "1", "name": "erp edit"}, {"name": "base"},
                      {"id": "1", "name": "crm edit"}, datetime(2026, 1, 1, tzinfo=UTC), lambda: None)
    assert decision.winners == {"name": "erp"}
    assert decision.notes == ["last_writer_wins: no change time from crm, so the master erp wins"]
