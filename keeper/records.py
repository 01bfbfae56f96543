"""The audit trail's records, built from typed plans and outcomes (the README documents these fields).

`decision`: one per plan, with what it was made from (`inputs`: the plan's stage, round, size and
reward before and after each cap, beside the strategy's own detail), the estimate and the calldata
of every step. `simulation`: a dry-run's `eth_call` of each step. `transaction`: what a live send
did. `error`: a failure the keeper survived.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keeper.errors import RpcError
from keeper.receipts import TxOutcome, revert_reason
from keeper.strategy import Opportunity, Plan, Step

Explain = Callable[[str], str]


def decision(strategy: str, plan: Plan[Any], tick: int, dry_run: bool) -> dict[str, Any]:
    op, estimate = plan.opportunity, plan.estimate
    inputs: dict[str, Any] = {**plan.detail, "stage": plan.stage, "round": plan.round}
    if plan.earns:
        inputs["liquidatable_size"] = plan.size
    if plan.bad_debt:
        inputs["bad_debt"] = plan.bad_debt
    if plan.reward is not None:
        inputs.update(
            reward_gross=plan.reward.gross,
            reward_capped=plan.reward.capped,
            reward_cap_binding=plan.reward.binding,
        )
    return {
        "event": "decision",
        "tick": tick,
        "strategy": strategy,
        "account": op.account,
        "kind": op.kind,
        "market": op.market,
        "opportunity_notional": op.notional,
        "decision": "execute" if plan.execute else "skip",
        "reason": plan.reason,
        "inputs": inputs,
        "estimate": None
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
        "steps": [{"label": s.label, "to": s.to, "calldata": s.data, "gas": s.gas} for s in plan.steps],
        "dry_run": dry_run,
    }


async def simulate(rpc: Any, sender: str, step: Step, explain: Explain, *, after: int) -> dict[str, Any]:
    """`eth_call` of one step from `sender` at the latest block; `after` earlier steps were not applied."""
    tx = {"from": sender, "to": step.to, "data": "0x" + step.data.hex()}
    try:
        await rpc.request("eth_call", [tx, "latest"])
    except RpcError as exc:
        result: dict[str, Any] = {"ok": False, "reason": explain(revert_reason(exc))}
        if after > 0:
            result["note"] = "runs after the previous steps; simulated alone"
        return result
    return {"ok": True}


def simulation(strategy: str, op: Opportunity, step: Step, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "event": "simulation",
        "strategy": strategy,
        "account": op.account,
        "kind": op.kind,
        "step": step.label,
        "to": step.to,
        "calldata": step.data,
        "simulation": result,
    }


def transaction(op: Opportunity, step: Step, outcome: TxOutcome, explain: Explain) -> dict[str, Any]:
    return {
        "event": "transaction",
        "account": op.account,
        "kind": op.kind,
        "step": step.label,
        "status": outcome.status,
        "reason": explain(outcome.reason) if outcome.reason else "",
        "tx_hash": outcome.tx_hash,
        "block": outcome.block,
        "gas_used": outcome.gas_used,
        "fee_wei": outcome.fee_wei,
        "replacements": outcome.replacements,
    }


def error(
    strategy: str, stage: str, kind: str, exc: Exception, op: Opportunity | None, block: int | None
) -> dict[str, Any]:
    return {
        "event": "error",
        "strategy": strategy,
        "stage": stage,
        "error_kind": kind,
        "error": f"{type(exc).__name__}: {exc}",
        "account": op.account if op is not None else None,
        "kind": op.kind if op is not None else None,
        "market": op.market if op is not None else None,
        "block": block,
    }
