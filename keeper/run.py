"""`perp-keeper run`: settings, key, the protocol's plugin, tx manager and engine, then go.

The protocol comes from the registry (`--protocol`, `KEEPER_PROTOCOL` or what the metadata describes);
its plugin wires the strategies. `run` ends only on SIGTERM/SIGINT, or a configuration error at
start-up: every failure after that is survived (`keeper/engine.py`, `keeper/loop.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TextIO

from eth_account.signers.local import LocalAccount

from keeper import alerts, config, registry
from keeper.audit import AuditLog
from keeper.conditions import FAMILIES, AlertSettings, Facts, alert_settings
from keeper.engine import Engine
from keeper.errors import SettingError
from keeper.flights import Result
from keeper.journal import Journal
from keeper.lease import Gate, LeaseKeeper
from keeper.loop import HeadLoop
from keeper.metrics import Metrics, configure_logging
from keeper.notify import Alert
from keeper.profit import usd_text
from keeper.protocol import Session, Wiring
from keeper.rpc import Rpc
from keeper.session import connection_settings, open_session
from keeper.store import Store
from keeper.store_pg import PgStore
from keeper.tx import TxManager

log = logging.getLogger(__name__)
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
DRY_RUN_LIQUIDATOR = ZERO_ADDRESS  # who a dry-run without --from plans for (documented in README)


async def main(args: Any) -> int:
    settings = config.run_settings(dry_run_flag=args.dry_run)
    configure_logging(settings.log_format, settings.log_level)
    alerting = alert_settings(os.environ)  # a malformed webhook URL is exit 2, before anything
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
        tx, lease = await _transactions(session, signer, settings, audit)
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
            gate=None if lease is None or tx is None else Gate(lease, tx.start),
        )
        if lease is not None:
            metrics.watch_lease(lease)
        print(
            f"perp-keeper {'dry-run' if tx is None else 'live'} ({plugin.name}): liquidator {liquidator}",
            file=sys.stderr,
        )
        async with leasing(lease):
            if args.once:
                write_summary(await engine.run_once(), sys.stdout, wiring.symbols)
            else:
                service = _alerts(alerting, engine, session.rpc, liquidator, metrics, settings.block_interval)
                service.lease_state = None if lease is None else lease_watch(lease)
                async with _alerting(service, plugin.title, tx is None):
                    await _serve(args, settings, engine, session.rpc, metrics, wiring, liquidator)
    finally:
        audit.close()
        if wiring is not None:
            await wiring.close()
        await session.close()
    return 0


async def _transactions(
    session: Session, signer: LocalAccount | None, settings: config.RunSettings, audit: AuditLog
) -> tuple[TxManager | None, LeaseKeeper | None]:
    """The transaction manager (live only) and, for replicas sharing PostgreSQL, the signer's lease
    that fences its every journal write. Alone, the journal is reconciled now; a replica reconciles
    whenever it becomes the holder (`Gate`)."""
    if signer is None:
        return None, None
    lease = replica_lease(session.store, signer.address)
    tx = TxManager(
        session.rpc,
        signer,
        session.deployment.chain_id,
        journal=Journal(session.store, audit),
        max_fee_gwei=settings.max_fee_gwei,
        fence=None if lease is None else lease.fence,
    )
    if lease is None:
        await tx.start()  # settle the journal with the chain before anything new is signed
    return tx, lease


def replica_lease(store: Store, sender: str) -> LeaseKeeper | None:
    """With PostgreSQL state, any number of `run` processes act as one keeper: one lease per signing
    key elects the one that signs (docs/replicas.md). SQLite is one instance: no lease."""
    if not isinstance(store, PgStore):
        return None
    replica = config.replica_settings()
    return LeaseKeeper(
        store, f"signer:{sender.lower()}", replica.replica_id, ttl=replica.ttl, renew=replica.renew
    )


@contextlib.asynccontextmanager
async def leasing(lease: LeaseKeeper | None) -> AsyncIterator[None]:
    """Renew the lease in the background while the keeper runs; hand it over on the way out. A first
    claim is made before the first head, so a lone replica sends at once."""
    if lease is None:
        yield
        return
    lease.renew_once()
    task = asyncio.create_task(lease.run(), name="lease")
    try:
        yield
    finally:
        lease.stop.set()
        await task


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
        await follow_heads(engine, engine_rpc, ws_url, side_jobs, metrics, settings.block_interval)
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
    block_interval: float = 2.0,
) -> None:
    """Tick on every new head until SIGTERM/SIGINT; the tick in progress finishes its sends first.
    Without a WebSocket, the head is polled four times a block (at most every 1.5 s)."""
    loop = HeadLoop(
        rpc,
        engine.tick,
        ws_url=ws_url,
        poll_after=max(0.1, min(1.5, block_interval / 4)),
        on_error=None if metrics is None else lambda kind, _exc: metrics.errors.labels(kind).inc(),
        on_restart=None if metrics is None else lambda task: metrics.task_restarts.labels(task).inc(),
    )
    events = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        events.add_signal_handler(sig, loop.stop.set)
    loop.every(30, funds, "keeper-funds-and-gauges")
    await loop.run()


def _alerts(
    settings: AlertSettings, engine: Engine, rpc: Rpc, keeper: str, metrics: Metrics, interval: float
) -> alerts.Service:
    """The alert service, fed by the engine's hooks; its deliveries and firing conditions in metrics."""
    replacements = engine.tx.max_replacements if isinstance(engine.tx, TxManager) else 3
    count = lambda outcome: metrics.alerts.labels(outcome).inc()  # noqa: E731
    service = alerts.build(settings, keeper, rpc, interval, replacements, count)
    engine.hooks.planned, engine.hooks.landed = service.watch.planned, service.watch.landed
    engine.hooks.ticked = service.watch.ticked

    def export(facts: Facts, firing: set[str]) -> None:
        if facts.eth_wei is not None:
            metrics.eth_balance.set(facts.eth_wei / 10**18)
        for condition in FAMILIES:
            metrics.alert_firing.labels(condition).set(1 if condition in firing else 0)

    service.exported = export
    return service


def lease_watch(lease: LeaseKeeper) -> Callable[[], str | None]:
    """The lease alert's fact: set once this replica has held the signer lease and no longer does."""
    held_once = False

    def state() -> str | None:
        nonlocal held_once
        if lease.active:
            held_once = True
            return None
        return f"this replica ({lease.holder}) lost {lease.name}: a standby now" if held_once else None

    return state


@contextlib.asynccontextmanager
async def _alerting(service: alerts.Service, title: str, dry_run: bool) -> AsyncIterator[None]:
    """ "started" and "stopped" alerts around a run, the checks in the background meanwhile."""
    notifier = service.alerter.notifier
    notifier.start()
    service.alerter.emit(Alert("lifecycle", "info", f"started ({title}, {'dry-run' if dry_run else 'live'})"))
    task = asyncio.create_task(service.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        service.alerter.emit(Alert("lifecycle", "info", "stopped"))
        await notifier.close()


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
