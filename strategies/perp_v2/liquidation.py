"""Perp v2 liquidation math, as the contracts compute it (curie 2.8.4): how much of a position one call
liquidates, the penalty, and the liquidator's share of it.

Integers only: sizes and values 18 decimals, ratios in Perp's 1e6 units. Rounding follows the
contracts (floor division, as `FullMath.mulDiv` and `SafeMath.div` do; toward zero for signed values).
"""

from __future__ import annotations

X18 = 10**18
RATIO = 10**6
MIN_PARTIAL_LIQUIDATE_POSITION_VALUE = 100 * X18  # AccountBalance._MIN_PARTIAL_LIQUIDATE_POSITION_VALUE


def mul_ratio(value: int, ratio: int) -> int:
    """PerpMath.mulRatio: value x ratio / 1e6, rounded toward zero like Solidity's signed division."""
    product = value * ratio
    return product // RATIO if product >= 0 else -((-product) // RATIO)


def ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


# --- Perp v2 position liquidation -------------------------------------------------------------------


def liquidatable_size(
    position_size: int,
    position_value_abs: int,
    total_abs_position_value: int,
    account_value: int,
    margin_requirement: int,
) -> int:
    """AccountBalance.getLiquidatablePositionSize (2.8.4, 292-333), from already-read values."""
    if account_value >= margin_requirement or position_size == 0:
        return 0
    if position_value_abs <= MIN_PARTIAL_LIQUIDATE_POSITION_VALUE:
        return position_size
    ratio = RATIO
    if account_value >= _solidity_div(margin_requirement, 2):
        ratio = min(RATIO, total_abs_position_value * RATIO // (position_value_abs * 2))
    return mul_ratio(position_size, ratio)


def liquidation_penalty(liquidated_notional: int, penalty_ratio: int) -> int:
    """ClearingHouse._liquidate: |notional| x liquidationPenaltyRatio (FullMath.mulDiv, floor)."""
    return abs(liquidated_notional) * penalty_ratio // RATIO


def liquidator_share(penalty: int, account_value_before: int) -> int:
    """Half the penalty (floor), or all of it when the trader's account value was negative."""
    return penalty if account_value_before < 0 else penalty // 2


def _solidity_div(a: int, b: int) -> int:
    """Signed division rounding toward zero (SignedSafeMath.div)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q
