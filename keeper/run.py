"""`perp-keeper run`: wire settings, key, the protocol's strategies, tx manager and engine, then go."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from eth_abi.abi import decode

from keeper import config
from keeper.audit import AuditLog
from keeper.codec import encode_call
from keeper.engine import Engine, Result
from keeper.errors import SettingError
from keeper.loop import HeadLoop
from keeper.metadata import SYNTHETIX_PERPS_V2, Deployment
from keeper.metrics import Metrics, configure_logging
from keeper.profit import usd_text
from keeper.quotes import (
    HttpAggregator,
    OneInch,
    QuoteSource,
    UniswapV3,
    ZeroEx,
)
from keeper.rpc import Rpc
from keeper.scan import (
    Session,
    SynthetixSession,
    connection_settings,
    open_session,
    open_synthetix_session,
    symbols,
)
from keeper.tx import TxManager
from strategies.base import Strategy
from strategies.perp_v2.collateral import CollateralSettings, PerpV2Collateral
from strategies.perp_v2.positions import PerpV2Positions, PositionSettings
from strategies.synthetix_perps_v2.strategy import SynthetixPerpsV2, SynthetixSettings

log = logging.getLogger(__name__)
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
LOW_ETH_WEI = 10**16  # 0.01 ETH
LOW_FREE_COLLATERAL_USDC = 1_000 * 10**6


@dataclass
class Wiring:
    """What one protocol contributes to a run: its strategies and how to watch the keeper's funds."""

    rpc: Rpc
    chain_id: int
    strategies: list[Strategy]
    symbols: dict[str, str]
    accounts: Callable[[], int]
    funds: Callable[[str], Awaitable[None]]
    close: Callable[[], Awaitable[None]]


async def main(args: Any) -> int:
    settings = config.run_settings(dry_run_flag=args.dry_run)
    configure_logging(settings.log_format, settings.log_level)
    rpc_url, metadata, state_db = connection_settings(args)
    protocol = config.protocol(args.protocol, metadata)
    signer = None if settings.dry_run else config.signer()
    if not settings.dry_run and signer is None:
        raise SettingError(
            "no key: set KEEPER_PRIVATE_KEY, KEEPER_PRIVATE_KEY_FILE or KEEPER_KEYSTORE (or use --dry-run)"
        )
    if args.from_address and not settings.dry_run:
        raise SettingError("--from: only with --dry-run (live, the key decides the liquidator)")
    liquidator: str
    if signer is not None:
        liquidator = signer.address
    elif args.from_address:
        liquidator = config.address(args.from_address, "--from")
    else:
        key_owner = config.signer()  # a dry-run may still be told who it would be
        liquidator = key_owner.address if key_owner else ZERO_ADDRESS
    audit = AuditLog(args.audit_log or os.environ.get("KEEPER_AUDIT_LOG"))
    try:
        if protocol == SYNTHETIX_PERPS_V2:
            wiring = await synthetix_wiring(rpc_url, metadata, state_db, settings)
        else:
            wiring = await perp_wiring(rpc_url, metadata, state_db, settings)
    except BaseException:
        audit.close()
        raise
    try:
        tx = (
            None
            if signer is None
            else TxManager(wiring.rpc, signer, wiring.chain_id, max_fee_gwei=settings.max_fee_gwei)
        )
        metrics = Metrics(
            block_interval=settings.block_interval, stale_head_seconds=settings.stale_head_seconds
        )
        wiring.rpc.on_error = lambda kind: metrics.rpc_errors.labels(kind).inc()
        engine = Engine(wiring.strategies, wiring.rpc, liquidator, audit, tx, metrics)
        mode = "dry-run" if tx is None else "live"
        print(f"perp-keeper {mode} ({protocol}): liquidator {liquidator}", file=sys.stderr)
        if args.once:
            results = await engine.run_once()
            write_summary(results, sys.stdout, wiring.symbols)
        else:
            ws_url = args.ws_url or os.environ.get("KEEPER_WS_URL") or None
            port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
            server = await metrics.serve(port) if port else None
            if server is not None:
                log.info("metrics on :%d/metrics, health on :%d/health", port, port)

            async def side_jobs() -> None:
                metrics.accounts.set(wiring.accounts())
                await wiring.funds(liquidator)

            try:
                await follow_heads(engine, wiring.rpc, ws_url, side_jobs)
            finally:
                if server is not None:
                    server.close()
    finally:
        audit.close()
        await wiring.close()
    return 0


async def perp_wiring(rpc_url: str, metadata: Path, state_db: Path, settings: config.RunSettings) -> Wiring:
    """Perp v2: position liquidations first, then collateral liquidations, over one scanner."""
    session = await open_session(rpc_url, metadata, state_db, progress=True)
    try:
        return _perp_wiring(session, settings)
    except BaseException:
        await session.close()
        raise


def _perp_wiring(session: Session, settings: config.RunSettings) -> Wiring:
    positions = PerpV2Positions(
        session.deployment,
        session.scanner,
        session.rpc,
        session.read,
        PositionSettings(
            min_profit=settings.min_profit,
            max_keeper_fee=settings.max_keeper_fee,
            inherited=settings.inherited,
            slippage_bps=settings.slippage_bps,
            max_fee_gwei=settings.max_fee_gwei,
        ),
    )
    sources = quote_sources(session.rpc, session.deployment)
    collateral = PerpV2Collateral(
        session.deployment,
        session.scanner,
        session.rpc,
        session.read,
        sources,
        CollateralSettings(
            min_profit=settings.min_profit,
            max_keeper_fee=settings.max_keeper_fee,
            slippage_bps=settings.slippage_bps,
            max_fee_gwei=settings.max_fee_gwei,
        ),
    )

    async def close() -> None:
        for source in sources:
            if isinstance(source, HttpAggregator):
                await source.close()
        await session.close()

    return Wiring(
        session.rpc,
        session.deployment.chain_id,
        [positions, collateral],
        symbols(session.deployment),
        lambda: len(session.scanner.indexer.known),
        lambda keeper: check_funds(session.rpc, session.deployment.vault, keeper),
        close,
    )


async def synthetix_wiring(
    rpc_url: str,
    metadata: Path,
    state_db: Path,
    settings: config.RunSettings,
    env: Mapping[str, str] | None = None,
) -> Wiring:
    """Synthetix Perps V2: one strategy; sUSD valued on Uniswap v3 (QuoterV2 of the metadata or env)."""
    session = await open_synthetix_session(rpc_url, metadata, state_db, progress=True)
    try:
        return _synthetix_wiring(session, settings, os.environ if env is None else env)
    except BaseException:
        await session.close()
        raise


def _synthetix_wiring(
    session: SynthetixSession, settings: config.RunSettings, env: Mapping[str, str]
) -> Wiring:
    d = session.deployment
    quote = UniswapV3.configured(session.rpc, d.quoter_v2, d.swap_router, env)
    strategy = SynthetixPerpsV2(
        d,
        session.indexer,
        session.rpc,
        session.read,
        SynthetixSettings(
            min_profit=settings.min_profit,
            max_keeper_fee=settings.max_keeper_fee,
            max_fee_gwei=settings.max_fee_gwei,
            susd_usd=settings.susd_usd,
        ),
        quote,
    )
    return Wiring(
        session.rpc,
        d.chain_id,
        [strategy],
        {m.proxy.lower(): m.key for m in d.markets},
        lambda: len(session.indexer.known),
        lambda keeper: check_gas_funds(session.rpc, keeper),
        session.close,
    )


def quote_sources(
    rpc: Rpc, deployment: Deployment, env: Mapping[str, str] | None = None
) -> list[QuoteSource]:
    """Uniswap v3 on chain always; an aggregator when its API key or URL is configured."""
    env = os.environ if env is None else env
    sources: list[QuoteSource] = [
        UniswapV3.configured(rpc, deployment.quoter_v2, deployment.swap_router, env)
    ]
    for name, kind, default_url in (
        ("0X", ZeroEx, "https://api.0x.org"),
        ("1INCH", OneInch, "https://api.1inch.dev"),
    ):
        key, url = env.get(f"KEEPER_{name}_API_KEY"), env.get(f"KEEPER_{name}_API_URL")
        if key or url:
            sources.append(kind(url or default_url, key, deployment.chain_id))
    return sources


async def follow_heads(
    engine: Engine, rpc: Rpc, ws_url: str | None, funds: Callable[[], Awaitable[None]]
) -> None:
    """Tick on every new head until SIGTERM/SIGINT; the tick in progress finishes its sends first."""
    loop = HeadLoop(rpc, engine.tick, ws_url=ws_url)
    events = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        events.add_signal_handler(sig, loop.stop.set)
    loop.every(30, funds, "keeper-funds-and-gauges")
    await loop.run()


async def check_gas_funds(rpc: Rpc, keeper: str) -> None:
    """Warn before the keeper runs out of ETH for gas."""
    balance = int(await rpc.request("eth_getBalance", [keeper, "latest"]), 16)
    if balance < LOW_ETH_WEI:
        log.warning("keeper %s has %.4f ETH left for gas", keeper, balance / 10**18)


async def check_funds(rpc: Rpc, vault: str, keeper: str) -> None:
    """Warn before the keeper runs dry: ETH for gas, and Vault free collateral for takeovers."""
    await check_gas_funds(rpc, keeper)
    data = encode_call("getFreeCollateral(address)", keeper)
    (free,) = decode(["uint256"], await rpc.call(vault, data))
    if free < LOW_FREE_COLLATERAL_USDC:
        log.warning("keeper %s has %.2f USDC free collateral in the Vault", keeper, free / 10**6)


def write_summary(results: Sequence[Result], out: TextIO, symbols: Mapping[str, str] | None = None) -> None:
    print(
        f"{'account':<42} {'kind':<10} {'market':<12} {'size':>14} {'reward':>14} {'gas (ETH)':>12} "
        f"{'est. profit':>14}  status",
        file=out,
    )
    for r in results:
        market = (symbols or {}).get((r.market or "").lower(), (r.market or "")[:10])
        size = f"{r.size / 10**18:,.4f}"
        print(
            f"{r.account:<42} {r.kind:<10} {market:<12} {size:>14} {usd_text(r.reward):>14} "
            f"{r.gas_wei / 10**18:>12.6f} {usd_text(r.profit):>14}  {r.status} {r.reason}",
            file=out,
        )
    executed = [r for r in results if r.status == "executed"]
    print(
        f"\n{len(executed)} executed, {len(results) - len(executed)} not; "
        f"reward {usd_text(sum(r.reward for r in executed))}, "
        f"gas {sum(r.gas_wei for r in results) / 10**18:.6f} ETH",
        file=out,
    )
