"""`dualsync init`: a commented flows file to start from, and the JSON Schema beside it for editor help."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from shared.cli.common import app, console, err_console
from shared.config import Config

SCHEMA_FILE = "flows.schema.json"

# One SQL -> SQL flow over the demo's sample databases (`make demo`, demo/sample_data.py), so it validates and
# passes `dualsync check` as written; every key it uses says what it does.
TEMPLATE = """\
# yaml-language-server: $schema=./flows.schema.json
# A dualsync flows file. `dualsync validate` checks it, `dualsync check` checks it against the real systems,
# `dualsync run --once` runs it. Every key is described in flows.schema.json (hover over a key in an editor
# with YAML support) and in the README.

# The systems, by the name flows use. Secrets are never written here: a value "env:NAME" is read from the
# environment variable NAME (on Azure, an app setting holding a Key Vault reference).
systems:
  crm:
    kind: sql                  # sql: any database SQLAlchemy reaches; dataverse: a Dataverse organization
    url: "env:CRM_DB_URL"      # e.g. sqlite:///crm.db, or postgresql://user@host/db with the password in it
  erp:
    kind: sql
    url: "env:ERP_DB_URL"
  # A Dataverse organization instead (sign-in without secrets: docs/deploy.md):
  # crm:
  #   kind: dataverse
  #   url: https://contoso.crm.dynamics.com
  #   auth: {tenant_id: <tenant id>, client_id: <app id>, client_secret: "env:CRM_CLIENT_SECRET"}

# The flows, by name. A flow moves one entity one way; two flows with one `pair:` name sync both ways.
flows:
  accounts-to-customers:
    source:
      system: crm              # a name under systems:
      entity: accounts         # the table (a Dataverse entity set: accounts, contacts, ...)
      key: accountid           # the column(s) identifying a record at the source
      changes: watermark       # how changes are found: watermark | status_flag | xact_id | change_tracking
      watermark: modifiedon    # the column that says when (or in which order) a row last changed
    target:
      system: erp
      entity: customers
      key: account_number      # how a target row is found: must be the `to` of a field below
    schedule: "0 */5 * * * *"  # when to pull: NCRONTAB, seconds first (here: every 5 minutes)
    master: crm                # whose value wins a conflict
    deletes: deactivate        # a source delete: delete | deactivate (writes deactivate_value) | ignore
    # Each field is read `from` the source and written `to` the target. A record that breaks a rule is
    # dead-lettered with the record, the field and the rule; fix it and `dualsync replay`.
    fields:
      - {from: accountnumber, to: account_number, required: true, max_length: 20}
      - {from: name, to: name, required: true, max_length: 100}
      - {from: statecode, to: status, map: {0: active, 1: inactive}}   # source value -> target value
      - {from: creditlimit, to: credit_limit, type: decimal}           # compared as decimals
      - {from: accountid, to: crm_id}
"""


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="where to write the flows file")] = Path("flows.yaml"),
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
) -> None:
    """Write a commented flows file to start from (one SQL -> SQL flow) and its JSON Schema beside it.

    Example: dualsync init flows.yaml && CRM_DB_URL=sqlite:///crm.db ERP_DB_URL=sqlite:///erp.db dualsync check
    """
    if path.exists() and not force:
        err_console.print(f"error: {path} exists; add --force to overwrite it", markup=False)
        raise typer.Exit(2)
    if path.is_dir():
        err_console.print(f"error: {path} is a directory; name the file to write", markup=False)
        raise typer.Exit(2)
    try:
        path.write_text(TEMPLATE, encoding="utf-8")
        path.with_name(SCHEMA_FILE).write_text(
            json.dumps(Config.model_json_schema(by_alias=True), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        err_console.print(f"error: cannot write {path}: {exc.strerror or exc}", markup=False)
        raise typer.Exit(2) from None
    console.print(f"wrote {path} and {path.with_name(SCHEMA_FILE)}; next: set CRM_DB_URL and ERP_DB_URL, then "
                  f"dualsync check -c {path}", markup=False)
