"""`scan` against the real contracts: exact agreement with their views, ranking, restarts, reorgs."""

from __future__ import annotations

import asyncio
import io
import json
import math
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from web3 import Web3
from web3.contract.contract import ContractFunction

from devnet import up
from devnet.chain import DEPLOYER, DevChain
from devnet.deploy import UINT256_MAX
from devnet.proxy import RpcProxy
from devnet.scenario import DEADLINE, ScenarioBuilder, Trader
from keeper import cli
from strategies.perp_v2 import risk
from strategies.perp_v2.plugin import PerpSession, open_session


async def test_scan_agrees_exactly_with_the_contracts_views_for_every_account(
    devnet: up.Devnet, session: PerpSession
) -> None:
    await session.scanner.full_scan()
    snapshot = session.scanner.snapshot
    assert snapshot is not None
    d = devnet.deployment
    ch, ab, vault = d["ClearingHouse"], d["AccountBalance"], d["Vault"]
    bases = [m.base_token.address for m in d.markets.values()]
    block = snapshot.block
    traders = devnet.scenario.traders.values()
    assert {t.address for t in traders} <= set(snapshot.accounts)
    for trader in traders:
        who, got = trader.address, snapshot.accounts[trader.address]
        assert got.account_value == ch.functions.getAccountValue(who).call(block_identifier=block)
        assert got.margin_requirement == ab.functions.getMarginRequirementForLiquidation(who).call(
            block_identifier=block
        )
        assert got.has_order == ab.functions.hasOrder(who).call(block_identifier=block)
        assert got.vault_liquidatable == vault.functions.isLiquidatable(who).call(block_identifier=block)
        positions = {p.base_token: (p.taker_size, p.total_size) for p in got.positions}
        for base in bases:
            taker = ab.functions.getTakerPositionSize(who, base).call(block_identifier=block)
            total = ab.functions.getTotalPositionSize(who, base).call(block_identifier=block)
            assert positions.get(base.lower(), (0, 0)) == (taker, total), (trader.label, base)
        for token, balance in got.collateral_balances:
            assert balance == vault.functions.getBalanceByToken(who, Web3.to_checksum_address(token)).call(
                block_identifier=block
            )
    for base in bases:
        assert snapshot.marks[base.lower()] == ab.functions.getMarkPrice(base).call(block_identifier=block)


async def test_opportunities_match_the_scenario_and_run_largest_first(
    devnet: up.Devnet, session: PerpSession
) -> None:
    await session.scanner.full_scan()
    found = session.scanner.opportunities()
    kinds: dict[str, set[str]] = {}
    for op in found:
        if op.liquidatable:
            kinds.setdefault(op.account, set()).add(op.kind)
    expected = {t.address: set(t.expect) for t in devnet.scenario.traders.values() if t.expect}
    assert kinds == expected
    positions = [op for op in found if op.liquidatable and op.kind != risk.COLLATERAL]
    collateral = [op for op in found if op.kind == risk.COLLATERAL]
    assert found[: len(positions)] == positions  # positions first, then collateral
    assert found[len(positions) : len(positions) + len(collateral)] == collateral
    for group in (positions, collateral):
        assert [op.notional for op in group] == sorted((op.notional for op in group), reverse=True)
    maker = next(op for op in found if op.kind == risk.MAKER and len(op.cancel_markets) == 2)
    assert maker.account == devnet.scenario.traders["maker-two-markets"].address


def test_scan_json_lists_opportunities_in_execution_order(devnet: up.Devnet, tmp_path: Path) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(
            [
                "scan",
                "--json",
                "--rpc-url",
                devnet.url,
                "--metadata",
                str(devnet.metadata_path),
                "--state-db",
                str(tmp_path / "s.sqlite"),
            ]
        )
    assert code == 0
    rows = json.loads(out.getvalue())
    assert rows
    for row in rows:
        assert row["account"] == Web3.to_checksum_address(row["account"])
        assert row["kind"] in ("taker", "maker", "collateral")
        assert (row["base_token"] is None) == (row["kind"] == "collateral")
        assert (row["collateral_token"] is None) == (row["kind"] != "collateral")
        for field in ("notional", "account_value", "margin_requirement"):
            assert isinstance(row[field], float)
        assert isinstance(row["liquidatable"], bool)
    liquidatable_positions = [r for r in rows if r["kind"] != "collateral" and r["liquidatable"]]
    assert [r["notional"] for r in liquidatable_positions] == sorted(
        (r["notional"] for r in liquidatable_positions), reverse=True
    )
    assert rows[: len(liquidatable_positions)] == liquidatable_positions


HEALTHY_TAKERS = 40  # with the scenario's ~25 accounts: far more than one block's tiers read


async def test_a_price_move_is_seen_on_the_block_it_happens_with_few_requests(
    devnet: up.Devnet, chain: DevChain, tmp_path: Path
) -> None:
    """eth-long-4x turns liquidatable after ETH falls; the tiered update reads it on that block, and
    not the healthy takers far from liquidation (ETH-exposed ones included), but for the sweep."""
    builder = ScenarioBuilder(devnet.deployment, dict(devnet.scenario.traders))
    healthy = _healthy_takers(builder, HEALTHY_TAKERS)
    with RpcProxy(devnet.url) as proxy:
        session = await open_session(proxy.url, devnet.metadata_path, tmp_path / "k.sqlite")
        try:
            await session.scanner.full_scan()
            snapshot = session.scanner.snapshot
            assert snapshot is not None
            victim = devnet.scenario.traders["eth-long-4x"].address
            assert not snapshot.accounts[victim].liquidatable
            assert healthy <= set(snapshot.accounts)
            assert not any(snapshot.accounts[a].liquidatable for a in healthy)
            builder.move_market("vETH", "1400", builder.traders["price-mover"])
            builder.settle_twaps()
            proxy.reset()
            stats = await session.scanner.update()
            assert victim in stats.newly_liquidatable
            snapshot = session.scanner.snapshot
            assert snapshot is not None
            assert snapshot.block == stats.block
            read = {a for a, acc in snapshot.accounts.items() if acc.block == stats.block}
            assert len(read) == stats.read
            assert victim in read
            assert stats.accounts == len(snapshot.accounts) > len(healthy)
            assert stats.read < stats.accounts, stats
            # a healthy taker is read only as the rotating sweep's slice of this block
            assert stats.swept == math.ceil(stats.accounts / session.scanner.sweep_blocks) == 1
            assert len(read & healthy) <= stats.swept, sorted(read & healthy)
            assert proxy.http_requests <= 6, proxy.methods
        finally:
            await session.close()


def _healthy_takers(builder: ScenarioBuilder, count: int) -> set[str]:
    """`count` takers at 1x on 1,000 USDC, half in vETH (the market that will move), half in vBTC;
    pairs take opposite sides with the same notional so the pools end where they started."""
    d, chain = builder.deployment, builder.chain
    usdc, vault, clearing_house = d["USDC"], d["Vault"], d["ClearingHouse"]
    margin = 1_000 * 10**6
    chain.send(usdc.functions.mint(DEPLOYER, margin * count))
    chain.send(usdc.functions.approve(vault.address, UINT256_MAX))
    addresses: set[str] = set()
    for i in range(count):
        trader = builder.trader(f"tier-healthy-{i}")
        base = d.market("vETH" if (i // 2) % 2 == 0 else "vBTC").base_token.address
        short = i % 2 == 1
        params = (base, short, not short, 1_000 * 10**18, 0, DEADLINE, 0, b"\x00" * 32)
        # a fixed gas limit skips eth_estimateGas: two quick transactions per account
        _send(chain, vault.functions.depositFor(trader.address, usdc.address, margin), DEPLOYER)
        _send(chain, clearing_house.functions.openPosition(params), trader.address)
        addresses.add(trader.address)
    return addresses


def _send(chain: DevChain, call: ContractFunction, sender: str) -> None:
    tx_hash = call.transact({"from": Web3.to_checksum_address(sender), "gas": 3_000_000})
    assert chain.w3.eth.wait_for_transaction_receipt(tx_hash)["status"] == 1, call.fn_name


async def test_a_restart_resumes_from_the_checkpoint(
    devnet: up.Devnet, chain: DevChain, tmp_path: Path
) -> None:
    db = tmp_path / "resume.sqlite"
    with RpcProxy(devnet.url) as proxy:
        first = await open_session(proxy.url, devnet.metadata_path, db)
        await first.scanner.full_scan()
        known = set(first.scanner.indexer.known)
        checkpoint = first.store.checkpoint()
        await first.close()
        assert checkpoint == chain.w3.eth.block_number

        newcomer = _new_trader(devnet, "restart-newcomer")
        proxy.reset()
        second = await open_session(proxy.url, devnet.metadata_path, db)
        try:
            sync = await second.scanner.indexer.sync()
            assert sync.new_accounts == {newcomer.address}
            assert second.scanner.indexer.known == known | {newcomer.address}
            # only the blocks after the checkpoint were read: one getLogs batch, not the history
            assert proxy.methods["eth_getLogs"] <= 2, proxy.methods
        finally:
            await second.close()


async def test_a_reorg_is_healed(devnet: up.Devnet, chain: DevChain, tmp_path: Path) -> None:
    session = await open_session(devnet.url, devnet.metadata_path, tmp_path / "reorg.sqlite")
    try:
        await session.scanner.full_scan()
        fork_point = chain.w3.eth.block_number
        before_fork = chain.snapshot()
        orphan = _new_trader(devnet, "reorg-orphan")
        await session.scanner.update()
        assert orphan.address in session.scanner.indexer.known

        chain.revert(before_fork)  # the blocks that named `orphan` are gone
        survivor = _new_trader(devnet, "reorg-survivor")
        chain.advance_time(1)
        chain.advance_time(1)
        stats = await session.scanner.update()
        assert stats.full
        assert orphan.address not in session.scanner.indexer.known
        assert orphan.address not in session.store.accounts()
        assert survivor.address in session.scanner.indexer.known
        assert session.store.checkpoint() == chain.w3.eth.block_number
        assert (
            session.store.block_hashes()[chain.w3.eth.block_number]
            == chain.w3.eth.get_block("latest")["hash"].to_0x_hex()
        )
        assert fork_point < chain.w3.eth.block_number
    finally:
        await session.close()


async def test_log_ranges_shrink_when_the_provider_refuses_them(devnet: up.Devnet, tmp_path: Path) -> None:
    with RpcProxy(devnet.url, max_log_range=16) as proxy:
        session = await open_session(proxy.url, devnet.metadata_path, tmp_path / "range.sqlite")
        try:
            await session.scanner.indexer.sync()
            assert proxy.refused_log_ranges > 0
            assert {t.address for t in devnet.scenario.traders.values()} <= session.scanner.indexer.known
            assert session.scanner.indexer.range <= 16
        finally:
            await session.close()


def _new_trader(devnet: up.Devnet, label: str) -> Trader:
    builder = ScenarioBuilder(devnet.deployment, dict(devnet.scenario.traders))
    trader = builder.trader(label)
    builder.deposit_usdc(trader.address, 1_000 * 10**6)
    return trader


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rpc-url", "http://127.0.0.1:9", "--metadata", "{metadata}"], "unreachable"),
        (["--rpc-url", "ftp://example.org", "--metadata", "{metadata}"], "expected an http(s):// URL"),
        (["--rpc-url", "{url}", "--metadata", "/nonexistent/metadata.json"], "does not exist"),
    ],
)
def test_scan_bad_input_is_one_line_and_exit_2(
    devnet: up.Devnet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    filled = [a.format(metadata=devnet.metadata_path, url=devnet.url) for a in args]
    code = cli.main(["scan", *filled, "--state-db", str(tmp_path / "x.sqlite")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err
    assert len(err.splitlines()) == 1


async def test_shards_wirings_read_through_one_scanner_once_per_head(
    session: PerpSession, chain: DevChain
) -> None:
    """KEEPER_SHARDS: one wiring per shard key on one session share the scanner (and so the index
    sync): the shards' engines refreshing at one head read the accounts once, not once each."""
    from keeper import config
    from strategies.perp_v2.plugin import PLUGIN

    base = session.session
    wirings = [PLUGIN.wire(base, config.run_settings({}), {}, f"0x{i:040x}") for i in (1, 2)]
    scanners = {id(s.scanner) for w in wirings for s in w.strategies if hasattr(s, "scanner")}
    assert len(scanners) == 1
    scanner = next(s.scanner for s in wirings[0].strategies if hasattr(s, "scanner"))
    await scanner.update(await base.rpc.header("latest"))  # the cold scan
    reads = 0
    read = scanner._read

    async def counting(*args: object, **kwargs: object) -> object:
        nonlocal reads
        reads += 1
        return await read(*args, **kwargs)

    scanner._read = counting
    chain.rpc("evm_mine")
    head = await base.rpc.header("latest")
    await asyncio.gather(*(s.refresh(head) for w in wirings for s in w.strategies[:2]))
    assert reads == 1
    for w in wirings:
        await w.close()
