"""`perp-keeper run`: settings, key, the protocol's plugin, tx manager and engine, then go.

The protocol comes from the registry (`--protocol`, `KEEPER_PROTOCOL` or what the metadata describes);
its plugin wires the strategies. `run` ends only on SIGTERM/SIGINT, or a configuration error at
start-up: every failure after that is survived (`keeper/engine.py`, `keeper/loop.py`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TextIO

from eth_account.signers.local import LocalAccount

from keeper import config, registry
from keeper.audit import AuditLog
from keeper.engine import Engine
from keeper.errors import SettingError
from keeper.flights import Result
from keeper.journal import Journal
from keeper.loop import HeadLoop
from keeper.metrics import Metrics, configure_logging
from keeper.profit import usd_text
from keeper.protocol import Wiring
from keeper.rpc import Rpc
from keeper.session import connection_settings, open_session
from keeper.tx import TxManager

log = logging.getLogger(__name__)
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
DRY_RUN_LIQUIDATOR = ZERO_ADDRESS  # who a dry-run without --from plans for (documented in README)


async def main(args: Any) -> int:
    settings = config.run_settings(dry_run_flag=args.dry_run)
    configure_logging(settings.log_format, settings.log_level)
    rpc_url, metadata, state_db = connection_settings(args)
    plugin = registry.select(args.protocol, metadata, os.environ)
    signer, liquidator = _identity(args, settings)
    audit = AuditLog(
        args.audit_log or os.environ.get("KEEPER_AUDIT_LOG"),
        max_bytes=settings.audit_max_bytes,
        backups=settings.audit_backups,
    )
    try:
        session = await open_session(plugin, rpc_url, metadata, state_db, progress=True)
    except BaseException:
        audit.close()
        raise
    wiring: Wiring | None = None
    try:
        wiring = plugin.wire(session, settings, os.environ, liquidator)
        tx = None
        if signer is not None:
            journal = Journal(session.store, audit)
            tx = TxManager(
                session.rpc,
                signer,
                session.deployment.chain_id,
                journal=journal,
                max_fee_gwei=settings.max_fee_gwei,
            )
            await tx.start()  # settle the journal with the chain before anything new is signed
        metrics = Metrics(
            block_interval=settings.block_interval, stale_head_seconds=settings.stale_head_seconds
        )
        session.rpc.on_error = lambda kind: metrics.rpc_errors.labels(kind).inc()
        metrics.watch_rpc(session.rpc)
        engine = Engine(
            wiring.strategies,
            session.rpc,
            liquidator,
            audit,
            tx,
            metrics,
            gas_budget=settings.gas_budget,
            max_in_flight=settings.max_in_flight,
        )
        print(
            f"perp-keeper {'dry-run' if tx is None else 'live'} ({plugin.name}): liquidator {liquidator}",
            file=sys.stderr,
        )
        if args.once:
            write_summary(await engine.run_once(), sys.stdout, wiring.symbols)
        else:
            await _serve(args, settings, engine, session.rpc, metrics, wiring, liquidator)
    finally:
        audit.close()
        if wiring is not None:
            await wiring.close()
        await session.close()
    return 0


def _identity(args: Any, settings: config.RunSettings) -> tuple[LocalAccount | None, str]:
    """The signer (live) and the liquidator address plans are made for.

    A dry-run reads no key at all, whatever the environment holds: it plans for `--from`, else for
    `DRY_RUN_LIQUIDATOR` (the zero address), so an auditor's run can never load or decrypt a secret.
    """
    if settings.dry_run:
        if args.from_address:
            return None, config.address(args.from_address, "--from")
        return None, DRY_RUN_LIQUIDATOR
    if args.from_address:
        raise SettingError("--from: only with --dry-run (live, the key decides the liquidator)")
    signer = config.signer()
    if signer is None:
        raise SettingError(
            "no key: set KEEPER_PRIVATE_KEY, KEEPER_PRIVATE_KEY_FILE or KEEPER_KEYSTORE (or use --dry-run)"
        )
    return signer, signer.address


async def _serve(
    args: Any,
    settings: config.RunSettings,
    engine: Engine,
    engine_rpc: Rpc,
    metrics: Metrics,
    wiring: Wiring,
    liquidator: str,
) -> None:
    ws_url = args.ws_url or os.environ.get("KEEPER_WS_URL") or None
    port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    server = await metrics.serve(port) if port else None
    if server is not None:
        log.info("metrics on :%d/metrics, health on :%d/health", port, port)

    async def side_jobs() -> None:
        metrics.accounts.set(wiring.accounts())
        await wiring.funds(liquidator)

    try:
        await follow_heads(engine, engine_rpc, ws_url, side_jobs, metrics)
        if len(engine.flights):  # SIGTERM: planning stopped; follow what is in flight for a while
            log.info(
                "stopping: following %d plans in flight for up to %.0f s",
                len(engine.flights),
                settings.shutdown_grace,
            )
            await engine.drain(settings.shutdown_grace)
    finally:
        if server is not None:
            server.close()


async def follow_heads(
    engine: Engine,
    rpc: Rpc,
    ws_url: str | None,
    funds: Callable[[], Awaitable[None]],
    metrics: Metrics | None = None,
) -> None:
    """Tick on every new head until SIGTERM/SIGINT; the tick in progress finishes its sends first."""
    loop = HeadLoop(
        rpc,
        engine.tick,
        ws_url=ws_url,
        on_error=None if metrics is None else lambda kind, _exc: metrics.errors.labels(kind).inc(),
        on_restart=None if metrics is None else lambda task: metrics.task_restarts.labels(task).inc(),
    )
    events = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        events.add_signal_handler(sig, loop.stop.set)
    loop.every(30, funds, "keeper-funds-and-gauges")
    await loop.run()


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
