"""Gas prices from the node: EIP-1559 base fee and tip, and the OP-stack L1 data fee when it exists.

The `GasPriceOracle` predeploy (0x42…0F) is absent on anvil, even with `--optimism`, and on non-OP
chains: then the L1 fee is 0 and `l1_note` says why, so a profit decision can show it.

Within one head (`HEAD`, set by the engine for its tick) every plan sees the same prices: each is
asked of the node once per head, however many plans are priced at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from eth_abi.abi import decode

from keeper.codec import encode_call
from keeper.errors import RpcError
from keeper.profit import GasPrice, TxCost, tx_cost
from keeper.rpc import BlockId, Rpc

log = logging.getLogger(__name__)
LOW_ETH_WEI = 10**16  # 0.01 ETH
GAS_PRICE_ORACLE = "0x420000000000000000000000000000000000000F"
GWEI = 10**9
HEAD: ContextVar[int | None] = ContextVar("keeper_head", default=None)  # the head being planned at
T = TypeVar("T")
_per_head: WeakKeyDictionary[Rpc, dict[tuple[Any, ...], asyncio.Future[Any]]] = WeakKeyDictionary()


async def once_per_head(rpc: Rpc, key: tuple[Any, ...], ask: Callable[[], Awaitable[T]]) -> T:
    """`ask()`, shared by every caller at the same head (outside a head, asked every time)."""
    head = HEAD.get()
    if head is None:
        return await ask()
    cache = _per_head.setdefault(rpc, {})
    if any(k[0] != head for k in cache):
        cache.clear()  # a new head: yesterday's prices are gone
    future = cache.get((head, *key))
    if future is None:
        future = cache[(head, *key)] = asyncio.ensure_future(ask())
    try:
        return await asyncio.shield(future)
    except Exception:
        cache.pop((head, *key), None)  # a failure is not remembered
        raise


@dataclass(frozen=True)
class L1Fee:
    wei: int
    note: str = ""


async def gas_price(rpc: Rpc, max_fee_gwei: int | None = None) -> GasPrice:
    """The pending block's base fee and the node's suggested tip, under the operator's ceiling."""
    return await once_per_head(rpc, ("gas_price", max_fee_gwei), lambda: _gas_price(rpc, max_fee_gwei))


async def _gas_price(rpc: Rpc, max_fee_gwei: int | None) -> GasPrice:
    answers = await rpc.batch(
        [("eth_getBlockByNumber", ["pending", False]), ("eth_maxPriorityFeePerGas", [])]
    )
    block, tip = answers
    if isinstance(block, RpcError) or block is None:
        block = await rpc.request("eth_getBlockByNumber", ["latest", False])
    base_fee = int(block.get("baseFeePerGas", "0x0"), 16)
    tip_wei = 0 if isinstance(tip, RpcError) else int(tip, 16)
    return GasPrice(base_fee, tip_wei, None if max_fee_gwei is None else max_fee_gwei * GWEI)


async def l1_fee_upper_bound(rpc: Rpc, unsigned_tx_size: int, block: BlockId = "latest") -> L1Fee:
    """GasPriceOracle.getL1FeeUpperBound(size) (Fjord): cheap, and exact at the 100-byte floor."""
    return (await l1_fees(rpc, [unsigned_tx_size], block))[0]


UNSIGNED_TX_OVERHEAD = 60  # bytes of an unsigned EIP-1559 tx beside its calldata


async def tx_costs(rpc: Rpc, txs: Sequence[tuple[int, int]], price: GasPrice) -> tuple[list[TxCost], str]:
    """The cost of each (gas units, calldata bytes) transaction: L2 execution plus its L1 data fee.

    The L1 fees are read in one batch. The second value says why the L1 fee is 0, when it is."""
    fees = await l1_fees(rpc, [size + UNSIGNED_TX_OVERHEAD for _, size in txs])
    note = next((f.note for f in fees if f.note), "")
    return [tx_cost(units, price, fee.wei) for (units, _), fee in zip(txs, fees, strict=True)], note


async def l1_fees(rpc: Rpc, unsigned_sizes: Sequence[int], block: BlockId = "latest") -> list[L1Fee]:
    """GasPriceOracle.getL1FeeUpperBound of each size, in one batch (none where there is no oracle)."""
    if not unsigned_sizes:
        return []
    code = await once_per_head(
        rpc, ("oracle", block), lambda: rpc.request("eth_getCode", [GAS_PRICE_ORACLE, block])
    )
    if code in (None, "0x", ""):
        return [L1Fee(0, "no GasPriceOracle at 0x42..0F: L1 data fee counted as 0") for _ in unsigned_sizes]
    calls = [(GAS_PRICE_ORACLE, encode_call("getL1FeeUpperBound(uint256)", n)) for n in unsigned_sizes]
    fees = []
    for answer in await rpc.calls_at(calls, block):
        if isinstance(answer, RpcError):
            note = f"GasPriceOracle.getL1FeeUpperBound reverted ({answer.message}): L1 fee counted as 0"
            fees.append(L1Fee(0, note))
        else:
            fees.append(L1Fee(int(decode(["uint256"], answer)[0])))
    return fees


async def estimate_gas(rpc: Rpc, sender: str, to: str, data: bytes) -> int | None:
    """eth_estimateGas, or None when the transaction cannot run now (e.g. it needs an earlier step)."""
    tx = {"from": sender, "to": to, "data": "0x" + data.hex()}
    try:
        return int(await rpc.request("eth_estimateGas", [tx]), 16)
    except RpcError:
        return None


async def warn_low_gas(rpc: Rpc, keeper: str) -> None:
    """Warn before the keeper runs out of ETH for gas (a side job of `run`)."""
    balance = int(await rpc.request("eth_getBalance", [keeper, "latest"]), 16)
    if balance < LOW_ETH_WEI:
        log.warning("keeper %s has %.4f ETH left for gas", keeper, balance / 10**18)
