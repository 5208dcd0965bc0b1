"""A record larger than one message (Service Bus Standard: 256 KB) goes through `dualsync run --once` on the
embedded runtime: it arrives whole in the SQLite target, the flow is not blocked, and the records around it pass.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, create_engine, insert, select
from typer.testing import CliRunner

from shared.cli import app as cli

MB = 1024 * 1024
FLOWS = """\
systems:
  crm: {kind: sql, url: "env:CRM_DB_URL"}
  erp: {kind: sql, url: "env:ERP_DB_URL"}
flows:
  notes-to-erp:
    source: {system: crm, entity: notes, key: noteid, changes: watermark, watermark: modifiedon}
    target: {system: erp, entity: notes, key: note_no}
    fields:
      - {from: noteid, to: note_no}
      - {from: title, to: title, required: true, max_length: 40}
      - {from: body, to: body}
"""


def tables() -> tuple[Table, Table]:
    crm, erp = MetaData(), MetaData()
    notes = Table("notes", crm, Column("noteid", String(20), primary_key=True), Column("title", String(100)),
                  Column("body", Text), Column("modifiedon", DateTime, nullable=False))
    target = Table("notes", erp, Column("note_no", String(20), primary_key=True), Column("title", String(40)),
                   Column("body", Text))
    return notes, target


def test_a_one_megabyte_record_arrives_whole_and_does_not_block_its_flow(tmp_path, monkeypatch):
    crm_url, erp_url = f"sqlite:///{tmp_path / 'crm.db'}", f"sqlite:///{tmp_path / 'erp.db'}"
    notes, target = tables()
    notes.metadata.create_all(crm := create_engine(crm_url))
    target.metadata.create_all(erp := create_engine(erp_url))
    big = "".join(f"line {i:07d} of a very long note\n" for i in range(MB // 32))
    base = datetime(2026, 1, 1)
    with crm.begin() as conn:
        conn.execute(insert(notes), [
            {"noteid": f"n{i}", "title": f"note {i}", "body": big if i == 2 else f"short {i}",
             "modifiedon": base + timedelta(seconds=i)} for i in range(5)])
    monkeypatch.setenv("CRM_DB_URL", crm_url)
    monkeypatch.setenv("ERP_DB_URL", erp_url)
    (tmp_path / "flows.yaml").write_text(FLOWS)
    common = ["--config", str(tmp_path / "flows.yaml"), "--workdir", str(tmp_path / "state")]
    runner = CliRunner()

    ran = runner.invoke(cli, ["run", "--once", "--drain-bound", "20", *common])

    assert ran.exit_code == 0, ran.output
    with erp.connect() as conn:
        rows = dict(conn.execute(select(target.c.note_no, target.c.body)).all())
    assert set(rows) == {f"n{i}" for i in range(5)}
    assert len(big) > MB - 64 and rows["n2"] == big
    # The body travelled beside the queue, and is gone once its message was applied.
    assert [p for p in (tmp_path / "state" / "payloads").rglob("*") if p.is_file()] == []
    # Later changes still flow.
    with crm.begin() as conn:
        conn.execute(insert(notes), [{"noteid": "n9", "title": "later", "body": big[::-1],
                                      "modifiedon": base + timedelta(minutes=1)}])
    assert runner.invoke(cli, ["run", "--once", "--drain-bound", "20", *common]).exit_code == 0
    with erp.connect() as conn:
        assert conn.execute(select(target.c.body).where(target.c.note_no == "n9")).scalar_one() == big[::-1]
