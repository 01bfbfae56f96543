"""Selling collateral the keeper seized: quoted afresh when it is in the wallet (never with the quote
that priced the liquidation), with `minOut` = quote less the slippage bound; kept, with a warning, when
no quote covers what was repaid.

Only a quote that passes `keeper/swaps.py` is used: its contracts listed, its calldata the sale it
claims, then the whole sale (the approval for exactly the seized amount, the swap) simulated from the
keeper's address with its balance changes checked. A refused quote is recorded with its reason
(`quotes_rejected`) and the next best is tried, Uniswap v3 last.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from keeper.codec import encode_call
from keeper.multicall import Call, Reader
from keeper.quotes import Quote, QuoteSource
from keeper.routers import QuoteRejectedError
from keeper.rpc import Rpc
from keeper.strategy import SELL, Plan, Step
from keeper.swaps import Choice, SwapGuard, best_quote
from strategies.perp_v2 import risk
from strategies.perp_v2.views import Views

log = logging.getLogger(__name__)

APPROVE = "approve(address,uint256)"
GAS_APPROVE = 60_000
SalePlan = Plan[risk.Opportunity]


class Seller:
    def __init__(
        self, usdc: str, rpc: Rpc, read: Reader, sources: Sequence[QuoteSource], slippage_bps: int
    ) -> None:
        self.usdc, self.rpc, self.read = usdc, rpc, read
        self.sources, self.slippage_bps = list(sources), slippage_bps
        self.guard = SwapGuard(rpc, self.sources)

    async def plan(
        self, op: risk.Opportunity, liquidator: str, seized: int, repaid: int, round_: int
    ) -> SalePlan:
        assert op.collateral_token is not None
        token = op.collateral_token
        plan: SalePlan = Plan(
            op, [], False, "", SELL, round_, detail={"seized": seized, "repaid_usdc": repaid}
        )
        choice = await best_quote(
            self.sources, token, self.usdc, seized, liquidator, self.slippage_bps, 0, self.guard.vet
        )
        plan.detail.update(quotes_record(choice))
        (plan.detail["usdc_before"],) = await self._views(Views.erc20_balance(self.usdc, liquidator))
        for quote in choice.ranked:  # best first
            if quote.buy_amount <= repaid or await self._sale(plan, quote, liquidator):
                break
        if plan.execute:
            return plan
        usable = [q for q in choice.ranked if q.buy_amount > repaid]
        best = choice.ranked[0].buy_amount if choice.ranked else "no usable quote"
        problems = [*choice.errors, *(r["reason"] for r in plan.detail["quotes_rejected"])]
        reason = (
            f"keeping the collateral: no quote covers the {repaid} USDC repaid ({best}; "
            f"{'; '.join(problems)})"
            if not usable
            else f"keeping the collateral: every sale covering the {repaid} USDC repaid was refused "
            f"({'; '.join(problems)})"
        )
        log.warning("%s %s: %s", op.account, token, reason)
        return plan.skip(reason)

    async def _sale(self, plan: SalePlan, quote: Quote, liquidator: str) -> bool:
        """The sale through `quote`, simulated: on success it becomes the plan's steps; else the
        refusal is recorded and False returned."""
        seized, min_out = quote.sell_amount, quote.min_out(self.slippage_bps)
        (allowance,) = await self._views(Views.erc20_allowance(quote.sell_token, liquidator, quote.spender))
        steps = [] if allowance == seized else [_approve(quote)]  # exactly this sale's amount
        steps.append(Step(f"sell via {quote.source}", quote.to, quote.data, quote.gas))
        try:
            effects = await self.guard.simulate(liquidator, quote, [(s.to, s.data) for s in steps], min_out)
        except QuoteRejectedError as exc:
            log.warning("%s sale refused: %s", quote.source, exc)
            plan.detail["quotes_rejected"].append({"source": quote.source, "reason": str(exc)})
            return False
        plan.steps = steps
        plan.detail.update(
            min_out=min_out,
            source=quote.source,
            best_quote=quote.source,
            simulated={"sold": effects.sold, "received": effects.received},
        )
        plan.execute, plan.reason = True, f"sell {seized} at >= {min_out} USDC via {quote.source}"
        return True

    async def verify(self, plan: SalePlan, liquidator: str) -> None:
        """After the sale: what it returned, against its bound (recorded; an error when below)."""
        (balance,) = await self._views(Views.erc20_balance(self.usdc, liquidator))
        received = balance - int(plan.detail["usdc_before"])
        plan.detail["usdc_received"] = received
        if received < int(plan.detail["min_out"]):
            log.error("sale returned %d USDC units, below its bound %d", received, plan.detail["min_out"])

    async def _views(self, *calls: Call) -> list[int]:
        """Views through the reader every read uses, in one batch at the latest block."""
        block = await self.rpc.block_number()
        return [int(r.one()) for r in await self.read(calls, block)]


def _approve(quote: Quote) -> Step:
    data = encode_call(APPROVE, quote.spender, quote.sell_amount)
    return Step(f"approve {quote.source}", quote.sell_token, data, GAS_APPROVE)


def quotes_record(choice: Choice) -> dict[str, Any]:
    return {
        "quotes": [
            {"source": q.source, "buy_amount": q.buy_amount, "gas": q.gas, "age_s": round(q.age(), 3)}
            for q in choice.quotes
        ],
        "quote_errors": list(choice.errors),
        "quotes_rejected": [{"source": source, "reason": reason} for source, reason in choice.rejected],
        "best_quote": choice.best.source if choice.best else None,
    }
