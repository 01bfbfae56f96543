"""Collateral liquidation on the real Vault, sold through a fake aggregator whose swaps are real."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from devnet import up
from devnet.chain import DevChain
from devnet.fake_aggregator import FakeAggregators
from devnet.scenario import KEEPER_ADDRESS, KEEPER_KEY
from keeper import routers, swaps
from keeper.audit import AuditLog
from keeper.codec import encode_call
from keeper.engine import Engine
from keeper.profit import X18
from keeper.quotes import OneInch, QuoteSource, UniswapV3, ZeroEx
from keeper.tx import TxManager
from strategies.perp_v2.collateral import CollateralSettings, PerpV2Collateral
from strategies.perp_v2.inventory import InventorySettings, PerpV2Inventory
from strategies.perp_v2.plugin import PerpSession
from strategies.perp_v2.sale import APPROVE, Seller
from tests.helpers import run_once

WETH_ACCOUNTS = ("weth-leveraged", "weth-debt-threshold", "weth-debt-ratio")


@pytest.fixture
def fake(devnet: up.Devnet) -> Iterator[FakeAggregators]:
    d = devnet.deployment
    with FakeAggregators(devnet.url, d["QuoterV2"].address, d["SwapRouter"].address) as server:
        yield server


def fake_contracts(router: str) -> dict[str, str]:
    """The fake aggregators swap through the devnet's SwapRouter: listed the way an operator would."""
    return {"KEEPER_AGGREGATOR_CONTRACTS": f"0x:{router},1inch:{router}"}


def aggregator(
    kind: type[ZeroEx] | type[OneInch], session: PerpSession, fake: FakeAggregators, timeout: float = 5.0
) -> ZeroEx | OneInch:
    d = session.deployment
    assert d.swap_router is not None
    listed = routers.listed(kind.name, d.chain_id, fake_contracts(d.swap_router))
    return kind(fake.url, "test-key", d.chain_id, timeout=timeout, contracts=listed)


def uniswap(session: PerpSession) -> UniswapV3:
    d = session.deployment
    assert d.quoter_v2 is not None
    assert d.swap_router is not None
    return UniswapV3(session.rpc, d.quoter_v2, d.swap_router)


def sources(session: PerpSession, fake: FakeAggregators, timeout: float = 5.0) -> list[QuoteSource]:
    return [
        aggregator(ZeroEx, session, fake, timeout),
        aggregator(OneInch, session, fake, timeout),
        uniswap(session),
    ]


def collateral_strategy(session: PerpSession, quote_sources: list[QuoteSource]) -> PerpV2Collateral:
    return PerpV2Collateral(
        session.deployment, session.scanner, session.rpc, session.read, quote_sources, CollateralSettings()
    )


def vault_liquidatable(devnet: up.Devnet, label: str) -> bool:
    who = devnet.scenario.traders[label].address
    return bool(devnet.deployment["Vault"].functions.isLiquidatable(who).call())


def wallet(devnet: up.Devnet, token: str) -> int:
    return int(devnet.deployment[token].functions.balanceOf(KEEPER_ADDRESS).call())


def test_run_once_liquidates_positions_then_collateral_and_sells_it_for_more_usdc(
    devnet: up.Devnet, chain: DevChain, fake: FakeAggregators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "KEEPER_PRIVATE_KEY": KEEPER_KEY,
        "KEEPER_0X_API_URL": fake.url,
        "KEEPER_0X_API_KEY": "test-key",
        "KEEPER_1INCH_API_URL": fake.url,
        "KEEPER_1INCH_API_KEY": "test-key",
        **fake_contracts(devnet.deployment["SwapRouter"].address),
    }.items():
        monkeypatch.setenv(name, value)
    assert all(vault_liquidatable(devnet, label) for label in WETH_ACCOUNTS)
    usdc_before, weth_before = wallet(devnet, "USDC"), wallet(devnet, "WETH9")
    audit = tmp_path / "audit.jsonl"
    code, out = run_once(devnet.url, devnet.metadata_path, tmp_path / "s.sqlite", "--audit-log", str(audit))
    assert code == 0, out
    assert not any(vault_liquidatable(devnet, label) for label in WETH_ACCOUNTS), out
    assert wallet(devnet, "WETH9") == weth_before  # every seized WETH was sold
    assert wallet(devnet, "USDC") > usdc_before
    assert fake.requests["0x"] > 0
    assert fake.requests["1inch"] > 0
    # weth-leveraged: its position first, then its collateral
    who = devnet.scenario.traders["weth-leveraged"].address
    mined = [
        r
        for r in map(json.loads, audit.read_text().splitlines())
        if r["event"] == "transaction" and r["status"] == "mined"
    ]
    steps = [(r["kind"], r["step"]) for r in mined if r["account"] == who]
    assert steps.index(("taker", "liquidate")) < steps.index(("collateral", "liquidateCollateral"))
    # the seized WETH is sold from the keeper's wallet by the inventory strategy, after it was seized
    seized_at = next(i for i, r in enumerate(mined) if r["kind"] == "collateral")
    assert any(r["kind"] == "sell" and r["step"].startswith("sell via") for r in mined[seized_at:])


async def test_aggregator_failures_fall_back_to_the_others_and_uniswap(
    devnet: up.Devnet, fake: FakeAggregators, session: PerpSession
) -> None:
    d = session.deployment
    assert d.weth9 is not None
    fake.modes.update({"0x": "429", "1inch": "malformed"})
    all_sources = sources(session, fake)
    choice = await swaps.best_quote(all_sources, d.weth9, d.usdc, X18, KEEPER_ADDRESS, 100, 0)
    assert choice.best is not None
    assert choice.best.source == "uniswap-v3"
    assert any("0x: HTTP 429" in e for e in choice.errors)
    assert any(e.startswith("1inch: ") for e in choice.errors)  # the malformed answer, named
    assert fake.requests["0x"] == 3  # retried (Retry-After: 0), then given up

    fake.modes.update({"0x": "timeout", "1inch": "ok"})
    choice = await swaps.best_quote(
        sources(session, fake, timeout=0.5), d.weth9, d.usdc, X18, KEEPER_ADDRESS, 100, 0
    )
    assert choice.best is not None
    assert choice.best.source in ("1inch", "uniswap-v3")
    assert any("0x: timed out" in e for e in choice.errors)


async def test_every_quote_below_the_repaid_usdc_is_skipped_with_a_reason(
    devnet: up.Devnet, fake: FakeAggregators, session: PerpSession
) -> None:
    fake.modes["0x"] = "low"
    strategy = collateral_strategy(session, [aggregator(ZeroEx, session, fake)])
    await strategy.refresh()
    op = next(
        o
        for o in strategy.opportunities()
        if o.account == devnet.scenario.traders["weth-debt-threshold"].address
    )
    plan = await strategy.plan(op, KEEPER_ADDRESS)
    assert not plan.execute
    assert "every quote is below the repaid USDC" in plan.reason


async def test_a_sale_whose_min_out_fails_is_refused_before_signing_and_keeps_the_collateral(
    devnet: up.Devnet, chain: DevChain, fake: FakeAggregators, session: PerpSession, tmp_path: Path
) -> None:
    fake.modes["0x"] = "inflate"  # quotes 1.5x what the pool gives: minOut cannot be met
    sources: list[QuoteSource] = [aggregator(ZeroEx, session, fake)]
    strategy = collateral_strategy(session, sources)
    d = session.deployment
    seller = Seller(d.usdc, session.rpc, session.read, sources, 100)
    inventory = PerpV2Inventory(
        d, session.scanner, session.rpc, session.read, seller, InventorySettings(KEEPER_ADDRESS)
    )
    tx = TxManager(session.rpc, Account.from_key(KEEPER_KEY), session.deployment.chain_id)
    engine = Engine([strategy, inventory], session.rpc, KEEPER_ADDRESS, AuditLog(tmp_path / "a.jsonl"), tx)
    weth_before = wallet(devnet, "WETH9")
    results = await engine.run_once()
    assert any(r.kind == "collateral" and r.status == "executed" for r in results)  # the liquidations
    assert not any(r.kind == "sell" and r.status == "executed" for r in results)
    assert wallet(devnet, "WETH9") > weth_before  # the seized WETH is kept, not sold at a loss
    assert chain.w3.eth.get_transaction_count(Web3.to_checksum_address(KEEPER_ADDRESS)) > 0
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    sales = [r for r in records if r["event"] == "decision" and r["inputs"]["stage"] == "sell"]
    assert sales
    for sale in sales:
        assert sale["decision"] == "skip"
        assert "Too little received" in sale["reason"]  # the simulation's revert, before anything is signed
        assert [r["source"] for r in sale["inputs"]["quotes_rejected"]] == ["0x"]
    sent = {r["step"] for r in records if r["event"] == "transaction"}
    assert sent <= {"approve USDC for the Vault", "liquidateCollateral"}  # no sale's approval, no swap


async def test_a_short_wallet_repays_what_it_has_and_the_keeper_approves_the_vault_itself(
    devnet: up.Devnet, chain: DevChain, session: PerpSession
) -> None:
    d = devnet.deployment
    keeper = Web3.to_checksum_address(KEEPER_ADDRESS)
    chain.send(d["USDC"].functions.approve(d["Vault"].address, 0), keeper)
    chain.send(d["USDC"].functions.transfer(d["Vault"].address, wallet(devnet, "USDC") - 50 * 10**6), keeper)
    strategy = collateral_strategy(session, [uniswap(session)])
    await strategy.refresh()
    op = next(
        o
        for o in strategy.opportunities()
        if o.account == devnet.scenario.traders["weth-debt-threshold"].address
    )
    plan = await strategy.plan(op, KEEPER_ADDRESS)
    assert plan.detail["wallet_short"] is True
    assert plan.detail["repay_usdc"] == 50 * 10**6
    assert [s.label for s in plan.steps] == ["approve USDC for the Vault", "liquidateCollateral"]
    assert plan.steps[0].data == encode_call(APPROVE, d["Vault"].address, 50 * 10**6)  # exact, not unlimited

    # live: the liquidation and the sale use up exactly what they approved; no allowance is left behind
    tx = TxManager(session.rpc, Account.from_key(KEEPER_KEY), session.deployment.chain_id)
    sources: list[QuoteSource] = [uniswap(session)]
    seller = Seller(d["USDC"].address, session.rpc, session.read, sources, 100)
    inventory = PerpV2Inventory(
        session.deployment,
        session.scanner,
        session.rpc,
        session.read,
        seller,
        InventorySettings(KEEPER_ADDRESS),
    )
    engine = Engine([strategy, inventory], session.rpc, KEEPER_ADDRESS, AuditLog(None), tx)
    weth_before = wallet(devnet, "WETH9")
    results = await engine.run_once()
    assert any(r.status == "executed" for r in results if r.account == op.account), results
    assert any(r.kind == "sell" and r.status == "executed" for r in results)
    assert d["USDC"].functions.allowance(keeper, d["Vault"].address).call() == 0
    assert d["WETH9"].functions.allowance(keeper, d["SwapRouter"].address).call() == 0
    assert wallet(devnet, "WETH9") == weth_before  # the seized WETH was sold
