"""One pass of the keeper: refresh → opportunities (ranked) → plan → decide → execute or record.

The engine knows no protocol: strategies price opportunities into plans of transactions and say what
comes after a plan ran (the next partial liquidation, closing what was taken over). Live, every
transaction goes through the one `TxManager`; in dry-run nothing is signed, each step is simulated
with `eth_call` and every decision lands in the audit trail with its inputs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from keeper.audit import AuditLog
from keeper.errors import RpcError
from keeper.metrics import Metrics
from keeper.rpc import BlockHeader, Rpc
from keeper.tx import TxManager, TxOutcome, TxRequest, revert_reason
from strategies.base import Opportunity, Plan, Strategy

log = logging.getLogger(__name__)


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
        strategies: Sequence[Strategy],
        rpc: Rpc,
        liquidator: str,
        audit: AuditLog,
        tx: TxManager | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.strategies, self.rpc, self.liquidator = strategies, rpc, liquidator
        self.audit, self.tx, self.metrics = audit, tx, metrics
        self.ticks = 0

    @property
    def dry_run(self) -> bool:
        return self.tx is None

    async def tick(self, head: BlockHeader | None = None) -> list[Result]:
        results: list[Result] = []
        self.ticks += 1
        if self.metrics is not None and head is not None:
            self.metrics.ticked(head.timestamp)  # a tick under way is alive; a stuck one ages out
        executed = False
        for strategy in self.strategies:
            started = time.monotonic()
            # after this tick's own transactions, later strategies look at the chain they left
            await strategy.refresh(None if executed else head)
            opportunities = strategy.opportunities()
            if self.metrics is not None:
                self.metrics.scan_seconds.observe(time.monotonic() - started)
                self.metrics.liquidatable.set(sum(1 for o in opportunities if o.liquidatable))
            for opportunity in opportunities:
                if not opportunity.liquidatable:
                    continue  # makers whose orders may be cancelled but who are not liquidatable yet
                plan = await strategy.plan(opportunity, self.liquidator)
                results.append(await self._carry_out(strategy, plan))
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

    async def _carry_out(self, strategy: Strategy, plan: Plan | None) -> Result:
        assert plan is not None
        op = plan.opportunity
        result = Result(op.account, op.kind, _market(op), "skipped", key=op.key)
        if plan.estimate is not None:
            result.profit = plan.estimate.profit
        first = True
        while plan is not None:
            self._record_decision(strategy, plan)
            if not plan.execute:
                if first:
                    result.reason = plan.reason
                break
            if self.tx is None:
                await self._simulate_all(strategy, plan)
                result.status, result.reason = "dry-run", plan.reason
                result.size = abs(int(plan.inputs.get("liquidatable_size", 0)))  # what it would take
                result.reward = int(plan.inputs.get("reward_capped", 0))
                break
            outcomes = await self._send_all(strategy, plan, self.tx)
            result.gas_wei += sum(o.fee_wei for o in outcomes)
            result.txs += [o.tx_hash for o in outcomes if o.tx_hash]
            if all(o.ok for o in outcomes):
                result.status = "executed"
                if plan.inputs.get("stage") == "liquidate":
                    result.size += abs(int(plan.inputs.get("liquidatable_size", 0)))
                    result.reward += int(plan.inputs.get("reward_capped", 0))
                    if self.metrics is not None:
                        self.metrics.realised.inc(int(plan.inputs.get("reward_capped", 0)) / 10**18)
            else:
                failed = next(o for o in outcomes if not o.ok)
                if result.status != "executed":
                    result.status = "failed"
                reason = strategy.explain(failed.reason)
                result.reason = f"{failed.request.label}: {failed.status} {reason}".strip()
            first = False
            plan = await strategy.follow_up(plan, outcomes, self.liquidator)
        return result

    async def _send_all(self, strategy: Strategy, plan: Plan, tx: TxManager) -> list[TxOutcome]:
        outcomes = []
        round_ = plan.inputs.get("round", 1)
        for step in plan.steps:
            request = TxRequest(
                key=f"{plan.opportunity.key}:{round_}:{step.label}",
                account=plan.opportunity.account,
                to=step.to,
                data=step.data,
                label=step.label,
            )
            outcome = await tx.send(request)
            outcomes.append(outcome)
            if self.metrics is not None and outcome.status != "skipped":
                self.metrics.transactions.labels(outcome.status).inc()
                self.metrics.replaced.inc(outcome.replacements)
            self.audit.record(
                event="transaction",
                account=plan.opportunity.account,
                kind=plan.opportunity.kind,
                step=step.label,
                status=outcome.status,
                reason=strategy.explain(outcome.reason) if outcome.reason else "",
                tx_hash=outcome.tx_hash,
                block=outcome.block,
                gas_used=outcome.gas_used,
                fee_wei=outcome.fee_wei,
                replacements=outcome.replacements,
            )
            log.info(
                "%s %s %s: %s %s",
                plan.opportunity.kind,
                plan.opportunity.account,
                step.label,
                outcome.status,
                outcome.reason,
                extra={
                    "account": plan.opportunity.account,
                    "kind": plan.opportunity.kind,
                    "step": step.label,
                    "tx": outcome.tx_hash,
                    "status": outcome.status,
                },
            )
            if not outcome.ok:
                break
        return outcomes

    async def _simulate_all(self, strategy: Strategy, plan: Plan) -> None:
        for i, step in enumerate(plan.steps):
            tx = {"from": self.liquidator, "to": step.to, "data": "0x" + step.data.hex()}
            try:
                await self.rpc.request("eth_call", [tx, "latest"])
                simulation: dict[str, Any] = {"ok": True}
            except RpcError as exc:
                simulation = {"ok": False, "reason": strategy.explain(revert_reason(exc))}
                if i > 0:
                    simulation["note"] = "runs after the previous steps; simulated alone"
            self.audit.record(
                event="simulation",
                strategy=strategy.name,
                account=plan.opportunity.account,
                kind=plan.opportunity.kind,
                step=step.label,
                to=step.to,
                calldata=step.data,
                simulation=simulation,
            )

    def _record_decision(self, strategy: Strategy, plan: Plan) -> None:
        op = plan.opportunity
        estimate = plan.estimate
        self.audit.record(
            event="decision",
            tick=self.ticks,
            strategy=strategy.name,
            account=op.account,
            kind=op.kind,
            market=_market(op),
            opportunity_notional=op.notional,
            decision="execute" if plan.execute else "skip",
            reason=plan.reason,
            inputs=plan.inputs,
            estimate=None
            if estimate is None
            else {
                "reward_gross": estimate.reward.gross,
                "reward_capped": estimate.reward.capped,
                "protocol_cap": estimate.reward.protocol_cap,
                "operator_cap": estimate.reward.operator_cap,
                "gas_cost": estimate.gas_cost,
                "l1_cost": estimate.l1_cost,
                "unwind_cost": estimate.unwind_cost,
                "swap_value": estimate.swap_value,
                "profit": estimate.profit,
                "min_profit": estimate.min_profit,
            },
            steps=[{"label": s.label, "to": s.to, "calldata": s.data, "gas": s.gas} for s in plan.steps],
            dry_run=self.dry_run,
        )


def _market(op: Opportunity) -> str | None:
    return (
        getattr(op, "base_token", None)
        or getattr(op, "collateral_token", None)
        or getattr(op, "market", None)
    )
