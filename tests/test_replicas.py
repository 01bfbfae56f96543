"""Replicas on one PostgreSQL database and one devnet: real `perp-keeper run` processes with the same
key; the lease holder signs, the others wait warm; the holder is killed (-9) or paused past its TTL,
and the standby takes over; every liquidatable account is liquidated, no step is mined twice, and a
resumed ex-holder signs nothing (its journal writes are fenced)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from devnet import up
from devnet.chain import DevChain
from devnet.scenario import KEEPER_ADDRESS, KEEPER_KEY
from keeper.store_pg import PgStore
from tests.helpers import cli_output
from tests.pg import PgServer, pg_server, pg_url  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
TTL, BLOCK = 2, 1  # seconds
LEASE = f"signer:{KEEPER_ADDRESS.lower()}"


class Replicas:
    def __init__(self, devnet: up.Devnet, url: str, logs: Path) -> None:
        self.devnet, self.url, self.logs = devnet, url, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int = 1) -> list[subprocess.Popen[bytes]]:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "KEEPER_PRIVATE_KEY": KEEPER_KEY,
            "KEEPER_DATABASE_URL": self.url,
            "KEEPER_LEASE_TTL_SECONDS": str(TTL),
            "KEEPER_LEASE_RENEW_MS": "400",
            "KEEPER_METRICS_PORT": "0",
            "KEEPER_LOG_FORMAT": "json",
            "KEEPER_STALE_HEAD_SECONDS": "0",
        }
        started = []
        for _ in range(n):
            n = len(self.procs)
            log = (self.logs / f"replica-{n}.log").open("wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "keeper.cli", "run", "--rpc-url", self.devnet.url,
                 "--metadata", str(self.devnet.metadata_path),
                 "--audit-log", str(self.logs / f"replica-{n}.jsonl")],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip
            self.procs.append(proc)
            started.append(proc)
        return started

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait()

    def holder_pid(self, store: PgStore) -> int | None:
        lease = next((x for x in store.leases() if x.name == LEASE), None)
        if lease is None or not lease.live(store.now()):
            return None
        return int(lease.holder.split(":")[1])


def wait_for(what: str, predicate: object, within: float) -> float:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"not within {within} s: {what}")


def liquidatable(devnet: up.Devnet, tmp: Path) -> list[str]:
    code, out = cli_output(
        "scan", "--json", "--rpc-url", devnet.url, "--metadata", str(devnet.metadata_path),
        "--state-db", str(tmp / f"scan-{time.monotonic_ns()}.sqlite"),
    )  # fmt: skip
    assert code == 0
    return [o["account"] for o in json.loads(out) if o["liquidatable"]]


def duplicates(store: PgStore) -> int:
    """Mined transactions of a step signed while another of that step, at another nonce, was still
    pending: the same liquidation sent twice. (A step key recurs legitimately once the last one is
    mined: partial rounds and closes in chunks are planned again at a later head.)"""
    with store._transaction() as cur:
        cur.execute(
            "SELECT count(*) FROM journal a JOIN journal b ON a.step = b.step AND a.nonce <> b.nonce "
            "AND a.id < b.id AND b.created_at < a.updated_at "
            "WHERE a.status IN ('mined', 'reverted') AND b.status IN ('mined', 'reverted')"
        )
        row = cur.fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def replicas(devnet: up.Devnet, chain: DevChain, pg_url: str, tmp_path: Path) -> Iterator[Replicas]:  # noqa: F811
    chain.rpc("evm_setIntervalMining", BLOCK)
    group = Replicas(devnet, pg_url, tmp_path)
    try:
        yield group
    finally:
        group.stop()
        chain.rpc("evm_setIntervalMining", 0)


@pytest.mark.parametrize("fault", ["kill", "sigstop"])
def test_the_standby_takes_over_and_nothing_is_sent_twice(
    replicas: Replicas,
    devnet: up.Devnet,
    pg_url: str,  # noqa: F811
    tmp_path: Path,
    fault: str,
) -> None:
    assert liquidatable(devnet, tmp_path), "the scenario has liquidatable accounts"
    (first,) = replicas.start(1)
    with closing(PgStore(pg_url)) as store:
        wait_for("the first replica holds the lease", lambda: replicas.holder_pid(store) == first.pid, 60)
        (second,) = replicas.start(1)
        wait_for("the holder signs", lambda: store.journal_rows(), 60)
        if fault == "kill":
            first.kill()
        else:
            os.kill(first.pid, signal.SIGSTOP)
        faulted = time.monotonic()
        took = wait_for("the standby takes over", lambda: replicas.holder_pid(store) == second.pid, 30)
        assert took - faulted <= TTL + BLOCK + 1.5  # TTL + 1 block, and the poll's slack
        if fault == "sigstop":
            time.sleep(TTL)  # well past its TTL; then it resumes
            rows_before = len(store.journal_rows())
            resumed_at = time.time()
            os.kill(first.pid, signal.SIGCONT)
        wait_for("every account liquidated", lambda: not liquidatable(devnet, tmp_path), 120)
        wait_for("nothing pending", lambda: not store.journal_rows(status="pending"), 60)
        assert duplicates(store) == 0
        epochs = store.lease_history(LEASE)
        assert [h.split(":")[1] for _, h, _ in epochs[:2]] == [str(first.pid), str(second.pid)]
        if fault == "sigstop":
            time.sleep(2 * BLOCK)  # the resumed ex-holder had heads to act on
            assert first.poll() is None  # it lives on, as a standby
            assert replicas.holder_pid(store) == second.pid
            late = [r for r in store.journal_rows()[rows_before:] if r["created_at"] < resumed_at]
            assert late == []  # nothing journaled while it was paused
            # what the ex-holder itself signed after it resumed: nothing (its own audit trail)
            audit = [json.loads(line) for line in (tmp_path / "replica-0.jsonl").read_text().splitlines()]
            signed_after = [
                r
                for r in audit
                if r["event"] == "journal" and r.get("action") == "signed" and r["time"] >= resumed_at
            ]
            assert signed_after == []
            assert any(
                r["event"] == "journal" and r.get("action") == "signed" for r in audit
            )  # it did sign before
