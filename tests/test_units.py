from decimal import Decimal
from fractions import Fraction

import pytest

from devnet import units


def test_to_units_is_exact() -> None:
    assert units.usdc("1780.5") == 1_780_500_000
    assert units.ether("0.000000000000000001") == 1
    assert units.to_units(Decimal("1.25"), 2) == 125


def test_to_units_refuses_dust_below_the_token_unit() -> None:
    with pytest.raises(ValueError, match="more than 6 decimals"):
        units.usdc("0.0000001")


def test_sqrt_price_round_trips_within_one_part_in_1e18() -> None:
    for price in ("1780", "30000", "0.0005"):
        back = units.price_from_sqrt_x96(units.sqrt_price_x96(price))
        assert abs(back - Fraction(price)) / Fraction(price) < Fraction(1, 10**18)


def test_sqrt_price_accounts_for_decimals() -> None:
    # 1 WETH (18 dp) = 1780 USDC (6 dp): token1 per token0 in raw units is 1780e6 / 1e18
    sqrt_x96 = units.sqrt_price_x96("1780", 18, 6)
    assert abs(units.price_from_sqrt_x96(sqrt_x96) - Fraction(1780 * 10**6, 10**18)) < Fraction(1, 10**24)
    assert abs(units.price_from_sqrt_x96(sqrt_x96, 18, 6) - 1780) < Fraction(1, 10**6)


def test_ticks_align_to_spacing() -> None:
    assert units.tick_at_price(1.0) == 0
    assert units.tick_at_price(1780.0, 60) % 60 == 0
    lower, upper = units.full_range(60)
    assert lower == -887220
    assert upper == 887220
