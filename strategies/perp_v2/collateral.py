"""Perp v2 collateral liquidation: repay an account's USDC debt, receive its collateral at a discount,
sell the collateral at the best external quote.

Plan: [approve the Vault for USDC] + liquidateCollateral(trader, token, amount, true), where amount is
the Vault's maximum less 0.01 % (the maximum shrinks every second with funding: the exact maximum
reverts V_MSAE once the transaction lands a block later). Priced with the sale of what it receives,
at the best quote net of gas, minus the USDC repaid and every transaction's gas. The seized
collateral is sold by the inventory strategy (`inventory.py`, `sale.py`) at a later head, from what
the keeper's wallet holds: quoted afresh then, never with the quote that priced the liquidation. While
the account stays liquidatable, the next head plans the next round. Approvals are exact: the Vault
for what this round repays, the sale's spender (`sale.py`) for what it sells.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from eth_abi.abi import decode

from keeper import gas, profit
from keeper.codec import encode_call
from keeper.multicall import Reader, Result
from keeper.profit import X18
from keeper.quotes import QuoteSource
from keeper.rpc import BlockHeader, Rpc
from keeper.strategy import LIQUIDATE, Plan, Step
from keeper.swaps import SwapGuard, best_quote
from strategies.perp_v2 import risk
from strategies.perp_v2.metadata import Deployment
from strategies.perp_v2.reverts import explain
from strategies.perp_v2.sale import APPROVE, GAS_APPROVE, quotes_record
from strategies.perp_v2.scanner import Scanner

log = logging.getLogger(__name__)

LIQUIDATE_COLLATERAL = "liquidateCollateral(address,address,uint256,bool)"
MAX_MARGIN_BPS = 1  # repay the maximum less 0.01 %
GAS_LIQUIDATE_COLLATERAL = 600_000
USDC_TO_X18 = 10**12
WALLET_USDC = "wallet USDC (collateral repayments, 6 decimals)"
CollateralPlan = Plan[risk.Opportunity]


@dataclass(frozen=True)
class CollateralSettings:
    min_profit: int = X18
    max_keeper_fee: int | None = None
    slippage_bps: int = 100
    max_fee_gwei: int | None = None


class PerpV2Collateral:
    name = "perp-v2-collateral"

    def __init__(
        self,
        deployment: Deployment,
        scanner: Scanner,
        rpc: Rpc,
        read: Reader,
        sources: Sequence[QuoteSource],
        settings: CollateralSettings,
    ) -> None:
        self.d, self.scanner, self.rpc, self.read = deployment, scanner, rpc, read
        self.sources, self.settings = list(sources), settings
        self.guard = SwapGuard(rpc, self.sources)  # quotes that fail the swap checks do not price anything

    async def refresh(self, head: BlockHeader | None = None) -> None:
        await self.scanner.update(head)  # after position liquidations of this tick: positions first

    def opportunities(self) -> list[risk.Opportunity]:
        return [o for o in self.scanner.opportunities() if o.kind == risk.COLLATERAL]

    def explain(self, reason: str) -> str:
        return explain(reason)

    # --- pricing the liquidation --------------------------------------------------------------------
    async def plan(self, opportunity: risk.Opportunity, liquidator: str, round_: int = 1) -> CollateralPlan:
        op = opportunity
        assert op.collateral_token is not None
        token = op.collateral_token
        block = await self.rpc.block_number()
        calls = self.scanner.views.collateral_plan_calls(op.account, token, liquidator)
        liquidatable, maximum, wallet, allowance, eth_usd, held = await self.read(calls, block)
        max_repaid, max_collateral = maximum.value if maximum.ok else (0, 0)
        plan: CollateralPlan = Plan(op, [], False, "", LIQUIDATE, round_)
        plan.detail.update(
            block=block,
            account_value=op.account_value,
            max_repaid_usdc=max_repaid,
            max_collateral=max_collateral,
            keeper_wallet_usdc=wallet.one(),
        )
        if not liquidatable.one():
            return plan.skip("not collateral-liquidatable (V_NL)")
        amount, collateral, by_collateral = await self._amounts(
            plan, token, int(held.one()), max_repaid, max_collateral, int(wallet.one())
        )
        if amount <= 0:
            return plan.skip("nothing to repay: the keeper's wallet has no USDC, or the maximum is 0")
        plan.size = collateral
        plan.capital = (WALLET_USDC, amount, int(wallet.one()))
        plan.detail.update(repay_usdc=amount, collateral=collateral, by_collateral=by_collateral)
        steps = [] if allowance.one() >= amount else [_approve_vault(self.d, amount)]
        repaid = collateral if by_collateral else amount
        data = encode_call(LIQUIDATE_COLLATERAL, op.account, token, repaid, not by_collateral)
        plan.steps = [*steps, Step("liquidateCollateral", self.d.vault, data, GAS_LIQUIDATE_COLLATERAL)]
        return await self._priced(plan, liquidator, eth_usd)

    async def _amounts(
        self, plan: CollateralPlan, token: str, held: int, max_repaid: int, max_collateral: int, wallet: int
    ) -> tuple[int, int, bool]:
        """(USDC repaid, collateral received, whether the amount is given in collateral)."""
        # The maximum shrinks with funding, so a debt-bound maximum is repaid less 0.01 % (gotcha 11).
        # When the trader's whole balance is the bound, it does not move: take all of it, by collateral.
        by_collateral, collateral = 0 < held <= max_collateral, 0
        if by_collateral:
            collateral, amount = (
                held,
                await self._vault_view("getRepaidSettlementByCollateral(address,uint256)", token, held),
            )
        else:
            amount = max_repaid - max(1, max_repaid * MAX_MARGIN_BPS // 10_000)
        if wallet < amount:
            log.warning(
                "keeper wallet holds %d USDC units, below the %d this liquidation could repay", wallet, amount
            )
            plan.detail["wallet_short"] = True
            amount, by_collateral = wallet, False
        if amount > 0 and not by_collateral:
            collateral = await self._vault_view(
                "getLiquidatableCollateralBySettlement(address,uint256)", token, amount
            )
        return amount, collateral, by_collateral

    async def _priced(self, plan: CollateralPlan, liquidator: str, eth_usd: Result) -> CollateralPlan:
        """The best quote for the collateral net of gas, the edge over what is repaid, every step's gas."""
        token, usdc = plan.opportunity.collateral_token, self.d.usdc
        assert token is not None
        price = await gas.gas_price(self.rpc, self.settings.max_fee_gwei)
        gas_in_usdc = price.effective * eth_usd.one() // X18 // USDC_TO_X18  # per unit of gas, USDC units
        slippage = self.settings.slippage_bps
        choice = await best_quote(
            self.sources, token, usdc, plan.size, liquidator, slippage, gas_in_usdc, self.guard.vet
        )
        plan.detail.update(quotes_record(choice))
        amount = int(plan.detail["repay_usdc"])
        if choice.best is None:
            return plan.skip(f"no quote for the collateral: {'; '.join(choice.errors) or 'no source'}")
        best = choice.best
        if best.buy_amount <= amount:
            return plan.skip(
                f"every quote is below the repaid USDC: best {best.buy_amount} from {best.source} <= {amount}"
            )
        plan.reward = profit.cap_reward(
            (best.buy_amount - amount) * USDC_TO_X18,
            protocol_cap=None,
            operator_cap=self.settings.max_keeper_fee,
        )
        sale_txs = [(GAS_APPROVE, 200), (best.gas, 200)]
        costs, _ = await gas.tx_costs(self.rpc, [(s.gas, len(s.data)) for s in plan.steps] + sale_txs, price)
        plan.estimate = profit.estimate(plan.reward, costs, eth_usd.one(), self.settings.min_profit)
        plan.execute, plan.reason = plan.estimate.profitable, plan.estimate.reason
        plan.gas_ceiling_wei = profit.gas_ceiling_wei(plan.estimate, eth_usd.one())
        plan.detail.update(
            gas_cost=plan.estimate.gas_cost, l1_cost=plan.estimate.l1_cost, profit=plan.estimate.profit
        )
        return plan

    async def _vault_view(self, signature: str, *args: object) -> int:
        (value,) = decode(["uint256"], await self.rpc.call(self.d.vault, encode_call(signature, *args)))
        return int(value)


def _approve_vault(d: Deployment, amount: int) -> Step:
    """Exactly what this liquidation repays: the keeper never leaves an allowance behind."""
    return Step("approve USDC for the Vault", d.usdc, encode_call(APPROVE, d.vault, amount), GAS_APPROVE)
