"""The interface the engine drives: every liquidation kind of every protocol plugs in here.

A strategy keeps its own picture of the chain (`refresh`), lists what it could liquidate
(`opportunities`, in execution order), prices one of them into a `Plan` of transactions, and after a
plan ran says what comes next (`follow_up`: the next partial liquidation, closing an inherited
position, or nothing). The engine decides, sends and records; it knows no protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from keeper.profit import Estimate
from keeper.rpc import BlockHeader
from keeper.tx import TxOutcome


class Opportunity(Protocol):
    @property
    def account(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def notional(self) -> int: ...

    @property
    def liquidatable(self) -> bool: ...

    @property
    def key(self) -> str: ...


@dataclass(frozen=True)
class Step:
    label: str
    to: str
    data: bytes
    gas: int  # estimated gas units, counted in the plan's cost


@dataclass
class Plan:
    opportunity: Opportunity
    steps: list[Step]
    estimate: Estimate | None
    execute: bool
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)  # what the decision was made from, for the audit


class Strategy(Protocol):
    name: str

    async def refresh(self, head: BlockHeader | None = None) -> None: ...

    def opportunities(self) -> Sequence[Opportunity]: ...

    async def plan(self, opportunity: Opportunity, liquidator: str) -> Plan: ...

    async def follow_up(self, plan: Plan, outcomes: list[TxOutcome], liquidator: str) -> Plan | None: ...

    def explain(self, reason: str) -> str:
        """A revert reason in words (e.g. `CH_EAV: the account is not liquidatable ...`)."""
        ...
