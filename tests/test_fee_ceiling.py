"""The default fee ceiling: a plan never spends more on gas than it earns (pure)."""

from __future__ import annotations

from keeper import preflight
from keeper.profit import X18, GasPrice, cap_reward, estimate, gas_ceiling_wei, tx_cost
from keeper.receipts import Prepared, TxRequest

GWEI = 10**9


def prepared(*limits: int, max_fee: int = 3 * GWEI, tip: int = GWEI) -> list[Prepared]:
    return [
        Prepared(TxRequest(f"k{i}", "0xa", "0xb", b"", f"s{i}"), g, max_fee, tip)
        for i, g in enumerate(limits)
    ]


def test_the_ceiling_is_what_the_plan_earns_less_the_unwind_and_l1_in_wei() -> None:
    cost = tx_cost(500_000, GasPrice(GWEI, GWEI), l1_fee=10**14)  # 0.0001 ETH of L1 fee
    plan = estimate(cap_reward(100 * X18), [cost], eth_usd=2_000 * X18, min_profit=X18, unwind_cost=20 * X18)
    # 100 USD earned, less 20 USD of unwind and 0.2 USD of L1 fee: 79.8 USD = 0.0399 ETH at 2,000
    assert gas_ceiling_wei(plan, 2_000 * X18) == 39_900_000_000_000_000
    assert gas_ceiling_wei(plan, 0) == 0  # no ETH price: nothing may be spent


def test_each_step_is_capped_so_the_plan_cannot_spend_more_than_its_ceiling() -> None:
    steps = prepared(300_000, 700_000)  # 1,000,000 gas together
    priced = preflight.capped(steps, ceiling_wei=2 * GWEI * 1_000_000)
    assert not isinstance(priced, str)
    assert [p.max_fee for p in priced] == [2 * GWEI, 2 * GWEI]
    assert [p.fee_cap for p in priced] == [2 * GWEI, 2 * GWEI]
    assert sum(p.max_fee * p.gas_limit for p in priced) <= 2 * GWEI * 1_000_000
    assert preflight.capped(steps, None) == steps  # no ceiling: as priced


def test_a_ceiling_under_the_base_fee_is_refused_with_the_reason() -> None:
    steps = prepared(1_000_000, max_fee=3 * GWEI, tip=GWEI)  # base fee 1 gwei
    reason = preflight.capped(steps, ceiling_wei=GWEI * 1_000_000)
    assert isinstance(reason, str)
    assert reason.startswith("gas ceiling:")
    generous = preflight.capped(steps, ceiling_wei=10 * GWEI * 1_000_000)
    assert not isinstance(generous, str)
    assert generous[0].max_fee == 3 * GWEI  # the ceiling only ever lowers the fee
