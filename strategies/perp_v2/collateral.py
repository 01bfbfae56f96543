"""Perp v2 collateral liquidation: repay an account's USDC debt, receive its collateral at a discount,
sell the collateral at the best external quote.

Plan: [approve the Vault for USDC] + liquidateCollateral(trader, token, amount, true), where amount is
the Vault's maximum less 0.01 % (the maximum shrinks every second with funding: the exact maximum
reverts V_MSAE once the transaction lands a block later). Priced with the sale of what it receives,
at the best quote net of gas, minus the USDC repaid and every transaction's gas. After it runs,
`follow_up` sells the seized collateral (quoted afresh at that moment, never with the quote that priced
the liquidation; `minOut` = quote less the slippage bound) or keeps
it, with a warning, when no quote covers what was repaid; then plans the next round while the account
stays liquidatable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode

from keeper import gas, profit
from keeper.codec import encode_call, topic
from keeper.errors import RpcError
from keeper.metadata import Deployment
from keeper.multicall import Call
from keeper.profit import X18
from keeper.quotes import Choice, Quote, QuoteSource, UniswapV3, best_quote
from keeper.rpc import BlockHeader, Rpc
from keeper.tx import TxOutcome
from strategies.base import Plan, Step
from strategies.perp_v2 import risk
from strategies.perp_v2.reverts import explain
from strategies.perp_v2.scanner import Reader, Scanner

log = logging.getLogger(__name__)

LIQUIDATE_COLLATERAL = "liquidateCollateral(address,address,uint256,bool)"
APPROVE = "approve(address,uint256)"
UINT256_MAX = 2**256 - 1
MAX_MARGIN_BPS = 1  # repay the maximum less 0.01 %
GAS_APPROVE = 60_000
GAS_LIQUIDATE_COLLATERAL = 600_000
USDC_TO_X18 = 10**12
MAX_ROUNDS = 10
COLLATERAL_LIQUIDATED = topic("CollateralLiquidated(address,address,address,uint256,uint256,uint256,uint24)")


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
        self.eth_market = next(
            (m.base_token for m in deployment.markets if m.base_symbol in ("vETH", "ETH")), None
        )

    async def refresh(self, head: BlockHeader | None = None) -> None:
        await self.scanner.update(head)  # after position liquidations of this tick: positions first

    def opportunities(self) -> list[risk.Opportunity]:
        return [o for o in self.scanner.opportunities() if o.kind == risk.COLLATERAL]

    def explain(self, reason: str) -> str:
        return explain(reason)

    # --- pricing the liquidation --------------------------------------------------------------------
    async def plan(self, opportunity: Any, liquidator: str, round_: int = 1) -> Plan:
        op: risk.Opportunity = opportunity
        assert op.collateral_token is not None
        trader, token, usdc, vault = op.account, op.collateral_token, self.d.usdc, self.d.vault
        block = await self.rpc.block_number()
        calls = [
            Call(vault, "isLiquidatable(address)", (trader,), ("bool",)),
            Call(
                vault,
                "getMaxRepaidSettlementAndLiquidatableCollateral(address,address)",
                (trader, token),
                ("uint256", "uint256"),
            ),
            Call(usdc, "balanceOf(address)", (liquidator,), ("uint256",)),
            Call(usdc, "allowance(address,address)", (liquidator, vault), ("uint256",)),
            Call(self.eth_market or usdc, "getIndexPrice(uint256)", (0,), ("uint256",)),
            Call(vault, "getBalanceByToken(address,address)", (trader, token), ("int256",)),
        ]
        liquidatable, maximum, wallet, allowance, eth_usd, held = await self.read(calls, block)
        max_repaid, max_collateral = maximum.value if maximum.ok else (0, 0)
        inputs: dict[str, Any] = {
            "block": block,
            "round": round_,
            "stage": "liquidate",
            "account_value": op.account_value,
            "max_repaid_usdc": max_repaid,
            "max_collateral": max_collateral,
            "keeper_wallet_usdc": wallet.one(),
        }

        def skip(reason: str) -> Plan:
            return Plan(op, [], None, False, reason, inputs)

        if not liquidatable.one():
            return skip("not collateral-liquidatable (V_NL)")
        # The maximum shrinks with funding, so a debt-bound maximum is repaid less 0.01 % (gotcha 11).
        # When the trader's whole balance is the bound, it does not move: take all of it, by collateral.
        by_collateral = 0 < held.one() <= max_collateral
        if by_collateral:
            collateral = int(held.one())
            amount = await self._repaid_for(token, collateral)
        else:
            amount = max_repaid - max(1, max_repaid * MAX_MARGIN_BPS // 10_000)
        if wallet.one() < amount:
            log.warning(
                "keeper wallet holds %d USDC units, below the %d this liquidation could repay",
                wallet.one(),
                amount,
            )
            inputs["wallet_short"] = True
            amount, by_collateral = int(wallet.one()), False
        if amount <= 0:
            return skip("nothing to repay: the keeper's wallet has no USDC, or the maximum is 0")
        if not by_collateral:
            collateral = await self._collateral_for(token, amount)
        price = await gas.gas_price(self.rpc, self.settings.max_fee_gwei)
        gas_in_usdc = price.effective * eth_usd.one() // X18 // USDC_TO_X18  # per unit of gas, USDC units
        choice = await best_quote(
            self.sources, token, usdc, collateral, liquidator, self.settings.slippage_bps, gas_in_usdc
        )
        inputs.update(
            repay_usdc=amount, collateral=collateral, by_collateral=by_collateral, **_quotes_record(choice)
        )
        if choice.best is None:
            return skip(f"no quote for the collateral: {'; '.join(choice.errors) or 'no source'}")
        best = choice.best
        if best.buy_amount <= amount:
            return skip(
                f"every quote is below the repaid USDC: best {best.buy_amount} from {best.source} <= {amount}"
            )
        edge = (best.buy_amount - amount) * USDC_TO_X18
        reward = profit.cap_reward(edge, protocol_cap=None, operator_cap=self.settings.max_keeper_fee)
        steps = []
        if allowance.one() < amount:
            steps.append(
                Step(
                    "approve USDC for the Vault", usdc, encode_call(APPROVE, vault, UINT256_MAX), GAS_APPROVE
                )
            )
        steps.append(
            Step(
                "liquidateCollateral",
                vault,
                encode_call(
                    LIQUIDATE_COLLATERAL,
                    trader,
                    token,
                    collateral if by_collateral else amount,
                    not by_collateral,
                ),
                GAS_LIQUIDATE_COLLATERAL,
            )
        )
        sale_gas = [GAS_APPROVE, best.gas]
        txs = [(s.gas, len(s.data)) for s in steps] + [(g, 200) for g in sale_gas]
        costs, _ = await gas.tx_costs(self.rpc, txs, price)
        estimate = profit.estimate(reward, costs, eth_usd.one(), self.settings.min_profit)
        inputs.update(
            liquidatable_size=collateral,
            reward_gross=reward.gross,
            reward_capped=reward.capped,
            gas_cost=estimate.gas_cost,
            l1_cost=estimate.l1_cost,
            profit=estimate.profit,
        )
        return Plan(op, steps, estimate, estimate.profitable, estimate.reason, inputs)

    async def _collateral_for(self, token: str, usdc: int) -> int:
        return await self._vault_view("getLiquidatableCollateralBySettlement(address,uint256)", token, usdc)

    async def _repaid_for(self, token: str, collateral: int) -> int:
        return await self._vault_view("getRepaidSettlementByCollateral(address,uint256)", token, collateral)

    async def _vault_view(self, signature: str, *args: Any) -> int:
        (value,) = decode(["uint256"], await self.rpc.call(self.d.vault, encode_call(signature, *args)))
        return int(value)

    # --- after it ran: sell, then the next round ------------------------------------------------------
    async def follow_up(self, plan: Plan, outcomes: list[TxOutcome], liquidator: str) -> Plan | None:
        if not outcomes or not all(o.ok for o in outcomes):
            return None
        op: risk.Opportunity = plan.opportunity  # type: ignore[assignment]
        round_ = int(plan.inputs.get("round", 1))
        stage = plan.inputs.get("stage")
        if stage == "liquidate":
            seized = _seized(outcomes[-1])
            return await self._sale_plan(op, liquidator, seized, int(plan.inputs["repay_usdc"]), round_)
        if stage == "sell":
            await self._verify_sale(plan, liquidator)
        if round_ >= MAX_ROUNDS:
            return None
        again = await self.plan(op, liquidator, round_ + 1)
        return again if again.execute else None

    async def _sale_plan(
        self, op: risk.Opportunity, liquidator: str, seized: int, repaid: int, round_: int
    ) -> Plan:
        assert op.collateral_token is not None
        token, usdc = op.collateral_token, self.d.usdc
        inputs: dict[str, Any] = {"stage": "sell", "round": round_, "seized": seized, "repaid_usdc": repaid}
        choice = await best_quote(
            self.sources, token, usdc, seized, liquidator, self.settings.slippage_bps, 0
        )
        inputs.update(_quotes_record(choice))
        best = choice.best
        if best is None or best.buy_amount <= repaid:
            reason = (
                f"keeping the collateral: no quote covers the {repaid} USDC repaid "
                f"({best.buy_amount if best else 'no quote'}; {'; '.join(choice.errors)})"
            )
            log.warning("%s %s: %s", op.account, token, reason)
            return Plan(op, [], None, False, reason, inputs)
        min_out = best.min_out(self.settings.slippage_bps)
        (allowance,) = decode(
            ["uint256"],
            await self.rpc.call(token, encode_call("allowance(address,address)", liquidator, best.spender)),
        )
        (balance,) = decode(
            ["uint256"], await self.rpc.call(usdc, encode_call("balanceOf(address)", liquidator))
        )
        inputs.update(min_out=min_out, source=best.source, usdc_before=int(balance))
        steps = []
        if allowance < seized:
            steps.append(
                Step(f"approve {best.source}", token, encode_call(APPROVE, best.spender, seized), GAS_APPROVE)
            )
        steps.append(
            Step(f"sell via {best.source}", best.to or "", self._swap_data(best, liquidator), best.gas)
        )
        return Plan(op, steps, None, True, f"sell {seized} at >= {min_out} USDC via {best.source}", inputs)

    def _swap_data(self, quote: Quote, recipient: str) -> bytes:
        if quote.data:
            return quote.data
        uniswap = next(s for s in self.sources if isinstance(s, UniswapV3))
        return uniswap.swap_calldata(quote, recipient, self.settings.slippage_bps)

    async def _verify_sale(self, plan: Plan, liquidator: str) -> None:
        (balance,) = decode(
            ["uint256"], await self.rpc.call(self.d.usdc, encode_call("balanceOf(address)", liquidator))
        )
        received = int(balance) - int(plan.inputs["usdc_before"])
        plan.inputs["usdc_received"] = received
        if received < int(plan.inputs["min_out"]):
            log.error("sale returned %d USDC units, below its bound %d", received, plan.inputs["min_out"])


def _seized(outcome: TxOutcome) -> int:
    for entry in outcome.logs:
        if entry.get("topics") and str(entry["topics"][0]).lower() == COLLATERAL_LIQUIDATED:
            (collateral, *_rest) = decode(
                ["uint256", "uint256", "uint256", "uint24"], bytes.fromhex(entry["data"][2:])
            )
            return int(collateral)
    raise RpcError("liquidateCollateral", 0, "no CollateralLiquidated event in the receipt")


def _quotes_record(choice: Choice) -> dict[str, Any]:
    return {
        "quotes": [
            {"source": q.source, "buy_amount": q.buy_amount, "gas": q.gas, "age_s": round(q.age(), 3)}
            for q in choice.quotes
        ],
        "quote_errors": list(choice.errors),
        "best_quote": choice.best.source if choice.best else None,
    }
