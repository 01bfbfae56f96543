"""One pass of the keeper: refresh → opportunities (ranked) → plan → decide → execute or record.

The engine knows no protocol: strategies price opportunities into typed plans and say what comes
after a plan ran (the next partial liquidation, closing what was taken over). Live, every transaction
goes through the one `TxManager`; in dry-run nothing is signed, each step is simulated with `eth_call`
and every decision lands in the audit trail (`keeper/records.py`).

One error policy: a failure while refreshing a strategy, or planning, sending or following up one
opportunity, is recorded (audit record, log line with the account, `perp_keeper_errors{kind}`), cools
that opportunity down, and the tick goes on with the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from keeper import records
from keeper.audit import AuditLog
from keeper.errors import error_kind
from keeper.metrics import Metrics
from keeper.rpc import BlockHeader
from keeper.strategy import Opportunity, Plan, Strategy
from keeper.tx import TxOutcome, TxRequest

log = logging.getLogger(__name__)
ERROR_COOLDOWN_SECONDS = 30.0


class Sender(Protocol):
    """What the engine needs of the transaction manager (`keeper/tx.py`)."""

    async def send(self, request: TxRequest) -> TxOutcome: ...


class Caller(Protocol):
    """What the engine needs of the RPC client: `eth_call` for dry-run simulations."""

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any: ...


@dataclass
class Result:
    """What happened to one opportunity (a summary row)."""

    account: str
    kind: str
    market: str | None
    status: str  # executed, skipped, failed, dry-run
    reason: str = ""
    size: int = 0  # liquidated, summed over rounds
    reward: int = 0  # X18, capped, summed over rounds
    profit: int = 0  # X18, estimated before the first round
    gas_wei: int = 0  # paid, every step
    txs: list[str] = field(default_factory=list)
    key: str = ""  # the opportunity's


class Engine:
    def __init__(
        self,
        strategies: Sequence[Strategy[Any]],
        rpc: Caller,
        liquidator: str,
        audit: AuditLog,
        tx: Sender | None,
        metrics: Metrics | None = None,
        *,
        error_cooldown: float = ERROR_COOLDOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.strategies, self.rpc, self.liquidator = strategies, rpc, liquidator
        self.audit, self.tx, self.metrics = audit, tx, metrics
        self.error_cooldown, self.clock = error_cooldown, clock
        self.cooling: dict[str, tuple[float, str]] = {}  # opportunity key -> (until, error kind)
        self.ticks = 0

    @property
    def dry_run(self) -> bool:
        return self.tx is None

    async def tick(self, head: BlockHeader | None = None) -> list[Result]:
        results: list[Result] = []
        self.ticks += 1
        if self.metrics is not None and head is not None:
            self.metrics.ticked(head.timestamp)  # a tick under way is alive; a stuck one ages out
        self._prune_cooling()
        executed = False
        for strategy in self.strategies:
            # after this tick's own transactions, later strategies look at the chain they left
            opportunities = await self._refresh(strategy, None if executed else head)
            for opportunity in opportunities:
                if not opportunity.liquidatable:
                    continue  # makers whose orders may be cancelled but who are not liquidatable yet
                results.append(await self._attempt(strategy, opportunity))
                executed = executed or results[-1].status == "executed"
        return results

    async def run_once(self, max_passes: int = 5) -> list[Result]:
        """Passes until one executes nothing: partials and accounts that a price move tipped over."""
        results: list[Result] = []
        for _ in range(max_passes):
            this_pass = await self.tick()
            # an opportunity skipped again for the same reason is one row, not one per pass
            skipped = {(r.key, r.reason) for r in results if r.status == "skipped"}
            results += [r for r in this_pass if r.status != "skipped" or (r.key, r.reason) not in skipped]
            if self.dry_run or not any(r.status == "executed" for r in this_pass):
                break
        return results

    # --- one strategy, one opportunity -----------------------------------------------------------------
    async def _refresh(self, strategy: Strategy[Any], head: BlockHeader | None) -> Sequence[Opportunity]:
        started = time.monotonic()
        try:
            await strategy.refresh(head)
            opportunities = strategy.opportunities()
        except Exception as exc:
            self._survived(exc, "refresh", strategy=strategy.name, block=head.number if head else None)
            return []
        if self.metrics is not None:
            self.metrics.scan_seconds.observe(time.monotonic() - started)
            self.metrics.liquidatable.set(sum(1 for o in opportunities if o.liquidatable))
        return opportunities

    async def _attempt(self, strategy: Strategy[Any], opportunity: Opportunity) -> Result:
        result = Result(
            opportunity.account, opportunity.kind, opportunity.market, "skipped", key=opportunity.key
        )
        cooling = self.cooling.get(opportunity.key)
        if cooling is not None:
            result.reason = f"cooling down after an error ({cooling[1]})"
            return result
        try:
            plan = await strategy.plan(opportunity, self.liquidator)
        except Exception as exc:
            return self._failed(result, strategy, opportunity, "plan", exc)
        try:
            await self._carry_out(strategy, plan, result)
        except Exception as exc:
            return self._failed(result, strategy, opportunity, "execute", exc)
        return result

    async def _carry_out(self, strategy: Strategy[Any], plan: Plan[Any], result: Result) -> None:
        if plan.estimate is not None:
            result.profit = plan.estimate.profit
        first = True
        current: Plan[Any] | None = plan
        while current is not None:
            self.audit.record(**records.decision(strategy.name, current, self.ticks, self.dry_run))
            if not current.execute:
                if first:
                    result.reason = current.reason
                return
            if self.tx is None:
                await self._simulate_all(strategy, current)
                result.status, result.reason = "dry-run", current.reason
                result.size, result.reward = abs(current.size), current.reward_capped  # what it would take
                return
            outcomes = await self._send_all(strategy, current, self.tx)
            self._account(result, strategy, current, outcomes)
            first, ran = False, current
            try:
                current = await strategy.follow_up(ran, outcomes, self.liquidator)
            except Exception as exc:
                self._survived(exc, "follow-up", strategy=strategy.name, opportunity=ran.opportunity)
                result.reason = f"follow-up failed: {type(exc).__name__}: {exc}"
                return

    def _account(
        self, result: Result, strategy: Strategy[Any], plan: Plan[Any], outcomes: list[TxOutcome]
    ) -> None:
        result.gas_wei += sum(o.fee_wei for o in outcomes)
        result.txs += [o.tx_hash for o in outcomes if o.tx_hash]
        if all(o.ok for o in outcomes):
            result.status = "executed"
            if plan.earns:
                result.size += abs(plan.size)
                result.reward += plan.reward_capped
                if self.metrics is not None:
                    self.metrics.realised.inc(plan.reward_capped / 10**18)
            return
        failed = next(o for o in outcomes if not o.ok)
        if result.status != "executed":
            result.status = "failed"
        result.reason = f"{failed.request.label}: {failed.status} {strategy.explain(failed.reason)}".strip()

    async def _send_all(self, strategy: Strategy[Any], plan: Plan[Any], tx: Sender) -> list[TxOutcome]:
        outcomes = []
        op = plan.opportunity
        for step in plan.steps:
            request = TxRequest(
                f"{op.key}:{plan.round}:{step.label}", op.account, step.to, step.data, step.label
            )
            outcome = await tx.send(request)
            outcomes.append(outcome)
            if self.metrics is not None and outcome.status != "skipped":
                self.metrics.transactions.labels(outcome.status).inc()
                self.metrics.replaced.inc(outcome.replacements)
            self.audit.record(**records.transaction(op, step, outcome, strategy.explain))
            log.info(
                "%s %s %s: %s %s",
                op.kind,
                op.account,
                step.label,
                outcome.status,
                outcome.reason,
                extra={"account": op.account, "kind": op.kind, "step": step.label, "tx": outcome.tx_hash},
            )
            if not outcome.ok:
                break
        return outcomes

    async def _simulate_all(self, strategy: Strategy[Any], plan: Plan[Any]) -> None:
        for i, step in enumerate(plan.steps):
            simulation = await records.simulate(self.rpc, self.liquidator, step, strategy.explain, after=i)
            self.audit.record(**records.simulation(strategy.name, plan.opportunity, step, simulation))

    # --- failures -----------------------------------------------------------------------------------------
    def _failed(
        self, result: Result, strategy: Strategy[Any], opportunity: Opportunity, stage: str, exc: Exception
    ) -> Result:
        kind = self._survived(exc, stage, strategy=strategy.name, opportunity=opportunity)
        self.cooling[opportunity.key] = (self.clock() + self.error_cooldown, kind)
        if result.status != "executed":
            result.status = "failed"
        result.reason = f"{stage} failed: {type(exc).__name__}: {exc}"
        return result

    def _survived(
        self,
        exc: Exception,
        stage: str,
        *,
        strategy: str,
        opportunity: Opportunity | None = None,
        block: int | None = None,
    ) -> str:
        """Record a failure the keeper goes on after: audit record, one log line, a metric by kind."""
        kind = error_kind(exc)
        if self.metrics is not None:
            self.metrics.errors.labels(kind).inc()
        self.audit.record(**records.error(strategy, stage, kind, exc, opportunity, block))
        account = opportunity.account if opportunity is not None else None
        log.warning(
            "%s %s failed%s: %s: %s",
            strategy,
            stage,
            f" for {account}" if account else "",
            type(exc).__name__,
            exc,
            extra={"account": account, "stage": stage, "error_kind": kind},
        )
        log.debug("traceback of the %s failure", stage, exc_info=exc)
        return kind

    def _prune_cooling(self) -> None:
        now = self.clock()
        for key in [k for k, (until, _) in self.cooling.items() if until <= now]:
            del self.cooling[key]
