"""The one error policy on the real contracts: the engine runs through each survivable fault and the
next tick happens, until every account is liquidated.

The keeper's RPC goes through the devnet's fault-injecting proxy: a reorg seen during sync, a view
that reverts mid-plan, malformed / truncated node answers, a batch answer missing an element, and a
dead aggregator among the quote sources.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from devnet import up
from devnet.chain import DevChain
from devnet.proxy import RpcProxy
from devnet.scenario import KEEPER_ADDRESS, KEEPER_KEY
from keeper import config
from keeper.audit import AuditLog
from keeper.engine import Engine
from keeper.flights import Result
from keeper.metrics import Metrics
from keeper.protocol import Session, Wiring
from keeper.session import open_session
from keeper.tx import TxManager
from strategies.perp_v2.plugin import PLUGIN

DEAD_AGGREGATOR = "http://127.0.0.1:1"


@pytest.fixture
def proxy(devnet: up.Devnet, chain: DevChain) -> Iterator[RpcProxy]:
    with RpcProxy(devnet.url) as running:
        yield running


@pytest.fixture
async def wired(devnet: up.Devnet, proxy: RpcProxy, tmp_path: Path) -> AsyncIterator[tuple[Session, Wiring]]:
    session = await open_session(PLUGIN, proxy.url, devnet.metadata_path, tmp_path / "keeper.sqlite")
    session.rpc.backoff_seconds = 0.01
    env = {"KEEPER_0X_API_URL": DEAD_AGGREGATOR}  # an aggregator outage, from the first tick on
    wiring = PLUGIN.wire(session, config.run_settings({}), env, KEEPER_ADDRESS)
    try:
        yield session, wiring
    finally:
        await wiring.close()
        await session.close()


def errors(metrics: Metrics, kind: str) -> float:
    return metrics.registry.get_sample_value("perp_keeper_errors_total", {"kind": kind}) or 0.0


def audit_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_the_engine_survives_every_fault_and_liquidates_everything(
    devnet: up.Devnet, chain: DevChain, proxy: RpcProxy, wired: tuple[Session, Wiring], tmp_path: Path
) -> None:
    session, wiring = wired
    metrics, audit_path = Metrics(), tmp_path / "audit.jsonl"
    tx = TxManager(session.rpc, Account.from_key(KEEPER_KEY), session.deployment.chain_id)
    engine = Engine(wiring.strategies, session.rpc, KEEPER_ADDRESS, AuditLog(audit_path), tx, metrics)
    results: list[Result] = []

    # 1. a log whose block hash is no longer the head's: the positions' refresh fails, the tick goes on
    await wiring.strategies[0].refresh()  # the cold scan, before any fault
    proxy.inject("reorged-log", method="eth_getLogs")
    results += await _tick_after_a_deposit(engine, devnet, chain)
    assert proxy.injected["reorged-log"] == 1, "the fault was not applied"
    assert errors(metrics, "reorg") == 1

    # 2. views that revert while planning: the plans fail, cool down, the tick goes on
    registry = devnet.deployment["MarketRegistry"].address
    code = chain.rpc("eth_getCode", registry, "latest")
    # every MarketRegistry view now reverts at once (PUSH1 0 PUSH1 0 REVERT): the scan keeps its last
    # good picture of the accounts it cannot read, and the plans' views revert (CallFailedError)
    chain.rpc("anvil_setCode", registry, "0x60006000fd")
    try:
        results += await engine.tick()
    finally:
        chain.rpc("anvil_setCode", registry, code)
    assert errors(metrics, "view-reverted") >= 1
    assert engine.cooling, "a failed plan cools its opportunity down"
    engine.cooling.clear()

    # 3. malformed and truncated answers, a batch missing an element: retried, the tick completes
    for kind in ("malformed-json", "truncated", "batch-missing-element"):
        proxy.inject(kind)
    results += await engine.tick()
    assert session.rpc.errors["malformed"] >= 3
    assert proxy.injected["malformed-json"] == proxy.injected["truncated"] == 1
    assert proxy.injected["batch-missing-element"] == 1

    # 4. the next ticks finish the job: nothing liquidatable is left, nothing was dropped
    await engine.drain()
    results += await engine.run_once()
    await wiring.strategies[0].refresh()
    left = [o for s in wiring.strategies for o in s.opportunities() if o.liquidatable]
    assert left == [], f"still liquidatable: {[(o.account, o.kind) for o in left]}"
    assert {r.account for r in results if r.status == "executed"} >= {
        t.address for t in devnet.scenario.traders.values() if t.expect
    }

    # the aggregator outage is in the decision records, and Uniswap v3 sold the collateral
    sales = [
        r for r in audit_records(audit_path) if r["event"] == "decision" and r["inputs"]["stage"] == "sell"
    ]
    assert sales
    assert all(r["inputs"]["best_quote"] == "uniswap-v3" for r in sales)
    assert all(any("0x" in e for e in r["inputs"]["quote_errors"]) for r in sales)
    error_records = [r for r in audit_records(audit_path) if r["event"] == "error"]
    assert {r["error_kind"] for r in error_records} >= {"reorg", "view-reverted"}


async def _tick_after_a_deposit(engine: Engine, devnet: up.Devnet, chain: DevChain) -> list[Result]:
    """A block whose logs name an account (a deposit), then a tick at that head."""
    d = devnet.deployment
    keeper = chain.w3.to_checksum_address(KEEPER_ADDRESS)
    chain.send(d["USDC"].functions.approve(d["Vault"].address, 10**6), keeper)
    chain.send(d["Vault"].functions.deposit(d["USDC"].address, 10**6), keeper)
    return await engine.tick()
