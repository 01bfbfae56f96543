"""The engine alone, with a fake strategy and a fake transaction sender: no anvil, milliseconds.

One opportunity is planned once a tick, follow-ups chain, and one failure (any kind) is recorded and
cooled down while the tick goes on with the others; the next tick happens.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keeper.audit import AuditLog
from keeper.engine import Engine
from keeper.errors import CallFailedError, ReorgDuringSyncError, RpcError, RpcUnavailableError
from keeper.metrics import Metrics
from keeper.profit import cap_reward
from keeper.rpc import BlockHeader
from keeper.strategy import CLOSE, LIQUIDATE, Plan, Step
from keeper.tx import TxOutcome, TxRequest

X18 = 10**18


@dataclass(frozen=True)
class Op:
    account: str
    notional: int
    kind: str = "taker"
    market: str | None = "0xmarket"
    liquidatable: bool = True

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.account}"


@dataclass
class FakeStrategy:
    ops: list[Op]
    name: str = "fake"
    fail_plan: dict[str, Exception] = field(default_factory=dict)  # account -> raised by plan()
    fail_refresh: list[Exception] = field(default_factory=list)  # raised by the next refreshes
    fail_follow_up: Exception | None = None
    rounds: int = 1  # liquidation rounds before the account is done
    planned: Counter[str] = field(default_factory=Counter)
    refreshed: int = 0

    async def refresh(self, head: BlockHeader | None = None) -> None:
        self.refreshed += 1
        if self.fail_refresh:
            raise self.fail_refresh.pop(0)

    def opportunities(self) -> Sequence[Op]:
        return sorted(self.ops, key=lambda o: -o.notional)

    async def plan(self, opportunity: Op, liquidator: str, round_: int = 1) -> Plan[Op]:
        self.planned[opportunity.account] += 1
        if error := self.fail_plan.get(opportunity.account):
            raise error
        step = Step("liquidate", "0xch", bytes.fromhex(opportunity.account[-2:]), 100_000)
        reward = cap_reward(opportunity.notional // 100)
        return Plan(opportunity, [step], True, "profitable", LIQUIDATE, round_, opportunity.notional, reward)

    async def follow_up(self, plan: Plan[Op], outcomes: list[TxOutcome], liquidator: str) -> Plan[Op] | None:
        if self.fail_follow_up is not None:
            raise self.fail_follow_up
        if plan.stage == LIQUIDATE:
            step = Step("close", "0xch", b"close", 50_000)
            return Plan(plan.opportunity, [step], True, "close", CLOSE, plan.round)
        if plan.round < self.rounds:
            return await self.plan(plan.opportunity, liquidator, plan.round + 1)
        return None

    def explain(self, reason: str) -> str:
        return reason


@dataclass
class FakeSender:
    sent: list[TxRequest] = field(default_factory=list)

    async def send(self, request: TxRequest) -> TxOutcome:
        self.sent.append(request)
        return TxOutcome(request, "mined", tx_hash=f"0x{len(self.sent):064x}", fee_wei=1_000)


class FakeRpc:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        self.calls.append(method)
        return "0x"


def head(number: int) -> BlockHeader:
    return BlockHeader(number, f"0x{number:064x}", f"0x{number - 1:064x}", 1_700_000_000 + 2 * number)


def engine_for(
    strategy: FakeStrategy, tmp_path: Path, *, dry_run: bool = False
) -> tuple[Engine, FakeSender, Metrics]:
    sender, metrics = FakeSender(), Metrics()
    audit = AuditLog(tmp_path / "audit.jsonl")
    engine = Engine([strategy], FakeRpc(), "0xkeeper", audit, None if dry_run else sender, metrics)
    return engine, sender, metrics


def records(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def errors_counted(metrics: Metrics, kind: str) -> float:
    value = metrics.registry.get_sample_value("perp_keeper_errors_total", {"kind": kind})
    return value or 0.0


async def test_each_opportunity_is_planned_once_a_tick_largest_first(tmp_path: Path) -> None:
    strategy = FakeStrategy([Op("0xa1", 5 * X18), Op("0xb2", 50 * X18), Op("0xc3", 20 * X18)])
    engine, sender, _ = engine_for(strategy, tmp_path)
    results = await engine.tick(head(10))
    assert strategy.planned == Counter({"0xa1": 1, "0xb2": 1, "0xc3": 1})
    assert [r.account for r in results] == ["0xb2", "0xc3", "0xa1"]
    liquidations = [r.key for r in sender.sent if r.label == "liquidate"]
    assert liquidations == ["taker:0xb2:1:liquidate", "taker:0xc3:1:liquidate", "taker:0xa1:1:liquidate"]
    assert all(r.status == "executed" for r in results)


async def test_follow_ups_chain_and_only_liquidations_count_as_rewards(tmp_path: Path) -> None:
    strategy = FakeStrategy([Op("0xa1", 100 * X18)], rounds=2)
    engine, sender, _ = engine_for(strategy, tmp_path)
    (result,) = await engine.tick(head(10))
    assert [r.label for r in sender.sent] == ["liquidate", "close", "liquidate", "close"]
    assert [r.key for r in sender.sent] == [
        "taker:0xa1:1:liquidate",
        "taker:0xa1:1:close",
        "taker:0xa1:2:liquidate",
        "taker:0xa1:2:close",
    ]
    assert result.size == 2 * 100 * X18  # two rounds liquidated; the closes add nothing
    assert result.reward == 2 * X18
    assert result.gas_wei == 4_000
    decisions = [r for r in records(tmp_path) if r["event"] == "decision"]
    assert [(d["inputs"]["stage"], d["inputs"]["round"]) for d in decisions] == [
        ("liquidate", 1),
        ("close", 1),
        ("liquidate", 2),
        ("close", 2),
    ]
    assert decisions[0]["inputs"]["reward_capped"] == X18
    assert "reward_capped" not in decisions[1]["inputs"]


async def test_one_failing_opportunity_does_not_stop_the_others(tmp_path: Path) -> None:
    failures: dict[str, Exception] = {
        "0xa1": CallFailedError(b""),
        "0xb2": RpcError("eth_call", -32603, "internal error"),
        "0xc3": ValueError("a bug in one plan"),
        "0xd4": RpcUnavailableError("eth_call: RPC http://127.0.0.1 unreachable"),
    }
    ops = [Op(a, (i + 2) * X18) for i, a in enumerate(failures)] + [Op("0xe5", X18)]
    strategy = FakeStrategy(ops, fail_plan=dict(failures))
    engine, sender, metrics = engine_for(strategy, tmp_path)
    results = {r.account: r for r in await engine.tick(head(10))}
    assert results["0xe5"].status == "executed"  # the smallest, planned after every failure
    assert {a: results[a].status for a in failures} == dict.fromkeys(failures, "failed")
    assert "plan failed: ValueError: a bug in one plan" in results["0xc3"].reason
    errors = [r for r in records(tmp_path) if r["event"] == "error"]
    assert {e["account"]: e["error_kind"] for e in errors} == {
        "0xa1": "view-reverted",
        "0xb2": "rpc-error",
        "0xc3": "internal",
        "0xd4": "rpc-unavailable",
    }
    assert errors_counted(metrics, "internal") == 1
    assert [r.key for r in sender.sent if r.label == "liquidate"] == ["taker:0xe5:1:liquidate"]

    # the next tick happens; the failed ones cool down (not planned again), the others go on
    strategy.fail_plan.clear()
    again = {r.account: r for r in await engine.tick(head(11))}
    assert {a: again[a].reason for a in failures} == {
        e["account"]: f"cooling down after an error ({e['error_kind']})" for e in errors
    }
    assert strategy.planned["0xa1"] == 1
    assert strategy.planned["0xe5"] == 2

    # once the cool-down is over they are planned again
    engine.clock = lambda: 1e12
    await engine.tick(head(12))
    assert strategy.planned["0xa1"] == 2
    assert not engine.cooling


async def test_a_failing_refresh_is_survived_and_the_next_tick_plans(tmp_path: Path) -> None:
    strategy = FakeStrategy([Op("0xa1", X18)], fail_refresh=[ReorgDuringSyncError("log in block 9")])
    engine, _, metrics = engine_for(strategy, tmp_path)
    assert await engine.tick(head(10)) == []
    assert errors_counted(metrics, "reorg") == 1
    (error,) = [r for r in records(tmp_path) if r["event"] == "error"]
    assert (error["stage"], error["block"], error["account"]) == ("refresh", 10, None)
    (result,) = await engine.tick(head(11))
    assert result.status == "executed"
    assert engine.ticks == 2


async def test_a_failing_follow_up_keeps_what_was_executed(tmp_path: Path) -> None:
    strategy = FakeStrategy([Op("0xa1", 100 * X18)], fail_follow_up=RpcError("eth_call", 3, "reverted"))
    engine, sender, metrics = engine_for(strategy, tmp_path)
    (result,) = await engine.tick(head(10))
    assert result.status == "executed"
    assert result.reward == X18
    assert result.reason.startswith("follow-up failed: RpcError")
    assert [r.label for r in sender.sent] == ["liquidate"]
    assert errors_counted(metrics, "rpc-error") == 1


async def test_dry_run_simulates_and_sends_nothing(tmp_path: Path) -> None:
    strategy = FakeStrategy([Op("0xa1", 100 * X18)])
    engine, sender, _ = engine_for(strategy, tmp_path, dry_run=True)
    (result,) = await engine.tick(head(10))
    assert (result.status, result.size, result.reward) == ("dry-run", 100 * X18, X18)
    assert sender.sent == []
    assert isinstance(engine.rpc, FakeRpc)
    assert engine.rpc.calls == ["eth_call"]
    events = [r["event"] for r in records(tmp_path)]
    assert events == ["decision", "simulation"]
