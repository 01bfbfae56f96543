"""Synthetix Perps V2 on the real contracts (npm synthetix@2.102.1): devnet, strategy, `run --once`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from devnet import up
from devnet.anvil import Anvil
from devnet.chain import DEPLOYER, DevChain
from devnet.scenario import KEEPER_ADDRESS, KEEPER_KEY
from devnet.synthetix import SynthetixDeployment, bytes32
from devnet.synthetix_scenario import FLAG_AND_LIQUIDATE, FORCE_ONLY, LIQUIDATE_ONLY, SynthetixScenario
from keeper.protocol import Session as SynthetixSession
from strategies.synthetix_perps_v2.plugin import open_session as open_synthetix_session
from strategies.synthetix_perps_v2.strategy import SynthetixPerpsV2, SynthetixSettings
from strategies.synthetix_perps_v2.views import Position
from tests.helpers import cli_output, run_once

UNIT = 10**18


@pytest.fixture(scope="module")
def snx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[up.SynthetixDevnet]:
    net = up.start_synthetix(out_dir=tmp_path_factory.mktemp("synthetix"), log=False)
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture
def snx_chain(snx: up.SynthetixDevnet) -> Iterator[DevChain]:
    snapshot = snx.chain.snapshot()
    try:
        yield snx.chain
    finally:
        snx.chain.revert(snapshot)


def parts(net: up.SynthetixDevnet) -> tuple[SynthetixDeployment, SynthetixScenario]:
    return net.deployment, net.scenario


def market_of(d: SynthetixDeployment, label: str) -> Any:
    return d.market("sBTC" if label.startswith("btc") else "sETH").proxy.functions


def size_of(d: SynthetixDeployment, label: str, address: str) -> int:
    return int(market_of(d, label).positions(address).call()[4])


def run(net: up.SynthetixDevnet, tmp_path: Path, *extra: str) -> tuple[int, str]:
    return run_once(net.url, net.metadata_path, tmp_path / "keeper.sqlite", *extra)


def liquidations(d: SynthetixDeployment, from_block: int) -> list[dict[str, Any]]:
    """PositionLiquidated events (emitted by the market proxies) since `from_block`."""
    found = []
    for market in d.markets.values():
        for event in market.proxy.events.PositionLiquidated().get_logs(from_block=from_block):
            found.append(dict(event["args"]))
    return found


# --- the devnet -----------------------------------------------------------------------------------------


def test_devnet_wires_the_real_markets_as_synthetix_does(
    snx: up.SynthetixDevnet, snx_chain: DevChain
) -> None:
    d, _ = parts(snx)
    manager = d["FuturesMarketManager"].functions
    proxies = {m.proxy.address for m in d.markets.values()}
    assert set(manager.allMarkets(True).call()) == proxies
    for market in d.markets.values():
        assert manager.marketForKey(bytes32(market.key)).call() == market.proxy.address
        router = d[f"{market.key}:proxy"].functions  # ProxyPerpsV2's own functions
        assert len(router.getAllTargets().call()) == 5  # every implementation routed
        assert market.proxy.functions.marketKey().call() == bytes32(market.key)
    # PerpsV2MarketData answers through the resolver: the launch fee parameters
    minimum_margin, ratio, min_fee, max_fee = d["PerpsV2MarketData"].functions.globals().call()
    assert (minimum_margin, ratio, min_fee, max_fee) == (
        40 * UNIT,
        35 * UNIT // 10_000,
        2 * UNIT,
        1_000 * UNIT,
    )
    metadata = json.loads(snx.metadata_path.read_text())
    assert metadata["protocol"] == "synthetix-perps-v2"
    assert set(metadata["contracts"]) >= {
        "FuturesMarketManager",
        "PerpsV2MarketSettings",
        "PerpsV2MarketData",
    }
    assert {m["proxy"] for m in metadata["markets"]} == proxies


def test_scenario_positions_are_in_the_states_it_promises(
    snx: up.SynthetixDevnet, snx_chain: DevChain
) -> None:
    d, s = parts(snx)
    settings = d["PerpsV2MarketSettings"].functions
    for t in s.traders.values():
        views = market_of(d, t.label)
        flagged = views.isFlagged(t.address).call()
        liquidatable = views.canLiquidate(t.address).call()
        assert flagged == (LIQUIDATE_ONLY in t.expect), t.label
        assert liquidatable == bool(t.expect), t.label
        if FORCE_ONLY in t.expect:
            size = size_of(d, t.label, t.address)
            delta = settings.maxLiquidationDelta(bytes32("sETHPERP")).call()
            scale = settings.skewScale(bytes32("sETHPERP")).call()
            assert abs(size) * UNIT // scale >= delta
    assert s.other_keeper is not None
    flagged = s.traders["eth-long-10-flagged"].address
    assert d.market("sETH").state.functions.positionFlagger(flagged).call() == s.other_keeper.address


# --- the strategy, in process ----------------------------------------------------------------------------


@pytest.fixture
async def strategy(
    snx: up.SynthetixDevnet, snx_chain: DevChain, tmp_path: Path
) -> AsyncIterator[SynthetixPerpsV2]:
    session: SynthetixSession = await open_synthetix_session(
        snx.url, snx.metadata_path, tmp_path / "keeper.sqlite"
    )
    from keeper.quotes import UniswapV3

    d = session.deployment
    assert d.quoter_v2 is not None
    assert d.swap_router is not None
    try:
        yield SynthetixPerpsV2(
            d,
            session.indexer,
            session.rpc,
            session.read,
            SynthetixSettings(),
            UniswapV3(session.rpc, d.quoter_v2, d.swap_router),
        )
    finally:
        await session.close()


def find(strategy: SynthetixPerpsV2, address: str) -> Position:
    return next(p for p in strategy.opportunities() if p.account == address)


async def test_launch_parameters_estimate_exactly_what_the_contract_pays(
    snx: up.SynthetixDevnet, strategy: SynthetixPerpsV2
) -> None:
    """Acceptance: 35 bp / min 2 / max 1,000 / keeperLiquidationFee 2; 1,000 ETH at ~2,000 (1,900 now)."""
    _, s = parts(snx)
    await strategy.refresh()
    trader = s.traders["eth-long-1000"]
    plan = await strategy.plan(find(strategy, trader.address), KEEPER_ADDRESS)
    i = plan.detail
    assert (i["liquidation_fee_ratio"], i["min_keeper_fee"]) == (35 * UNIT // 10_000, 2 * UNIT)
    assert (i["max_keeper_fee"], i["keeper_liquidation_fee"]) == (1_000 * UNIT, 2 * UNIT)
    assert i["reward_susd"] == 1_002 * UNIT  # 1,000 flag fee (capped) + 2 liquidation fee
    assert i["flag_fee_uncapped_susd"] == 6_650 * UNIT  # 1,000 x 1,900 x 0.35 %, beside it
    assert i["flag_fee_cap_binding"] == "protocol"
    assert i["contract_liquidation_fee_view"] == 1_000 * UNIT  # the market's own view agrees
    assert [s.label for s in plan.steps] == ["flagPosition", "liquidatePosition"]
    assert plan.execute, plan.reason
    # sUSD is valued at its quote (0.998 USDC on the devnet pool), not at 1 USD
    assert plan.estimate is not None
    assert 995 * UNIT < plan.estimate.reward.capped < 1_000 * UNIT
    assert plan.estimate.reward.gross > 6_600 * UNIT
    assert plan.estimate.reward.binding == "protocol"


async def test_oversized_position_is_skipped_unless_the_keeper_is_endorsed(
    snx: up.SynthetixDevnet, strategy: SynthetixPerpsV2
) -> None:
    d, s = parts(snx)
    trader = s.traders["eth-long-1300"]
    await strategy.refresh()
    plan = await strategy.plan(find(strategy, trader.address), KEEPER_ADDRESS)
    assert not plan.execute
    assert "only forceLiquidatePosition" in plan.reason
    assert "maxLiquidationDelta" in plan.reason

    d.chain.send(d["FuturesMarketManager"].functions.addEndorsedAddresses([KEEPER_ADDRESS]))
    plan = await strategy.plan(find(strategy, trader.address), KEEPER_ADDRESS)
    assert [s.label for s in plan.steps] == ["flagPosition", "forceLiquidatePosition"]
    assert plan.detail["reward_susd"] == 1_000 * UNIT  # the flag fee; the forced step pays nothing
    assert plan.execute, plan.reason

    # what the reason says: liquidatePosition refuses it once flagged
    proxy = d.market("sETH").proxy.functions
    d.chain.send(proxy.flagPosition(trader.address), DEPLOYER)
    with pytest.raises(Exception, match="price impact of liquidation exceeded"):
        proxy.liquidatePosition(trader.address).call({"from": KEEPER_ADDRESS})


async def test_parameters_are_read_again_when_the_settings_change(
    snx: up.SynthetixDevnet, strategy: SynthetixPerpsV2
) -> None:
    d, s = parts(snx)
    trader = s.traders["eth-long-1000"]
    await strategy.refresh()
    settings = d["PerpsV2MarketSettings"].functions
    d.chain.send(settings.setMaxKeeperFee(500 * UNIT))  # emits MaxKeeperFeeUpdated
    d.chain.send(settings.setKeeperLiquidationFee(3 * UNIT))
    await strategy.refresh()
    plan = await strategy.plan(find(strategy, trader.address), KEEPER_ADDRESS)
    assert plan.detail["reward_susd"] == 503 * UNIT
    assert plan.detail["contract_liquidation_fee_view"] == 500 * UNIT


# --- perp-keeper run --once -------------------------------------------------------------------------------


def test_run_once_flags_and_liquidates_every_permissionless_position(
    snx: up.SynthetixDevnet, snx_chain: DevChain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acceptance: flags and liquidates each permissionless one, finishes the one flagged by another
    keeper, skips the oversized one with its reason; the sUSD it earns is exactly what it estimated."""
    d, s = parts(snx)
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", KEEPER_KEY)
    susd = d["SynthsUSD"].functions
    before = susd.balanceOf(KEEPER_ADDRESS).call()
    start = snx_chain.w3.eth.block_number + 1
    audit = tmp_path / "audit.jsonl"
    code, out = run(snx, tmp_path, "--audit-log", str(audit))
    assert code == 0, out

    for t in s.traders.values():
        size = size_of(d, t.label, t.address)
        if FLAG_AND_LIQUIDATE in t.expect or LIQUIDATE_ONLY in t.expect:
            assert size == 0, t.label
        else:
            assert size != 0, t.label
    oversized = s.traders["eth-long-1300"]
    assert not market_of(d, "eth").isFlagged(oversized.address).call()
    row = next(line for line in out.splitlines() if line.startswith(oversized.address))
    assert "skipped only forceLiquidatePosition can liquidate it" in row
    assert sum(1 for line in out.splitlines() if line.startswith(oversized.address)) == 1

    events = {e["account"]: e for e in liquidations(d, start)}
    assert set(events) == {t.address for t in s.traders.values() if set(t.expect) - {FORCE_ONLY}}
    assert all(e["liquidator"] == KEEPER_ADDRESS for e in events.values())
    flagged_by_other = events[s.traders["eth-long-10-flagged"].address]
    assert flagged_by_other["liquidatorFee"] == 2 * UNIT
    big = events[s.traders["eth-long-1000"].address]
    assert (big["flaggerFee"], big["liquidatorFee"]) == (1_000 * UNIT, 2 * UNIT)

    decisions = [json.loads(line) for line in audit.read_text().splitlines()]
    executed = [r for r in decisions if r["event"] == "decision" and r["decision"] == "execute"]
    estimated = sum(int(r["inputs"]["reward_susd"]) for r in executed)
    earned = susd.balanceOf(KEEPER_ADDRESS).call() - before
    # 1,000+2 + 498.75+2 + 33.25+2 + 2 (liquidate-only): to the wei
    assert earned == estimated == 1_540 * UNIT
    by_other = next(r for r in executed if r["account"] == s.traders["eth-long-10-flagged"].address)
    assert by_other["inputs"]["flagged_by_others"]
    assert by_other["inputs"]["steps"] == ["liquidatePosition"]


def test_dry_run_signs_nothing_and_audits_capped_beside_uncapped(
    snx: up.SynthetixDevnet, snx_chain: DevChain, tmp_path: Path
) -> None:
    _, s = parts(snx)
    head = snx_chain.w3.eth.block_number
    audit = tmp_path / "audit.jsonl"
    code, out = run(snx, tmp_path, "--dry-run", "--audit-log", str(audit))
    assert code == 0, out
    assert snx_chain.w3.eth.block_number == head  # nothing sent
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    big = next(
        r for r in records if r["event"] == "decision" and r["account"] == s.traders["eth-long-1000"].address
    )
    assert big["inputs"]["reward_susd"] == 1_002 * UNIT
    assert big["inputs"]["reward_uncapped_susd"] == 6_652 * UNIT
    assert big["estimate"]["reward_capped"] < big["estimate"]["reward_gross"]
    simulations = [r for r in records if r["event"] == "simulation" and r["account"] == big["account"]]
    assert [r["step"] for r in simulations] == ["flagPosition", "liquidatePosition"]
    assert simulations[0]["simulation"]["ok"]


def test_the_keeper_liquidates_on_a_fork_and_the_origin_is_untouched(
    snx: up.SynthetixDevnet, snx_chain: DevChain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live-chain path: `run` against `anvil --fork-url` of a node that holds the deployment."""
    d, s = parts(snx)
    big = s.traders["eth-long-1000"].address
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", KEEPER_KEY)
    with Anvil(fork_url=snx.url) as fork_node:
        code, out = run_once(fork_node.url, snx.metadata_path, tmp_path / "fork.sqlite")
        assert code == 0, out
        fork = DevChain(fork_node.url)
        forked = fork.w3.eth.contract(address=d.market("sETH").proxy.address, abi=d.market("sETH").proxy.abi)
        assert forked.functions.positions(big).call()[4] == 0
    assert size_of(d, "eth-long-1000", big) == 1_000 * UNIT  # the origin never saw a transaction


def test_check_passes_on_the_synthetix_devnet(
    snx: up.SynthetixDevnet, snx_chain: DevChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", KEEPER_KEY)
    code, out = cli_output("check", "--rpc-url", snx.url, "--metadata", str(snx.metadata_path))
    assert code == 0, out
    assert "sUSD quote" in out
    assert "not endorsed" in out


async def test_per_block_reads_follow_the_open_positions_not_every_pair_ever_seen(
    snx: up.SynthetixDevnet,
    snx_chain: DevChain,
    strategy: SynthetixPerpsV2,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await strategy.refresh()  # the first head reads every pair it knows
    first = strategy.tiers.read_last
    assert first == len(strategy.tiers.known) > 0
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", KEEPER_KEY)
    state = tmp_path / "run.sqlite"
    code, out = await asyncio.to_thread(run_once, snx.url, snx.metadata_path, state)  # liquidates some
    assert code == 0, out
    snx_chain.rpc("evm_mine")
    await strategy.refresh()  # the liquidations logged: dirty pairs are read once more, found closed
    closed = set(strategy.tiers.closed)
    assert closed, "liquidated positions are closed pairs now"
    snx_chain.rpc("evm_mine")
    await strategy.refresh()  # nothing logged: only the open positions (and a sweep slice) are read
    assert strategy.tiers.read_last <= len(strategy.tiers.open) + 1
    assert strategy.tiers.read_last < len(strategy.tiers.known)
    assert {(p.market, p.account) for p in strategy.opportunities()} == strategy.tiers.open
