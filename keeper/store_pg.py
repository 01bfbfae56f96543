"""The keeper's state in PostgreSQL (`KEEPER_DATABASE_URL`): the same interface, schema and migrations
as the SQLite store (`keeper/store.py`), for replicas that share one database.

Each method is one transaction on one connection (autocommit outside them). A connection that dies
(a restarted server, `pg_terminate_backend`, a partition) fails the call that found it dead, and the
next call reconnects: a failing journal write means nothing is broadcast, a failing lease renewal means
this replica stops sending until it renews. Lease expiry is judged by the database's clock, and the
fence check locks the lease row (`SELECT ... FOR UPDATE`) in the journal insert's transaction, so a
take-over waits for that insert and then sees it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

from keeper.errors import StoreError
from keeper.lease import Fence, Lease, check_fence, claim
from keeper.store import (
    JOURNAL_COLUMNS,
    LEASE_COLUMNS,
    MIGRATIONS,
    SCHEMA,
    SCHEMA_VERSION,
    Store,
    _from_db,
    _to_db,
    postgres_sql,
)

MIGRATION_LOCK = 0x6B656570  # pg_advisory_xact_lock key: one migrating replica at a time
CONNECT_TIMEOUT_SECONDS = 3
STATEMENT_TIMEOUT_MS = 5_000


def redact_dsn(url: str) -> str:
    """postgresql://user@host:port/db: never the password (nor query options)."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{parts.hostname or ''}{port}{parts.path}"


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def open_store(target: Path | str) -> Store:
    """PostgreSQL for a postgresql:// URL, else a SQLite file (or ":memory:")."""
    if isinstance(target, str) and is_postgres_url(target):
        return PgStore(target)
    return Store(target)


class PgStore(Store):
    """`Store`'s interface on PostgreSQL (every public method is overridden)."""

    def __init__(self, url: str) -> None:  # the SQLite constructor is not called: no file
        if not is_postgres_url(url):
            raise StoreError(f"KEEPER_DATABASE_URL: expected postgresql://..., got {redact_dsn(url)!r}")
        self.url, self.path = url, redact_dsn(url)
        self.conn: psycopg.Connection[Any] | None = None
        with self._transaction() as cur:  # CREATE IF NOT EXISTS still races: one opener at a time
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            for statement in postgres_sql(SCHEMA).split(";"):
                if statement.strip():
                    cur.execute(statement)
        self._migrate()

    # --- connection --------------------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            try:
                self.conn = psycopg.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                    application_name="perp-keeper",
                )
            except psycopg.Error as exc:
                raise StoreError(f"state database {self.path}: {_first_line(exc)}") from None
        return self.conn

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:  # type: ignore[override]
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                yield cur
        except psycopg.OperationalError as exc:
            raise StoreError(f"state database {self.path}: {_first_line(exc)}") from None

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._transaction() as cur:
            cur.execute(sql, params)
            return cur.fetchone()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    # --- schema ----------------------------------------------------------------------------------------
    def schema_version(self) -> int:
        row = self._one("SELECT value FROM meta WHERE key = 'schema_version'")
        return int(row[0]) if row else 1

    def _migrate(self) -> None:
        while (version := self.schema_version()) < SCHEMA_VERSION:
            with self._transaction() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                cur.execute("SELECT value FROM meta WHERE key = 'schema_version'")
                row = cur.fetchone()
                if (int(row[0]) if row else 1) != version:
                    continue  # another replica did this step
                for statement in postgres_sql(MIGRATIONS[version]).split(";"):
                    if statement.strip():
                        cur.execute(statement)
                _put_meta(cur, "schema_version", str(version + 1))
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state database {self.path} has schema version {version}, made by a newer perp-keeper "
                f"(this one knows up to {SCHEMA_VERSION}): upgrade, or use another KEEPER_DATABASE_URL"
            )

    def bind(self, chain_id: int, deployment: str) -> None:
        for key, value in (("chain_id", str(chain_id)), ("deployment", deployment.lower())):
            with self._transaction() as cur:
                cur.execute(
                    "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (key, value)
                )
                cur.execute("SELECT value FROM meta WHERE key = %s", (key,))
                (found,) = cur.fetchone() or (value,)
            if found != value:
                raise StoreError(
                    f"state database {self.path} was made for {key} {found}, not {value}: "
                    "use another KEEPER_DATABASE_URL"
                )

    # --- the account index -----------------------------------------------------------------------------
    def checkpoint(self) -> int | None:
        row = self._one("SELECT value FROM meta WHERE key = 'checkpoint'")
        return int(row[0]) if row else None

    def advance(self, checkpoint: int, accounts: Iterable[tuple[str, int]], hashes: dict[int, str]) -> None:
        with self._transaction() as cur:
            cur.executemany(
                "INSERT INTO accounts (address, first_block) VALUES (%s, %s) ON CONFLICT (address) "
                "DO UPDATE SET first_block = least(accounts.first_block, excluded.first_block)",
                list(accounts),
            )
            cur.executemany(
                "INSERT INTO block_hashes (number, hash) VALUES (%s, %s) "
                "ON CONFLICT (number) DO UPDATE SET hash = excluded.hash",
                list(hashes.items()),
            )
            _put_meta(cur, "checkpoint", str(checkpoint))

    def block_hashes(self) -> dict[int, str]:
        with self._transaction() as cur:
            cur.execute("SELECT number, hash FROM block_hashes ORDER BY number")
            return {int(n): h for n, h in cur.fetchall()}

    def forget_hashes_below(self, number: int) -> None:
        with self._transaction() as cur:
            cur.execute("DELETE FROM block_hashes WHERE number < %s", (number,))

    def rollback(self, to_block: int) -> int:
        with self._transaction() as cur:
            cur.execute("DELETE FROM accounts WHERE first_block > %s", (to_block,))
            forgotten = cur.rowcount
            cur.execute("DELETE FROM block_hashes WHERE number > %s", (to_block,))
            _put_meta(cur, "checkpoint", str(to_block))
        return int(forgotten)

    def accounts(self) -> list[str]:
        with self._transaction() as cur:
            cur.execute("SELECT address FROM accounts ORDER BY address")
            return [row[0] for row in cur.fetchall()]

    # --- the journal (rules in keeper/journal.py; the same contract as Store's) ------------------------
    def journal_insert(
        self, rows: Sequence[Mapping[str, Any]], fence: Fence | None = None
    ) -> list[tuple[str, str, int]]:
        with self._transaction() as cur:
            if fence is not None:
                check_fence(self._lease(cur, fence.name, lock=True), fence, _db_now(cur))
            conflicts: list[tuple[str, str, int]] = []
            for row in rows:
                cur.execute(
                    "SELECT step, sender, nonce FROM journal WHERE step = %s AND status = 'pending' "
                    "AND NOT (sender = %s AND nonce = %s)",
                    (row["step"], row["sender"], row["nonce"]),
                )
                conflicts += [(s, a, int(n)) for s, a, n in cur.fetchall()]
            if conflicts:
                return conflicts  # nothing inserted
            now = time.time()
            cur.executemany(
                f"INSERT INTO journal ({', '.join(JOURNAL_COLUMNS)}, updated_at) "
                f"VALUES ({', '.join(['%s'] * len(JOURNAL_COLUMNS))}, %s) ON CONFLICT (tx_hash) DO NOTHING",
                [(*(_to_db(c, row.get(c)) for c in JOURNAL_COLUMNS), now) for row in rows],
            )
        return []

    def journal_update(self, tx_hash: str, status: str, fields: Mapping[str, Any]) -> list[str]:
        now = time.time()
        with self._transaction() as cur:
            cur.execute("SELECT sender, nonce FROM journal WHERE tx_hash = %s FOR UPDATE", (tx_hash,))
            row = cur.fetchone()
            if row is None:
                raise KeyError(tx_hash)
            names = [c for c in ("block", "gas_used", "fee_wei", "reason") if c in fields]
            cur.execute(
                f"UPDATE journal SET status = %s, updated_at = %s{''.join(f', {c} = %s' for c in names)} "
                "WHERE tx_hash = %s",
                (status, now, *(_to_db(c, fields[c]) for c in names), tx_hash),
            )
            if status not in ("mined", "reverted"):
                return []
            cur.execute(
                "SELECT tx_hash FROM journal WHERE sender = %s AND nonce = %s AND status = 'pending' "
                "AND tx_hash != %s ORDER BY id",
                (row[0], row[1], tx_hash),
            )
            replaced = [r[0] for r in cur.fetchall()]
            cur.executemany(
                "UPDATE journal SET status = 'replaced', reason = %s, updated_at = %s WHERE tx_hash = %s",
                [(f"nonce {row[1]} was mined by {tx_hash}", now, h) for h in replaced],
            )
        return replaced

    def journal_rows(self, **filters: str) -> list[dict[str, Any]]:
        if unknown := set(filters) - {"tx_hash", "step", "sender", "status"}:
            raise ValueError(f"journal_rows: no filter {sorted(unknown)}")
        where = sorted(filters.items())
        with self._transaction() as cur:
            cur.execute(
                f"SELECT {', '.join(JOURNAL_COLUMNS)} FROM journal"
                + (" WHERE " + " AND ".join(f"{c} = %s" for c, _ in where) if where else "")
                + " ORDER BY id",
                [v for _, v in where],
            )
            found = cur.fetchall()
        return [{c: _from_db(c, v) for c, v in zip(JOURNAL_COLUMNS, values, strict=True)} for values in found]

    # --- leases ------------------------------------------------------------------------------------------
    def lease_claim(self, name: str, holder: str, ttl: float) -> Lease | None:
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO leases (name, holder, epoch, expires_at, acquired_at, renewed_at) "
                "VALUES (%s, '', 0, 0, 0, 0) ON CONFLICT (name) DO NOTHING",
                (name,),
            )  # a row to lock, even for the first claim; epoch 0 never fences anything
            current = self._lease(cur, name, lock=True)
            if current is not None and current.epoch == 0:
                current = None
            row = claim(current, name, holder, _db_now(cur), ttl)
            if row is None:
                return current
            cur.execute(
                "UPDATE leases SET holder = %s, epoch = %s, expires_at = %s, acquired_at = %s, "
                "renewed_at = %s WHERE name = %s",
                (row.holder, row.epoch, row.expires_at, row.acquired_at, row.renewed_at, name),
            )
            if current is None or current.epoch != row.epoch:
                cur.execute(
                    "INSERT INTO lease_history (name, epoch, holder, acquired_at) VALUES (%s, %s, %s, %s)",
                    (name, row.epoch, holder, row.acquired_at),
                )
            return row

    def lease_release(self, name: str, holder: str) -> None:
        with self._transaction() as cur:
            cur.execute("UPDATE leases SET expires_at = 0 WHERE name = %s AND holder = %s", (name, holder))

    def leases(self) -> list[Lease]:
        with self._transaction() as cur:
            cur.execute(f"SELECT {', '.join(LEASE_COLUMNS)} FROM leases WHERE epoch > 0 ORDER BY name")
            return [_lease_of(values) for values in cur.fetchall()]

    def live_replicas(self, forget_after: float = 3600.0) -> int:
        """How many replicas are up: live `replica:<id>` presence leases, by the database's clock.
        Presence rows expired for `forget_after` seconds are deleted (a restart is a new id): bounded."""
        presence = "replica:%"
        with self._transaction() as cur:
            now = _db_now(cur)
            cur.execute(
                "DELETE FROM leases WHERE name LIKE %s AND expires_at < %s", (presence, now - forget_after)
            )
            cur.execute(
                "DELETE FROM lease_history WHERE name LIKE %s AND name NOT IN (SELECT name FROM leases)",
                (presence,),
            )
            cur.execute(
                "SELECT count(*) FROM leases WHERE name LIKE %s AND epoch > 0 AND expires_at > %s",
                (presence, now),
            )
            (count,) = cur.fetchone() or (0,)
            return int(count)

    def lease_history(self, name: str) -> list[tuple[int, str, float]]:
        with self._transaction() as cur:
            cur.execute(
                "SELECT epoch, holder, acquired_at FROM lease_history WHERE name = %s ORDER BY epoch", (name,)
            )
            return [(int(e), h, float(a)) for e, h, a in cur.fetchall()]

    def now(self) -> float:
        with self._transaction() as cur:
            return _db_now(cur)

    def describe(self) -> str:
        return f"PostgreSQL {self.path}"

    def _lease(self, cur: psycopg.Cursor[Any], name: str, lock: bool = False) -> Lease | None:  # type: ignore[override]
        cur.execute(
            f"SELECT {', '.join(LEASE_COLUMNS)} FROM leases WHERE name = %s"
            + (" FOR UPDATE" if lock else ""),
            (name,),
        )
        row = cur.fetchone()
        return _lease_of(row) if row else None


def _lease_of(values: Sequence[Any]) -> Lease:
    name, holder, epoch, *times = values
    return Lease(name, holder, int(epoch), *(float(t) for t in times))


def _db_now(cur: psycopg.Cursor[Any]) -> float:
    """The database's clock: one clock for every replica's leases."""
    cur.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
    row = cur.fetchone()
    assert row is not None
    return float(row[0])


def _put_meta(cur: psycopg.Cursor[Any], key: str, value: str) -> None:
    cur.execute(
        "INSERT INTO meta (key, value) VALUES (%s, %s) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
