"""Synthetix Perps V2 funds that look after themselves (`keeper/funds.py`): the sUSD the keeper earns
(flag and liquidation fees) converted to USDC once it holds more than a threshold.

Everything held is converted (cut to the per-action and daily caps), through the safe swap path of
collateral sales: vetted quotes, the sale (an exact approval, the swap) simulated from the keeper with
its balance checks, `minOut` = quote less `KEEPER_SLIPPAGE_BPS`. Ranked after the liquidations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keeper import funds
from keeper.funds import FundsPlan, Ledger, Need, SusdConvert
from keeper.multicall import Call, Reader
from keeper.quotes import QuoteSource
from keeper.rpc import BlockHeader, Rpc

SUSD_TO_USDC = 10**12


class SynthetixFunds:
    name = "synthetix-perps-v2-funds"

    def __init__(
        self,
        susd: str,
        usdc: str,
        rpc: Rpc,
        read: Reader,
        sources: Sequence[QuoteSource],
        settings: SusdConvert,
        keeper: str,
        ledger: Ledger,
        slippage_bps: int = 100,
        explain: Callable[[str], str] = str,
    ) -> None:
        self.susd, self.usdc, self.rpc, self.read, self.sources = susd, usdc, rpc, read, list(sources)
        self.settings, self.keeper, self.ledger, self.slippage_bps = settings, keeper, ledger, slippage_bps
        self._explain = explain
        self.day, self.held = 0, 0
        self.needs: list[Need] = []

    def explain(self, reason: str) -> str:
        return self._explain(reason)

    async def refresh(self, head: BlockHeader | None = None) -> None:
        head = head or await self.rpc.header("latest")
        (balance,) = await self.read(
            [Call(self.susd, "balanceOf(address)", (self.keeper,), ("uint256",))], head.number
        )
        self.day, self.held = funds.day_of(head.timestamp), int(balance.one())
        over = self.held > self.settings.above
        self.needs = [Need(self.keeper, funds.SUSD_CONVERT, self.held, self.held)] if over else []

    def opportunities(self) -> list[Need]:
        return self.needs

    async def plan(self, need: Need, liquidator: str) -> FundsPlan:
        plan = funds.new_plan(need, self.day, susd_held=self.held, above=self.settings.above)
        spent = self.ledger.spent([funds.SUSD_CONVERT], self.day)
        if not (sold := funds.capped(plan, need.amount, self.settings.caps, spent)):
            return plan
        label = funds.spend_label(funds.SUSD_CONVERT, sold, self.day)
        sale = (self.susd, sold)
        bps = self.slippage_bps
        if not (
            min_out := await funds.swap(plan, self.rpc, self.sources, sale, self.usdc, liquidator, bps, label)
        ):
            return plan
        plan.execute = True
        plan.reason = f"susd-convert: sell {sold / 10**18:,.2f} sUSD for >= {min_out / 10**6:,.2f} USDC"
        return plan
