"""Replicas of `perp-keeper run` as real processes on one PostgreSQL database and one devnet, and the
faults done to them: shared by tests/test_replicas.py and bench/replicas.py.

Each replica connects as its own database role (`tests.pg.replica_url`), so its backends can be found
in `pg_stat_activity` and it alone can be cut off from the database, and writes its own audit trail
(`replica-<i>.jsonl`): what it signed is read from there, not inferred."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from keeper.store_pg import PgStore
from tests.pg import cut_off, replica_url, restore

ROOT = Path(__file__).resolve().parent.parent
FAULTS = ("kill", "sigstop", "pgterm")


class Replicas:
    """`perp-keeper run` processes with one key, one database and one chain."""

    def __init__(
        self, rpc_url: str, metadata: Path, db_url: str, logs: Path, key: str, lease: str, ttl: int
    ) -> None:
        self.rpc_url, self.metadata, self.db_url, self.logs = rpc_url, metadata, db_url, logs
        self.key, self.lease, self.ttl = key, lease, ttl
        self.procs: list[subprocess.Popen[bytes]] = []
        self.store = PgStore(db_url)

    def start(self, n: int = 1, extra_env: dict[str, str] | None = None) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(n):
            i = len(self.procs)
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "KEEPER_PRIVATE_KEY": self.key,
                "KEEPER_DATABASE_URL": replica_url(self.db_url, self.role(i)),
                "KEEPER_LEASE_TTL_SECONDS": str(self.ttl),
                "KEEPER_LEASE_RENEW_MS": "400",
                "KEEPER_METRICS_PORT": "0",
                "KEEPER_LOG_FORMAT": "json",
                "KEEPER_STALE_HEAD_SECONDS": "0",
                **(extra_env or {}),
            }
            with (self.logs / f"replica-{i}.log").open("ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "keeper.cli", "run", "--rpc-url", self.rpc_url,
                     "--metadata", str(self.metadata), "--audit-log", str(self.audit_path(i))],
                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                )  # fmt: skip
            self.procs.append(proc)
            started.append(proc)
        return started

    @staticmethod
    def role(i: int) -> str:
        return f"replica_{i}"

    def audit_path(self, i: int) -> Path:
        return self.logs / f"replica-{i}.jsonl"

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            restore(self.db_url, self.role(i))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait()
        self.store.close()

    def holder(self, name: str | None = None) -> int | None:
        """The index of the replica holding the lease (live, by the database's clock), or None."""
        lease = next((x for x in self.store.leases() if x.name == (name or self.lease)), None)
        if lease is None or not lease.live(self.store.now()):
            return None
        pid = int(lease.holder.split(":")[1])
        return next((i for i, p in enumerate(self.procs) if p.pid == pid), None)

    def fault(self, i: int, kind: str) -> None:
        """Do `kind` to replica `i`: kill -9, SIGSTOP (resume with `recover`), or cut it off from the
        database (its backends terminated, no new connection until `recover`)."""
        if kind == "kill":
            self.procs[i].kill()
        elif kind == "sigstop":
            os.kill(self.procs[i].pid, signal.SIGSTOP)
        elif kind == "pgterm":
            cut_off(self.db_url, self.role(i))
        else:
            raise ValueError(kind)

    def recover(self, i: int, kind: str) -> None:
        if kind == "sigstop":
            os.kill(self.procs[i].pid, signal.SIGCONT)
        elif kind == "pgterm":
            restore(self.db_url, self.role(i))

    def signed(self, i: int, since: float = 0.0) -> list[dict[str, Any]]:
        """What replica `i` recorded as signed (its own audit trail) at or after `since` (Unix time), by
        the moment it signed (`created_at`, taken before the fenced write): a record written late, by a
        process paused right after a fenced write that held, is no send after the fault (the ex-holder
        then broadcasts nothing: keeper/tx.py re-checks the lease before the broadcast)."""
        path = self.audit_path(i)
        if not path.exists():
            return []
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [
            r
            for r in records
            if r.get("event") == "journal"
            and r.get("action") == "signed"
            and r.get("created_at", r["time"]) >= since
        ]


def wait_for(what: str, predicate: Callable[[], object], within: float) -> float:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"not within {within} s: {what}")


def duplicates(db_url: str, audits: Sequence[Path]) -> int:
    """Mined transactions of a step signed while another of that step, at another nonce, was not yet
    known to be mined: the same liquidation sent twice. (A step key recurs legitimately once the last
    one is mined: partial rounds and closes in chunks are planned again at a later head.) "Known to be
    mined" is the first `outcome` record of it in any replica's audit trail: the row's `updated_at`
    moves whenever a replica records the outcome again (a resumed ex-holder does)."""
    first_mined: dict[str, float] = {}
    for path in audits:
        for line in path.read_text().splitlines() if path.exists() else []:
            r = json.loads(line)
            if r.get("action") == "outcome" and r.get("status") in ("mined", "reverted"):
                first_mined[r["tx_hash"]] = min(r["time"], first_mined.get(r["tx_hash"], r["time"]))
    with closing(PgStore(db_url)) as store:
        rows = [r for r in store.journal_rows() if r["status"] in ("mined", "reverted")]
    by_step: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(r)
    count = 0
    for same in by_step.values():
        for a, b in itertools.combinations(same, 2):  # journal order: a signed first
            known = first_mined.get(a["tx_hash"], float("inf"))  # no outcome seen: count it
            count += a["nonce"] != b["nonce"] and b["created_at"] < known
    return count
