"""Synthetix Perps V2 keeper rewards, exactly as PerpsV2MarketBase computes them (SIP-297, SIP-2005).

Flagging pays `min(max(|size| x price x liquidationFeeRatio, minKeeperFee), maxKeeperFee)` at the
liquidation price, to the flagger, when the position is liquidated; liquidating pays a flat
`keeperLiquidationFee` (0 through `forceLiquidatePosition`). All values are 18-decimal fixed point
(sUSD and ratios), and SafeDecimalMath.multiplyDecimal truncates, so these do too.
"""

from __future__ import annotations

from dataclasses import dataclass

from keeper.profit import Capped, cap_reward

UNIT = 10**18


@dataclass(frozen=True)
class FeeParams:
    liquidation_fee_ratio: int  # 0.0035 * UNIT = 35 bp
    min_keeper_fee: int  # sUSD
    max_keeper_fee: int  # sUSD (SIP-297)
    keeper_liquidation_fee: int  # sUSD, flat (SIP-2005)
    max_liquidation_delta: int  # of skewScale, per market
    max_pd: int  # per market
    skew_scale: int  # base units, per market


def multiply_decimal(a: int, b: int) -> int:
    return a * b // UNIT


def flag_fee(size: int, price: int, params: FeeParams, operator_cap: int | None = None) -> Capped:
    """The flagger's fee with its floor, capped by maxKeeperFee (and the operator's cap, if lower).

    `gross` keeps the value before the caps (with the floor), for the audit trail."""
    proportional = multiply_decimal(multiply_decimal(abs(size), price), params.liquidation_fee_ratio)
    return cap_reward(max(proportional, params.min_keeper_fee), params.max_keeper_fee, operator_cap)


def permissionless(size: int, skew: int, params: FeeParams) -> bool:
    """liquidatePosition works for anyone only below both thresholds; else only forceLiquidatePosition."""
    delta = abs(size) * UNIT // params.skew_scale
    premium = abs(skew) * UNIT // params.skew_scale
    return delta < params.max_liquidation_delta and premium < params.max_pd


def keeper_reward(
    size: int,
    price: int,
    skew: int,
    params: FeeParams,
    *,
    flagged_by_others: bool = False,
    operator_cap: int | None = None,
) -> tuple[Capped | None, int]:
    """(flag fee or None when someone else flagged, liquidation fee or 0 when not permissionless)."""
    flag = None if flagged_by_others else flag_fee(size, price, params, operator_cap)
    liquidation = params.keeper_liquidation_fee if permissionless(size, skew, params) else 0
    return flag, liquidation
