"""Pure money math for every strategy: rewards, reward caps, gas (L2 + OP-stack L1), unwind, profit.

Integers only. USD amounts are 18-decimal fixed point (`X18`), gas amounts are wei. Protocol-free: each
protocol computes its own gross reward (`strategies/<protocol>/`) and this model caps, costs and decides.
Estimates round *against* the keeper (costs up, rewards down), so an estimate can only be pessimistic.

The model (../shared/docs/profitability.md, 4.1):
    reward_capped = min(reward_gross, protocol cap, operator cap)
    profit = reward_capped + swap_value - unwind_cost - gas_cost
    execute when profit >= the operator's minimum profit
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

X18 = 10**18


# --- caps ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Capped:
    gross: int
    capped: int
    protocol_cap: int | None
    operator_cap: int | None

    @property
    def binding(self) -> str | None:
        """Which cap set the value: "protocol", "operator", or None when neither bound."""
        if self.capped == self.gross:
            return None
        if self.protocol_cap is not None and self.capped == self.protocol_cap:
            return "protocol"
        return "operator"


def cap_reward(gross: int, protocol_cap: int | None = None, operator_cap: int | None = None) -> Capped:
    """min(gross, protocol maxKeeperFee where the protocol has one, the operator's cap)."""
    caps = [c for c in (protocol_cap, operator_cap) if c is not None]
    return Capped(gross, min([gross, *caps]), protocol_cap, operator_cap)


# --- gas ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GasPrice:
    base_fee: int  # wei per gas
    tip: int  # wei per gas
    max_fee: int | None = None  # the operator's ceiling (KEEPER_MAX_FEE_GWEI)

    @property
    def effective(self) -> int:
        """What a unit of gas costs: base fee + tip, the tip cut so the total stays under max_fee."""
        if self.max_fee is None:
            return self.base_fee + self.tip
        return min(self.max_fee, self.base_fee + self.tip)


@dataclass(frozen=True)
class TxCost:
    gas: int
    l2_fee: int  # wei
    l1_fee: int  # wei (0 where the chain has no GasPriceOracle)
    operator_fee: int = 0  # wei (Isthmus)

    @property
    def total(self) -> int:
        return self.l2_fee + self.l1_fee + self.operator_fee


def tx_cost(gas: int, price: GasPrice, l1_fee: int = 0, operator_fee: int = 0) -> TxCost:
    return TxCost(gas, gas * price.effective, l1_fee, operator_fee)


def fjord_l1_fee(
    fastlz_size: int, l1_base_fee: int, base_fee_scalar: int, blob_base_fee: int, blob_base_fee_scalar: int
) -> int:
    """GasPriceOracle._getL1FeeFjord for a compressed size that already includes the +68 bytes."""
    estimated_size = max(100 * 10**6, -42_585_600 + 836_500 * fastlz_size)
    return (
        estimated_size * (16 * l1_base_fee * base_fee_scalar + blob_base_fee * blob_base_fee_scalar) // 10**12
    )


def ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def wei_to_usd(wei: int, eth_usd: int) -> int:
    """Wei at an ETH/USD price (X18) as X18 USD, rounded up (a cost)."""
    return ceil_div(wei * eth_usd, X18)


# --- the decision ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Every input and output of one profitability decision, all X18 USD."""

    reward: Capped
    swap_value: int
    unwind_cost: int
    gas_cost: int  # L2 execution of every transaction of the plan
    l1_cost: int  # OP-stack L1 data (+ operator) fees of every transaction of the plan
    min_profit: int

    @property
    def profit(self) -> int:
        return self.reward.capped + self.swap_value - self.unwind_cost - self.gas_cost - self.l1_cost

    @property
    def profitable(self) -> bool:
        return self.profit >= self.min_profit

    @property
    def reason(self) -> str:
        if self.profitable:
            return "profitable"
        return (
            f"unprofitable: profit {usd_text(self.profit)} < minimum {usd_text(self.min_profit)} "
            f"(reward {usd_text(self.reward.capped)}, gas {usd_text(self.gas_cost)}, "
            f"L1 {usd_text(self.l1_cost)}, unwind {usd_text(self.unwind_cost)})"
        )


def estimate(
    reward: Capped,
    txs: Sequence[TxCost],
    eth_usd: int,
    min_profit: int,
    unwind_cost: int = 0,
    swap_value: int = 0,
) -> Estimate:
    """Profit of a plan: the gas of preparatory steps (a maker's cancels) counts against it too."""
    l2 = sum(t.l2_fee for t in txs)
    l1 = sum(t.l1_fee + t.operator_fee for t in txs)
    return Estimate(
        reward, swap_value, unwind_cost, wei_to_usd(l2, eth_usd), wei_to_usd(l1, eth_usd), min_profit
    )


def usd_text(x18: int) -> str:
    sign = "-" if x18 < 0 else ""
    cents = abs(x18) // 10**16
    return f"{sign}{cents // 100:,}.{cents % 100:02d} USD"


def gas_ceiling_wei(estimate: Estimate, eth_usd: int) -> int:
    """The most wei a plan may spend on L2 gas and still not lose money: what it earns (reward, sale
    value, less the unwind and the L1 fees, which the fee per gas does not change), in wei."""
    margin = estimate.reward.capped + estimate.swap_value - estimate.unwind_cost - estimate.l1_cost
    return max(0, margin) * X18 // eth_usd if eth_usd > 0 else 0
