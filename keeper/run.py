"""`perp-keeper run`: wire settings, key, scanner, strategy, transaction manager and engine, then go."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TextIO

from eth_abi.abi import decode

from keeper import config
from keeper.audit import AuditLog
from keeper.engine import Engine, Result
from keeper.loop import HeadLoop
from keeper.metadata import Deployment
from keeper.metrics import Metrics, configure_logging
from keeper.multicall import encode_call
from keeper.profit import usd_text
from keeper.quotes import (
    OPTIMISM_QUOTER_V2,
    OPTIMISM_SWAP_ROUTER,
    HttpAggregator,
    OneInch,
    QuoteSource,
    UniswapV3,
    ZeroEx,
)
from keeper.rpc import Rpc
from keeper.scan import connection_settings, open_session, symbols
from keeper.tx import TxManager
from strategies.perp_v2.collateral import CollateralSettings, PerpV2Collateral
from strategies.perp_v2.positions import PerpV2Positions, PositionSettings

log = logging.getLogger(__name__)
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
LOW_ETH_WEI = 10**16  # 0.01 ETH
LOW_FREE_COLLATERAL_USDC = 1_000 * 10**6


async def main(args: Any) -> int:
    settings = config.run_settings(dry_run_flag=args.dry_run)
    configure_logging(settings.log_format, settings.log_level)
    rpc_url, metadata, state_db = connection_settings(args)
    signer = None if settings.dry_run else config.signer()
    if not settings.dry_run and signer is None:
        raise config.SettingError(
            "no key: set KEEPER_PRIVATE_KEY, KEEPER_PRIVATE_KEY_FILE or KEEPER_KEYSTORE (or use --dry-run)"
        )
    if args.from_address and not settings.dry_run:
        raise config.SettingError("--from: only with --dry-run (live, the key decides the liquidator)")
    liquidator: str
    if signer is not None:
        liquidator = signer.address
    elif args.from_address:
        liquidator = config.address(args.from_address, "--from")
    else:
        key_owner = config.signer()  # a dry-run may still be told who it would be
        liquidator = key_owner.address if key_owner else ZERO_ADDRESS
    audit = AuditLog(args.audit_log or os.environ.get("KEEPER_AUDIT_LOG"))
    session = await open_session(rpc_url, metadata, state_db, progress=True)
    sources: list[QuoteSource] = []
    try:
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
        tx = (
            None
            if signer is None
            else TxManager(
                session.rpc, signer, session.deployment.chain_id, max_fee_gwei=settings.max_fee_gwei
            )
        )
        metrics = Metrics(
            block_interval=settings.block_interval, stale_head_seconds=settings.stale_head_seconds
        )
        session.rpc.on_error = lambda kind: metrics.rpc_errors.labels(kind).inc()
        engine = Engine([positions, collateral], session.rpc, liquidator, audit, tx, metrics)
        mode = "dry-run" if tx is None else "live"
        print(f"perp-keeper {mode}: liquidator {liquidator}", file=sys.stderr)
        if args.once:
            results = await engine.run_once()
            write_summary(results, sys.stdout, symbols(session.deployment))
        else:
            ws_url = args.ws_url or os.environ.get("KEEPER_WS_URL") or None
            vault = session.deployment.vault
            port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
            server = await metrics.serve(port) if port else None
            if server is not None:
                log.info("metrics on :%d/metrics, health on :%d/health", port, port)

            async def side_jobs() -> None:
                metrics.accounts.set(len(session.scanner.indexer.known))
                await check_funds(session.rpc, vault, liquidator)

            try:
                await follow_heads(engine, session.rpc, ws_url, side_jobs)
            finally:
                if server is not None:
                    server.close()
    finally:
        audit.close()
        for source in sources:
            if isinstance(source, HttpAggregator):
                await source.close()
        await session.close()
    return 0


def quote_sources(
    rpc: Rpc, deployment: Deployment, env: Mapping[str, str] | None = None
) -> list[QuoteSource]:
    """Uniswap v3 on chain always; an aggregator when its API key or URL is configured."""
    env = os.environ if env is None else env
    quoter = env.get("KEEPER_QUOTER_V2") or deployment.quoter_v2 or OPTIMISM_QUOTER_V2
    router = env.get("KEEPER_SWAP_ROUTER") or deployment.swap_router or OPTIMISM_SWAP_ROUTER
    sources: list[QuoteSource] = [
        UniswapV3(
            rpc, config.address(quoter, "KEEPER_QUOTER_V2"), config.address(router, "KEEPER_SWAP_ROUTER")
        )
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


async def check_funds(rpc: Rpc, vault: str, keeper: str) -> None:
    """Warn before the keeper runs dry: ETH for gas, and Vault free collateral for takeovers."""
    balance = int(await rpc.request("eth_getBalance", [keeper, "latest"]), 16)
    if balance < LOW_ETH_WEI:
        log.warning("keeper %s has %.4f ETH left for gas", keeper, balance / 10**18)
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
