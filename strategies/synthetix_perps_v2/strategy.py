"""Synthetix Perps V2 liquidations: flag, then liquidate (SIP-2005), paid in sUSD.

Accounts come from the market proxies' `PositionModified` logs; every refresh reads each open
position's `canLiquidate` and `isFlagged` at one block. A plan is `flagPosition` + `liquidatePosition`
(the flag fee, capped by `maxKeeperFee`, plus `keeperLiquidationFee`), or `liquidatePosition` alone for
a position someone else flagged (`keeperLiquidationFee` only). A position only
`forceLiquidatePosition` can take (|size|/skewScale >= maxLiquidationDelta, or the market skew past
maxPD) is skipped with that reason, unless the keeper is endorsed. The reward is sUSD, valued at a
sUSD->USDC quote (SIP-423: not at 1 USD), then priced like every other plan (keeper/profit.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode

from keeper import gas, profit
from keeper.codec import encode_call
from keeper.errors import QuoteError, RpcError
from keeper.indexer import AccountSource, Indexer
from keeper.multicall import Reader
from keeper.profit import X18
from keeper.quotes import QuoteSource
from keeper.rpc import BlockHeader, Rpc
from keeper.strategy import Plan, Step
from strategies.synthetix_perps_v2 import fees
from strategies.synthetix_perps_v2.metadata import SynthetixDeployment
from strategies.synthetix_perps_v2.tiers import Tiers, pair_of
from strategies.synthetix_perps_v2.views import (
    POSITION_MODIFIED,
    MarketState,
    Position,
    plan_calls,
    read_markets,
    read_parameters,
    read_positions,
)

log = logging.getLogger(__name__)
SynthetixPlan = Plan[Position]
FLAG = "flagPosition(address)"
LIQUIDATE_SIGNATURE = "liquidatePosition(address)"
FORCE_LIQUIDATE = "forceLiquidatePosition(address)"
# gas hints for a step that cannot be estimated before the flag lands (measured: 351,933 / 376,144)
GAS_FLAG = 400_000
GAS_LIQUIDATE = 450_000

REVERTS = {
    "Position cannot be liquidated": "not liquidatable at the oracle price (CannotLiquidate)",
    "Position flagged": "already flagged (someone flagged it first)",
    "Position not flagged": "not flagged: it was liquidated already, or the flag did not land",
    "price impact of liquidation exceeded": (
        "|size|/skewScale >= maxLiquidationDelta: only an endorsed keeper's forceLiquidatePosition can"
    ),
    "instantaneous P/D exceeded": (
        "|skew|/skewScale >= maxPD: only an endorsed keeper's forceLiquidatePosition can"
    ),
    "address not endorsed": "forceLiquidatePosition is for endorsed addresses only",
}


@dataclass(frozen=True)
class SynthetixSettings:
    min_profit: int = X18  # KEEPER_MIN_PROFIT_USD, X18
    max_keeper_fee: int | None = None  # KEEPER_MAX_KEEPER_FEE: the operator's cap, X18 USD
    max_fee_gwei: int | None = None  # KEEPER_MAX_FEE_GWEI
    susd_usd: int | None = None  # KEEPER_SUSD_USD, X18: used only when no sUSD quote can be had


def account_sources(deployment: SynthetixDeployment) -> list[AccountSource]:
    """`PositionModified(id, account, ...)`, emitted by each market proxy: one account per market."""
    return [
        AccountSource("PositionModified", m.proxy, POSITION_MODIFIED, 2, per_contract=True)
        for m in deployment.markets
    ]


class SynthetixPerpsV2:
    name = "synthetix-perps-v2"

    def __init__(
        self,
        deployment: SynthetixDeployment,
        indexer: Indexer,
        rpc: Rpc,
        read: Reader,
        settings: SynthetixSettings,
        susd_quote: QuoteSource | None,
    ) -> None:
        self.d, self.indexer, self.rpc, self.read = deployment, indexer, rpc, read
        self.settings, self.susd_quote = settings, susd_quote
        self.params: dict[str, fees.FeeParams] | None = None
        self.markets: dict[str, MarketState] = {}
        self.positions: list[Position] = []
        self.tiers = Tiers()
        self._usdc_decimals: int | None = None
        self._refreshing = asyncio.Lock()
        self._head_hash: str | None = None  # of the block the picture was read at

    # --- the picture of the chain ---------------------------------------------------------------------
    async def refresh(self, head: BlockHeader | None = None) -> None:
        """Index and read up to `head`; callers at once (shards' engines) are served one at a time, and
        a second one at the same head reads nothing."""
        async with self._refreshing:
            if head is not None and head.hash == self._head_hash:
                return
            await self._refresh(head)

    async def _refresh(self, head: BlockHeader | None) -> None:
        synced = await self.indexer.sync(head)
        self._head_hash = synced.head.hash
        block = synced.head.number
        if self.params is None or synced.watched_changed:
            self.params = await read_parameters(self.read, self.d, block)
            log.info("synthetix parameters read at block %d", block, extra={"block": block})
        self.markets = await read_markets(self.read, self.d, self.params, block)
        known = [pair_of(k) for k in self.indexer.known if ":" in k]
        dirty = [pair_of(k) for k in synced.touched | synced.new_accounts if ":" in k]
        pairs = self.tiers.to_read(known, dirty)  # open positions, what the logs touched, a sweep
        fresh = await read_positions(self.read, self.markets, pairs, block)
        self.tiers.update(pairs, [(p.market, p.account) for p in fresh])
        self.positions = fresh  # every open position was read: the tiers read them all, every block

    def opportunities(self) -> list[Position]:
        return sorted(self.positions, key=lambda p: (-p.notional, p.market, p.account))

    # --- pricing ------------------------------------------------------------------------------------------
    async def plan(self, opportunity: Position, liquidator: str) -> SynthetixPlan:
        op = opportunity
        params = self.markets[op.market].fees
        v = await self._read(op, liquidator)
        by_others = v.flagger is not None and v.flagger.lower() != liquidator.lower()
        is_permissionless = fees.permissionless(v.size, v.skew, params)
        flag, liquidator_fee = fees.keeper_reward(
            v.size, v.price, v.skew, params, flagged_by_others=by_others
        )
        flag = flag or profit.Capped(0, 0, None, None)
        force = not is_permissionless and v.endorsed
        plan: SynthetixPlan = Plan(op, self._steps(op, v.flagged, force), False, "", size=v.size)
        plan.detail.update(market_key=op.market_key)
        plan.detail.update(_detail(v, params, flag, liquidator_fee, by_others, is_permissionless))
        if reason := self._unfit(plan.detail, v, flag, is_permissionless or force):
            return plan.skip(reason)
        plan.detail["steps"] = [s.label for s in plan.steps]
        return await self._priced(plan, liquidator, flag, liquidator_fee, params)

    async def _read(self, op: Position, liquidator: str) -> PlanViews:
        calls = plan_calls(self.d, self.markets[op.market].market, op.account, liquidator)
        block = await self.rpc.block_number()
        position, can, flagged, fee_view, price, skew, flagger, endorsed, eth = await self.read(calls, block)
        return PlanViews(
            block=block,
            size=int(position.one()[4]),
            can_liquidate=bool(can.value[0]) if can.ok else False,
            flagged=bool(flagged.one()),
            fee_view=int(fee_view.one()) if fee_view.ok else None,
            price=int(price.value[0]),
            price_invalid=bool(price.value[1]),
            skew=int(skew.one()),
            flagger=str(flagger.one()) if flagged.one() else None,
            endorsed=bool(endorsed.one()),
            eth_usd=int(eth.value[0]) if eth.ok else 0,
        )

    @staticmethod
    def _steps(op: Position, flagged: bool, force: bool) -> list[Step]:
        steps = [] if flagged else [Step("flagPosition", op.market, encode_call(FLAG, op.account), GAS_FLAG)]
        last = FORCE_LIQUIDATE if force else LIQUIDATE_SIGNATURE
        return [*steps, Step(last.split("(")[0], op.market, encode_call(last, op.account), GAS_LIQUIDATE)]

    def _unfit(self, detail: dict[str, Any], v: PlanViews, flag: profit.Capped, allowed: bool) -> str:
        """Why this position cannot be liquidated by this keeper now ("" when it can)."""
        if v.size == 0:
            return "no position (liquidated or closed since the scan)"
        if not v.flagged and not v.can_liquidate:
            return "not liquidatable: remaining margin above the liquidation margin (canLiquidate false)"
        if not allowed:
            return self._force_only_reason(detail, flag)
        if v.price_invalid:
            return "the oracle price is invalid: the market would revert"
        if not v.eth_usd:
            return "no ETH price to value gas (no sETH market in the metadata)"
        return ""

    async def _priced(
        self,
        plan: SynthetixPlan,
        liquidator: str,
        flag: profit.Capped,
        liquidator_fee: int,
        params: fees.FeeParams,
    ) -> SynthetixPlan:
        """The sUSD reward valued at a quote, capped, and priced against every step's gas."""
        reward_susd = flag.capped + liquidator_fee
        valued = await self._value_susd(reward_susd, liquidator)
        plan.detail.update(valued.audit)
        if valued.usd is None:
            return plan.skip(valued.error)
        to_usd = valued.converter(reward_susd)
        plan.reward = profit.cap_reward(
            to_usd(flag.gross + liquidator_fee),
            protocol_cap=None
            if flag.gross == flag.capped
            else to_usd(params.max_keeper_fee + liquidator_fee),
            operator_cap=self.settings.max_keeper_fee,
        )
        gas_price = await gas.gas_price(self.rpc, self.settings.max_fee_gwei)  # gas from the hints
        costs, l1_note = await gas.tx_costs(self.rpc, [(s.gas, len(s.data)) for s in plan.steps], gas_price)
        eth_usd = int(plan.detail["eth_usd"])
        plan.estimate = profit.estimate(plan.reward, costs, eth_usd, self.settings.min_profit)
        plan.execute, plan.reason = plan.estimate.profitable, plan.estimate.reason
        plan.gas_ceiling_wei = profit.gas_ceiling_wei(plan.estimate, eth_usd)
        plan.detail.update(
            gas_units=sum(c.gas for c in costs),
            gas_price_wei=gas_price.effective,
            gas_cost=plan.estimate.gas_cost,
            l1_cost=plan.estimate.l1_cost,
            profit=plan.estimate.profit,
            **({"l1_note": l1_note} if l1_note else {}),
        )
        return plan

    @staticmethod
    def _force_only_reason(inputs: dict[str, Any], flag: profit.Capped) -> str:
        """Only an endorsed keeper's forceLiquidatePosition could: say which threshold, with numbers."""
        ratio = inputs["size_over_skew_scale"]
        if ratio >= inputs["max_liquidation_delta"]:
            why = (
                f"|size|/skewScale {_percent(ratio)} >= maxLiquidationDelta "
                f"{_percent(inputs['max_liquidation_delta'])}"
            )
        else:
            skew, max_pd = _percent(inputs["skew_over_skew_scale"]), _percent(inputs["max_pd"])
            why = f"|skew|/skewScale {skew} >= maxPD {max_pd}"
        return (
            f"only forceLiquidatePosition can liquidate it ({why}) and the keeper is not endorsed "
            f"(FuturesMarketManager.isEndorsed); its flag fee would be {_susd(flag.capped)}"
        )

    async def _value_susd(self, amount: int, liquidator: str) -> _Valuation:
        """sUSD -> USD at a sUSD->USDC quote for this very amount; the operator's fixed price if none."""
        if amount == 0:
            return _Valuation(0, 0, {"reward_usd_source": "nothing to value"})
        error = "no sUSD quote source (no USDC in the metadata)"
        if self.susd_quote is not None and self.d.usdc is not None:
            try:
                quote = await self.susd_quote.quote(self.d.susd, self.d.usdc, amount, liquidator, 0)
                usd = quote.buy_amount * 10 ** (18 - await self._usdc_units())
                return _Valuation(
                    usd,
                    amount,
                    {
                        "reward_usd_source": f"{quote.source} sUSD->USDC quote",
                        "susd_quote_in": amount,
                        "susd_quote_out_usdc": quote.buy_amount,
                        "susd_usd": usd * X18 // amount,
                    },
                )
            except (QuoteError, RpcError) as exc:
                error = f"no sUSD quote ({exc})"
        if self.settings.susd_usd is not None:
            usd = amount * self.settings.susd_usd // X18
            return _Valuation(
                usd,
                amount,
                {"reward_usd_source": f"KEEPER_SUSD_USD ({error})", "susd_usd": self.settings.susd_usd},
            )
        return _Valuation(None, amount, {}, f"cannot value the sUSD reward: {error}; set KEEPER_SUSD_USD")

    async def _usdc_units(self) -> int:
        if self._usdc_decimals is None:
            assert self.d.usdc is not None
            (decimals,) = decode(["uint8"], await self.rpc.call(self.d.usdc, encode_call("decimals()")))
            self._usdc_decimals = int(decimals)
        return self._usdc_decimals

    def explain(self, reason: str) -> str:
        for message, meaning in REVERTS.items():
            if message in reason:
                return f"{message}: {meaning}"
        return reason


@dataclass(frozen=True)
class _Valuation:
    usd: int | None  # X18, rounded down (a reward)
    susd: int
    audit: dict[str, Any]
    error: str = ""

    def converter(self, reference: int) -> Callable[[int], int]:
        """sUSD amounts -> USD at this valuation's rate (linear, floor)."""
        usd = self.usd or 0

        def to_usd(amount: int) -> int:
            return amount * usd // reference if reference else 0

        return to_usd


def _percent(x18: int) -> str:
    return f"{x18 * 100 / 10**18:.4f} %"


def _susd(x18: int) -> str:
    return f"{x18 / 10**18:,.2f} sUSD"


@dataclass(frozen=True)
class PlanViews:
    """What one Synthetix liquidation is priced from, read in one batch at one block."""

    block: int
    size: int
    can_liquidate: bool
    flagged: bool
    fee_view: int | None  # the market's own liquidationFee(account), for the audit
    price: int
    price_invalid: bool
    skew: int
    flagger: str | None
    endorsed: bool
    eth_usd: int


def _detail(
    v: PlanViews,
    params: fees.FeeParams,
    flag: profit.Capped,
    liquidator_fee: int,
    by_others: bool,
    is_permissionless: bool,
) -> dict[str, Any]:
    """The views and fee parameters a decision was made from, for the audit record."""
    return {
        "block": v.block,
        "size": v.size,
        "oracle_price": v.price,
        "oracle_price_invalid": v.price_invalid,
        "market_skew": v.skew,
        "notional": abs(v.size) * v.price // fees.UNIT,
        "can_liquidate": v.can_liquidate,
        "flagged": v.flagged,
        "flagger": v.flagger,
        "flagged_by_others": by_others,
        "endorsed": v.endorsed,
        "permissionless": is_permissionless,
        "liquidation_fee_ratio": params.liquidation_fee_ratio,
        "min_keeper_fee": params.min_keeper_fee,
        "max_keeper_fee": params.max_keeper_fee,
        "keeper_liquidation_fee": params.keeper_liquidation_fee,
        "max_liquidation_delta": params.max_liquidation_delta,
        "max_pd": params.max_pd,
        "skew_scale": params.skew_scale,
        "size_over_skew_scale": abs(v.size) * fees.UNIT // params.skew_scale,
        "skew_over_skew_scale": abs(v.skew) * fees.UNIT // params.skew_scale,
        "flag_fee_uncapped_susd": flag.gross,
        "flag_fee_susd": flag.capped,
        "flag_fee_cap_binding": flag.binding,
        "contract_liquidation_fee_view": v.fee_view,
        "liquidator_fee_susd": liquidator_fee,
        "reward_susd": flag.capped + liquidator_fee,
        "reward_uncapped_susd": flag.gross + liquidator_fee,
        "eth_usd": v.eth_usd,
    }
