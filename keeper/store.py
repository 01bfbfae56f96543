"""The keeper's SQLite state: known accounts, the indexing checkpoint, recent block hashes, and the
transaction journal (`keeper/journal.py`; all of its SQL lives here, behind plain-Python methods, so
another database can stand behind the same interface).

WAL mode, so a reader (`perp-keeper scan` next to a running keeper) never blocks the writer, and
every checkpoint advance is one transaction: a crash leaves either the old checkpoint or the new one
with its accounts, never a checkpoint past accounts that were not stored. `synchronous=FULL`: a
journal row must survive a power cut or a host crash too, not only `kill -9`, or a transaction could
be on the network with no record of it (an fsync per commit, ~0.2 ms here).

The schema is versioned (`meta.schema_version`; a database without one is version 1, the schema before
the journal). Opening a database migrates it forward in one transaction per step; a database from a
newer keeper is refused. The same schema and migrations serve PostgreSQL (`keeper/store_pg.py`,
`postgres_sql` translates the few types), where the replicas keep their shared state.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from keeper.errors import StoreError
from keeper.lease import Fence, Lease, check_fence, claim

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (address TEXT PRIMARY KEY, first_block INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS block_hashes (number INTEGER PRIMARY KEY, hash TEXT NOT NULL);
"""

# Wei amounts are decimal TEXT: exact past SQLite's 64-bit INTEGER (and NUMERIC in PostgreSQL).
JOURNAL_SCHEMA = """
CREATE TABLE journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_hash TEXT NOT NULL UNIQUE,
    step TEXT NOT NULL,
    account TEXT NOT NULL,
    label TEXT NOT NULL,
    sender TEXT NOT NULL,
    nonce INTEGER NOT NULL,
    raw BLOB NOT NULL,
    max_fee TEXT NOT NULL,
    tip TEXT NOT NULL,
    gas_limit INTEGER NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('pending', 'mined', 'reverted', 'replaced', 'dropped')),
    block INTEGER,
    gas_used INTEGER,
    fee_wei TEXT,
    reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX journal_step ON journal (step, status);
CREATE INDEX journal_sender_nonce ON journal (sender, nonce);
CREATE INDEX journal_status ON journal (status, sender);
"""

# The replicas' leases (keeper/lease.py): one row per lease (a shard's lease is its assignment), and
# every epoch ever begun, so who held what, when, can be audited (bench/replicas.py does).
LEASE_SCHEMA = """
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    acquired_at REAL NOT NULL,
    renewed_at REAL NOT NULL
);
CREATE TABLE lease_history (
    name TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    holder TEXT NOT NULL,
    acquired_at REAL NOT NULL,
    PRIMARY KEY (name, epoch)
);
"""

# MIGRATIONS[v] takes a version-v database to version v + 1.
MIGRATIONS: dict[int, str] = {1: JOURNAL_SCHEMA, 2: LEASE_SCHEMA}
SCHEMA_VERSION = 3
LEASE_COLUMNS = ("name", "holder", "epoch", "expires_at", "acquired_at", "renewed_at")
JOURNAL_COLUMNS = (
    "tx_hash", "step", "account", "label", "sender", "nonce", "raw", "max_fee", "tip", "gas_limit",
    "status", "block", "gas_used", "fee_wei", "reason", "created_at",
)  # fmt: skip
_WEI_COLUMNS = ("max_fee", "tip", "fee_wei")


def postgres_sql(sql: str) -> str:
    """The schema in PostgreSQL's types: 64-bit integers, BYTEA, double precision, a serial id."""
    return (
        sql.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
        .replace("BLOB", "BYTEA")
        .replace("REAL", "DOUBLE PRECISION")
        .replace("INTEGER", "BIGINT")
    )


class Store:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"state database {self.path}: {exc}") from None

    def schema_version(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 1

    def _migrate(self) -> None:
        """Bring the database to SCHEMA_VERSION, one transaction per step (a second process opening
        the same file at the same moment waits, then finds the work done)."""
        while (version := self.schema_version()) < SCHEMA_VERSION:
            with self._transaction():
                if self.schema_version() != version:
                    continue
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(version + 1),),
                )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state database {self.path} has schema version {version}, made by a newer perp-keeper "
                f"(this one knows up to {SCHEMA_VERSION}): upgrade, or use another KEEPER_STATE_DB"
            )

    def close(self) -> None:
        self.db.close()

    def bind(self, chain_id: int, deployment: str) -> None:
        """Refuse to mix chains: the first use records them, later uses must match."""
        for key, value in (("chain_id", str(chain_id)), ("deployment", deployment.lower())):
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            elif row[0] != value:
                raise StoreError(
                    f"state database {self.path} was made for {key} {row[0]}, not {value}: "
                    "use another KEEPER_STATE_DB"
                )

    def checkpoint(self) -> int | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'checkpoint'").fetchone()
        return int(row[0]) if row else None

    def advance(self, checkpoint: int, accounts: Iterable[tuple[str, int]], hashes: dict[int, str]) -> None:
        """Record accounts first seen up to `checkpoint` and move the checkpoint, atomically."""
        with self._transaction():
            self.db.executemany(
                "INSERT INTO accounts (address, first_block) VALUES (?, ?) "
                "ON CONFLICT(address) DO UPDATE SET first_block = min(first_block, excluded.first_block)",
                accounts,
            )
            self.db.executemany(
                "INSERT OR REPLACE INTO block_hashes (number, hash) VALUES (?, ?)", hashes.items()
            )
            self.db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('checkpoint', ?)", (str(checkpoint),)
            )

    def block_hashes(self) -> dict[int, str]:
        return dict(self.db.execute("SELECT number, hash FROM block_hashes ORDER BY number"))

    def forget_hashes_below(self, number: int) -> None:
        """Blocks older than the reorg window are final: their hashes are no longer needed."""
        self.db.execute("DELETE FROM block_hashes WHERE number < ?", (number,))

    def rollback(self, to_block: int) -> int:
        """Undo everything recorded after `to_block`; returns how many accounts were forgotten."""
        with self._transaction():
            forgotten = self.db.execute("DELETE FROM accounts WHERE first_block > ?", (to_block,)).rowcount
            self.db.execute("DELETE FROM block_hashes WHERE number > ?", (to_block,))
            self.db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('checkpoint', ?)", (str(to_block),)
            )
        return int(forgotten)

    def accounts(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT address FROM accounts ORDER BY address")]

    # --- the transaction journal (rules in keeper/journal.py) ------------------------------------
    def journal_insert(
        self, rows: Sequence[Mapping[str, Any]], fence: Fence | None = None
    ) -> list[tuple[str, str, int]]:
        """Insert journal rows (keys: JOURNAL_COLUMNS) in one transaction, unless a row's step still
        has a pending row at another (sender, nonce): then nothing is inserted and those conflicts
        (step, sender, nonce) are returned. A tx_hash already recorded is left as it is (the same
        hash is the same signed bytes). With a fence, the lease is checked in the same transaction
        (`BEGIN IMMEDIATE` holds the file's write lock: no take-over in between); `LeaseLostError`
        when it no longer holds, and nothing is inserted."""
        try:
            with self._transaction():
                if fence is not None:
                    check_fence(self._lease(fence.name), fence, time.time())
                conflicts: list[tuple[str, str, int]] = []
                for row in rows:
                    conflicts += self.db.execute(
                        "SELECT step, sender, nonce FROM journal WHERE step = ? AND status = 'pending' "
                        "AND NOT (sender = ? AND nonce = ?)",
                        (row["step"], row["sender"], row["nonce"]),
                    ).fetchall()
                if conflicts:
                    raise _ConflictError(conflicts)  # rolls the transaction back
                now = time.time()
                self.db.executemany(
                    f"INSERT INTO journal ({', '.join(JOURNAL_COLUMNS)}, updated_at) "
                    f"VALUES ({', '.join('?' * len(JOURNAL_COLUMNS))}, ?) ON CONFLICT(tx_hash) DO NOTHING",
                    [(*(_to_db(c, row.get(c)) for c in JOURNAL_COLUMNS), now) for row in rows],
                )
        except _ConflictError as conflict:
            return conflict.conflicts
        return []

    def journal_update(self, tx_hash: str, status: str, fields: Mapping[str, Any]) -> list[str]:
        """Set one row's status (and block, gas_used, fee_wei, reason from `fields`); when it was
        mined (status mined or reverted), the other pending rows of its (sender, nonce) become
        'replaced' in the same transaction. Returns those hashes; raises KeyError for an unknown hash."""
        now = time.time()
        with self._transaction():
            row = self.db.execute(
                "SELECT sender, nonce FROM journal WHERE tx_hash = ?", (tx_hash,)
            ).fetchone()
            if row is None:
                raise KeyError(tx_hash)
            names = [c for c in ("block", "gas_used", "fee_wei", "reason") if c in fields]
            self.db.execute(
                f"UPDATE journal SET status = ?, updated_at = ?{''.join(f', {c} = ?' for c in names)} "
                "WHERE tx_hash = ?",
                (status, now, *(_to_db(c, fields[c]) for c in names), tx_hash),
            )
            if status not in ("mined", "reverted"):
                return []
            replaced = [
                r[0]
                for r in self.db.execute(
                    "SELECT tx_hash FROM journal WHERE sender = ? AND nonce = ? AND status = 'pending' "
                    "AND tx_hash != ? ORDER BY id",
                    (row[0], row[1], tx_hash),
                )
            ]
            self.db.executemany(
                "UPDATE journal SET status = 'replaced', reason = ?, updated_at = ? WHERE tx_hash = ?",
                [(f"nonce {row[1]} was mined by {tx_hash}", now, h) for h in replaced],
            )
        return replaced

    def journal_rows(self, **filters: str) -> list[dict[str, Any]]:
        """Journal rows matching every filter (tx_hash, step, sender, status), oldest first, as dicts."""
        if unknown := set(filters) - {"tx_hash", "step", "sender", "status"}:
            raise ValueError(f"journal_rows: no filter {sorted(unknown)}")
        where = sorted(filters.items())
        cursor = self.db.execute(
            f"SELECT {', '.join(JOURNAL_COLUMNS)} FROM journal"
            + (" WHERE " + " AND ".join(f"{c} = ?" for c, _ in where) if where else "")
            + " ORDER BY id",
            [v for _, v in where],
        )
        return [
            {c: _from_db(c, v) for c, v in zip(JOURNAL_COLUMNS, values, strict=True)} for values in cursor
        ]

    # --- leases (rules in keeper/lease.py) -------------------------------------------------------------
    def lease_claim(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Take or renew the lease for `holder` if it may (`lease.claim`); the row afterwards."""
        with self._transaction():
            current = self._lease(name)
            row = claim(current, name, holder, time.time(), ttl)
            if row is None:
                return current
            self.db.execute(
                f"INSERT OR REPLACE INTO leases ({', '.join(LEASE_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)",
                [getattr(row, c) for c in LEASE_COLUMNS],
            )
            if current is None or current.epoch != row.epoch:
                self.db.execute(
                    "INSERT INTO lease_history (name, epoch, holder, acquired_at) VALUES (?, ?, ?, ?)",
                    (name, row.epoch, holder, row.acquired_at),
                )
            return row

    def lease_release(self, name: str, holder: str) -> None:
        """Hand the lease over now (a clean shutdown): it expires at once if `holder` still holds it."""
        self.db.execute("UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ?", (name, holder))

    def leases(self) -> list[Lease]:
        cursor = self.db.execute(f"SELECT {', '.join(LEASE_COLUMNS)} FROM leases ORDER BY name")
        return [Lease(*values) for values in cursor]

    def lease_history(self, name: str) -> list[tuple[int, str, float]]:
        """(epoch, holder, acquired_at) of every epoch of the lease, oldest first."""
        return list(
            self.db.execute(
                "SELECT epoch, holder, acquired_at FROM lease_history WHERE name = ? ORDER BY epoch",
                (name,),
            )
        )

    def now(self) -> float:
        """The clock leases are judged by."""
        return time.time()

    def describe(self) -> str:
        return f"SQLite {self.path}"

    def _lease(self, name: str) -> Lease | None:
        row = self.db.execute(
            f"SELECT {', '.join(LEASE_COLUMNS)} FROM leases WHERE name = ?", (name,)
        ).fetchone()
        return Lease(*row) if row else None

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _ConflictError(Exception):
    def __init__(self, conflicts: list[tuple[str, str, int]]) -> None:
        self.conflicts = conflicts


def _to_db(column: str, value: Any) -> Any:
    return str(value) if column in _WEI_COLUMNS and value is not None else value


def _from_db(column: str, value: Any) -> Any:
    if column in _WEI_COLUMNS and value is not None:
        return int(value)
    return bytes(value) if column == "raw" else value


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
