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

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode

from keeper import gas, profit
from keeper.codec import encode_call
from keeper.errors import QuoteError, RpcError
from keeper.indexer import AccountSource, Indexer
from keeper.metadata import SynthetixDeployment
from keeper.multicall import Call
from keeper.profit import X18
from keeper.quotes import QuoteSource
from keeper.rpc import BlockHeader, Rpc
from keeper.tx import TxOutcome
from strategies.base import Plan, Step
from strategies.synthetix_perps_v2 import fees
from strategies.synthetix_perps_v2.views import (
    POSITION_MODIFIED,
    POSITION_STRUCT,
    MarketState,
    Position,
    Reader,
    read_markets,
    read_parameters,
    read_positions,
)

log = logging.getLogger(__name__)
FLAG = "flagPosition(address)"
LIQUIDATE = "liquidatePosition(address)"
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
        self.eth_market = next((m.proxy for m in deployment.markets if m.asset == "sETH"), None)
        self._usdc_decimals: int | None = None

    # --- the picture of the chain ---------------------------------------------------------------------
    async def refresh(self, head: BlockHeader | None = None) -> None:
        synced = await self.indexer.sync(head)
        block = synced.head.number
        if self.params is None or synced.watched_changed:
            self.params = await read_parameters(self.read, self.d, block)
            log.info("synthetix parameters read at block %d", block, extra={"block": block})
        self.markets = await read_markets(self.read, self.d, self.params, block)
        pairs = sorted((k.split(":", 1)[0], k.split(":", 1)[1]) for k in self.indexer.known if ":" in k)
        self.positions = await read_positions(self.read, self.markets, pairs, block)

    def opportunities(self) -> list[Position]:
        return sorted(self.positions, key=lambda p: (-p.notional, p.market, p.account))

    # --- pricing ------------------------------------------------------------------------------------------
    async def plan(self, opportunity: Any, liquidator: str) -> Plan:
        op: Position = opportunity
        market = self.markets[op.market]
        state = market.market.state
        block = await self.rpc.block_number()
        calls = [
            Call(op.market, "positions(address)", (op.account,), (POSITION_STRUCT,)),
            Call(op.market, "canLiquidate(address)", (op.account,), ("bool",)),
            Call(op.market, "isFlagged(address)", (op.account,), ("bool",)),
            Call(op.market, "liquidationFee(address)", (op.account,), ("uint256",)),
            Call(op.market, "assetPrice()", (), ("uint256", "bool")),
            Call(op.market, "marketSkew()", (), ("int128",)),
            Call(state, "positionFlagger(address)", (op.account,), ("address",)),
            Call(self.d.manager, "isEndorsed(address)", (liquidator,), ("bool",)),
            Call(self.eth_market or op.market, "assetPrice()", (), ("uint256", "bool")),
        ]
        results = await self.read(calls, block)
        position, can, flagged, fee_view, price, skew, flagger, endorsed, eth = results
        size = int(position.one()[4])
        oracle, skew_now = int(price.value[0]), int(skew.one())
        flagger_address = str(flagger.one()) if flagged.one() else None
        by_others = flagger_address is not None and flagger_address.lower() != liquidator.lower()
        params = market.fees
        is_permissionless = fees.permissionless(size, skew_now, params)
        flag, liquidator_fee = fees.keeper_reward(size, oracle, skew_now, params, flagged_by_others=by_others)
        if flag is None:
            flag = profit.Capped(0, 0, None, None)
        reward_susd = flag.capped + liquidator_fee
        inputs: dict[str, Any] = {
            "block": block,
            "stage": "liquidate",
            "market_key": op.market_key,
            "size": size,
            "liquidatable_size": size,
            "oracle_price": oracle,
            "oracle_price_invalid": bool(price.value[1]),
            "market_skew": skew_now,
            "notional": abs(size) * oracle // fees.UNIT,
            "can_liquidate": bool(can.value[0]) if can.ok else False,
            "flagged": bool(flagged.one()),
            "flagger": flagger_address,
            "flagged_by_others": by_others,
            "endorsed": bool(endorsed.one()),
            "permissionless": is_permissionless,
            "liquidation_fee_ratio": params.liquidation_fee_ratio,
            "min_keeper_fee": params.min_keeper_fee,
            "max_keeper_fee": params.max_keeper_fee,
            "keeper_liquidation_fee": params.keeper_liquidation_fee,
            "max_liquidation_delta": params.max_liquidation_delta,
            "max_pd": params.max_pd,
            "skew_scale": params.skew_scale,
            "size_over_skew_scale": abs(size) * fees.UNIT // params.skew_scale,
            "skew_over_skew_scale": abs(skew_now) * fees.UNIT // params.skew_scale,
            "flag_fee_uncapped_susd": flag.gross,
            "flag_fee_susd": flag.capped,
            "flag_fee_cap_binding": flag.binding,
            "contract_liquidation_fee_view": fee_view.one() if fee_view.ok else None,
            "liquidator_fee_susd": liquidator_fee,
            "reward_susd": reward_susd,
            "reward_uncapped_susd": flag.gross + liquidator_fee,
            "eth_usd": int(eth.value[0]) if eth.ok else 0,
        }
        proxy = op.market
        steps: list[Step] = []
        if not flagged.one():
            steps.append(Step("flagPosition", proxy, encode_call(FLAG, op.account), GAS_FLAG))
        force = not is_permissionless and bool(endorsed.one())
        last = FORCE_LIQUIDATE if force else LIQUIDATE
        steps.append(Step(last.split("(")[0], proxy, encode_call(last, op.account), GAS_LIQUIDATE))

        def skip(reason: str) -> Plan:
            return Plan(op, steps, None, False, reason, inputs)

        if size == 0:
            return skip("no position (liquidated or closed since the scan)")
        if not flagged.one() and not inputs["can_liquidate"]:
            return skip(
                "not liquidatable: remaining margin above the liquidation margin (canLiquidate false)"
            )
        if not is_permissionless and not force:
            return skip(self._force_only_reason(inputs, flag))
        if price.value[1]:
            return skip("the oracle price is invalid: the market would revert")
        if not eth.ok or not inputs["eth_usd"]:
            return skip("no ETH price to value gas (no sETH market in the metadata)")
        inputs["steps"] = [s.label for s in steps]
        valued = await self._value_susd(reward_susd, liquidator)
        inputs.update(valued.audit)
        if valued.usd is None:
            return skip(valued.error)
        to_usd = valued.converter(reward_susd)
        reward = profit.cap_reward(
            to_usd(flag.gross + liquidator_fee),
            protocol_cap=None
            if flag.gross == flag.capped
            else to_usd(params.max_keeper_fee + liquidator_fee),
            operator_cap=self.settings.max_keeper_fee,
        )
        steps = [await self._estimated(step, liquidator) for step in steps]
        gas_price = await gas.gas_price(self.rpc, self.settings.max_fee_gwei)
        costs, l1_note = await gas.tx_costs(self.rpc, [(s.gas, len(s.data)) for s in steps], gas_price)
        estimate = profit.estimate(reward, costs, inputs["eth_usd"], self.settings.min_profit)
        inputs.update(
            reward_gross=reward.gross,
            reward_capped=reward.capped,
            reward_cap_binding=reward.binding,
            gas_units=sum(c.gas for c in costs),
            gas_price_wei=gas_price.effective,
            gas_cost=estimate.gas_cost,
            l1_cost=estimate.l1_cost,
            profit=estimate.profit,
        )
        if l1_note:
            inputs["l1_note"] = l1_note
        return Plan(op, steps, estimate, estimate.profitable, estimate.reason, inputs)

    @staticmethod
    def _force_only_reason(inputs: dict[str, Any], flag: profit.Capped) -> str:
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

    async def _estimated(self, step: Step, sender: str) -> Step:
        units = await gas.estimate_gas(self.rpc, sender, step.to, step.data)
        return step if units is None else Step(step.label, step.to, step.data, units)

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

    async def follow_up(self, plan: Plan, outcomes: list[TxOutcome], liquidator: str) -> Plan | None:
        return None  # a Synthetix liquidation closes the whole position; the keeper inherits nothing


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
