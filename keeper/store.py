"""The keeper's SQLite state: known accounts, the indexing checkpoint, recent block hashes.

WAL mode, so a reader (`perp-keeper scan` next to a running keeper) never blocks the writer, and
every checkpoint advance is one transaction: a crash leaves either the old checkpoint or the new one
with its accounts, never a checkpoint past accounts that were not stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from keeper.errors import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (address TEXT PRIMARY KEY, first_block INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS block_hashes (number INTEGER PRIMARY KEY, hash TEXT NOT NULL);
"""


class Store:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"state database {self.path}: {exc}") from None

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

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
