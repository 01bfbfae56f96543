"""`perp-keeper run`: settings, keys, the protocol's plugin, the engines (`keeper/fleet.py`), then go.

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

from keeper import alerts, config, registry
from keeper.audit import AuditLog
from keeper.conditions import FAMILIES, AlertSettings, Facts, alert_settings
from keeper.errors import SettingError
from keeper.fleet import Fleet, Signing, build
from keeper.flights import Result
from keeper.lease import LeaseKeeper
from keeper.loop import HeadLoop
from keeper.metrics import Metrics, configure_logging
from keeper.notify import Alert
from keeper.profit import usd_text
from keeper.rpc import BlockHeader, Rpc
from keeper.session import connection_settings, open_session

log = logging.getLogger(__name__)
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
DRY_RUN_LIQUIDATOR = ZERO_ADDRESS  # who a dry-run without --from plans for (documented in README)


async def main(args: Any) -> int:
    settings = config.run_settings(dry_run_flag=args.dry_run)
    configure_logging(settings.log_format, settings.log_level)
    alerting = alert_settings(os.environ)  # a malformed webhook URL is exit 2, before anything
    rpc_url, metadata, state_db = connection_settings(args)
    plugin = registry.select(args.protocol, metadata, os.environ)
    signing = _identity(args, settings)
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
    fleet: Fleet | None = None
    try:
        metrics = Metrics(
            block_interval=settings.block_interval, stale_head_seconds=settings.stale_head_seconds
        )
        session.rpc.on_error = lambda kind: metrics.rpc_errors.labels(kind).inc()
        metrics.watch_rpc(session.rpc)
        fleet = await build(plugin, session, settings, os.environ, audit, metrics, signing)
        if fleet.leases:
            metrics.watch_leases(fleet.leases)
        mode = "live" if signing.keys else "dry-run"
        for unit in fleet.units:
            print(f"perp-keeper {mode} ({plugin.name}): liquidator {unit.liquidator}", file=sys.stderr)
        async with leasing([fleet.presence, *fleet.leases] if fleet.presence else fleet.leases):
            if args.once:
                write_summary(await fleet.run_once(), sys.stdout, fleet.first.wiring.symbols)
            else:
                interval = settings.block_interval
                service = _alerts(alerting, fleet, session.rpc, signing.liquidator, metrics, interval)
                service.lease_state = lease_watch(fleet.leases) if fleet.leases else None
                async with _alerting(service, plugin.title, not signing.keys):
                    await _serve(args, settings, fleet, session.rpc, metrics)
    finally:
        audit.close()
        if fleet is not None:
            await fleet.close()
        await session.close()
    return 0


@contextlib.asynccontextmanager
async def leasing(leases: Sequence[LeaseKeeper]) -> AsyncIterator[None]:
    """Renew the leases in the background while the keeper runs; hand them over on the way out. A
    first claim is made before the first head, so a lone replica sends at once."""
    for lease in leases:
        lease.renew_once()
    tasks = [asyncio.create_task(lease.run(), name=f"lease {lease.name}") for lease in leases]
    try:
        yield
    finally:
        for lease in leases:
            lease.stop.set()
        await asyncio.gather(*tasks)


def _identity(args: Any, settings: config.RunSettings) -> Signing:
    """The keys (live) and the liquidator address plans are made for.

    A dry-run reads no key at all, whatever the environment holds: it plans for `--from`, else for
    `DRY_RUN_LIQUIDATOR` (the zero address), so an auditor's run can never load or decrypt a secret.
    Live with KEEPER_SHARDS=N: one key per shard (`config.shard_signers`).
    """
    if settings.dry_run:
        if args.from_address:
            return Signing([], config.address(args.from_address, "--from"))
        return Signing([], DRY_RUN_LIQUIDATOR)
    if args.from_address:
        raise SettingError("--from: only with --dry-run (live, the key decides the liquidator)")
    if (count := config.shard_count()) > 1:
        keys = config.shard_signers()
        return Signing(keys, keys[0].address, count)
    signer = config.signer()
    if signer is None:
        raise SettingError(
            "no key: set KEEPER_PRIVATE_KEY, KEEPER_PRIVATE_KEY_FILE or KEEPER_KEYSTORE (or use --dry-run)"
        )
    return Signing([signer], signer.address)


async def _serve(args: Any, settings: config.RunSettings, fleet: Fleet, rpc: Rpc, metrics: Metrics) -> None:
    ws_url = args.ws_url or os.environ.get("KEEPER_WS_URL") or None
    port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    server = await metrics.serve(port) if port else None
    if server is not None:
        log.info("metrics on :%d/metrics, health on :%d/health", port, port)

    async def side_jobs() -> None:
        metrics.accounts.set(fleet.first.wiring.accounts())
        for unit in fleet.units:
            await unit.wiring.funds(unit.liquidator)

    try:
        await follow_heads(fleet.tick, rpc, ws_url, side_jobs, metrics, settings.block_interval)
        if fleet.in_flight:  # SIGTERM: planning stopped; follow what is in flight for a while
            log.info(
                "stopping: following %d plans in flight for up to %.0f s",
                fleet.in_flight,
                settings.shutdown_grace,
            )
            await fleet.drain(settings.shutdown_grace)
    finally:
        if server is not None:
            server.close()


async def follow_heads(
    tick: Callable[[BlockHeader], Awaitable[object]],
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
        tick,
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
    settings: AlertSettings, fleet: Fleet, rpc: Rpc, keeper: str, metrics: Metrics, interval: float
) -> alerts.Service:
    """The alert service, fed by the engines' hooks; its deliveries and firing conditions in metrics."""
    tx = fleet.first.tx
    replacements = tx.max_replacements if tx is not None else 3
    count = lambda outcome: metrics.alerts.labels(outcome).inc()  # noqa: E731
    service = alerts.build(settings, keeper, rpc, interval, replacements, count)
    for engine in fleet.engines:
        engine.hooks.planned, engine.hooks.landed = service.watch.planned, service.watch.landed
    fleet.ticked = service.watch.ticked  # once per head, every shard's results

    def export(facts: Facts, firing: set[str]) -> None:
        if facts.eth_wei is not None:
            metrics.eth_balance.set(facts.eth_wei / 10**18)
        for condition in FAMILIES:
            metrics.alert_firing.labels(condition).set(1 if condition in firing else 0)

    service.exported = export
    return service


def lease_watch(leases: Sequence[LeaseKeeper]) -> Callable[[], str | None]:
    """The lease alert's fact: set once this replica has held a lease and no longer does (a shard
    handed over to a replica that joined is not lost)."""
    held_once: set[str] = set()

    def state() -> str | None:
        lost = []
        for lease in leases:
            if lease.active:
                held_once.add(lease.name)
            elif lease.name in held_once and not lease.handed_over:
                lost.append(lease.name)
        if not lost:
            return None
        return f"this replica ({leases[0].holder}) lost {', '.join(lost)}: a standby now"

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
