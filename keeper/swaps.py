"""Selling what the keeper seized without letting a quote turn the sale against it.

An aggregator's answer is a claim by a party the keeper does not control. Before a quote may win
(`best_quote` with `SwapGuard.vet`):
* its `to` and its allowance target must be contracts listed for that source on this chain
  (`keeper/routers.py`; operators add to them with KEEPER_AGGREGATOR_CONTRACTS);
* its calldata, decoded with the router's ABI, must sell exactly the amount asked of the token asked,
  for the token asked, to the keeper, at a minimum no lower than the quote less the slippage bound;
* a 0x Settler must be the one 0x's registry names (current, or previous during 0x's dwell time).
Before a sale is signed, `SwapGuard.simulate` runs its steps (the exact approval, the swap) from the
keeper in `eth_simulateV1` and checks what they do to the keeper: at most the amount sold, at least
`minOut` received, no other token moved out, no allowance but the listed spender's for this amount.
A quote that fails any check is dropped with its reason; the next one is tried, Uniswap v3 last.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils.address import to_checksum_address

from keeper.codec import decode_revert, encode_call, topic
from keeper.errors import QuoteError, RpcError
from keeper.quotes import Quote, QuoteSource, UniswapV3
from keeper.routers import (
    SETTLER_CURRENT,
    SETTLER_PREVIOUS,
    SETTLER_REGISTRY,
    SETTLER_TAKER_SUBMITTED,
    QuoteRejectedError,
    SwapCall,
    decode_swap,
)
from keeper.rpc import Rpc

log = logging.getLogger(__name__)

BALANCE_OF = "balanceOf(address)"
TRANSFER = topic("Transfer(address,address,uint256)")
APPROVAL = topic("Approval(address,address,uint256)")
MIN_OUT_ROUNDING = 1  # a router's minimum may be one unit below ours: its own rounding of the same bound
Vet = Callable[[Quote, str, int], Awaitable[None]]  # (quote, recipient, slippage bps): raises to refuse


# --- choosing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    best: Quote | None  # the first of `ranked`
    quotes: tuple[Quote, ...]  # every quote a source gave
    errors: tuple[str, ...]  # why the others gave none
    ranked: tuple[Quote, ...] = ()  # the quotes that passed the vetter, best first
    rejected: tuple[tuple[str, str], ...] = ()  # (source, reason) for each quote the vetter refused


async def best_quote(
    sources: Sequence[QuoteSource],
    sell_token: str,
    buy_token: str,
    amount: int,
    taker: str,
    slippage_bps: int,
    gas_cost_in_buy_token: int,
    vet: Vet | None = None,
) -> Choice:
    """Ask every source at once; rank by `buy_amount - gas x gas_cost_in_buy_token` (on a tie an
    aggregator before Uniswap v3, the fallback the keeper builds itself); drop what `vet` refuses.

    `gas_cost_in_buy_token` is what one unit of gas costs in the bought token's smallest units.
    """
    results = await asyncio.gather(
        *(s.quote(sell_token, buy_token, amount, taker, slippage_bps) for s in sources),
        return_exceptions=True,
    )
    quotes, errors = [], []
    for source, result in zip(sources, results, strict=True):
        if isinstance(result, Quote):
            quotes.append(result)
        elif isinstance(result, QuoteError | RpcError):
            errors.append(str(result))
        elif isinstance(result, BaseException):
            errors.append(f"{source.name}: {type(result).__name__}: {result}")
    for error in errors:
        log.warning("quote source failed: %s", error)
    order = sorted(
        quotes,
        key=lambda q: (q.buy_amount - q.gas * gas_cost_in_buy_token, q.source != UniswapV3.name),
        reverse=True,
    )
    verdicts = await asyncio.gather(*(_refusal(vet, q, taker, slippage_bps) for q in order))
    rejected = tuple((q.source, why) for q, why in zip(order, verdicts, strict=True) if why is not None)
    for source_name, why in rejected:
        log.warning("%s quote refused: %s", source_name, why)
    ranked = tuple(q for q, why in zip(order, verdicts, strict=True) if why is None)
    return Choice(ranked[0] if ranked else None, tuple(quotes), tuple(errors), ranked, rejected)


async def _refusal(vet: Vet | None, quote: Quote, taker: str, slippage_bps: int) -> str | None:
    """Why `vet` refuses the quote (a failure to check it refuses it too), or None."""
    if vet is None:
        return None
    try:
        await vet(quote, taker, slippage_bps)
    except QuoteError as exc:
        return str(exc)
    except RpcError as exc:
        return f"{quote.source}: could not be checked: {exc}"
    return None


# --- the checks ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Effects:
    """What a simulated sale did to the keeper's balances."""

    sold: int  # of the sold token, its smallest units
    received: int  # of the bought token


class SwapGuard:
    def __init__(self, rpc: Rpc, sources: Sequence[QuoteSource]) -> None:
        self.rpc = rpc
        self.listed = {s.name: s.contracts for s in sources}
        self.simulates = False  # the node answered eth_simulateV1 once

    async def vet(self, quote: Quote, recipient: str, slippage_bps: int) -> None:
        """Refuse (QuoteRejectedError) a quote whose transaction is not the sale it claims to be, or
        one that could not be simulated when the time comes to sell."""
        await self._can_simulate(quote.source)
        name, listed = quote.source, self.listed.get(quote.source, frozenset())
        if not listed:
            raise QuoteRejectedError(f"{name}: no contract is listed for it on this chain")
        for role, where in (("`to`", quote.to), ("allowance target", quote.spender)):
            if _checksum(where) not in listed:
                raise QuoteRejectedError(f"{name}: {role} {where} is not a listed {name} contract")
        try:
            call = decode_swap(quote.data)
        except QuoteRejectedError as exc:
            raise QuoteRejectedError(f"{name}: {exc}") from None
        if problems := call_problems(call, quote, recipient, quote.min_out(slippage_bps)):
            raise QuoteRejectedError(f"{name}: {'; '.join(problems)}")
        if call.settler is not None and call.settler not in listed:
            await self._genuine_settler(name, call.settler)

    async def _can_simulate(self, name: str) -> None:
        """A sale is never signed unsimulated: on a node without eth_simulateV1 no quote is usable, so
        nothing is liquidated for collateral the keeper could not sell."""
        if self.simulates:
            return
        try:
            await self.rpc.request("eth_simulateV1", [{"blockStateCalls": [{"calls": []}]}, "latest"])
        except RpcError as exc:
            raise QuoteRejectedError(
                f"{name}: the node cannot simulate a sale (eth_simulateV1): {exc}"
            ) from None
        self.simulates = True

    async def _genuine_settler(self, name: str, settler: str) -> None:
        """0x's registry names its current Settler (`ownerOf` reverts while it is paused) and the
        previous one; anything else is a counterfeit that would spend the lent allowance."""
        current, previous = await self.rpc.calls_at(
            [
                (SETTLER_REGISTRY, encode_call(SETTLER_CURRENT, SETTLER_TAKER_SUBMITTED)),
                (SETTLER_REGISTRY, encode_call(SETTLER_PREVIOUS, SETTLER_TAKER_SUBMITTED)),
            ],
            "latest",
        )
        if isinstance(current, RpcError) or len(current) < 32:
            raise QuoteRejectedError(f"{name}: 0x's Settler registry names no Settler (paused, or absent)")
        named = {
            _word_address(a) for a in (current, previous) if not isinstance(a, RpcError) and len(a) >= 32
        }
        if settler not in named:
            raise QuoteRejectedError(f"{name}: Settler {settler} is not the one 0x's registry names")

    async def simulate(
        self, owner: str, quote: Quote, steps: Sequence[tuple[str, bytes]], min_out: int
    ) -> Effects:
        """Run the sale's steps from `owner` in one simulated block, between reads of its balances;
        refuse (QuoteRejectedError) a sale that reverts or does anything but the sale to the keeper."""
        balances = [(t, encode_call(BALANCE_OF, owner)) for t in (quote.sell_token, quote.buy_token)]
        calls = [*balances, *steps, *balances]
        request = [{"from": owner, "to": to, "data": "0x" + data.hex()} for to, data in calls]
        try:
            answer = await self.rpc.request(
                "eth_simulateV1", [{"blockStateCalls": [{"calls": request}], "validation": False}, "latest"]
            )
        except RpcError as exc:
            raise QuoteRejectedError(f"{quote.source}: the sale could not be simulated: {exc}") from None
        outcomes = _outcomes(answer, len(calls), quote.source)
        for outcome in outcomes:
            if outcome.get("status") != "0x1":
                reason = decode_revert(_hex(outcome.get("returnData")))
                raise QuoteRejectedError(f"{quote.source}: the simulated sale reverts: {reason}")
        before, after = (
            [_uint(o, quote.source) for o in outcomes[:2]],
            [_uint(o, quote.source) for o in outcomes[-2:]],
        )
        effects = Effects(sold=before[0] - after[0], received=after[1] - before[1])
        logs = [entry for outcome in outcomes[2:-2] for entry in outcome.get("logs") or []]
        if problems := effect_problems(owner, quote, min_out, effects, logs):
            raise QuoteRejectedError(f"{quote.source}: the simulated sale {'; '.join(problems)}")
        return effects


def call_problems(call: SwapCall, quote: Quote, recipient: str, min_out: int) -> list[str]:
    """How the calldata differs from the sale the quote claims (pure)."""
    problems = []
    if not _same(call.sell_token, quote.sell_token):
        problems.append(f"its calldata sells {call.sell_token}, not {quote.sell_token}")
    if call.amount != quote.sell_amount:
        problems.append(f"its calldata sells {call.amount}, not the {quote.sell_amount} asked")
    if call.buy_token is not None and not _same(call.buy_token, quote.buy_token):
        problems.append(f"its calldata buys {call.buy_token}, not {quote.buy_token}")
    if call.recipient is not None and not _same(call.recipient, recipient):
        problems.append(f"its calldata pays {call.recipient}, not the keeper {recipient}")
    if call.min_out + MIN_OUT_ROUNDING < min_out:
        problems.append(f"its calldata accepts {call.min_out}, below minOut {min_out}")
    return problems


def effect_problems(
    owner: str, quote: Quote, min_out: int, effects: Effects, logs: Sequence[dict[str, Any]]
) -> list[str]:
    """What a simulated sale did to `owner` beyond selling at most the amount for at least `min_out`
    (pure): its balances, and every Transfer out of it and Approval by it in the logs."""
    problems = []
    if effects.sold > quote.sell_amount:
        problems.append(f"takes {effects.sold} of {quote.sell_token}, more than the {quote.sell_amount} sold")
    if effects.received < min_out:
        problems.append(f"returns {effects.received} of {quote.buy_token}, below minOut {min_out}")
    for entry in logs:
        topics = [str(t).lower() for t in entry.get("topics") or []]
        if len(topics) < 3 or not _same(_word_address(_hex(topics[1])), owner):
            continue
        token, counterparty = _checksum(str(entry.get("address"))), _word_address(_hex(topics[2]))
        value = int.from_bytes(_hex(entry.get("data"))[:32] or b"\0", "big")
        if topics[0] == TRANSFER and not _same(token, quote.sell_token):
            problems.append(f"moves {token} from the keeper to {counterparty}")
        elif topics[0] == APPROVAL and (
            not _same(token, quote.sell_token)
            or not _same(counterparty, quote.spender)
            or value > quote.sell_amount
        ):
            problems.append(f"has the keeper approve {counterparty} for {value} of {token}")
    return problems


def _outcomes(answer: Any, count: int, source: str) -> list[dict[str, Any]]:
    """The calls of the one simulated block, checked for shape."""
    try:
        calls = answer[0]["calls"]
    except (IndexError, KeyError, TypeError):
        raise QuoteRejectedError(f"{source}: the simulation's answer has no calls") from None
    if not isinstance(calls, list) or len(calls) != count or not all(isinstance(c, dict) for c in calls):
        raise QuoteRejectedError(f"{source}: the simulation answered {len(calls)} calls, not {count}")
    return calls


def _uint(outcome: dict[str, Any], source: str) -> int:
    data = _hex(outcome.get("returnData"))
    if len(data) < 32:
        raise QuoteRejectedError(f"{source}: a simulated balance read returned no number")
    return int.from_bytes(data[:32], "big")


def _hex(value: Any) -> bytes:
    try:
        return bytes.fromhex(str(value or "0x").removeprefix("0x"))
    except ValueError:
        return b""


def _word_address(word: bytes) -> str:
    return _checksum("0x" + word[-20:].hex()) if len(word) >= 20 else _checksum("0x" + "00" * 20)


def _same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def _checksum(text: str) -> str:
    return str(to_checksum_address(text))
