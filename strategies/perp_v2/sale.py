"""Selling collateral the keeper seized: quoted afresh when it is in the wallet (never with the quote
that priced the liquidation), at the best source, with `minOut` = quote less the slippage bound; kept,
with a warning, when no quote covers what was repaid."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from keeper.codec import encode_call
from keeper.multicall import Call, Reader
from keeper.quotes import Choice, Quote, QuoteSource, UniswapV3, best_quote
from keeper.rpc import Rpc
from keeper.strategy import SELL, Plan, Step
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

    async def plan(
        self, op: risk.Opportunity, liquidator: str, seized: int, repaid: int, round_: int
    ) -> SalePlan:
        assert op.collateral_token is not None
        token = op.collateral_token
        plan: SalePlan = Plan(
            op, [], False, "", SELL, round_, detail={"seized": seized, "repaid_usdc": repaid}
        )
        choice = await best_quote(self.sources, token, self.usdc, seized, liquidator, self.slippage_bps, 0)
        plan.detail.update(quotes_record(choice))
        best = choice.best
        if best is None or best.buy_amount <= repaid:
            reason = (
                f"keeping the collateral: no quote covers the {repaid} USDC repaid "
                f"({best.buy_amount if best else 'no quote'}; {'; '.join(choice.errors)})"
            )
            log.warning("%s %s: %s", op.account, token, reason)
            return plan.skip(reason)
        min_out = best.min_out(self.slippage_bps)
        allowance, balance = await self._views(
            Views.erc20_allowance(token, liquidator, best.spender), Views.erc20_balance(self.usdc, liquidator)
        )
        plan.detail.update(min_out=min_out, source=best.source, usdc_before=balance)
        if allowance < seized:
            plan.steps.append(
                Step(f"approve {best.source}", token, encode_call(APPROVE, best.spender, seized), GAS_APPROVE)
            )
        plan.steps.append(
            Step(f"sell via {best.source}", best.to or "", self._swap_data(best, liquidator), best.gas)
        )
        plan.execute, plan.reason = True, f"sell {seized} at >= {min_out} USDC via {best.source}"
        return plan

    def _swap_data(self, quote: Quote, recipient: str) -> bytes:
        if quote.data:
            return quote.data
        uniswap = next(s for s in self.sources if isinstance(s, UniswapV3))
        return uniswap.swap_calldata(quote, recipient, self.slippage_bps)

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


def quotes_record(choice: Choice) -> dict[str, Any]:
    return {
        "quotes": [
            {"source": q.source, "buy_amount": q.buy_amount, "gas": q.gas, "age_s": round(q.age(), 3)}
            for q in choice.quotes
        ],
        "quote_errors": list(choice.errors),
        "best_quote": choice.best.source if choice.best else None,
    }
