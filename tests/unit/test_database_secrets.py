"""A database password never leaves the connector: not from the URL's userinfo, not from its query string
(`?password=`, ODBC `PWD=` inside `odbc_connect`), not through errors, and `validate` refuses such URLs."""

from __future__ import annotations

import logging
import socket

import pytest

from shared.config import parse_config
from shared.connectors.sql import SqlConnector, describe_database
from shared.errors import ConfigError, SyncError

SECRET = "Sup3r-Secret-77"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("url", [
    f"postgresql+psycopg://sync@127.0.0.1:{{port}}/erp?password={SECRET}&sslmode=disable",
    f"postgresql+psycopg://sync:{SECRET}@127.0.0.1:{{port}}/erp?application_name={SECRET}",
])
def test_errors_name_the_database_but_never_a_query_value(url, caplog):
    from shared.config import SourceSpec

    connector = SqlConnector(url.format(port=_closed_port()))
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(SyncError) as caught:
            list(connector.read_changes(SourceSpec(system="erp", entity="customers", key=["id"]), None, 10))
    finally:
        connector.close()
    text = str(caught.value)
    assert "postgresql://127.0.0.1" in text and "/erp" in text
    assert SECRET not in text and SECRET not in connector.database and SECRET not in repr(connector)
    assert SECRET not in caplog.text


def test_the_description_is_dialect_host_and_database_only():
    assert describe_database("postgresql+psycopg://u:pw@db.example:5433/erp?password=x&sslmode=require") == \
        "postgresql://db.example:5433/erp"
    assert describe_database("mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BODBC%7D%3BSERVER%3Ds%3BPWD%3Dx") == \
        "mssql://(odbc_connect)"
    assert describe_database("sqlite:////var/lib/erp.db") == "sqlite:////var/lib/erp.db"


@pytest.mark.parametrize("url", [
    f"postgresql://sync@db/erp?password={SECRET}",
    f"postgresql://sync@db/erp?sslmode=require&PassWord={SECRET}",
    f"mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BODBC+Driver+18%7D%3BSERVER%3Ddb%3BUID%3Dsync%3BPWD%3D{SECRET}",
    f"mssql+pyodbc:///?odbc_connect=DRIVER={{ODBC}};SERVER=db;Pwd={SECRET}",
    f"postgresql://sync@db/erp?sslpassword={SECRET}",
    # Accepted as plain URLs before: encoded twice, spaces around '=', a DSN-style host, a '/' in a password.
    f"mssql+pyodbc:///?odbc_connect=DRIVER%253D%257BODBC%257D%253BPWD%253D{SECRET}",
    f"mssql+pyodbc:///?odbc_connect=Driver%3D%7BODBC%7D%3BPwd+%3D+{SECRET}",
    f"mssql+pyodbc://erpdsn;UID=sync;PWD={SECRET}",
    f"postgresql://sync:pa/{SECRET}@db/erp",
])
def test_validate_refuses_a_secret_in_the_query_string(url):
    data = {
        "systems": {"erp": {"kind": "sql", "url": url}, "crm": {"kind": "sql", "url": "sqlite:///crm.db"}},
        "flows": {"f": {"source": {"system": "crm", "entity": "a", "key": "id"},
                        "target": {"system": "erp", "entity": "b", "key": "id"},
                        "fields": [{"from": "id", "to": "id"}]}},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    problems = "\n".join(caught.value.problems)
    assert "systems.erp.url" in problems and "env:NAME" in problems
    assert SECRET not in problems


@pytest.mark.parametrize("url", [
    "sqlite:///erp.db",
    "postgresql://sync@db/erp?sslmode=require&application_name=dualsync",
    "mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BODBC+Driver+18%7D%3BSERVER%3Ddb%3BAuthentication%3DActiveDirectoryMsi",
])
def test_urls_without_a_secret_stay_literal(url):
    data = {
        "systems": {"erp": {"kind": "sql", "url": url}},
        "flows": {"f": {"source": {"system": "erp", "entity": "a", "key": "id"},
                        "target": {"system": "erp", "entity": "b", "key": "id"},
                        "fields": [{"from": "id", "to": "id"}]}},
    }
    assert parse_config(data).systems["erp"].url == url
