"""The transaction journal and its start-up reconciliation, on a real SQLite file and a real anvil node.

Each test gets a fresh anvil (~40 ms) and state database. Transactions are kept pending with
`evm_setAutomine false`, forgotten with `anvil_dropTransaction`, mined with `evm_mine`.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from devnet.anvil import Anvil
from keeper.audit import AuditLog
from keeper.errors import RpcError, RpcUnavailableError, StoreError
from keeper.journal import Entry, Journal, JournalError, receipt_outcome, record_and_broadcast
from keeper.reconcile import reconcile
from keeper.rpc import Rpc
from keeper.store import SCHEMA_VERSION, Store

# anvil's first dev account (public test key)
KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
SENDER = Account.from_key(KEY).address
GWEI = 10**9
VICTIM = "0x" + "ab" * 20


@pytest.fixture
def node() -> Iterator[Anvil]:
    with Anvil() as anvil:
        yield anvil


@pytest.fixture
async def rpc(node: Anvil) -> AsyncIterator[Rpc]:
    async with Rpc(node.url) as client:
        yield client


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.sqlite"


@pytest.fixture
def journal(db: Path, tmp_path: Path) -> Iterator[Journal]:
    store = Store(db)
    audit = AuditLog(tmp_path / "audit.jsonl")
    try:
        yield Journal(store, audit)
    finally:
        audit.close()
        store.close()


def signed(
    step: str,
    nonce: int,
    *,
    fee: int = 10 * GWEI,
    tip: int = GWEI,
    to: str = "0x" + "22" * 20,
    gas: int = 21_000,
    key: str = KEY,
    label: str = "liquidate",
) -> Entry:
    """A signed transfer of 1 wei as a journal entry (the executor builds these from its plans)."""
    tx = {
        "type": 2, "chainId": 31337, "nonce": nonce, "to": to, "value": 1, "gas": gas,
        "maxFeePerGas": fee, "maxPriorityFeePerGas": tip, "data": b"",
    }  # fmt: skip
    account = Account.from_key(key)
    tx_signed = account.sign_transaction(tx)
    return Entry(
        step, VICTIM, label, account.address, nonce, "0x" + bytes(tx_signed.hash).hex(),
        bytes(tx_signed.raw_transaction), fee, tip, gas,
    )  # fmt: skip


async def automine(rpc: Rpc, on: bool) -> None:
    await rpc.request("evm_setAutomine", [on])


async def known(rpc: Rpc, tx_hash: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = await rpc.request("eth_getTransactionByHash", [tx_hash])
    return found


async def mined_count(rpc: Rpc, sender: str = SENDER) -> int:
    return int(await rpc.request("eth_getTransactionCount", [sender, "latest"]), 16)


def audit_records(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


# --- reconciliation: one case per outcome ---------------------------------------------------------
async def test_a_mined_transaction_is_recorded_with_its_receipt(journal: Journal, rpc: Rpc) -> None:
    entry = signed("s1", 0)
    await automine(rpc, False)  # anvil mines an automined tx just after answering: mine it here
    await record_and_broadcast(journal, rpc, entry)
    await rpc.request("evm_mine")
    result = await reconcile(journal, rpc, SENDER)
    assert result.counts == {"mined": 1}
    assert result.pending == ()
    assert result.next_nonce == 1
    receipt = await rpc.request("eth_getTransactionReceipt", [entry.tx_hash])
    (after,) = journal.entries("s1")
    assert after.status == "mined"
    assert after.block == int(receipt["blockNumber"], 16) == 1
    assert after.gas_used == 21_000
    assert after.fee_wei == 21_000 * int(receipt["effectiveGasPrice"], 16)
    assert not journal.may_be_mined("s1")


async def test_a_mined_revert_is_recorded_as_reverted(journal: Journal, rpc: Rpc) -> None:
    target = "0x" + "66" * 20
    await rpc.request("anvil_setCode", [target, "0x60006000fd"])  # PUSH1 0 PUSH1 0 REVERT
    entry = signed("s1", 0, to=target, gas=60_000)
    await automine(rpc, False)  # anvil mines an automined tx just after answering: mine it here
    await record_and_broadcast(journal, rpc, entry)
    await rpc.request("evm_mine")
    result = await reconcile(journal, rpc, SENDER)
    assert result.counts == {"reverted": 1}
    (after,) = journal.entries("s1")
    assert after.status == "reverted"
    assert after.gas_used is not None
    assert 21_000 < after.gas_used < 60_000
    assert not journal.may_be_mined("s1")


async def test_a_pending_transaction_is_rebroadcast_from_its_bytes_and_tracked(
    journal: Journal, rpc: Rpc
) -> None:
    await automine(rpc, False)
    entry = signed("s1", 0)
    await record_and_broadcast(journal, rpc, entry)
    sends = rpc.calls["eth_sendRawTransaction"]
    result = await reconcile(journal, rpc, SENDER)
    assert result.counts == {"pending": 1}
    assert [e.tx_hash for e in result.pending] == [entry.tx_hash]
    assert result.next_nonce == 1
    assert rpc.calls["eth_sendRawTransaction"] == sends + 1  # broadcast again, the same bytes
    assert journal.may_be_mined("s1")
    await rpc.request("evm_mine")
    assert await rpc.request("eth_getTransactionReceipt", [entry.tx_hash])  # our hash was mined
    assert await mined_count(rpc) == 1  # and nothing else under the sender's name


async def test_a_transaction_the_node_forgot_is_rebroadcast_when_its_nonce_is_unused(
    journal: Journal, rpc: Rpc
) -> None:
    await automine(rpc, False)
    entry = signed("s1", 0)
    await record_and_broadcast(journal, rpc, entry)
    await rpc.request("anvil_dropTransaction", [entry.tx_hash])
    assert await known(rpc, entry.tx_hash) is None
    result = await reconcile(journal, rpc, SENDER)
    assert result.counts == {"pending": 1}
    # the very bytes the journal holds are back in the pool: same hash, same raw transaction
    assert await known(rpc, entry.tx_hash) is not None
    raw = await rpc.request("eth_getRawTransactionByHash", [entry.tx_hash])
    assert bytes.fromhex(raw[2:]) == entry.raw
    await rpc.request("evm_mine")
    assert (await reconcile(journal, rpc, SENDER)).counts == {"mined": 1}
    assert await mined_count(rpc) == 1


async def test_a_crash_between_record_and_broadcast_is_broadcast_at_start_up(
    journal: Journal, rpc: Rpc
) -> None:
    await automine(rpc, False)
    entry = signed("s1", 0)
    journal.record_signed(entry)  # ...and the process died before eth_sendRawTransaction
    assert await known(rpc, entry.tx_hash) is None
    result = await reconcile(journal, rpc, SENDER)
    assert result.counts == {"pending": 1}
    assert result.next_nonce == 1
    assert await known(rpc, entry.tx_hash) is not None
    await rpc.request("evm_mine")
    assert (await reconcile(journal, rpc, SENDER)).counts == {"mined": 1}


async def test_a_nonce_used_by_another_transaction_drops_the_entry(journal: Journal, rpc: Rpc) -> None:
    await automine(rpc, False)
    ours = signed("s1", 0)
    await record_and_broadcast(journal, rpc, ours)
    await rpc.request("anvil_dropTransaction", [ours.tx_hash])
    other = signed("elsewhere", 0, to="0x" + "33" * 20)  # e.g. the operator's wallet, same key
    await rpc.request("eth_sendRawTransaction", ["0x" + other.raw.hex()])
    await rpc.request("evm_mine")
    result = await reconcile(journal, rpc, SENDER)
    assert result.counts == {"dropped": 1}
    assert result.next_nonce == 1
    (after,) = journal.entries("s1")
    assert after.status == "dropped"
    assert "used by another transaction" in after.reason
    assert not journal.may_be_mined("s1")
    journal.record_signed(signed("s1", 1))  # the step may be planned and signed again


async def test_a_mined_replacement_marks_the_first_signature_replaced(journal: Journal, rpc: Rpc) -> None:
    await automine(rpc, False)
    first = signed("s1", 0, fee=10 * GWEI, tip=GWEI)
    bumped = signed("s1", 0, fee=12 * GWEI, tip=2 * GWEI)
    await record_and_broadcast(journal, rpc, first)
    await record_and_broadcast(journal, rpc, bumped)
    await rpc.request("evm_mine")
    result = await reconcile(journal, rpc, SENDER)
    assert result.counts == {"mined": 1, "replaced": 1}
    by_hash = {e.tx_hash: e for e in journal.entries("s1")}
    assert by_hash[bumped.tx_hash].status == "mined"
    assert by_hash[first.tx_hash].status == "replaced"
    assert bumped.tx_hash in by_hash[first.tx_hash].reason
    assert result.next_nonce == 1


async def test_a_refused_rebroadcast_drops_the_entry_and_frees_its_nonce(journal: Journal, rpc: Rpc) -> None:
    await automine(rpc, False)
    too_cheap = signed("s0", 0, fee=1, tip=1)  # below the base fee: the node refuses it
    journal.record_signed(too_cheap)
    queued = signed("s1", 1)
    await record_and_broadcast(journal, rpc, queued)
    result = await reconcile(journal, rpc, SENDER)
    assert result.counts == {"dropped": 1, "pending": 1}
    (dropped,) = journal.entries("s0")
    assert dropped.status == "dropped"
    assert "refused by the node" in dropped.reason
    assert "base fee" in dropped.reason
    assert result.next_nonce == 0  # nonce 0 is free again...
    assert result.gaps == (0,)  # ...and must be filled before nonce 1 can be mined
    assert [e.nonce for e in result.pending] == [1]


async def test_mixed_outcomes_settle_in_one_lookup_batch(journal: Journal, rpc: Rpc) -> None:
    await automine(rpc, False)
    entries = [signed(f"s{n}", n) for n in range(4)]
    await record_and_broadcast(journal, rpc, entries[0])
    await rpc.request("evm_mine")
    await record_and_broadcast(journal, rpc, *entries[1:])
    await rpc.request("anvil_dropTransaction", [entries[2].tx_hash])  # forgotten: nonce 2 unused
    requests = rpc.http_requests
    result = await reconcile(journal, rpc, SENDER)
    assert result.counts == {"mined": 1, "pending": 3}
    assert [e.nonce for e in result.pending] == [1, 2, 3]
    assert result.next_nonce == 4
    assert result.gaps == ()
    # nonces, then receipts + lookups of every hash in one batch, then one broadcast per pending nonce
    assert rpc.http_requests - requests == 1 + 1 + 3
    await rpc.request("evm_mine")
    assert await mined_count(rpc) == 4


async def test_reconciliation_is_audited(journal: Journal, rpc: Rpc, tmp_path: Path) -> None:
    await automine(rpc, False)
    entry = signed("s1", 0)
    await record_and_broadcast(journal, rpc, entry)
    await reconcile(journal, rpc, SENDER)
    await rpc.request("evm_mine")
    await reconcile(journal, rpc, SENDER)
    records = audit_records(tmp_path)
    assert {r["event"] for r in records} == {"journal"}
    actions = [(r["action"], r.get("status")) for r in records]
    assert actions == [
        ("signed", "pending"),
        ("tracked", "pending"),
        ("reconciled", None),
        ("outcome", "mined"),
        ("reconciled", None),
    ]
    assert records[0]["raw"] == "0x" + entry.raw.hex()
    assert records[0]["tx_hash"] == records[3]["tx_hash"] == entry.tx_hash
    assert records[3]["fee_wei"] > 0
    assert records[4]["counts"] == {"mined": 1}


# --- recording: before the broadcast, durable, one nonce per step --------------------------------
async def test_the_entry_is_recorded_before_a_broadcast_that_fails(
    journal: Journal, rpc: Rpc, db: Path
) -> None:
    poor = "0x" + "11" * 32  # an unfunded key: the node refuses the transaction
    entry = signed("s1", 0, key=poor)
    with pytest.raises(RpcError, match=r"(?i)insufficient funds"):
        await record_and_broadcast(journal, rpc, entry)
    with closing(Store(db)) as other:  # another connection: it is committed, not just cached
        assert [e.tx_hash for e in Journal(other).pending(entry.sender)] == [entry.tx_hash]
    result = await reconcile(journal, rpc, entry.sender)  # still refused at start-up: dropped
    assert result.counts == {"dropped": 1}
    assert result.next_nonce == 0


async def test_the_entry_is_recorded_before_a_broadcast_to_an_unreachable_node(
    journal: Journal, db: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    entry = signed("s1", 0)
    async with Rpc(f"http://127.0.0.1:{port}", attempts=1) as dead:
        with pytest.raises(RpcUnavailableError):
            await record_and_broadcast(journal, dead, entry)
    with closing(Store(db)) as other:
        assert Journal(other).may_be_mined("s1")


def test_the_journal_survives_reopening_the_database(db: Path) -> None:
    first, second = signed("s1", 0), signed("s2", 1, fee=2**70, tip=2**65)  # past 64 bits: exact
    with closing(Store(db)) as store:
        journal = Journal(store)
        journal.record_signed(first, second)
        journal.record_outcome(first.tx_hash, "mined", block=7, gas_used=21_000, fee_wei=2**80 + 1)
    with closing(Store(db)) as store:
        journal = Journal(store)
        (mined,) = journal.entries("s1")
        assert (mined.status, mined.block, mined.gas_used, mined.fee_wei) == ("mined", 7, 21_000, 2**80 + 1)
        assert journal.pending(SENDER) == [
            Entry(**{**second.__dict__, "sender": SENDER.lower(), "account": VICTIM.lower(),
                     "created_at": journal.pending(SENDER)[0].created_at})
        ]  # fmt: skip
        assert journal.pending(SENDER)[0].raw == second.raw
        assert list(journal.open_steps()) == ["s2"]
        assert journal.may_be_mined("s2")
        assert not journal.may_be_mined("s1")


def test_a_step_is_never_signed_again_while_it_may_be_mined(journal: Journal) -> None:
    journal.record_signed(signed("s1", 0))
    with pytest.raises(JournalError, match="may still be mined"):
        journal.record_signed(signed("s2", 1), signed("s1", 1))
    assert journal.entries("s2") == []  # all or nothing
    bumped = signed("s1", 0, fee=12 * GWEI, tip=2 * GWEI)
    journal.record_signed(bumped)  # a replacement (same nonce) is allowed
    journal.record_signed(bumped)  # recording the same bytes twice changes nothing
    assert len(journal.entries("s1")) == 2
    journal.record_outcome(bumped.tx_hash, "dropped", reason="test")
    with pytest.raises(JournalError, match="may still be mined"):
        journal.record_signed(signed("s1", 1))  # the first signature may still be mined
    journal.record_outcome(journal.entries("s1")[0].tx_hash, "dropped", reason="test")
    journal.record_signed(signed("s1", 1))  # nothing of it can be mined any more
    with pytest.raises(JournalError, match="not in the journal"):
        journal.record_outcome("0x" + "00" * 32, "mined")
    with pytest.raises(JournalError, match="unknown journal status"):
        journal.record_outcome(bumped.tx_hash, "lost")


def test_a_mined_outcome_marks_the_other_hashes_of_its_nonce_replaced(journal: Journal) -> None:
    first, bumped, later = signed("s1", 0), signed("s1", 0, fee=12 * GWEI), signed("s2", 1)
    journal.record_signed(first, later)
    journal.record_signed(bumped)
    journal.record_outcome(first.tx_hash, "mined", block=3, gas_used=21_000, fee_wei=1)
    statuses = {e.tx_hash: e.status for e in journal.entries("s1") + journal.entries("s2")}
    assert statuses == {first.tx_hash: "mined", bumped.tx_hash: "replaced", later.tx_hash: "pending"}


def test_receipt_outcome_counts_the_l1_fee() -> None:
    receipt = {"status": "0x1", "blockNumber": "0x10", "gasUsed": "0x5208", "effectiveGasPrice": "0x3"}
    assert receipt_outcome(receipt).fee_wei == 21_000 * 3
    with_l1 = {**receipt, "l1Fee": hex(10**15), "status": "0x0"}
    outcome = receipt_outcome(with_l1)
    assert (outcome.status, outcome.block, outcome.fee_wei) == ("reverted", 16, 21_000 * 3 + 10**15)


# --- the schema: versioned, migrated -------------------------------------------------------------
OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE accounts (address TEXT PRIMARY KEY, first_block INTEGER NOT NULL);
CREATE TABLE block_hashes (number INTEGER PRIMARY KEY, hash TEXT NOT NULL);
INSERT INTO meta VALUES ('chain_id', '31337'), ('deployment', '0xanchor'), ('checkpoint', '120');
INSERT INTO accounts VALUES ('0xaaa', 100), ('0xbbb', 110);
INSERT INTO block_hashes VALUES (120, '0xh120');
"""


def test_a_state_database_from_before_the_journal_opens_and_gains_it(db: Path) -> None:
    with closing(sqlite3.connect(db)) as old:  # the schema every keeper before the journal wrote
        old.executescript(OLD_SCHEMA)
    with closing(Store(db)) as store:
        assert store.schema_version() == SCHEMA_VERSION == 3
        assert store.accounts() == ["0xaaa", "0xbbb"]
        assert store.checkpoint() == 120
        assert store.block_hashes() == {120: "0xh120"}
        store.bind(31337, "0xANCHOR")  # still bound to its chain
        with pytest.raises(StoreError, match="chain_id"):
            store.bind(10, "0xanchor")
        Journal(store).record_signed(signed("s1", 0))
    with closing(Store(db)) as store:  # opening a current database again changes nothing
        assert store.schema_version() == 3
        assert Journal(store).may_be_mined("s1")


def test_a_state_database_from_a_newer_keeper_is_refused(db: Path) -> None:
    with closing(Store(db)) as store:
        store.db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99"):
        Store(db)


async def test_of_several_forgotten_signatures_the_highest_fee_is_broadcast(
    journal: Journal, rpc: Rpc
) -> None:
    await automine(rpc, False)
    first, bumped = signed("s1", 0), signed("s1", 0, fee=12 * GWEI, tip=2 * GWEI)
    journal.record_signed(first)
    journal.record_signed(bumped)  # both signed, neither broadcast before the crash
    result = await reconcile(journal, rpc, SENDER)
    assert result.counts == {"pending": 2}
    assert await known(rpc, bumped.tx_hash) is not None
    assert await known(rpc, first.tx_hash) is None
    await rpc.request("evm_mine")
    assert (await reconcile(journal, rpc, SENDER)).counts == {"mined": 1, "replaced": 1}
    assert [e.status for e in journal.entries("s1")] == ["replaced", "mined"]
