"""Plans in flight: a plan's steps go out one after the other, each when the previous one is mined
(a maker's cancel before its liquidation, a flag before a Synthetix liquidation), and what a plan
holds while it is in flight (its account, the capital it commits) is not offered to another plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keeper.receipts import Pending, TxOutcome, TxRequest
from keeper.strategy import Plan, Strategy


@dataclass
class Result:
    """What happened to one opportunity (a summary row)."""

    account: str
    kind: str
    market: str | None
    status: str  # executed, skipped, failed, dry-run, sent (in flight)
    reason: str = ""
    size: int = 0  # liquidated
    reward: int = 0  # X18, capped
    profit: int = 0  # X18, estimated
    gas_wei: int = 0  # paid, every step
    txs: list[str] = field(default_factory=list)
    key: str = ""  # the opportunity's


@dataclass
class Flight:
    """One plan on its way: the steps sent so far (in nonce order) and what came of them."""

    strategy: Strategy[Any]
    plan: Plan[Any]
    result: Result
    sent: int = 0  # steps sent so far
    pendings: list[Pending] = field(default_factory=list)  # sent, not yet landed, in order
    outcomes: list[TxOutcome] = field(default_factory=list)

    @property
    def exclusive(self) -> str:
        return str(self.plan.opportunity.exclusive)

    def request(self, index: int) -> TxRequest:
        """The transaction of step `index`; its key names the step for the journal."""
        op, step = self.plan.opportunity, self.plan.steps[index]
        key = f"{op.key}:{self.plan.stage}:{index}:{step.label}"
        return TxRequest(key, op.exclusive, step.to, step.data, step.label)

    def requests(self) -> list[TxRequest]:
        return [self.request(i) for i in range(len(self.plan.steps))]

    @property
    def landed(self) -> int:
        return len(self.outcomes)

    @property
    def done(self) -> bool:
        """Nothing of it is still pending, and either a step failed or every step landed."""
        failed = any(not o.ok for o in self.outcomes)
        return not self.pendings and (failed or self.landed == len(self.plan.steps))


class Flights:
    def __init__(self) -> None:
        self.by_exclusive: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self.by_exclusive)

    def __iter__(self) -> Any:
        return iter(list(self.by_exclusive.values()))

    def add(self, flight: Flight) -> None:
        self.by_exclusive[flight.exclusive] = flight

    def land(self, flight: Flight) -> None:
        self.by_exclusive.pop(flight.exclusive, None)

    def holds(self, exclusive: str) -> bool:
        return exclusive in self.by_exclusive

    def committed(self, capital: str) -> int:
        """What plans in flight need of `capital` (not yet reflected in what the chain says is free)."""
        return sum(
            f.plan.capital[1]
            for f in self.by_exclusive.values()
            if f.plan.capital is not None and f.plan.capital[0] == capital
        )
