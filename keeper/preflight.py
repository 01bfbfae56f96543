"""Before anything is signed: simulate, estimate, price.

A plan's steps depend on each other (a maker's cancels before its liquidation, an approval before a
swap, a flag before a Synthetix liquidation), so `simulate_sequence` runs them one after the other on
top of the head with `eth_simulateV1`: the whole plan is proven at the head it was planned on, and its
gas is measured there. A node without `eth_simulateV1` answers None, and the caller falls back to
sending one step a block, each simulated alone with `eth_call` just before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from keeper import gas
from keeper.codec import decode_revert
from keeper.errors import RpcError
from keeper.receipts import Prepared, TxRequest, revert_reason
from keeper.rpc import BlockId, Rpc

UNSUPPORTED = (-32601, -32600)  # method not found / invalid request: no eth_simulateV1 here


def _block(block: BlockId) -> str:
    return block if isinstance(block, str) else hex(block)


def _tx(sender: str, request: TxRequest) -> dict[str, str]:
    return {"from": sender, "to": request.to, "data": "0x" + request.data.hex()}


async def simulate(rpc: Rpc, sender: str, request: TxRequest, block: BlockId) -> tuple[bool, str, bytes]:
    """eth_call of one transaction at `block`: (ok, reason, return data)."""
    try:
        out = await rpc.request("eth_call", [_tx(sender, request), _block(block)])
    except RpcError as exc:
        return False, revert_reason(exc), b""
    return True, "", bytes.fromhex(str(out).removeprefix("0x"))


async def simulate_sequence(
    rpc: Rpc, sender: str, requests: Sequence[TxRequest], block: BlockId
) -> list[tuple[bool, str, int]] | None:
    """(ok, reason, gas used) of each transaction run in order on top of `block`; None: unsupported."""
    payload = {"blockStateCalls": [{"calls": [_tx(sender, r) for r in requests]}], "validation": False}
    try:
        blocks = await rpc.request("eth_simulateV1", [payload, _block(block)])
    except RpcError as exc:
        if exc.code in UNSUPPORTED or "not supported" in exc.message.lower():
            return None
        raise
    calls: list[dict[str, Any]] = blocks[0]["calls"] if blocks else []
    if len(calls) != len(requests):
        return None
    return [_call_result(call) for call in calls]


def _call_result(call: dict[str, Any]) -> tuple[bool, str, int]:
    used = int(call.get("gasUsed", "0x0"), 16)
    if call.get("status") == "0x1":
        return True, "", used
    error = call.get("error") or {}
    data = error.get("data") if isinstance(error, dict) else None
    if not data and call.get("returnData") not in (None, "0x"):
        data = call["returnData"]
    if isinstance(data, str) and len(data) > 2:
        return False, decode_revert(bytes.fromhex(data[2:])), used
    return False, str(error.get("message", "reverted") if isinstance(error, dict) else "reverted"), used


async def estimate_gas(rpc: Rpc, sender: str, request: TxRequest) -> int:
    return int(await rpc.request("eth_estimateGas", [_tx(sender, request)]), 16)


async def fees(rpc: Rpc, max_fee_gwei: int | None) -> tuple[int, int]:
    """(max fee, tip) per gas: twice the base fee plus the tip, under the operator's ceiling."""
    price = await gas.gas_price(rpc, max_fee_gwei)
    max_fee = 2 * price.base_fee + price.tip
    if price.max_fee is not None:
        max_fee = min(price.max_fee, max_fee)
    return max_fee, min(price.tip, max_fee)


MAX_PROOF_ROUNDS = 4


async def prove_batch(
    rpc: Rpc, sender: str, plans: Sequence[Sequence[TxRequest]], block: BlockId
) -> tuple[dict[int, list[int]], dict[int, tuple[TxRequest, str]]] | None:
    """Every plan's steps, in this order, as one sequence on top of `block`: transactions of one
    head land in one block, and each may change what the next one finds (a maker's cancel removes
    liquidity a close trades against). A plan with a failing step is dropped and the rest proven
    again. Returns (plan index -> gas used per step, plan index -> (failing step, reason)), or None
    where the node cannot simulate a sequence."""
    alive = list(range(len(plans)))
    failed: dict[int, tuple[TxRequest, str]] = {}
    for _ in range(MAX_PROOF_ROUNDS):
        flat = [(i, r) for i in alive for r in plans[i]]
        if not flat:
            return {}, failed
        results = await simulate_sequence(rpc, sender, [r for _, r in flat], block)
        if results is None:
            return None
        gas: dict[int, list[int]] = {i: [] for i in alive}
        for (i, request), (ok, reason, used) in zip(flat, results, strict=True):
            gas[i].append(used)
            if not ok and i not in failed:
                failed[i] = (request, reason)
        if not any(i in failed for i in alive):
            return gas, failed
        alive = [i for i in alive if i not in failed]
    return {i: gas[i] for i in alive}, failed  # the last round's survivors, proven as they then stood


def capped(prepared: Sequence[Prepared], ceiling_wei: int | None) -> list[Prepared] | str:
    """A plan's transactions priced so their gas together costs at most `ceiling_wei` (a plan never
    spends more on gas than it earns): each step's max fee cut to ceiling / the plan's gas limits, and
    kept there by every replacement. The reason it cannot go, when that is below the base fee."""
    if ceiling_wei is None:
        return list(prepared)
    limits = sum(p.gas_limit for p in prepared)
    cap = ceiling_wei // limits if limits else 0
    base_fee = max(0, (prepared[0].max_fee - prepared[0].tip) // 2) if prepared else 0
    if cap <= base_fee:
        return (
            f"gas ceiling: what it earns pays {cap:,} wei per gas over {limits:,} gas, "
            f"the base fee is {base_fee:,}"
        )
    return [replace(p, max_fee=min(p.max_fee, cap), tip=min(p.tip, cap), fee_cap=cap) for p in prepared]
