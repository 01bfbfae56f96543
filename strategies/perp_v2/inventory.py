"""What the keeper holds, read from the chain every head, closed or sold: inventory that heals.

A liquidation hands the keeper the trader's position (a taker position in that market, at the mark)
or the trader's collateral (WETH in the keeper's wallet). They are closed and sold here, from what the
chain says the keeper holds, not by an in-process follow-up: after a crash, a failed close or a
restart, the next head closes and sells what is there. Several takeovers in one market are closed
together: the trade closes what the keeper held at the head.

Positions are closed under the `close` policy (`hold` keeps them), with the slippage bound against a
simulated close. Collateral tokens in the wallet are sold at the best quote no worse than the Vault's
own price less the slippage bound; below `KEEPER_MIN_PROFIT_USD` of value they are dust and stay.
The keeper sells every collateral token its wallet holds: keep other funds in another wallet.
"""

from __future__ import annotations

from dataclasses import dataclass

from keeper.codec import encode_call
from keeper.errors import RpcError
from keeper.multicall import Reader
from keeper.profit import X18
from keeper.receipts import revert_reason
from keeper.rpc import BlockHeader, Rpc
from keeper.strategy import CLOSE, Plan, Step
from strategies.perp_v2 import risk
from strategies.perp_v2.metadata import Deployment
from strategies.perp_v2.positions import DEADLINE, GAS_CLOSE, NO_REFERRAL, OPEN_POSITION, trade_quote
from strategies.perp_v2.reverts import explain
from strategies.perp_v2.sale import Seller
from strategies.perp_v2.scanner import Scanner

USDC_TO_X18 = 10**12
InventoryPlan = Plan[risk.Opportunity]


@dataclass(frozen=True)
class InventorySettings:
    keeper: str  # whose holdings: the liquidator's address
    min_value: int = X18  # KEEPER_MIN_PROFIT_USD: below it, a holding is dust
    inherited: str = "close"  # KEEPER_INHERITED_POSITIONS: close | hold
    slippage_bps: int = 100  # KEEPER_SLIPPAGE_BPS


class PerpV2Inventory:
    name = "perp-v2-inventory"

    def __init__(
        self,
        deployment: Deployment,
        scanner: Scanner,
        rpc: Rpc,
        read: Reader,
        seller: Seller,
        settings: InventorySettings,
    ) -> None:
        self.d, self.scanner, self.rpc, self.read = deployment, scanner, rpc, read
        self.seller, self.settings = seller, settings
        self.items: list[risk.Opportunity] = []

    def explain(self, reason: str) -> str:
        return explain(reason)

    async def refresh(self, head: BlockHeader | None = None) -> None:
        """The keeper's position in every market and its wallet's collateral tokens, at the head."""
        await self.scanner.update(head)
        snapshot, params = self.scanner.snapshot, self.scanner.params
        assert snapshot is not None
        assert params is not None
        keeper, views = self.settings.keeper, self.scanner.views
        bases = sorted(snapshot.marks)
        tokens = sorted(params.collaterals)
        calls = [views.taker_size(keeper, b) for b in bases] + [
            views.erc20_balance(t, keeper) for t in tokens
        ]
        answers = [int(r.one()) for r in await self.read(calls, snapshot.block)]
        items = []
        for base, held in zip(bases, answers[: len(bases)], strict=True):
            if held and self.settings.inherited == "close":
                items.append(
                    self._item(risk.CLOSE, held, risk.notional(held, snapshot.marks[base]), base=base)
                )
        for token, balance in zip(tokens, answers[len(bases) :], strict=True):
            price = snapshot.collateral_prices.get(token)
            if balance and price is not None:
                value = risk.collateral_value(balance, price, params.collaterals[token])
                items.append(self._item(risk.SELL, balance, value, token=token))
        self.items = sorted(items, key=lambda o: -o.notional)

    def _item(
        self, kind: str, size: int, value: int, *, base: str | None = None, token: str | None = None
    ) -> risk.Opportunity:
        dust = value < self.settings.min_value
        keeper = self.settings.keeper
        return risk.Opportunity(keeper, kind, base, token, size, value, 0, 0, liquidatable=not dust)

    def opportunities(self) -> list[risk.Opportunity]:
        return self.items

    async def plan(self, opportunity: risk.Opportunity, liquidator: str) -> InventoryPlan:
        if opportunity.kind == risk.CLOSE:
            return await self._close(opportunity, liquidator)
        bps = self.settings.slippage_bps
        floor = (
            opportunity.notional * (10_000 - bps) // 10_000 // USDC_TO_X18
        )  # the Vault's price, less slippage
        plan = await self.seller.plan(opportunity, liquidator, opportunity.size, floor, 1)
        plan.detail.update(collateral_value=opportunity.notional, floor_usdc=floor)
        return plan

    async def _close(self, op: risk.Opportunity, liquidator: str) -> InventoryPlan:
        """Trade exactly what the keeper holds in one market back to flat, bounded by the slippage
        setting. An exact amount, not `closePosition`: a takeover in the same market landing in the
        same block must not change what this trade closes (nor break its bound)."""
        assert op.base_token is not None
        base, held = op.base_token, op.size
        plan: InventoryPlan = Plan(op, [], False, "", CLOSE, detail={"keeper_position": held})
        selling = held > 0  # a long is closed by selling base (exact input), a short by buying it back
        trade = (base, selling, selling, abs(held), 0, DEADLINE, 0, NO_REFERRAL)
        try:
            quote = await trade_quote(
                self.rpc, self.d.clearing_house, liquidator, encode_call(OPEN_POSITION, trade)
            )
        except RpcError as exc:
            return plan.skip(f"cannot close the inherited position: {explain(revert_reason(exc))}")
        bps = self.settings.slippage_bps
        # selling: receive at least quote x (1 - slippage); buying: pay at most quote x (1 + slippage)
        bound = quote * (10_000 - bps) // 10_000 if selling else quote * (10_000 + bps) // 10_000
        plan.detail.update(simulated_quote=quote, opposite_amount_bound=bound)
        data = encode_call(
            OPEN_POSITION, (base, selling, selling, abs(held), bound, DEADLINE, 0, NO_REFERRAL)
        )
        plan.steps = [Step("close", self.d.clearing_house, data, GAS_CLOSE)]
        plan.execute, plan.reason = True, f"close the inherited position (slippage bound {bps} bps)"
        return plan
