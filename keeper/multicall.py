"""Multicall3 `aggregate3` batches, encoded and decoded with eth_abi (no contract objects).

Many views in one `eth_call` at one pinned block: the whole account set is read consistently and in a
few HTTP requests. Every call may fail on its own (`allowFailure`), so one reverting view never hides
the rest. Batches are cut under a gas budget, because the node executes them within its `eth_call` gas
cap (50M on op-geth) and Perp's account views cost ~100-250k gas each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eth_abi.abi import decode, encode

from keeper.codec import encode_call
from keeper.errors import CallFailedError

if TYPE_CHECKING:
    from keeper.rpc import BlockId, Rpc

AGGREGATE3_SELECTOR = bytes.fromhex("82ad56cb")
DEFAULT_GAS_PER_CALL = 300_000
DEFAULT_BATCH_GAS = 40_000_000  # under op-geth's 50M eth_call cap, with headroom


@dataclass(frozen=True)
class Call:
    """One view: `signature` like "getAccountValue(address)", its arguments, and its output types."""

    target: str
    signature: str
    args: tuple[Any, ...]
    returns: tuple[str, ...]
    gas: int = DEFAULT_GAS_PER_CALL

    def calldata(self) -> bytes:
        return encode_call(self.signature, *self.args)


@dataclass(frozen=True)
class Result:
    ok: bool
    value: tuple[Any, ...]
    revert_data: bytes = b""

    def one(self) -> Any:
        """The single return value; raises if the call reverted."""
        if not self.ok:
            raise CallFailedError(self.revert_data)
        return self.value[0]


def encode_aggregate3(calls: Sequence[Call]) -> bytes:
    payload = [(call.target, True, call.calldata()) for call in calls]
    return AGGREGATE3_SELECTOR + encode(["(address,bool,bytes)[]"], [payload])


def decode_aggregate3(calls: Sequence[Call], returned: bytes) -> list[Result]:
    (entries,) = decode(["(bool,bytes)[]"], returned)
    if len(entries) != len(calls):
        raise ValueError(f"aggregate3 returned {len(entries)} results for {len(calls)} calls")
    results = []
    for call, (ok, data) in zip(calls, entries, strict=True):
        if not ok:
            results.append(Result(False, (), data))
            continue
        try:
            results.append(Result(True, tuple(decode(list(call.returns), data))))
        except Exception:  # a success with undecodable data (e.g. no code at the target)
            results.append(Result(False, (), data))
    return results


def batches(calls: Sequence[Call], max_gas: int = DEFAULT_BATCH_GAS) -> Iterator[Sequence[Call]]:
    """Consecutive slices whose summed gas stays within `max_gas` (at least one call each)."""
    start, used = 0, 0
    for i, call in enumerate(calls):
        if i > start and used + call.gas > max_gas:
            yield calls[start:i]
            start, used = i, 0
        used += call.gas
    if start < len(calls):
        yield calls[start:]


async def execute(
    rpc: Rpc,
    calls: Sequence[Call],
    block: BlockId,
    *,
    multicall: str,
    max_gas: int = DEFAULT_BATCH_GAS,
    per_request: int = 8,
    concurrency: int = 4,
) -> list[Result]:
    """Run `calls` at one pinned `block`: gas-bounded aggregate3 batches, `per_request` of them per
    HTTP request (a JSON-RPC batch), at most `concurrency` requests in flight.

    A call that failed with no revert data inside a shared batch may have run out of the batch's gas
    (aggregate3 hands each call what is left); it is run once more in a batch of its own.
    """
    chunks = list(batches(calls, max_gas))
    groups = [chunks[i : i + per_request] for i in range(0, len(chunks), per_request)]
    limit = asyncio.Semaphore(concurrency)

    async def run(group: list[Sequence[Call]]) -> list[Result]:
        async with limit:
            answers = await rpc.calls_at([(multicall, encode_aggregate3(chunk)) for chunk in group], block)
        results: list[Result] = []
        for chunk, answer in zip(group, answers, strict=True):
            if isinstance(answer, Exception):
                raise answer
            results += decode_aggregate3(chunk, answer)
        return results

    results = [r for part in await asyncio.gather(*(run(g) for g in groups)) for r in part]
    suspects = [i for i, r in enumerate(results) if not r.ok and not r.revert_data and len(calls) > 1]
    if suspects:
        retried = await rpc.calls_at([(multicall, encode_aggregate3([calls[i]])) for i in suspects], block)
        for i, answer in zip(suspects, retried, strict=True):
            if isinstance(answer, Exception):
                raise answer
            results[i] = decode_aggregate3([calls[i]], answer)[0]
    return results


Reader = Callable[[Sequence[Call], int], Awaitable[list[Result]]]


def reader(rpc: Rpc, multicall3: str) -> Reader:
    """Views at a pinned block, batched through the deployment's Multicall3: the one read path."""

    async def read(calls: Sequence[Call], block: int) -> list[Result]:
        return await execute(rpc, calls, block, multicall=multicall3)

    return read
