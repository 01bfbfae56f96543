"""Exact unit conversions for building scenarios (Decimal strings in, integers out)."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

Q96 = 2**96
MIN_TICK = -887272
MAX_TICK = 887272


def to_units(amount: str | int | Decimal, decimals: int) -> int:
    """'1780.5' with 6 decimals -> 1780500000. Refuses amounts finer than the token's unit."""
    scaled = Decimal(amount) * (Decimal(10) ** decimals)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more than {decimals} decimals")
    return int(scaled)


def usdc(amount: str | int | Decimal) -> int:
    return to_units(amount, 6)


def ether(amount: str | int | Decimal) -> int:
    return to_units(amount, 18)


def sqrt_price_x96(price: Fraction | Decimal | str | int, decimals0: int = 18, decimals1: int = 18) -> int:
    """sqrtPriceX96 for `price` = token1 per token0 in whole tokens."""
    whole = Fraction(Decimal(price) if isinstance(price, str) else price)
    raw = whole * Fraction(10**decimals1, 10**decimals0)
    return math.isqrt(raw.numerator * Q96 * Q96 // raw.denominator)


def price_from_sqrt_x96(sqrt_x96: int, decimals0: int = 18, decimals1: int = 18) -> Fraction:
    return Fraction(sqrt_x96 * sqrt_x96, Q96 * Q96) * Fraction(10**decimals0, 10**decimals1)


def tick_at_price(price: float, spacing: int = 1) -> int:
    """The spacing-aligned tick at or below `price` (same decimals on both sides)."""
    tick = math.floor(math.log(price) / math.log(1.0001))
    return (tick // spacing) * spacing


def full_range(spacing: int) -> tuple[int, int]:
    return (-(MAX_TICK // spacing) * spacing, (MAX_TICK // spacing) * spacing)
