"""Replicas on one PostgreSQL database and one devnet: three real `perp-keeper run` processes with the
same key; the lease holder signs, the others wait warm; the holder is killed (-9), paused past its TTL
(SIGSTOP) or cut off from the database (its backends terminated with `pg_terminate_backend`, no new
connection meanwhile), and a standby takes over within TTL + 1 block; every liquidatable account is
liquidated, no step is mined twice, and an ex-holder signs nothing once it has lost the lease (its own
audit trail: its journal writes are fenced)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils.crypto import keccak

from devnet import units, up
from devnet.chain import DevChain
from devnet.scenario import KEEPER_ADDRESS, KEEPER_KEY, ScenarioBuilder
from keeper.shards import shard_of
from tests.helpers import cli_output
from tests.pg import PgServer, pg_server, pg_url  # noqa: F401  (fixtures)
from tests.replica_group import FAULTS, Replicas, duplicates, wait_for

TTL, BLOCK = 2, 1  # seconds
LEASE = f"signer:{KEEPER_ADDRESS.lower()}"
SLACK = 1.5  # the poll's and a loaded machine's


def liquidatable(devnet: up.Devnet, tmp: Path) -> list[str]:
    code, out = cli_output(
        "scan", "--json", "--rpc-url", devnet.url, "--metadata", str(devnet.metadata_path),
        "--state-db", str(tmp / f"scan-{time.monotonic_ns()}.sqlite"),
    )  # fmt: skip
    assert code == 0
    return [o["account"] for o in json.loads(out) if o["liquidatable"]]


@pytest.fixture
def replicas(devnet: up.Devnet, chain: DevChain, pg_url: str, tmp_path: Path) -> Iterator[Replicas]:  # noqa: F811
    chain.rpc("evm_setIntervalMining", BLOCK)
    group = Replicas(devnet.url, devnet.metadata_path, pg_url, tmp_path, KEEPER_KEY, LEASE, TTL)
    try:
        yield group
    finally:
        group.stop()
        chain.rpc("evm_setIntervalMining", 0)
        chain.rpc("evm_setAutomine", True)  # interval mining turned automine off: the next tests need it


@pytest.mark.parametrize("fault", FAULTS)
def test_a_standby_takes_over_and_nothing_is_sent_twice(
    replicas: Replicas,
    devnet: up.Devnet,
    pg_url: str,  # noqa: F811
    tmp_path: Path,
    fault: str,
) -> None:
    assert liquidatable(devnet, tmp_path), "the scenario has liquidatable accounts"
    replicas.start(1)
    wait_for("the first replica holds the lease", lambda: replicas.holder() == 0, 60)
    replicas.start(2)
    wait_for("the holder signs", lambda: replicas.signed(0), 60)
    replicas.fault(0, fault)
    faulted, faulted_at = time.monotonic(), time.time()
    took = wait_for("a standby takes over", lambda: replicas.holder() in (1, 2), 30)
    assert took - faulted <= TTL + BLOCK + SLACK  # TTL + 1 block
    new_holder = replicas.holder()
    if fault != "kill":
        time.sleep(TTL)  # well past its TTL; then it resumes, or may connect again
        resumed_at = time.time()
        replicas.recover(0, fault)
    wait_for("every account liquidated", lambda: not liquidatable(devnet, tmp_path), 120)
    wait_for("nothing pending", lambda: not replicas.store.journal_rows(status="pending"), 60)
    assert duplicates(pg_url, [replicas.audit_path(i) for i in range(3)]) == 0
    epochs = replicas.store.lease_history(LEASE)
    assert epochs[0][1].split(":")[1] == str(replicas.procs[0].pid)
    assert epochs[1][1].split(":")[1] in {str(p.pid) for p in replicas.procs[1:]}
    assert replicas.signed(0)  # it did sign before the fault
    # nothing signed while it could not renew, nor after (a moment for a commit the fault raced)
    assert replicas.signed(0, since=faulted_at + 0.5) == []
    if fault != "kill":
        time.sleep(2 * BLOCK)  # the resumed ex-holder had heads to act on
        assert replicas.procs[0].poll() is None  # it lives on, as a standby
        assert replicas.holder() == new_holder
        assert replicas.signed(0, since=resumed_at) == []


SHARD_KEYS = (KEEPER_KEY, "0x" + keccak(b"perp-keeper test shard 1").hex())


def test_two_shards_spread_over_two_replicas_and_move_when_one_dies(
    replicas: Replicas,
    devnet: up.Devnet,
    pg_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """KEEPER_SHARDS=2, two replicas: the first up holds both shard leases, hands one to the second
    when it comes up (a share each), and, killed, its shard moves to the other within TTL + 1 block.
    Every liquidation is signed by its account's shard key, none twice."""
    signers = [Account.from_key(key).address for key in SHARD_KEYS]
    funding = ScenarioBuilder(devnet.deployment)  # the second shard's keeper, funded like the first
    devnet.chain.set_balance(signers[1], units.ether(1_000))
    funding.deposit_usdc(signers[1], units.usdc(1_000_000))
    funding.mint_usdc(signers[1], units.usdc(1_000_000))
    accounts = liquidatable(devnet, tmp_path)
    assert {shard_of(a, 2) for a in accounts} == {0, 1}, "both shards have work"
    env = {"KEEPER_SHARDS": "2", **{f"KEEPER_PRIVATE_KEY_{i}": key for i, key in enumerate(SHARD_KEYS)}}
    both = ("shard:0", "shard:1")

    def holders() -> list[int | None]:
        return [replicas.holder(name) for name in both]

    replicas.start(1, env)
    wait_for("the first replica holds both shards", lambda: holders() == [0, 0], 60)
    replicas.start(1, env)
    wait_for("a shard each", lambda: holders() == [0, 1], 30)
    wait_for("the first replica signs", lambda: replicas.signed(0), 60)
    replicas.fault(0, "kill")
    faulted = time.monotonic()
    took = wait_for("its shard moves", lambda: holders() == [1, 1], 30)
    assert took - faulted <= TTL + BLOCK + SLACK
    wait_for("every account liquidated", lambda: not liquidatable(devnet, tmp_path), 120)
    wait_for("nothing pending", lambda: not replicas.store.journal_rows(status="pending"), 60)
    assert duplicates(pg_url, [replicas.audit_path(i) for i in range(2)]) == 0
    rows = [r for r in replicas.store.journal_rows() if r["account"] in {a.lower() for a in accounts}]
    for row in rows:
        assert row["sender"] == signers[shard_of(row["account"], 2)].lower(), row["label"]
    assert {r["sender"] for r in rows} == {s.lower() for s in signers}  # both shards' keys signed
    assert replicas.signed(1)  # the second replica signed too
