"""Perp v2 position liquidations: takers, and makers after cancelling their orders in every market.

A liquidation transfers the trader's position to the keeper at the mark price, the keeper's reward
being a discount in its open notional (half the penalty, all of it on bad debt). So a plan is:
[cancelAllExcessOrders per market (makers)] + liquidate, priced with the close of what it takes over
(`close` policy) and the gas of every step. What it takes over is closed by the inventory strategy
(`inventory.py`) at a later head, from what the keeper holds on chain; while the trader stays
liquidatable (the contract caps one call at 50 % when the margin ratio is above half the maintenance
ratio) the next head plans the next round.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode

from keeper import gas, profit
from keeper.codec import encode_call
from keeper.errors import RpcError
from keeper.multicall import Reader
from keeper.profit import X18
from keeper.receipts import revert_reason
from keeper.rpc import BlockHeader, Rpc
from keeper.strategy import LIQUIDATE, Plan, Step
from strategies.perp_v2 import liquidation, risk
from strategies.perp_v2.liquidation import RATIO
from strategies.perp_v2.metadata import Deployment
from strategies.perp_v2.reverts import explain
from strategies.perp_v2.scanner import Scanner

DEADLINE = 2**64 - 1
NO_REFERRAL = b"\x00" * 32
OPEN_POSITION = "openPosition((address,bool,bool,uint256,uint256,uint256,uint160,bytes32))"
CLOSE_POSITION = "closePosition((address,uint160,uint256,uint256,bytes32))"
LIQUIDATE_SIGNATURE = "liquidate(address,address,int256)"
CANCEL_ALL = "cancelAllExcessOrders(address,address)"
# gas hints for steps that cannot be estimated before the previous one lands (measured on 2.8.4)
GAS_LIQUIDATE = 1_400_000  # measured 1.0-1.36 M; priced with the hint, proven (and limited) at the head
GAS_CANCEL = 1_100_000  # a maker's cancelAllExcessOrders in one market: measured 0.87-1.0 M
GAS_CLOSE = 800_000
FREE_COLLATERAL = "Vault free collateral (initial margin of takeovers, USD x1e18)"
PositionPlan = Plan[risk.Opportunity]


@dataclass(frozen=True)
class PositionSettings:
    min_profit: int = X18  # KEEPER_MIN_PROFIT_USD, X18
    max_keeper_fee: int | None = None  # KEEPER_MAX_KEEPER_FEE, X18 (Perp v2 itself has no cap)
    inherited: str = "close"  # KEEPER_INHERITED_POSITIONS: close | hold
    slippage_bps: int = 100  # KEEPER_SLIPPAGE_BPS for closing what was taken over
    max_fee_gwei: int | None = None  # KEEPER_MAX_FEE_GWEI


@dataclass(frozen=True)
class PositionViews:
    """What one position liquidation is priced from, read in one batch at one block."""

    block: int
    account_value: int
    requirement: int
    taker: int
    total: int
    total_abs: int
    mark: int
    has_order: bool
    keeper_free: int  # the keeper's free collateral by the initial-margin ratio, USDC 6 dp
    fee_ratio: int
    eth_usd: int


class PerpV2Positions:
    name = "perp-v2-positions"

    def __init__(
        self, deployment: Deployment, scanner: Scanner, rpc: Rpc, read: Reader, settings: PositionSettings
    ):
        self.d, self.scanner, self.rpc, self.read, self.settings = deployment, scanner, rpc, read, settings

    async def refresh(self, head: BlockHeader | None = None) -> None:
        await self.scanner.update(head)

    def opportunities(self) -> list[risk.Opportunity]:
        return [o for o in self.scanner.opportunities() if o.kind in (risk.TAKER, risk.MAKER)]

    def explain(self, reason: str) -> str:
        return explain(reason)

    # --- pricing ------------------------------------------------------------------------------------
    async def plan(self, opportunity: risk.Opportunity, liquidator: str, round_: int = 1) -> PositionPlan:
        op = opportunity
        params = self.scanner.params
        assert params is not None
        assert op.base_token is not None
        v = await self._read(op, liquidator, params.im_ratio)
        size = v.total if op.kind == risk.MAKER else v.taker  # cancelling turns the whole position into taker
        liquidated = liquidation.liquidatable_size(
            size, abs(size) * v.mark // X18, v.total_abs, v.account_value, v.requirement
        )
        notional = abs(liquidated) * v.mark // X18
        penalty = liquidation.liquidation_penalty(notional, params.liquidation_penalty_ratio)
        reward = profit.cap_reward(
            liquidation.liquidator_share(penalty, v.account_value),
            protocol_cap=None,
            operator_cap=self.settings.max_keeper_fee,
        )
        steps = self._steps(op, v.has_order, size)
        plan = Plan(
            op, steps, False, "", LIQUIDATE, round_, liquidated, reward, None, _detail(v, self.settings)
        )
        plan.detail.update(notional=notional, penalty=penalty)
        plan.bad_debt = max(0, -v.account_value)  # a negative account value: the insurance fund pays
        if v.account_value >= v.requirement:
            return plan.skip("not liquidatable: account value >= maintenance requirement (CH_EAV)")
        if liquidated == 0:
            return plan.skip("nothing to liquidate in this market")
        initial_margin = liquidation.mul_ratio(notional, params.im_ratio)
        plan.capital = (FREE_COLLATERAL, initial_margin, v.keeper_free * 10**12)
        if v.keeper_free * 10**12 < initial_margin:
            return plan.skip(
                f"keeper free collateral {profit.usd_text(v.keeper_free * 10**12)} < initial margin "
                f"{profit.usd_text(initial_margin)} of the position it would take over: "
                "deposit USDC in the Vault"
            )
        return await self._priced(plan, liquidator, v, notional)

    async def _read(self, op: risk.Opportunity, liquidator: str, im_ratio: int) -> PositionViews:
        assert op.base_token is not None
        calls = self.scanner.views.position_plan_calls(op.account, op.base_token, liquidator, im_ratio)
        block = await self.rpc.block_number()
        values = [r.one() for r in await self.read(calls, block)]
        return PositionViews(block, *values)

    def _steps(self, op: risk.Opportunity, has_order: bool, size: int) -> list[Step]:
        assert op.base_token is not None
        ch = self.d.clearing_house
        cancels = [
            Step(f"cancelAllExcessOrders {m}", ch, encode_call(CANCEL_ALL, op.account, m), GAS_CANCEL)
            for m in op.cancel_markets
        ]
        liquidate = Step(
            "liquidate", ch, encode_call(LIQUIDATE_SIGNATURE, op.account, op.base_token, size), GAS_LIQUIDATE
        )
        return [*(cancels if has_order else []), liquidate]

    async def _priced(
        self, plan: PositionPlan, liquidator: str, v: PositionViews, notional: int
    ) -> PositionPlan:
        """Unwind cost, gas of every step (the close included under `close`) and the profit decision."""
        base = plan.opportunity.base_token
        assert base is not None
        assert plan.reward is not None
        # gas is priced from the hints (an estimate per plan costs more than the whole head's proof);
        # the proof at the head measures it exactly, and the fee ceiling keeps what it may cost
        (unwind, note), price = await asyncio.gather(
            self._unwind_cost(liquidator, base, plan.size, notional, v.fee_ratio),
            gas.gas_price(self.rpc, self.settings.max_fee_gwei),
        )
        close = encode_call(CLOSE_POSITION, (base, 0, 0, DEADLINE, NO_REFERRAL))
        priced = [(s.gas, len(s.data)) for s in plan.steps]
        if self.settings.inherited == "close":
            priced.append((GAS_CLOSE, len(close)))
        costs, l1_note = await gas.tx_costs(self.rpc, priced, price)
        plan.estimate = profit.estimate(
            plan.reward, costs, v.eth_usd, self.settings.min_profit, unwind_cost=unwind
        )
        plan.execute, plan.reason = plan.estimate.profitable, plan.estimate.reason
        plan.gas_ceiling_wei = profit.gas_ceiling_wei(plan.estimate, v.eth_usd)
        plan.detail.update(
            unwind_note=note,
            gas_units=sum(c.gas for c in costs),
            gas_price_wei=price.effective,
            gas_cost=plan.estimate.gas_cost,
            l1_cost=plan.estimate.l1_cost,
            unwind_cost=unwind,
            profit=plan.estimate.profit,
            **({"l1_note": l1_note} if l1_note else {}),
        )
        return plan

    async def _unwind_cost(
        self, liquidator: str, base: str, liquidated: int, notional: int, fee_ratio: int
    ) -> tuple[int, str]:
        """Closing what the keeper takes over: the opposite trade simulated now, fee and impact included."""
        if self.settings.inherited == "hold":
            return 0, "hold: the keeper keeps the position and its market risk"
        selling = liquidated > 0  # a long taken over is closed by selling base
        trade = (base, selling, selling, abs(liquidated), 0, DEADLINE, 0, NO_REFERRAL)
        try:
            quote = await trade_quote(
                self.rpc, self.d.clearing_house, liquidator, encode_call(OPEN_POSITION, trade)
            )
        except RpcError as exc:
            fallback = notional * (fee_ratio + 10_000) // RATIO  # fee + 1 % impact
            return fallback, f"simulated close failed ({explain(revert_reason(exc))}): fee + 1 % assumed"
        cost = notional - quote if selling else quote - notional
        return max(0, cost), f"opposite openPosition simulated: {quote} quote for {abs(liquidated)} base"


async def trade_quote(rpc: Rpc, clearing_house: str, trader: str, data: bytes) -> int:
    """The quote a ClearingHouse trade from `trader` would exchange now (eth_call, no send)."""
    tx = {"from": trader, "to": clearing_house, "data": "0x" + data.hex()}
    out = await rpc.request("eth_call", [tx, "latest"])
    _, quote = decode(["uint256", "uint256"], bytes.fromhex(str(out).removeprefix("0x")))
    return int(quote)


def _detail(v: PositionViews, settings: PositionSettings) -> dict[str, Any]:
    """The views a position decision was made from, for the audit record."""
    return {
        "block": v.block,
        "account_value": v.account_value,
        "margin_requirement": v.requirement,
        "taker_size": v.taker,
        "total_size": v.total,
        "mark_price": v.mark,
        "has_order": v.has_order,
        "keeper_free_collateral_im": v.keeper_free,
        "eth_usd": v.eth_usd,
        "inherited_policy": settings.inherited,
    }
