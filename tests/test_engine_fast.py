"""The engine alone, with a fake strategy and a fake transaction sender: no anvil, milliseconds.

Every plan of a head goes out at that head without waiting for receipts, largest first; a plan's
next step waits for the previous one to be mined; what is in flight is not planned again; the gas
budget and the capital in flight bound what is sent; one failure (any kind) is recorded and cooled
down while the tick goes on with the others; a decision is recorded when it changes.
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
from keeper.receipts import Pending, Prepared, TxOutcome, TxRequest
from keeper.rpc import BlockHeader, BlockId
from keeper.strategy import LIQUIDATE, Plan, Step

X18 = 10**18
GAS = 100_000


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

    @property
    def exclusive(self) -> str:
        return self.account


@dataclass
class FakeStrategy:
    ops: list[Op]
    name: str = "fake"
    fail_plan: dict[str, Exception] = field(default_factory=dict)  # account -> raised by plan()
    fail_refresh: list[Exception] = field(default_factory=list)  # raised by the next refreshes
    steps: int = 1
    capital: int | None = None  # each plan needs this much of "usdc", of 100 available
    reason: str = "profitable"
    execute: bool = True
    planned: Counter[str] = field(default_factory=Counter)

    async def refresh(self, head: BlockHeader | None = None) -> None:
        if self.fail_refresh:
            raise self.fail_refresh.pop(0)

    def opportunities(self) -> Sequence[Op]:
        return sorted(self.ops, key=lambda o: -o.notional)

    async def plan(self, opportunity: Op, liquidator: str) -> Plan[Op]:
        self.planned[opportunity.account] += 1
        if error := self.fail_plan.get(opportunity.account):
            raise error
        steps = [Step(f"step{i}", "0xch", opportunity.account.encode(), GAS) for i in range(self.steps)]
        reward = cap_reward(opportunity.notional // 100)
        plan = Plan(opportunity, steps, self.execute, self.reason, LIQUIDATE, 1, opportunity.notional, reward)
        if self.capital is not None:
            plan.capital = ("usdc", self.capital, 100)
        return plan

    def explain(self, reason: str) -> str:
        return reason


@dataclass
class FakeSender:
    """Dispatches in order; `poll` mines everything pending (unless `mining` is off). With `bundles`
    a plan's steps are proven together and all go out at once; without, one a block."""

    dispatched: list[TxRequest] = field(default_factory=list)
    pending: dict[str, Pending] = field(default_factory=dict)
    mining: bool = True
    bundles: bool = True

    async def prepare_batch(
        self, plans: Sequence[Sequence[TxRequest]], *, block: BlockId
    ) -> list[list[Prepared] | TxOutcome]:
        return [[Prepared(r, GAS, 2, 1) for r in (steps if self.bundles else steps[:1])] for steps in plans]

    async def dispatch_all(self, prepared: Sequence[Prepared]) -> list[Pending | TxOutcome]:
        sent: list[Pending | TxOutcome] = []
        for ready in prepared:
            nonce = len(self.dispatched)
            self.dispatched.append(ready.request)
            pending = Pending(ready.request, nonce, GAS, 2, 1, [f"0x{nonce:064x}"], b"", 0, 0.0)
            self.pending[ready.request.key] = pending
            sent.append(pending)
        return sent

    async def submit(self, request: TxRequest, *, block: BlockId = "latest") -> Pending | TxOutcome:
        (sent,) = await self.dispatch_all([Prepared(request, GAS, 2, 1)])
        return sent

    async def poll(self) -> list[TxOutcome]:
        if not self.mining:
            return []
        done = []
        for p in self.pending.values():
            p.outcome = TxOutcome(p.request, "mined", tx_hash=p.hashes[-1], fee_wei=1_000)
            done.append(p.outcome)
        self.pending.clear()
        return done

    def in_flight(self) -> set[str]:
        return {p.request.account for p in self.pending.values()}


class FakeRpc:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.number = 10

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        self.calls.append(method)
        return "0x"

    async def header(self, block: BlockId = "latest") -> BlockHeader:
        return head(self.number)


def head(number: int, gas_limit: int = 30_000_000) -> BlockHeader:
    return BlockHeader(
        number, f"0x{number:064x}", f"0x{number - 1:064x}", 1_700_000_000 + 2 * number, gas_limit
    )


def engine_for(
    strategy: FakeStrategy, tmp_path: Path, *, dry_run: bool = False, gas_budget: int | None = None
) -> tuple[Engine, FakeSender, Metrics]:
    sender, metrics = FakeSender(), Metrics()
    audit = AuditLog(tmp_path / "audit.jsonl")
    tx = None if dry_run else sender
    engine = Engine([strategy], FakeRpc(), "0xkeeper", audit, tx, metrics, gas_budget=gas_budget)
    return engine, sender, metrics


def records(tmp_path: Path, event: str) -> list[dict[str, Any]]:
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def errors_counted(metrics: Metrics, kind: str) -> float:
    return metrics.registry.get_sample_value("perp_keeper_errors_total", {"kind": kind}) or 0.0


async def test_every_plan_of_a_head_goes_out_at_once_largest_first(tmp_path: Path) -> None:
    ops = [Op(f"0x{i:02d}", (i % 7 + 1) * X18 + i) for i in range(40)]
    strategy = FakeStrategy(ops)
    engine, sender, _ = engine_for(strategy, tmp_path)
    sender.mining = False  # nothing is mined: the tick must not wait for receipts
    results = await engine.tick(head(10))
    assert len(sender.dispatched) == 40  # forty liquidations in one head, no receipt awaited
    largest_first = [o.account for o in sorted(ops, key=lambda o: -o.notional)]
    assert [r.account for r in sender.dispatched] == largest_first  # consecutive nonces, largest first
    assert [r.account for r in results] == largest_first
    assert {r.status for r in results} == {"sent"}
    assert strategy.planned == Counter({o.account: 1 for o in ops})

    # in flight: not planned again at the next head, nothing sent twice
    await engine.tick(head(11))
    assert len(sender.dispatched) == 40
    assert sum(strategy.planned.values()) == 40

    # mined: the results say so, and the next head plans the accounts again (the next round)
    sender.mining = True
    await engine.tick(head(12))
    assert {r.status for r in results} == {"executed"}
    assert sum(r.reward for r in results) == sum(o.notional // 100 for o in ops)
    assert all(strategy.planned[o.account] == 2 for o in ops)


async def test_a_plans_steps_go_out_together_in_order(tmp_path: Path) -> None:
    strategy = FakeStrategy([Op("0xa1", 100 * X18), Op("0xb2", 50 * X18)], steps=2)
    engine, sender, _ = engine_for(strategy, tmp_path)
    sender.mining = False
    (first, second) = await engine.tick(head(10))
    assert [(r.account, r.label) for r in sender.dispatched] == [
        ("0xa1", "step0"),
        ("0xa1", "step1"),
        ("0xb2", "step0"),
        ("0xb2", "step1"),
    ]  # consecutive nonces: each plan's steps land in order, in one block
    sender.mining = True
    await engine.track()
    assert (first.status, second.status) == ("executed", "executed")
    assert first.gas_wei == 2_000
    assert [r["step"] for r in records(tmp_path, "transaction")] == ["step0", "step1", "step0", "step1"]


async def test_without_sequence_simulation_a_plans_next_step_waits_for_the_previous_one(
    tmp_path: Path,
) -> None:
    strategy = FakeStrategy([Op("0xa1", 100 * X18), Op("0xb2", 50 * X18)], steps=2)
    engine, sender, _ = engine_for(strategy, tmp_path)
    sender.mining, sender.bundles = False, False
    (first, second) = await engine.tick(head(10))
    assert [r.label for r in sender.dispatched] == ["step0", "step0"]  # both first steps, no second yet
    sender.mining = True
    await engine.track()  # the first steps are mined: the second steps go out
    assert [(r.account, r.label) for r in sender.dispatched[2:]] == [("0xa1", "step1"), ("0xb2", "step1")]
    assert first.status == "sent"
    await engine.track()
    assert (first.status, second.status) == ("executed", "executed")
    assert first.gas_wei == 2_000


async def test_the_gas_budget_bounds_what_one_block_is_sent(tmp_path: Path) -> None:
    strategy = FakeStrategy([Op(f"0x{i}", (10 - i) * X18) for i in range(5)])
    engine, sender, _ = engine_for(strategy, tmp_path, gas_budget=3 * GAS)
    results = await engine.tick(head(10))
    assert [r.account for r in sender.dispatched] == ["0x0", "0x1", "0x2"]
    assert all("gas budget" in r.reason for r in results[3:])
    del strategy.ops[:3]  # liquidated: the chain no longer shows them
    await engine.tick(head(11))  # the first three are mined; the other two go out now
    assert [r.account for r in sender.dispatched][3:] == ["0x3", "0x4"]


async def test_capital_committed_in_flight_counts_against_later_plans(tmp_path: Path) -> None:
    strategy = FakeStrategy([Op("0xa", 3 * X18), Op("0xb", 2 * X18), Op("0xc", X18)], capital=40)
    engine, sender, _ = engine_for(strategy, tmp_path)
    sender.mining = False
    results = await engine.tick(head(10))
    assert [r.account for r in sender.dispatched] == ["0xa", "0xb"]  # 40 + 40 of 100
    assert results[2].reason == "usdc: 40 needed, 20 left after what is in flight"


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
    assert {a: results[a].status for a in failures} == dict.fromkeys(failures, "failed")
    assert "plan failed: ValueError: a bug in one plan" in results["0xc3"].reason
    assert [r.account for r in sender.dispatched] == ["0xe5"]  # the smallest, after every failure
    errors = records(tmp_path, "error")
    assert {e["account"]: e["error_kind"] for e in errors} == {
        "0xa1": "view-reverted",
        "0xb2": "rpc-error",
        "0xc3": "internal",
        "0xd4": "rpc-unavailable",
    }
    assert errors_counted(metrics, "internal") == 1

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
    (error,) = records(tmp_path, "error")
    assert (error["stage"], error["block"], error["account"]) == ("refresh", 10, None)
    (result,) = await engine.tick(head(11))
    assert result.status == "sent"
    assert engine.ticks == 2


async def test_a_decision_is_recorded_when_it_changes_not_every_head(tmp_path: Path) -> None:
    strategy = FakeStrategy(
        [Op("0xa1", X18)], execute=False, reason="unprofitable: profit 0.41 USD < 1.00 USD"
    )
    engine, _, _ = engine_for(strategy, tmp_path)
    for number in range(10, 310):  # 300 heads, ten minutes of 2-second blocks
        strategy.reason = f"unprofitable: profit 0.{number % 97:02d} USD < 1.00 USD"
        await engine.tick(head(number))
    assert len(records(tmp_path, "decision")) == 1
    strategy.reason = "keeper free collateral 0.00 USD < initial margin 10.00 USD"
    await engine.tick(head(310))
    assert len(records(tmp_path, "decision")) == 2  # a new reason is a new record


async def test_dry_run_simulates_and_sends_nothing(tmp_path: Path) -> None:
    strategy = FakeStrategy([Op("0xa1", 100 * X18)])
    engine, sender, _ = engine_for(strategy, tmp_path, dry_run=True)
    (result,) = await engine.tick(head(10))
    assert (result.status, result.size, result.reward) == ("dry-run", 100 * X18, X18)
    assert sender.dispatched == []
    assert isinstance(engine.rpc, FakeRpc)
    assert engine.rpc.calls == ["eth_call"]
    assert [r["event"] for r in map(json.loads, (tmp_path / "audit.jsonl").read_text().splitlines())] == [
        "decision",
        "simulation",
    ]
