"""Synthetix Perps V2 keeper fees: the maxKeeperFee cap (SIP-297) pinned to the contract's numbers."""

from __future__ import annotations

from strategies.synthetix_perps_v2.fees import UNIT, FeeParams, flag_fee, keeper_reward, permissionless

LAUNCH = FeeParams(
    liquidation_fee_ratio=35 * UNIT // 10_000,
    min_keeper_fee=2 * UNIT,
    max_keeper_fee=1_000 * UNIT,
    keeper_liquidation_fee=2 * UNIT,
    max_liquidation_delta=12 * UNIT // 10_000,  # 0.12 %
    max_pd=24 * UNIT // 10_000,
    skew_scale=1_000_000 * UNIT,
)


def test_a_1000_eth_position_pays_exactly_the_capped_fee_plus_the_liquidation_fee() -> None:
    flag, liquidation = keeper_reward(1_000 * UNIT, 2_000 * UNIT, 1_000 * UNIT, LAUNCH)
    assert flag is not None
    assert flag.capped == 1_000 * UNIT
    assert flag.gross == 7_000 * UNIT  # the uncapped value, for the audit record
    assert flag.binding == "protocol"
    assert flag.capped + liquidation == 1_002 * UNIT


def test_observed_on_anvil_at_1912_the_contract_paid_1000_of_6692() -> None:
    fee = flag_fee(1_000 * UNIT, 1_912 * UNIT, LAUNCH)
    assert fee.capped == 1_000 * UNIT
    assert fee.gross == 6_692 * UNIT


def test_small_positions_get_the_floor_and_operator_caps_only_lower() -> None:
    assert flag_fee(UNIT // 10, 2_000 * UNIT, LAUNCH).capped == 2 * UNIT  # 0.7 sUSD -> minKeeperFee
    assert flag_fee(1_000 * UNIT, 2_000 * UNIT, LAUNCH, operator_cap=500 * UNIT).capped == 500 * UNIT
    assert flag_fee(10 * UNIT, 2_000 * UNIT, LAUNCH, operator_cap=500 * UNIT).capped == 70 * UNIT


def test_too_large_for_permissionless_liquidation_and_flagged_by_others() -> None:
    assert permissionless(1_000 * UNIT, 0, LAUNCH)  # 0.10 % < 0.12 %
    assert not permissionless(1_300 * UNIT, 0, LAUNCH)  # 0.13 %: only forceLiquidatePosition
    flag, liquidation = keeper_reward(1_300 * UNIT, 2_000 * UNIT, 0, LAUNCH)
    assert liquidation == 0
    assert flag is not None
    assert flag.capped == 1_000 * UNIT
    flag, liquidation = keeper_reward(500 * UNIT, 2_000 * UNIT, 0, LAUNCH, flagged_by_others=True)
    assert flag is None
    assert liquidation == 2 * UNIT
