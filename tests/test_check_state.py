"""`perp-keeper check` shows the state database, its schema version and who holds which lease."""

from __future__ import annotations

import re
from contextlib import closing
from pathlib import Path

import pytest

from devnet import up
from devnet.scenario import KEEPER_KEY
from keeper.check import state_rows
from keeper.store import SCHEMA_VERSION, Store
from keeper.store_pg import PgStore
from tests.helpers import cli_output
from tests.pg import PgServer, pg_server, pg_url  # noqa: F401  (fixtures)


def test_sqlite_rows(tmp_path: Path) -> None:
    missing = tmp_path / "none.sqlite"
    (row,) = state_rows(missing)
    assert row.ok
    assert "not created yet" in row.detail
    assert not missing.exists()  # check creates nothing
    Store(tmp_path / "k.sqlite").close()
    (row,) = state_rows(tmp_path / "k.sqlite")
    assert (row.name, row.ok) == ("state database", True)
    assert row.detail == f"SQLite {tmp_path / 'k.sqlite'}, schema version {SCHEMA_VERSION}"


def test_postgres_rows_name_each_lease_holder_epoch_and_age(pg_url: str) -> None:  # noqa: F811
    with closing(PgStore(pg_url)) as store:
        store.lease_claim("signer:0xabc", "host-a:1:x", 30)
        store.lease_claim("shard:1", "host-b:2:y", 30)
        store.lease_release("shard:1", "host-b:2:y")
    rows = state_rows(pg_url)
    assert [(r.name, r.ok) for r in rows] == [
        ("state database", True),
        ("lease shard:1", True),
        ("lease signer:0xabc", True),
    ]
    assert rows[0].detail == f"PostgreSQL {pg_url}, schema version {SCHEMA_VERSION}"
    assert rows[1].detail == "free: last held by host-b:2:y at epoch 1, released"
    assert rows[2].detail.startswith("held by host-a:1:x at epoch 1 for ")


def test_an_unreachable_database_fails_its_row(pg_server: PgServer) -> None:  # noqa: F811
    (row,) = state_rows(pg_server.url("no_such_database"))
    assert (row.name, row.ok) == ("state database", False)
    assert "no_such_database" in row.detail


def test_check_prints_the_database_without_its_password(
    devnet: up.Devnet,
    pg_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", KEEPER_KEY)
    secret_url = pg_url.replace("keeper@", "keeper:s3cret@")  # trust auth: the password is ignored
    with closing(PgStore(pg_url)) as store:
        store.lease_claim("signer:0xabc", "host-a:1:x", 30)
    _, out = cli_output(
        "check",
        "--rpc-url",
        devnet.url,
        "--metadata",
        str(devnet.metadata_path),
        "--database-url",
        secret_url,
    )
    assert re.search(r"^PASS  state database +PostgreSQL ", out, re.M), out
    assert f"PostgreSQL {pg_url}, schema version {SCHEMA_VERSION}" in out
    assert "lease signer:0xabc" in out
    assert "held by host-a:1:x at epoch 1" in out
    assert "s3cret" not in out
