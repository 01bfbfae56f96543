"""The one profit model, exact to the wei: the worked examples of profitability.md and the caps."""

from __future__ import annotations

from keeper import profit
from keeper.profit import X18, GasPrice
from strategies.perp_v2 import liquidation

GWEI = 10**9
ETH_FOR_GAS = 3_000 * X18


def test_example_b_perp_partial_liquidation_of_2m_notional() -> None:
    # long 1,000 ETH at mark 2,000, account value 100,000, requirement 125,000 (6.25 %)
    size, mark = 1_000 * X18, 2_000 * X18
    value = size * mark // X18
    liquidated = liquidation.liquidatable_size(size, value, value, 100_000 * X18, 125_000 * X18)
    assert liquidated == 500 * X18  # 50 %: account value >= half the requirement
    notional = liquidated * mark // X18
    penalty = liquidation.liquidation_penalty(notional, 25_000)
    assert penalty == 25_000 * X18
    assert liquidation.liquidator_share(penalty, 100_000 * X18) == 12_500 * X18
    # with the operator's 5,000 cap and a 3,497.5 unwind: about 1,500 counted
    reward = profit.cap_reward(12_500 * X18, protocol_cap=None, operator_cap=5_000 * X18)
    assert reward.capped == 5_000 * X18
    assert reward.binding == "operator"
    plan = profit.estimate(reward, [], ETH_FOR_GAS, min_profit=X18, unwind_cost=3_497_500 * X18 // 1_000)
    assert plan.profit == 1_502_500 * X18 // 1_000


def test_a_1000_usd_cap_values_a_2m_notional_liquidation_at_1000() -> None:
    # margin ratio under 3.125 %: the whole 2,000,000 notional; bad debt: the whole penalty
    size, mark = 1_000 * X18, 2_000 * X18
    value = size * mark // X18
    liquidated = liquidation.liquidatable_size(size, value, value, -1 * X18, 125_000 * X18)
    assert liquidated == size
    penalty = liquidation.liquidation_penalty(liquidated * mark // X18, 25_000)
    gross = liquidation.liquidator_share(penalty, -1 * X18)
    assert gross == 50_000 * X18
    reward = profit.cap_reward(gross, protocol_cap=None, operator_cap=1_000 * X18)
    assert reward.capped == 1_000 * X18
    assert reward.gross == 50_000 * X18  # the uncapped value stays beside it, for the audit trail


def test_example_a_synthetix_flag_fee_is_capped_by_the_protocol() -> None:
    proportional = 2_000_000 * X18 * 35 // 10_000  # 35 bp of 2,000,000
    flag_fee = max(proportional, 2 * X18)
    reward = profit.cap_reward(flag_fee, protocol_cap=1_000 * X18)
    assert reward.capped == 1_000 * X18
    assert reward.binding == "protocol"
    with_operator = profit.cap_reward(flag_fee, protocol_cap=1_000 * X18, operator_cap=500 * X18)
    assert with_operator.capped + 2 * X18 == 502 * X18
    assert with_operator.binding == "operator"


def test_spike_gas_scenario_matches_the_table() -> None:
    spike = GasPrice(base_fee=1 * GWEI, tip=GWEI // 10)
    l1 = profit.fjord_l1_fee(100, 100 * GWEI, 1_368, 50 * GWEI, 810_949)  # a small tx: the 100-byte floor
    assert l1 == 100 * 10**6 * (16 * 100 * GWEI * 1_368 + 50 * GWEI * 810_949) // 10**12
    assert round(profit.wei_to_usd(l1, ETH_FOR_GAS) / X18, 3) == 0.013
    liquidate = profit.tx_cost(376_144, spike, l1)
    flag = profit.tx_cost(351_933, spike, l1)
    assert round(profit.wei_to_usd(liquidate.total, ETH_FOR_GAS) / X18, 2) == 1.25
    assert round(profit.wei_to_usd(flag.total, ETH_FOR_GAS) / X18, 2) == 1.17
    both = profit.estimate(profit.cap_reward(0), [flag, liquidate], ETH_FOR_GAS, min_profit=X18)
    assert round((both.gas_cost + both.l1_cost) / X18, 2) == 2.43


def test_only_the_l1_fee_can_make_a_small_liquidation_unprofitable() -> None:
    reward = profit.cap_reward(3 * X18)
    cheap = GasPrice(base_fee=GWEI // 1_000, tip=GWEI // 1_000)
    tx = profit.tx_cost(400_000, cheap)
    assert profit.estimate(reward, [tx], ETH_FOR_GAS, min_profit=X18).profitable
    expensive_l1 = profit.tx_cost(400_000, cheap, l1_fee=10**15)  # 0.001 ETH = 3 USD of L1 data
    decision = profit.estimate(reward, [expensive_l1], ETH_FOR_GAS, min_profit=X18)
    assert not decision.profitable
    assert "L1 3.00 USD" in decision.reason


def test_max_fee_ceiling_cuts_the_tip() -> None:
    assert GasPrice(base_fee=10, tip=5, max_fee=12).effective == 12
    assert GasPrice(base_fee=10, tip=5).effective == 15


def test_liquidatable_size_edges() -> None:
    assert (
        liquidation.liquidatable_size(5 * X18, 10_000 * X18, 10_000 * X18, 625 * X18, 625 * X18) == 0
    )  # not liq.
    assert liquidation.liquidatable_size(X18, 100 * X18, 100 * X18, 1, 7 * X18) == X18  # <= 100 USD: whole
    # two markets: this one is 1/4 of the total, so min(1, 4/2) = 100 %
    assert liquidation.liquidatable_size(-X18, 2_500 * X18, 10_000 * X18, 600 * X18, 625 * X18) == -X18
    # signed sizes round toward zero like PerpMath.mulRatio
    assert liquidation.mul_ratio(-3, 500_000) == -1
