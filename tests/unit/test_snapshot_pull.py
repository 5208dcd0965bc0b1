"""Change mode `snapshot` is the engine's, not the files connector's: any connector whose every read hands over
the whole source gets only the changed rows on the bus, and its missing rows as confirmed deletes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.config import SourceSpec
from shared.engine.delivery import handle_delivery
from shared.engine.pull import pull_flow
from shared.ports.connector import ChangePage
from tests.fakes.memory_connector import MemoryConnector
from tests.unit.conftest import CONFIG


class WholeTableConnector(MemoryConnector):
    """A source with no change marker: every read is every row, as it is now."""

    def read_changes(self, source: SourceSpec, position: dict | None, page_size: int) -> Iterator[ChangePage]:
        keys = sorted(self.tables.get(source.entity, {}))
        for start in range(0, max(len(keys), 1), page_size):
            records = [self._record(source.entity, k) for k in keys[start : start + page_size]]
            yield ChangePage(records, {}, snapshot=True)


@pytest.fixture
def snapshot_app(app, memory, monkeypatch):
    memory["crm"] = WholeTableConnector()
    flow = CONFIG["flows"]["accounts"]
    config = app.config.model_copy(update={"flows": {"accounts": app.config.flows["accounts"].model_copy(update={
        "source": SourceSpec(**{**flow["source"], "changes": "snapshot"}), "page_size": 2})}})
    monkeypatch.setattr(app, "config", config)
    return app


def put(memory, key: str, name: str) -> None:
    memory["crm"].put("accounts", key, {"accountid": key, "accountnumber": f"N-{key}", "name": name,
                                        "statecode": 0})


def apply_all(app) -> None:
    while received := app.bus.receive(app.queue, max_messages=100, max_wait=0.1):
        handle_delivery(app, received, app.bus.settler(app.queue))


def test_only_changed_rows_travel_and_a_missing_row_is_a_confirmed_delete(snapshot_app, memory):
    app = snapshot_app
    for key in ("a1", "a2", "a3"):
        put(memory, key, f"name {key}")
    first = pull_flow(app, "accounts", owner="t")
    assert (first.pulled, first.unchanged) == (3, 0)
    apply_all(app)
    again = pull_flow(app, "accounts", owner="t")
    assert (again.pulled, again.unchanged, again.deletes_inferred) == (0, 3, 0)
    assert app.bus.counts(app.queue).active == 0
    put(memory, "a2", "renamed")
    del memory["crm"].tables["accounts"]["a3"]
    changed = pull_flow(app, "accounts", owner="t")
    assert (changed.pulled, changed.unchanged, changed.deletes_inferred) == (1, 1, 1)
    apply_all(app)
    erp = memory["erp"].tables["customers"]
    assert erp["N-a2"]["name"] == "renamed" and erp["N-a3"]["status"] == "inactive"
    assert pull_flow(app, "accounts", owner="t").pulled == 0
