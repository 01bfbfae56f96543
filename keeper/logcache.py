"""Logs of a block range, read once: adaptive `eth_getLogs` chunks, cached in the state database.

`perp-keeper history` over a long range is resumable: every chunk of final blocks (older than the
reorg window behind the head) is committed to the state database with the span it covers, in one
transaction, before the next chunk is read; a second run (or one after an interruption) reads only the
spans it lacks. Blocks within the reorg window are read afresh every time and never cached. The cache
is keyed by the queries' fingerprint, so a protocol that changes its event list starts a new one.
Block timestamps are cached the same way.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any

from keeper.errors import RpcError
from keeper.events import LogQuery
from keeper.logrange import AdaptiveRange
from keeper.rpc import Rpc

REORG_WINDOW = 64
SCHEMA = """
CREATE TABLE IF NOT EXISTS history_logs (
    query TEXT NOT NULL, block INTEGER NOT NULL, log_index INTEGER NOT NULL, entry TEXT NOT NULL,
    PRIMARY KEY (query, block, log_index));
CREATE TABLE IF NOT EXISTS history_spans (query TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS history_blocks (number INTEGER PRIMARY KEY, timestamp INTEGER NOT NULL);
"""


def fingerprint(queries: Sequence[LogQuery]) -> str:
    canonical = [
        [sorted(a.lower() for a in q.addresses), sorted(t.lower() for t in q.topics)] for q in queries
    ]
    return hashlib.sha256(json.dumps(sorted(canonical)).encode()).hexdigest()[:16]


def missing(spans: Sequence[tuple[int, int]], first: int, last: int) -> list[tuple[int, int]]:
    """The parts of first..last that no span covers, in order."""
    gaps, at = [], first
    for a, b in sorted(spans):
        if b < at or a > last:
            continue
        if a > at:
            gaps.append((at, a - 1))
        at = max(at, b + 1)
    if at <= last:
        gaps.append((at, last))
    return gaps


class Progress:
    """Progress of a long read on stderr: a bar on a terminal, a line every 10 % otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.shown, self.found = label, max(1, total), 0, -1, 0
        self.started = time.monotonic()

    def advance(self, blocks: int, found: int) -> None:
        self.done += blocks
        self.found += found
        fraction = min(1.0, self.done / self.total)
        tenth = int(fraction * 10)
        if not sys.stderr.isatty() and tenth == self.shown and fraction < 1:
            return
        self.shown = tenth
        bar = "#" * int(fraction * 30)
        end = "\n" if fraction >= 1 or not sys.stderr.isatty() else ""
        print(
            f"\r{self.label} [{bar:.<30}] {fraction:4.0%}  {self.found} found  "
            f"{time.monotonic() - self.started:.1f} s",
            end=end,
            file=sys.stderr,
            flush=True,
        )


class LogCache:
    def __init__(self, rpc: Rpc, db: sqlite3.Connection) -> None:
        self.rpc, self.db = rpc, db
        self.db.executescript(SCHEMA)
        self.ranges = AdaptiveRange()

    async def logs(
        self, queries: Sequence[LogQuery], first: int, last: int, head: int
    ) -> list[dict[str, Any]]:
        """Every log of `queries` in first..last, oldest first."""
        key = fingerprint(queries)
        final = min(last, head - REORG_WINDOW)
        spans = self.db.execute("SELECT first, last FROM history_spans WHERE query = ?", (key,)).fetchall()
        todo = missing(spans, first, final) if final >= first else []
        fresh_from = max(first, final + 1)
        progress = Progress(
            f"reading logs {first}..{last}", sum(b - a + 1 for a, b in todo) + max(0, last - fresh_from + 1)
        )
        found: list[dict[str, Any]] = []

        def cache(start: int, end: int, logs: list[dict[str, Any]]) -> None:
            with self.db:
                self.db.executemany(
                    "INSERT OR REPLACE INTO history_logs VALUES (?, ?, ?, ?)",
                    [(key, int(e["blockNumber"], 16), int(e["logIndex"], 16), json.dumps(e)) for e in logs],
                )
                self.db.execute("INSERT INTO history_spans VALUES (?, ?, ?)", (key, start, end))
            progress.advance(end - start + 1, len(logs))

        def keep(start: int, end: int, logs: list[dict[str, Any]]) -> None:
            found.extend(logs)
            progress.advance(end - start + 1, len(logs))

        fetch = lambda a, b: self._fetch(queries, a, b)  # noqa: E731
        for a, b in todo:
            await self.ranges.walk(a, b, fetch, cache)
        if fresh_from <= last:
            await self.ranges.walk(fresh_from, last, fetch, keep)
        if not todo and fresh_from > last:
            progress.advance(0, 0)
        rows = self.db.execute(
            "SELECT entry FROM history_logs WHERE query = ? AND block BETWEEN ? AND ? "
            "ORDER BY block, log_index",
            (key, first, min(last, final)),
        ).fetchall()
        cached = [json.loads(r[0]) for r in rows]
        return cached + sorted(found, key=lambda e: (int(e["blockNumber"], 16), int(e["logIndex"], 16)))

    async def _fetch(self, queries: Sequence[LogQuery], start: int, end: int) -> list[dict[str, Any]]:
        requests = [
            (
                "eth_getLogs",
                [
                    {
                        "fromBlock": hex(start),
                        "toBlock": hex(end),
                        "address": list(q.addresses),
                        "topics": [list(q.topics)],
                    }
                ],
            )
            for q in queries
        ]
        out: list[dict[str, Any]] = []
        for answer in await self.rpc.batch(requests):
            if isinstance(answer, RpcError):
                raise answer
            out += answer
        return out

    async def timestamps(self, blocks: Sequence[int], head: int) -> dict[int, int]:
        """Block timestamps, from the cache or the node (final ones are cached)."""
        wanted = sorted(set(blocks))
        known: dict[int, int] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ",".join("?" * len(chunk))
            known.update(
                self.db.execute(
                    f"SELECT number, timestamp FROM history_blocks WHERE number IN ({marks})", chunk
                )
            )
        ask = [b for b in wanted if b not in known]
        headers = await self.rpc.headers(ask) if ask else []
        with self.db:
            for number, header in zip(ask, headers, strict=True):
                if header is None:
                    raise RpcError("eth_getBlockByNumber", -32000, f"no block {number}")
                known[number] = header.timestamp
                if number <= head - REORG_WINDOW:
                    self.db.execute(
                        "INSERT OR REPLACE INTO history_blocks VALUES (?, ?)", (number, header.timestamp)
                    )
        return known
