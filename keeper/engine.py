"""One head of the keeper: track what is in flight → refresh → plan everything, concurrently → rank →
decide → send every profitable plan without waiting for receipts (or, in dry-run, simulate).

The engine knows no protocol: strategies price opportunities into typed plans. Live, every plan's
first transaction goes out at the head it was planned on, simulated there, with consecutive nonces
in rank order (largest first); its next steps go out as each previous one is mined (`track`). While
a plan is in flight its account (`Opportunity.exclusive`) is not planned again, and the capital it
commits counts against what later plans may use; a gas budget bounds what one block is sent.
Nothing chains in process: the next partial round, the close of a taken-over position, the sale of
seized collateral are planned again from the chain at a later head.

One error policy: a failure while refreshing a strategy, or planning or sending one opportunity, is
recorded (audit record, log line with the account, `perp_keeper_errors{kind}`), cools that
opportunity down, and the tick goes on with the others.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from keeper import gas, preflight, records
from keeper.audit import AuditLog
from keeper.errors import error_kind
from keeper.flights import Flight, Flights, Result
from keeper.metrics import Metrics
from keeper.ports import Caller, Hooks, Sender
from keeper.receipts import Pending, TxOutcome
from keeper.rpc import BlockHeader
from keeper.strategy import Opportunity, Plan, Strategy

log = logging.getLogger(__name__)
ERROR_COOLDOWN_SECONDS = 30.0
GAS_BUDGET_SHARE = (1, 2)  # of the block gas limit, when no budget is set
Planned = tuple[Strategy[Any], Plan[Any], Result]


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
        gas_budget: int | None = None,
        max_in_flight: int | None = None,
        plan_concurrency: int = 16,
        error_cooldown: float = ERROR_COOLDOWN_SECONDS,
        poll_seconds: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        gate: Callable[[], Awaitable[bool]] | None = None,
        mine: Callable[[str], bool] | None = None,
    ) -> None:
        self.strategies, self.rpc, self.liquidator = strategies, rpc, liquidator
        self.gate = gate  # replicas: "may I send?" (keeper/lease.py Gate); a standby plans, never sends
        self.mine = mine  # shards: which opportunities (by `exclusive`) this engine's signer takes
        self.audit, self.tx, self.metrics = audit, tx, metrics
        self.gas_budget, self.error_cooldown, self.clock = gas_budget, error_cooldown, clock
        self.max_in_flight = max_in_flight  # plans at once (1: one transaction at a time, the old way)
        self.poll_seconds = poll_seconds
        self._planning = asyncio.Semaphore(plan_concurrency)
        self.flights = Flights()
        self.cooling: dict[str, tuple[float, str]] = {}  # opportunity key -> (until, error kind)
        self.decided: dict[str, str] = {}  # opportunity key -> the decision last recorded (its shape)
        self.ticks = 0
        self.hooks = Hooks()  # observers (alerts): told of plans, outcomes and tick results

    @property
    def dry_run(self) -> bool:
        return self.tx is None

    async def tick(self, head: BlockHeader | None = None) -> list[Result]:
        self.ticks += 1
        head = head or await self.rpc.header("latest")
        at_head = gas.HEAD.set(head.number)  # every plan of this head shares its gas prices
        try:
            return await self._tick(head)
        finally:
            gas.HEAD.reset(at_head)

    async def _tick(self, head: BlockHeader) -> list[Result]:
        if self.metrics is not None:
            self.metrics.ticked(head.timestamp)  # a tick under way is alive; a stuck one ages out
        self._prune_cooling()
        await self.track()
        results: list[Result] = []
        candidates = await self._candidates(head, results)
        planned = await asyncio.gather(*(self._plan(s, op, results) for s, op in candidates))
        await self._execute([p for p in planned if p is not None], head)
        results += [r for _, _, r in (p for p in planned if p is not None)]
        self._forget_decisions({op.key for _, op in candidates})
        order = {op.key: i for i, (_, op) in enumerate(candidates)}
        results = sorted(results, key=lambda r: order.get(r.key, -1))  # failures and cooling first
        self.hooks.call(self.hooks.ticked, head.number, results)
        return results

    async def run_once(self, max_passes: int = 20) -> list[Result]:
        """Heads until one executes nothing, each drained: rounds, closes, sales, accounts tipped over."""
        results: list[Result] = []
        for _ in range(max_passes):
            this_pass = await self.tick()
            await self.drain()
            # an opportunity skipped again for the same reason is one row, not one per pass
            skipped = {(r.key, r.reason) for r in results if r.status == "skipped"}
            results += [r for r in this_pass if r.status != "skipped" or (r.key, r.reason) not in skipped]
            if self.dry_run or not any(r.status == "executed" for r in this_pass):
                break
        return results

    async def drain(self, within: float = 120.0) -> None:
        """Follow what is in flight until it has all landed, or `within` seconds have passed."""
        deadline = self.clock() + within
        while len(self.flights) and self.clock() < deadline:
            await self.track()
            if len(self.flights):
                await asyncio.sleep(self.poll_seconds)

    # --- what may be planned --------------------------------------------------------------------------
    async def _candidates(self, head: BlockHeader, results: list[Result]) -> list[tuple[Strategy[Any], Any]]:
        busy = set(self.tx.in_flight()) if self.tx is not None else set()
        busy |= {f.exclusive for f in self.flights}
        candidates: list[tuple[Strategy[Any], Any]] = []
        for strategy in self.strategies:
            for op in await self._refresh(strategy, head):
                if not op.liquidatable or op.exclusive in busy or (self.mine and not self.mine(op.exclusive)):
                    continue  # makers not liquidatable yet (cancel only); what a plan in flight holds
                busy.add(op.exclusive)  # one plan per account a head: the next waits for this one
                if (cooling := self.cooling.get(op.key)) is not None:
                    result = _result(op, "skipped", f"cooling down after an error ({cooling[1]})")
                    results.append(result)
                    continue
                candidates.append((strategy, op))
        return candidates

    async def _refresh(self, strategy: Strategy[Any], head: BlockHeader) -> Sequence[Opportunity]:
        started = time.monotonic()
        try:
            await strategy.refresh(head)
            opportunities = strategy.opportunities()
        except Exception as exc:
            self._survived(exc, "refresh", strategy=strategy.name, block=head.number)
            return []
        if self.metrics is not None:
            self.metrics.scan_seconds.observe(time.monotonic() - started)
            self.metrics.liquidatable.set(sum(1 for o in opportunities if o.liquidatable))
        return opportunities

    async def _plan(self, strategy: Strategy[Any], op: Opportunity, results: list[Result]) -> Planned | None:
        async with self._planning:
            try:
                plan = await strategy.plan(op, self.liquidator)
            except Exception as exc:
                results.append(self._failed(_result(op, "skipped"), strategy, op, "plan", exc))
                return None
        self.hooks.call(self.hooks.planned, plan)
        result = _result(op, "skipped", plan.reason)
        result.profit = plan.estimate.profit if plan.estimate is not None else 0
        return strategy, plan, result

    # --- deciding and sending ---------------------------------------------------------------------------
    async def _execute(self, planned: list[Planned], head: BlockHeader) -> None:
        budget = self.gas_budget or head.gas_limit * GAS_BUDGET_SHARE[0] // GAS_BUDGET_SHARE[1] or None
        used, committed, accepted = 0, dict[str, int](), list[Planned]()
        for strategy, plan, result in planned:
            self._record_decision(strategy, plan)
            if not plan.execute:
                continue
            if why := self._over_capital(plan, committed):
                result.reason = why
                continue
            if self.max_in_flight is not None and len(self.flights) + len(accepted) >= self.max_in_flight:
                result.reason = (
                    f"{self.max_in_flight} plan(s) in flight already (KEEPER_MAX_IN_FLIGHT): next head"
                )
                continue
            cost = sum(step.gas for step in plan.steps)  # a plan's steps land in one block
            if budget is not None and used + cost > budget:
                result.reason = f"this block's gas budget is used ({used:,} of {budget:,}): next head"
                continue
            used += cost
            accepted.append((strategy, plan, result))
        if self.tx is None:
            for strategy, plan, result in accepted:
                await self._simulate_all(strategy, plan, result)
            return
        if self.gate is not None and not await self.gate():
            for _, _, result in accepted:
                result.status, result.reason = "standby", "another replica holds the lease"
            return
        await self._send(accepted, head, self.tx)

    def _over_capital(self, plan: Plan[Any], committed: dict[str, int]) -> str:
        if plan.capital is None:
            return ""
        name, required, available = plan.capital
        taken = self.flights.committed(name) + committed.get(name, 0)
        if taken + required > available:
            return f"{name}: {required:,} needed, {available - taken:,} left after what is in flight"
        committed[name] = committed.get(name, 0) + required
        return ""

    async def _send(self, accepted: list[Planned], head: BlockHeader, tx: Sender) -> None:
        """Prove every plan at the head as the one sequence they will land as, price them; then sign and
        broadcast them in that (rank) order."""
        flights = [Flight(s, p, r) for s, p, r in accepted]
        try:
            prepared = await tx.prepare_batch([f.requests() for f in flights], block=head.number)
        except Exception as exc:
            for flight in flights:
                self._failed(flight.result, flight.strategy, flight.plan.opportunity, "send", exc)
            return
        for flight, ready in zip(flights, prepared, strict=True):
            if not isinstance(ready, TxOutcome):
                priced = preflight.capped(ready, flight.plan.gas_ceiling_wei)
                if isinstance(priced, str):
                    flight.result.reason = priced
                    continue
                ready = priced
            try:
                sent = [ready] if isinstance(ready, TxOutcome) else await tx.dispatch_all(ready)
            except Exception as exc:
                self._failed(flight.result, flight.strategy, flight.plan.opportunity, "send", exc)
                continue
            self._launched(flight, sent)

    def _launched(self, flight: Flight, sent: Sequence[Pending | TxOutcome]) -> None:
        for item in sent:
            if isinstance(item, TxOutcome):
                self._landed(flight, item)
                continue
            flight.sent += 1
            flight.pendings.append(item)
            flight.result.txs.append(item.hashes[-1])
            flight.result.status = "sent"
        if flight.pendings:
            self.flights.add(flight)

    async def track(self) -> None:
        """Receipts of what is in flight (one batch); a plan sent one step a block sends its next."""
        if self.tx is None or not (len(self.flights) or self.tx.in_flight()):
            return
        try:
            await self.tx.poll()
        except Exception as exc:
            self._survived(exc, "track", strategy="engine")
            return
        for flight in self.flights:
            while flight.pendings and flight.pendings[0].outcome is not None:
                outcome = flight.pendings.pop(0).outcome
                assert outcome is not None
                self._landed(flight, outcome)
            if flight.pendings:
                continue
            if flight.done:
                self.flights.land(flight)
            else:
                await self._next_step(flight)

    async def _next_step(self, flight: Flight) -> None:
        """Where the node could not prove the plan as a whole: the next step, simulated now."""
        assert self.tx is not None
        try:
            sent = await self.tx.submit(flight.request(flight.sent))
        except Exception as exc:
            self.flights.land(flight)
            self._failed(flight.result, flight.strategy, flight.plan.opportunity, "send", exc)
            return
        self.flights.land(flight)
        self._launched(flight, [sent])

    def _landed(self, flight: Flight, outcome: TxOutcome) -> None:
        """What one step's outcome does to its result row, the metrics and the audit trail."""
        result, plan, strategy = flight.result, flight.plan, flight.strategy
        index = next(
            (i for i, r in enumerate(flight.requests()) if r.key == outcome.request.key), flight.landed
        )
        step = plan.steps[min(index, len(plan.steps) - 1)]
        flight.outcomes.append(outcome)
        result.gas_wei += outcome.fee_wei
        if outcome.tx_hash and outcome.tx_hash not in result.txs:
            result.txs.append(outcome.tx_hash)
        if self.metrics is not None and outcome.status != "skipped":
            self.metrics.transactions.labels(outcome.status).inc()
            self.metrics.replaced.inc(outcome.replacements)
        self.audit.record(**records.transaction(plan.opportunity, step, outcome, strategy.explain))
        self.hooks.call(self.hooks.landed, plan, step.label, outcome, strategy.explain(outcome.reason))
        _log_outcome(plan.opportunity, step.label, outcome)
        if outcome.status == "skipped":
            result.status, result.reason = "skipped", outcome.reason
        elif not outcome.ok:
            result.status = "failed"
            result.reason = f"{step.label}: {outcome.status} {strategy.explain(outcome.reason)}".strip()
        elif flight.landed == len(plan.steps) and result.status != "failed":
            result.status, result.reason = "executed", plan.reason
            if plan.earns:
                result.size, result.reward = abs(plan.size), plan.reward_capped
                if self.metrics is not None:
                    self.metrics.realised.inc(plan.reward_capped / 10**18)

    async def _simulate_all(self, strategy: Strategy[Any], plan: Plan[Any], result: Result) -> None:
        for i, step in enumerate(plan.steps):
            simulation = await records.simulate(self.rpc, self.liquidator, step, strategy.explain, after=i)
            self.audit.record(**records.simulation(strategy.name, plan.opportunity, step, simulation))
        result.status, result.reason = "dry-run", plan.reason
        result.size, result.reward = abs(plan.size), plan.reward_capped  # what it would take

    def _record_decision(self, strategy: Strategy[Any], plan: Plan[Any]) -> None:
        """A decision is written when it changes (its decision or the shape of its reason), not every head."""
        key = plan.opportunity.key
        shape = f"{plan.execute}:{re.sub(r'[0-9][0-9.,]*', '#', plan.reason)}"
        if plan.execute or self.decided.get(key) != shape:
            self.audit.record(**records.decision(strategy.name, plan, self.ticks, self.dry_run))
        self.decided[key] = shape

    def _forget_decisions(self, seen: set[str]) -> None:
        self.decided = {k: v for k, v in self.decided.items() if k in seen}

    # --- failures -----------------------------------------------------------------------------------------
    def _failed(
        self, result: Result, strategy: Strategy[Any], opportunity: Opportunity, stage: str, exc: Exception
    ) -> Result:
        kind = self._survived(exc, stage, strategy=strategy.name, opportunity=opportunity)
        self.cooling[opportunity.key] = (self.clock() + self.error_cooldown, kind)
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
        self.cooling = {k: v for k, v in self.cooling.items() if v[0] > now}


def _result(op: Opportunity, status: str, reason: str = "") -> Result:
    return Result(op.account, op.kind, op.market, status, reason, key=op.key)


def _log_outcome(op: Opportunity, label: str, outcome: TxOutcome) -> None:
    log.info(
        "%s %s %s: %s %s",
        op.kind,
        op.account,
        label,
        outcome.status,
        outcome.reason,
        extra={"account": op.account, "kind": op.kind, "step": label, "tx": outcome.tx_hash},
    )
