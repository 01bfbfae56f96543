"""The transaction manager on a real node: simulation gate, registry, cooldown, maybe-sent, replacement."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from eth_account import Account

from devnet import up
from devnet.chain import DevChain
from devnet.scenario import KEEPER_KEY
from keeper.codec import encode_call
from keeper.journal import Journal
from keeper.lease import Fence, LeaseLostError
from keeper.receipts import Pending, TxOutcome, TxRequest
from keeper.rpc import Rpc
from keeper.store import Store
from keeper.tx import TxManager
from strategies.perp_v2.positions import LIQUIDATE_SIGNATURE


async def eventually(condition: Callable[[], bool], seconds: float = 20) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def harmless(devnet: up.Devnet, key: str = "noop") -> TxRequest:
    """A transaction that always succeeds: approve the Vault for 0 USDC."""
    usdc = devnet.deployment["USDC"]
    data = bytes.fromhex(usdc.encode_abi("approve", args=[devnet.deployment["Vault"].address, 0])[2:])
    return TxRequest(key, "0x" + "1" * 40, usdc.address, data, "approve")


async def test_a_failing_simulation_is_never_sent_and_cools_the_account_down(
    devnet: up.Devnet, chain: DevChain
) -> None:
    healthy = devnet.scenario.traders["eth-long-2x"].address
    base = devnet.deployment.market("vETH").base_token.address
    async with Rpc(devnet.url) as rpc:
        manager = TxManager(rpc, Account.from_key(KEEPER_KEY), chain.w3.eth.chain_id, cooldown_seconds=60)
        nonce_before = chain.w3.eth.get_transaction_count(manager.address)
        request = TxRequest(
            "a",
            healthy,
            devnet.deployment["ClearingHouse"].address,
            encode_call(LIQUIDATE_SIGNATURE, healthy, base, 1),
            "liquidate",
        )
        outcome = await manager.send(request)
        assert outcome.status == "simulation-failed"
        assert "CH_EAV" in outcome.reason
        assert chain.w3.eth.get_transaction_count(manager.address) == nonce_before  # nothing sent
        again = await manager.send(TxRequest("b", healthy, request.to, request.data, "liquidate"))
        assert again.status == "skipped"
        assert "cooling down" in again.reason


async def test_one_opportunity_is_never_in_flight_twice(devnet: up.Devnet, chain: DevChain) -> None:
    async with Rpc(devnet.url) as rpc:
        manager = TxManager(rpc, Account.from_key(KEEPER_KEY), chain.w3.eth.chain_id)
        first, second = await asyncio.gather(
            manager.send(harmless(devnet, "same")), manager.send(harmless(devnet, "same"))
        )
        assert sorted([first.status, second.status]) == ["mined", "skipped"]
        assert "in flight" in (first.reason + second.reason)


async def test_an_already_sent_transaction_is_found_by_hash_not_resigned(
    devnet: up.Devnet, chain: DevChain
) -> None:
    async with Rpc(devnet.url) as rpc:
        signer = Account.from_key(KEEPER_KEY)
        manager = TxManager(rpc, signer, chain.w3.eth.chain_id)
        request = harmless(devnet)
        nonce = chain.w3.eth.get_transaction_count(signer.address)
        fees = (2 * 10**9, 10**9)
        # the same signed bytes reach the node first (as a retried HTTP request would)
        tx = {
            "type": 2,
            "chainId": chain.w3.eth.chain_id,
            "nonce": nonce,
            "to": request.to,
            "data": request.data,
            "value": 0,
            "gas": 100_000,
            "maxFeePerGas": fees[0],
            "maxPriorityFeePerGas": fees[1],
        }
        signed = signer.sign_transaction(tx)
        chain.w3.eth.send_raw_transaction(signed.raw_transaction)
        pending = Pending(request, nonce, 100_000, fees[0], fees[1], [], b"", 0, 0.0)
        tx_hash = await manager._sign_and_broadcast(pending)
        assert tx_hash == "0x" + bytes(signed.hash).hex()
        # anvil mines an automined transaction just after it answers: wait for it, then count
        await eventually(lambda: chain.w3.eth.get_transaction_count(signer.address) > nonce)
        assert chain.w3.eth.get_transaction_count(signer.address) == nonce + 1


async def test_a_stuck_transaction_is_replaced_with_the_same_nonce(
    devnet: up.Devnet, chain: DevChain
) -> None:
    async with Rpc(devnet.url) as rpc:
        signer = Account.from_key(KEEPER_KEY)
        manager = TxManager(rpc, signer, chain.w3.eth.chain_id, replace_after_blocks=2, poll_seconds=0.05)
        nonce = chain.w3.eth.get_transaction_count(signer.address)
        chain.rpc("evm_setAutomine", False)
        try:
            sending = asyncio.create_task(manager.send(harmless(devnet)))
            await eventually(lambda: bool(chain.rpc("txpool_content")["pending"]))
            chain.rpc("anvil_removePoolTransactions", signer.address)  # it never gets mined
            for _ in range(3):
                chain.rpc("evm_mine")
            await eventually(lambda: bool(chain.rpc("txpool_content")["pending"]))  # the replacement
            chain.rpc("evm_mine")
            outcome = await asyncio.wait_for(sending, 30)
        finally:
            chain.rpc("evm_setAutomine", True)
        assert outcome.status == "mined"
        assert outcome.replacements == 1
        assert chain.w3.eth.get_transaction(outcome.tx_hash)["nonce"] == nonce  # type: ignore[arg-type]


async def test_a_lease_lapsing_between_the_journal_and_the_send_sends_nothing(
    devnet: up.Devnet, chain: DevChain, tmp_path: Path
) -> None:
    """A replica paused right after its fenced journal write, past its TTL, wakes up no longer the
    holder: the journaled bytes are left to the new holder (it reconciles the journal), not broadcast by
    the ex-holder; nor does an ex-holder's poller re-broadcast what it was following."""
    store = Store(tmp_path / "state.sqlite")
    lease = store.lease_claim("signer", "a", 30)
    assert lease is not None
    fences = iter([Fence("signer", "a", lease.epoch), None])  # held when signing, lapsed once journaled
    async with Rpc(devnet.url) as rpc:
        manager = TxManager(
            rpc, Account.from_key(KEEPER_KEY), chain.w3.eth.chain_id,
            journal=Journal(store), fence=lambda: next(fences, None),
        )  # fmt: skip
        prepared = await manager.prepare(harmless(devnet, "paused"))
        assert not isinstance(prepared, TxOutcome)
        nonce_before = chain.w3.eth.get_transaction_count(manager.address, "pending")
        with pytest.raises(LeaseLostError, match="journaled: not sent"):
            await manager.dispatch_all([prepared])
        (row,) = store.journal_rows(status="pending")
        assert row["step"] == "paused"
        assert not _known(chain, row["tx_hash"])  # the node never saw it
        assert chain.w3.eth.get_transaction_count(manager.address, "pending") == nonce_before
        assert manager.pending == {}
        stale = Pending(prepared.request, 0, 21_000, 1, 1, [row["tx_hash"]], bytes(row["raw"]), 0, 0.0)
        await manager._rebroadcast(stale)  # the poller re-sending one the node forgot
        assert chain.w3.eth.get_transaction_count(manager.address, "pending") == nonce_before
    store.close()


def _known(chain: DevChain, tx_hash: str) -> bool:
    return chain.rpc("eth_getTransactionByHash", tx_hash) is not None
