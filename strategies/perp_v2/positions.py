"""Perp v2 position liquidations: takers, and makers after cancelling their orders in every market.

A liquidation transfers the trader's position to the keeper at the mark price, the keeper's reward
being a discount in its open notional (half the penalty, all of it on bad debt). So a plan is:
[cancelAllExcessOrders per market (makers)] + liquidate, priced with the close of what it takes over
(`close` policy) and the gas of every step. After it runs, `follow_up` closes the inherited position
with a slippage bound and, while the trader stays liquidatable (the contract caps one call at 50 %
when the margin ratio is above half the maintenance ratio), plans the next round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode

from keeper import gas, profit
from keeper.codec import encode_call
from keeper.errors import RpcError
from keeper.metadata import Deployment
from keeper.multicall import Call
from keeper.profit import RATIO, X18
from keeper.rpc import BlockHeader, Rpc
from keeper.tx import TxOutcome, revert_reason
from strategies.base import Plan, Step
from strategies.perp_v2 import risk
from strategies.perp_v2.reverts import explain
from strategies.perp_v2.scanner import Reader, Scanner

DEADLINE = 2**64 - 1
NO_REFERRAL = b"\x00" * 32
OPEN_POSITION = "openPosition((address,bool,bool,uint256,uint256,uint256,uint160,bytes32))"
CLOSE_POSITION = "closePosition((address,uint160,uint256,uint256,bytes32))"
LIQUIDATE = "liquidate(address,address,int256)"
CANCEL_ALL = "cancelAllExcessOrders(address,address)"
# gas hints for steps that cannot be estimated before the previous one lands (measured on 2.8.4)
GAS_LIQUIDATE = 1_000_000
GAS_CLOSE = 800_000
MAX_ROUNDS = 10


@dataclass(frozen=True)
class PositionSettings:
    min_profit: int = X18  # KEEPER_MIN_PROFIT_USD, X18
    max_keeper_fee: int | None = None  # KEEPER_MAX_KEEPER_FEE, X18 (Perp v2 itself has no cap)
    inherited: str = "close"  # KEEPER_INHERITED_POSITIONS: close | hold
    slippage_bps: int = 100  # KEEPER_SLIPPAGE_BPS for closing what was taken over
    max_fee_gwei: int | None = None  # KEEPER_MAX_FEE_GWEI


class PerpV2Positions:
    name = "perp-v2-positions"

    def __init__(
        self, deployment: Deployment, scanner: Scanner, rpc: Rpc, read: Reader, settings: PositionSettings
    ):
        self.d, self.scanner, self.rpc, self.read, self.settings = deployment, scanner, rpc, read, settings
        self.eth_market = next(
            (m.base_token for m in deployment.markets if m.base_symbol in ("vETH", "ETH")), None
        )

    async def refresh(self, head: BlockHeader | None = None) -> None:
        await self.scanner.update(head)

    def opportunities(self) -> list[risk.Opportunity]:
        return [o for o in self.scanner.opportunities() if o.kind in (risk.TAKER, risk.MAKER)]

    # --- pricing ------------------------------------------------------------------------------------
    async def plan(self, opportunity: Any, liquidator: str, round_: int = 1) -> Plan:
        op: risk.Opportunity = opportunity
        params = self.scanner.params
        assert params is not None
        assert op.base_token is not None
        trader, base = op.account, op.base_token
        ch, ab = self.d.clearing_house, self.d.account_balance
        calls = [
            Call(ch, "getAccountValue(address)", (trader,), ("int256",)),
            Call(ab, "getMarginRequirementForLiquidation(address)", (trader,), ("int256",)),
            Call(ab, "getTakerPositionSize(address,address)", (trader, base), ("int256",)),
            Call(ab, "getTotalPositionSize(address,address)", (trader, base), ("int256",)),
            Call(ab, "getTotalAbsPositionValue(address)", (trader,), ("uint256",)),
            Call(ab, "getMarkPrice(address)", (base,), ("uint256",)),
            Call(ab, "hasOrder(address)", (trader,), ("bool",)),
            Call(
                self.d.vault,
                "getFreeCollateralByRatio(address,uint24)",
                (liquidator, params.im_ratio),
                ("int256",),
            ),
            Call(self.d.address("MarketRegistry"), "getFeeRatio(address)", (base,), ("uint24",)),
            Call(self.eth_market or base, "getIndexPrice(uint256)", (0,), ("uint256",)),
        ]
        block = await self.rpc.block_number()
        values = [r.one() for r in await self.read(calls, block)]
        value, requirement, taker, total, total_abs, mark, has_order, keeper_free, fee_ratio, eth_usd = values
        size = total if op.kind == risk.MAKER else taker  # cancelling turns the whole position into taker
        position_abs = abs(size) * mark // X18
        liquidated = profit.liquidatable_size(size, position_abs, total_abs, value, requirement)
        notional = abs(liquidated) * mark // X18
        penalty = profit.liquidation_penalty(notional, params.liquidation_penalty_ratio)
        reward = profit.cap_reward(
            profit.liquidator_share(penalty, value),
            protocol_cap=None,
            operator_cap=self.settings.max_keeper_fee,
        )
        inputs: dict[str, Any] = {
            "block": block,
            "round": round_,
            "stage": "liquidate",
            "account_value": value,
            "margin_requirement": requirement,
            "taker_size": taker,
            "total_size": total,
            "mark_price": mark,
            "has_order": has_order,
            "liquidatable_size": liquidated,
            "notional": notional,
            "penalty": penalty,
            "reward_gross": reward.gross,
            "reward_capped": reward.capped,
            "reward_cap_binding": reward.binding,
            "keeper_free_collateral_im": keeper_free,
            "eth_usd": eth_usd,
            "inherited_policy": self.settings.inherited,
        }
        steps = [
            Step(f"cancelAllExcessOrders {m}", ch, encode_call(CANCEL_ALL, trader, m), 0)
            for m in op.cancel_markets
        ]
        if not has_order:
            steps = []
        steps.append(Step("liquidate", ch, encode_call(LIQUIDATE, trader, base, size), GAS_LIQUIDATE))

        def skip(reason: str) -> Plan:
            return Plan(op, steps, None, False, reason, inputs)

        if value >= requirement:
            return skip("not liquidatable: account value >= maintenance requirement (CH_EAV)")
        if liquidated == 0:
            return skip("nothing to liquidate in this market")
        initial_margin = profit.mul_ratio(notional, params.im_ratio)
        if keeper_free * 10**12 < initial_margin:
            return skip(
                f"keeper free collateral {profit.usd_text(keeper_free * 10**12)} < initial margin "
                f"{profit.usd_text(initial_margin)} of the position it would take over: "
                "deposit USDC in the Vault"
            )
        unwind, note = await self._unwind_cost(liquidator, base, liquidated, notional, fee_ratio)
        inputs["unwind_note"] = note
        steps = [await self._estimated(step, liquidator) for step in steps]
        price = await gas.gas_price(self.rpc, self.settings.max_fee_gwei)
        closing = [
            Step("close", ch, encode_call(CLOSE_POSITION, (base, 0, 0, DEADLINE, NO_REFERRAL)), GAS_CLOSE)
        ]
        priced = steps + (closing if self.settings.inherited == "close" else [])
        costs, l1_note = await gas.tx_costs(self.rpc, [(s.gas, len(s.data)) for s in priced], price)
        if l1_note:
            inputs["l1_note"] = l1_note
        estimate = profit.estimate(reward, costs, eth_usd, self.settings.min_profit, unwind_cost=unwind)
        inputs.update(
            gas_units=sum(c.gas for c in costs),
            gas_price_wei=price.effective,
            gas_cost=estimate.gas_cost,
            l1_cost=estimate.l1_cost,
            unwind_cost=unwind,
            profit=estimate.profit,
        )
        return Plan(op, steps, estimate, estimate.profitable, estimate.reason, inputs)

    async def _estimated(self, step: Step, sender: str) -> Step:
        """eth_estimateGas where the step can run now; the hint where it needs an earlier step first."""
        units = await gas.estimate_gas(self.rpc, sender, step.to, step.data)
        return step if units is None else Step(step.label, step.to, step.data, units)

    async def _unwind_cost(
        self, liquidator: str, base: str, liquidated: int, notional: int, fee_ratio: int
    ) -> tuple[int, str]:
        """Closing what the keeper takes over: the opposite trade simulated now, fee and impact included."""
        if self.settings.inherited == "hold":
            return 0, "hold: the keeper keeps the position and its market risk"
        selling = liquidated > 0  # a long taken over is closed by selling base
        trade = (base, selling, selling, abs(liquidated), 0, DEADLINE, 0, NO_REFERRAL)
        try:
            quote = await self._quote(liquidator, encode_call(OPEN_POSITION, trade))
        except RpcError as exc:
            fallback = notional * (fee_ratio + 10_000) // RATIO  # fee + 1 % impact
            return fallback, f"simulated close failed ({explain(revert_reason(exc))}): fee + 1 % assumed"
        cost = notional - quote if selling else quote - notional
        return max(0, cost), f"opposite openPosition simulated: {quote} quote for {abs(liquidated)} base"

    async def _quote(self, liquidator: str, data: bytes) -> int:
        """The quote a ClearingHouse trade from `liquidator` would exchange now (eth_call, no send)."""
        tx = {"from": liquidator, "to": self.d.clearing_house, "data": "0x" + data.hex()}
        out = await self.rpc.request("eth_call", [tx, "latest"])
        _, quote = decode(["uint256", "uint256"], bytes.fromhex(str(out).removeprefix("0x")))
        return int(quote)

    def explain(self, reason: str) -> str:
        return explain(reason)

    # --- after a plan ran ---------------------------------------------------------------------------
    async def follow_up(self, plan: Plan, outcomes: list[TxOutcome], liquidator: str) -> Plan | None:
        if not outcomes or not all(o.ok for o in outcomes):
            return None
        op: risk.Opportunity = plan.opportunity  # type: ignore[assignment]
        round_ = int(plan.inputs.get("round", 1))
        if plan.inputs.get("stage") == "liquidate" and self.settings.inherited == "close":
            return await self._close_plan(op, liquidator, round_)
        if round_ >= MAX_ROUNDS:
            return None
        again = await self.plan(op, liquidator, round_ + 1)
        return again if again.execute else None

    async def _close_plan(self, op: risk.Opportunity, liquidator: str, round_: int) -> Plan | None:
        assert op.base_token is not None
        base = op.base_token
        held = (
            await self.read(
                [
                    Call(
                        self.d.account_balance,
                        "getTakerPositionSize(address,address)",
                        (liquidator, base),
                        ("int256",),
                    )
                ],
                await self.rpc.block_number(),
            )
        )[0].one()
        if held == 0:
            return None
        inputs: dict[str, Any] = {"stage": "close", "round": round_, "keeper_position": held}
        try:
            quote = await self._quote(
                liquidator, encode_call(CLOSE_POSITION, (base, 0, 0, DEADLINE, NO_REFERRAL))
            )
        except RpcError as exc:
            return Plan(
                op,
                [],
                None,
                False,
                f"cannot close the inherited position: {explain(revert_reason(exc))}",
                inputs,
            )
        bps = self.settings.slippage_bps
        # a long is closed by selling: receive at least quote x (1 - slippage);
        # a short is closed by buying: pay at most quote x (1 + slippage)
        bound = quote * (10_000 - bps) // 10_000 if held > 0 else quote * (10_000 + bps) // 10_000
        inputs.update(simulated_quote=quote, opposite_amount_bound=bound)
        step = Step(
            "close",
            self.d.clearing_house,
            encode_call(CLOSE_POSITION, (base, 0, bound, DEADLINE, NO_REFERRAL)),
            GAS_CLOSE,
        )
        return Plan(
            op, [step], None, True, f"close the inherited position (slippage bound {bps} bps)", inputs
        )
