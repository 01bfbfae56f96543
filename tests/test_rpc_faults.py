"""The RPC client behind a flaky or hostile provider: every fault `RpcProxy` injects, on a plain anvil.

Each test checks that the call through the proxy still gets the node's real answer (after a retry
where the fault is transient), that the fault was really injected (`proxy.injected`) and that
`rpc.errors` counted it under the right kind.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from eth_account import Account
from eth_typing import HexStr
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from devnet import faults
from devnet.anvil import Anvil
from devnet.chain import DEPLOYER, DevChain
from devnet.proxy import FAULTS, RpcProxy
from keeper.errors import ReorgDuringSyncError, RpcError, RpcMalformedError
from keeper.indexer import AccountSource, Indexer
from keeper.receipts import TxRequest
from keeper.rpc import Rpc
from keeper.store import Store
from keeper.tx import TxManager

TOUCHED = "0x" + keccak(text="Touched(address)").hex()
# a contract that logs Touched(msg.sender) on every call: CALLER PUSH32 topic PUSH1 0 PUSH1 0 LOG2 STOP
RUNTIME = "33" + "7f" + TOUCHED[2:] + "6000" + "6000" + "a2" + "00"
INITCODE = "0x6028600c60003960286000f3" + RUNTIME  # copy the 40-byte runtime at offset 12 and return it

RETRIED = [
    (faults.MALFORMED_JSON, "malformed"),
    (faults.TRUNCATED, "malformed"),
    (faults.HTTP_500, "http-5xx"),
    (faults.HTTP_502, "http-5xx"),
    (faults.HTTP_503, "http-5xx"),
    (faults.HTTP_429, "rate-limit"),
]


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="module")
def node(anvil: Anvil) -> DevChain:
    return DevChain(anvil.url)


@pytest.fixture(scope="module")
def emitter(node: DevChain) -> tuple[str, int]:
    """The Touched(address) logger's address and the block it was deployed in."""
    receipt = node.w3.eth.wait_for_transaction_receipt(
        node.w3.eth.send_transaction({"from": DEPLOYER, "data": HexStr(INITCODE)})
    )
    node.rpc("anvil_mine", 2)
    address = receipt["contractAddress"]
    assert address is not None
    return str(address), receipt["blockNumber"]


@pytest.fixture
def proxy(anvil: Anvil) -> Iterator[RpcProxy]:
    with RpcProxy(anvil.url) as running:
        yield running


@pytest.fixture
async def rpc(proxy: RpcProxy) -> AsyncIterator[Rpc]:
    async with Rpc(proxy.url, attempts=4, backoff_seconds=0.01) as client:
        yield client


def touch(node: DevChain, emitter: tuple[str, int], sender: str) -> int:
    """Log Touched(sender) in a new block; its number."""
    tx = node.w3.eth.send_transaction({"from": sender, "to": emitter[0]})
    return node.w3.eth.wait_for_transaction_receipt(tx)["blockNumber"]


def accounts(node: DevChain) -> list[str]:
    """anvil's unlocked dev accounts, checksummed (as the indexer records them)."""
    return [to_checksum_address(a) for a in node.rpc("eth_accounts")]


def block(node: DevChain, number: int | str) -> dict[str, Any]:
    tag = hex(number) if isinstance(number, int) else number
    raw = node.rpc("eth_getBlockByNumber", tag, False)
    assert isinstance(raw, dict)
    return raw


def indexer(rpc: Rpc, emitter: tuple[str, int]) -> Indexer:
    source = AccountSource("Touched", emitter[0], TOUCHED, 1)
    return Indexer(rpc, Store(":memory:"), [source], emitter[1])


@pytest.mark.parametrize(("kind", "counted"), RETRIED)
async def test_a_request_is_retried_past_a_transient_fault(
    kind: str, counted: str, node: DevChain, emitter: tuple[str, int], proxy: RpcProxy, rpc: Rpc
) -> None:
    expected = block(node, "latest")
    proxy.inject(kind)
    header = await rpc.header("latest")
    assert (header.number, header.hash) == (int(expected["number"], 16), expected["hash"])
    assert proxy.injected == Counter({kind: 1})
    assert rpc.errors == Counter({counted: 1})
    assert rpc.http_requests == 2


@pytest.mark.parametrize(("kind", "counted"), [*RETRIED, (faults.BATCH_MISSING_ELEMENT, "malformed")])
async def test_a_batch_is_retried_past_a_transient_fault(
    kind: str, counted: str, node: DevChain, emitter: tuple[str, int], proxy: RpcProxy, rpc: Rpc
) -> None:
    numbers = [0, 1, emitter[1], emitter[1] + 1]
    proxy.inject(kind)
    got = await rpc.headers(numbers)
    assert [h.hash if h else None for h in got] == [block(node, n)["hash"] for n in numbers]
    assert proxy.injected == Counter({kind: 1})
    assert rpc.errors == Counter({counted: 1})
    assert rpc.http_requests == 2


async def test_a_batch_answered_in_reverse_order_is_matched_by_id(
    emitter: tuple[str, int], proxy: RpcProxy, rpc: Rpc
) -> None:
    proxy.inject(faults.BATCH_REVERSED)
    answers = await rpc.batch(
        [
            ("eth_chainId", []),
            ("eth_getBlockByNumber", ["0x0", False]),
            ("eth_getBlockByNumber", ["0x1", False]),
            ("no_such_method", []),
        ]
    )
    assert answers[0] == hex(31337)
    assert [answers[1]["number"], answers[2]["number"]] == ["0x0", "0x1"]
    assert isinstance(answers[3], RpcError)
    assert answers[3].code == -32601
    assert proxy.injected == Counter({faults.BATCH_REVERSED: 1})
    assert rpc.errors == Counter()


async def test_a_permanently_malformed_endpoint_raises_rpc_malformed_error(
    emitter: tuple[str, int], proxy: RpcProxy, rpc: Rpc
) -> None:
    proxy.inject(faults.MALFORMED_JSON, times=rpc.attempts)
    with pytest.raises(RpcMalformedError) as single:
        await rpc.block_number()
    assert single.value.code == -32700
    assert "not JSON" in single.value.message
    assert not isinstance(single.value, ValueError)
    proxy.inject(faults.BATCH_MISSING_ELEMENT, times=rpc.attempts)
    with pytest.raises(RpcMalformedError, match="lacks 1 of 2 elements"):
        await rpc.headers([0, 1])
    assert proxy.faults.pending() == 0
    assert proxy.injected == Counter(
        {faults.MALFORMED_JSON: rpc.attempts, faults.BATCH_MISSING_ELEMENT: rpc.attempts}
    )
    assert rpc.errors == Counter({"malformed": 2 * rpc.attempts})
    assert await rpc.block_number() > 0  # the endpoint healed: the same client goes on


async def test_an_internal_error_is_retried_and_a_genuine_error_answer_is_not(
    proxy: RpcProxy, rpc: Rpc
) -> None:
    """-32603 "internal error" is what a provider answers when the node behind it hiccups: retried
    (a batch as a whole). A genuine error answer (no such method, a revert) is raised as it is, at once
    (a batch keeps it per element)."""
    proxy.inject(faults.RPC_ERROR)
    assert await rpc.chain_id() == 31337
    proxy.inject(faults.RPC_ERROR)
    answers = await rpc.batch([("eth_chainId", []), ("eth_blockNumber", [])])
    assert answers[0] == hex(31337)
    assert int(answers[1], 16) > 0
    with pytest.raises(RpcError) as unknown:
        await rpc.request("no_such_method")
    assert unknown.value.code == -32601
    with pytest.raises(RpcError) as reverted:  # creation code PUSH1 0 PUSH1 0 REVERT
        await rpc.request("eth_call", [{"data": "0x60006000fd"}, "latest"])
    assert "revert" in reverted.value.message
    answers = await rpc.batch([("eth_chainId", []), ("no_such_method", [])])
    assert answers[0] == hex(31337)
    assert isinstance(answers[1], RpcError)
    assert answers[1].code == -32601
    assert not isinstance(answers[1], RpcMalformedError)
    assert proxy.injected == Counter({faults.RPC_ERROR: 2})
    assert rpc.errors == Counter({"answer": 4})  # two -32603 retried, two genuine answers raised
    assert rpc.http_requests == 2 + 2 + 1 + 1 + 1


async def test_a_slow_answer_times_out_and_is_retried(node: DevChain, proxy: RpcProxy) -> None:
    async with Rpc(proxy.url, timeout=0.3, backoff_seconds=0.01) as rpc:
        proxy.inject(faults.DELAY, delay_seconds=1.0)
        assert await rpc.block_number() == node.w3.eth.block_number
        assert proxy.injected == Counter({faults.DELAY: 1})
        assert rpc.errors == Counter({"transport": 1})


async def test_a_stale_head_is_the_previous_answer_then_the_real_one(
    node: DevChain, proxy: RpcProxy, rpc: Rpc
) -> None:
    number, header = await rpc.block_number(), await rpc.header("latest")
    node.rpc("anvil_mine", 1)
    proxy.inject(faults.STALE_HEAD, times=2)
    assert await rpc.block_number() == number
    assert await rpc.header("latest") == header
    assert await rpc.block_number() == number + 1
    assert (await rpc.header("latest")).hash == block(node, number + 1)["hash"]
    assert proxy.injected == Counter({faults.STALE_HEAD: 2})
    assert rpc.errors == Counter()


async def test_the_indexer_waits_out_a_stale_head(
    node: DevChain, emitter: tuple[str, int], proxy: RpcProxy, rpc: Rpc
) -> None:
    first_account, second_account = accounts(node)[1:3]
    index = indexer(rpc, emitter)
    touch(node, emitter, first_account)
    first = await index.sync()
    assert first_account in first.new_accounts
    head = touch(node, emitter, second_account)
    proxy.inject(faults.STALE_HEAD)
    stale = await index.sync()
    assert (stale.head, stale.new_accounts, stale.rolled_back_to) == (first.head, set(), None)
    fresh = await index.sync()
    assert (fresh.head.number, fresh.new_accounts, fresh.rolled_back_to) == (head, {second_account}, None)
    assert proxy.injected == Counter({faults.STALE_HEAD: 1})


async def test_a_log_from_a_reorged_head_stops_the_sync_and_the_next_one_heals(
    node: DevChain, emitter: tuple[str, int], proxy: RpcProxy, rpc: Rpc
) -> None:
    first_account, second_account = accounts(node)[3:5]
    index = indexer(rpc, emitter)
    touch(node, emitter, first_account)
    first = await index.sync()
    head = touch(node, emitter, second_account)
    proxy.inject(faults.REORGED_LOG)
    with pytest.raises(ReorgDuringSyncError, match=f"log in block {head} has hash"):
        await index.sync()
    assert proxy.injected == Counter({faults.REORGED_LOG: 1})
    assert index.store.checkpoint() == first.head.number  # nothing from the reorged answer was kept
    healed = await index.sync()
    real = block(node, head)["hash"]
    assert (healed.head.number, healed.head.hash, healed.new_accounts) == (head, real, {second_account})
    assert index.store.checkpoint() == head
    assert index.store.block_hashes()[head] == real
    assert index.known >= {first_account, second_account}


async def test_a_send_whose_answer_is_lost_is_found_by_its_hash_not_sent_twice(
    node: DevChain, emitter: tuple[str, int], proxy: RpcProxy, rpc: Rpc
) -> None:
    keeper = Account.create()
    node.rpc("anvil_setBalance", keeper.address, hex(10**18))
    manager = TxManager(rpc, keeper, 31337, poll_seconds=0.05, receipt_timeout=10)
    proxy.inject(faults.LOST_SEND_ANSWER)
    outcome = await manager.send(TxRequest("touch", keeper.address, emitter[0], b"", "touch"))
    assert outcome.ok, outcome.reason
    assert [log["topics"][1][-40:] for log in outcome.logs] == [keeper.address[2:].lower()]
    assert node.w3.eth.get_transaction_count(keeper.address) == 1  # one transaction, mined once
    assert proxy.injected == Counter({faults.LOST_SEND_ANSWER: 1})
    assert rpc.errors["http-5xx"] == 1
    assert set(rpc.errors) <= {"http-5xx", "answer"}  # the resend may be refused as "nonce too low"


async def test_chaos_is_reproducible_and_survived(node: DevChain, proxy: RpcProxy) -> None:
    kinds = [kind for kind, _ in RETRIED]
    runs: list[Counter[str]] = []
    for _ in range(2):
        proxy.injected.clear()
        proxy.chaos(seed=7, rate=0.4, kinds=kinds)
        async with Rpc(proxy.url, attempts=12, backoff_seconds=0.001) as rpc:
            for _ in range(15):
                assert await rpc.chain_id() == 31337
        proxy.calm()
        assert sum(rpc.errors.values()) == sum(proxy.injected.values()) > 0
        runs.append(Counter(proxy.injected))
    assert runs[0] == runs[1]
    assert set(runs[0]) <= set(kinds) <= set(FAULTS)
