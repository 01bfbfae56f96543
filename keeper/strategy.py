"""The interface the engine drives, owned by the engine: every liquidation kind of every protocol plugs in.

A strategy keeps its own picture of the chain (`refresh`), lists what it could act on
(`opportunities`, in execution order) and prices one of them into a typed `Plan` of transactions.
There are no in-process follow-ups: what comes after a plan ran (the next partial liquidation,
closing a taken-over position, selling seized collateral) is planned again from the chain at a later
head, so a crash or a restart loses nothing. The engine decides, sends and records from the plan's
fields alone; it knows no protocol. `Plan.detail` is what the decision was made from, for the audit
trail only: the engine never reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from keeper.profit import Capped, Estimate
from keeper.rpc import BlockHeader

LIQUIDATE, CLOSE, SELL = "liquidate", "close", "sell"  # stages: only a liquidation earns a reward


class Opportunity(Protocol):
    """Something a strategy could liquidate: ranked by `notional`, identified by `key`."""

    @property
    def account(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def market(self) -> str | None: ...

    @property
    def notional(self) -> int: ...

    @property
    def liquidatable(self) -> bool: ...

    @property
    def key(self) -> str: ...

    @property
    def exclusive(self) -> str:
        """What only one plan may act on at a time (an account; a market of the keeper's inventory):
        while a plan for it is in flight, nothing else for it is planned."""
        ...


O = TypeVar("O", bound=Opportunity)  # noqa: E741 - the opportunity type


@dataclass(frozen=True)
class Step:
    label: str
    to: str
    data: bytes
    gas: int  # estimated gas units, counted in the plan's cost


@dataclass
class Plan(Generic[O]):
    """One decision: what to send for `opportunity` at this `stage` and `round`, and why.

    `size` is what the plan liquidates (a position's base size, or collateral units); `reward` the
    liquidation's reward before and after each cap (USD, 18 decimals), for stages that earn one;
    `capital` what it needs of a resource the keeper holds, `(name, required, available at the head)`,
    so the engine can count what plans in flight have already committed; `gas_ceiling_wei` the most
    its transactions may spend on gas together, replacements included (by default what it earns).
    """

    opportunity: O
    steps: list[Step]
    execute: bool
    reason: str
    stage: str = LIQUIDATE
    round: int = 1
    size: int = 0
    reward: Capped | None = None
    estimate: Estimate | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    capital: tuple[str, int, int] | None = None
    gas_ceiling_wei: int | None = None  # the most this plan may spend on gas (None: no ceiling)
    bad_debt: int = 0  # USD x1e18 the account owes beyond its collateral: a loss someone absorbs

    @property
    def earns(self) -> bool:
        """A liquidation that pays a reward (not a close or a sale of what was taken over)."""
        return self.stage == LIQUIDATE

    @property
    def reward_capped(self) -> int:
        return self.reward.capped if self.reward is not None else 0

    def skip(self, reason: str) -> Plan[O]:
        """This plan, decided against."""
        self.execute, self.reason = False, reason
        return self


class Strategy(Protocol[O]):
    name: str

    async def refresh(self, head: BlockHeader | None = None) -> None: ...

    def opportunities(self) -> Sequence[O]: ...

    async def plan(self, opportunity: O, liquidator: str) -> Plan[O]: ...

    def explain(self, reason: str) -> str:
        """A revert reason in words (e.g. `CH_EAV: the account is not liquidatable ...`)."""
        ...
