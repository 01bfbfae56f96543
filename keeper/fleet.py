"""The engines of one `perp-keeper run`: one per signing key.

Usually one. With `KEEPER_SHARDS=N` (docs/replicas.md) there are N: shard `i` has its own key
(`KEEPER_PRIVATE_KEY_<i>`, ...), its own transaction manager (so nonces never contend), its own wiring
(the liquidator it plans for, the inventory it closes), only the accounts of its shard
(`keeper/shards.py`) and, with PostgreSQL state, its own lease `shard:<i>`: a replica signs for the
shards whose leases it holds and keeps the others warm. Without shards the lease is `signer:<address>`.
The engines share one head: `Fleet.tick` runs them side by side and tells the observers (alerts) once,
of everything.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount

from keeper import config, shards
from keeper.audit import AuditLog
from keeper.engine import Engine
from keeper.flights import Result
from keeper.journal import Journal
from keeper.lease import Gate, LeaseKeeper, replica_id
from keeper.metrics import Metrics
from keeper.ports import Hooks
from keeper.protocol import ProtocolPlugin, Session, Wiring
from keeper.rpc import BlockHeader
from keeper.store import Store
from keeper.store_pg import PgStore
from keeper.tx import TxManager

log = logging.getLogger(__name__)


@dataclass
class Unit:
    """One signer's engine: its wiring, its transaction manager (None: dry-run) and its lease."""

    liquidator: str
    wiring: Wiring
    engine: Engine
    tx: TxManager | None
    lease: LeaseKeeper | None


class Fleet:
    """The run's engines, ticked together on each head."""

    def __init__(self, units: Sequence[Unit], presence: LeaseKeeper | None = None) -> None:
        self.units = list(units)
        self.presence = presence  # shards on PostgreSQL: this replica's presence (`ShardShare`)
        self.ticked: Callable[[int, list[Result]], None] | None = None  # observers, once per head

    @property
    def first(self) -> Unit:
        return self.units[0]

    @property
    def leases(self) -> list[LeaseKeeper]:
        return [u.lease for u in self.units if u.lease is not None]

    @property
    def engines(self) -> list[Engine]:
        return [u.engine for u in self.units]

    @property
    def in_flight(self) -> int:
        return sum(len(e.flights) for e in self.engines)

    async def tick(self, head: BlockHeader | None = None) -> list[Result]:
        head = head or await self.first.engine.rpc.header("latest")
        each = await asyncio.gather(*(e.tick(head) for e in self.engines), return_exceptions=True)
        results = [r for rs in each if not isinstance(rs, BaseException) for r in rs]
        Hooks.call(self.ticked, head.number, results)
        if failed := next((rs for rs in each if isinstance(rs, BaseException)), None):
            raise failed  # the loop's error policy, once every shard's engine had its tick
        return results

    async def run_once(self) -> list[Result]:
        each = await asyncio.gather(*(e.run_once() for e in self.engines))
        return [r for rs in each for r in rs]

    async def drain(self, within: float) -> None:
        await asyncio.gather(*(e.drain(within) for e in self.engines))

    async def close(self) -> None:
        for unit in self.units:
            await unit.wiring.close()


@dataclass(frozen=True)
class Signing:
    """Who signs: the keys (none: dry-run, planning for `liquidator`) and how many shards."""

    keys: Sequence[LocalAccount]
    liquidator: str
    shards: int = 1


async def build(
    plugin: ProtocolPlugin,
    session: Session,
    settings: config.RunSettings,
    env: Mapping[str, str],
    audit: AuditLog,
    metrics: Metrics,
    signing: Signing,
) -> Fleet:
    """One unit per key (one for a dry-run). Alone on SQLite each journal is reconciled now; a replica
    reconciles whenever it takes a lease (`Gate`)."""
    units: list[Unit] = []
    holder = config.replica_settings().replica_id or replica_id()  # one name for all its leases
    try:
        for i, key in enumerate(signing.keys or [None]):
            liquidator = signing.liquidator if key is None else key.address
            wiring = plugin.wire(session, settings, env, liquidator)
            tx, lease = None, None
            if key is not None:
                name = shards.lease_name(i) if signing.shards > 1 else f"signer:{key.address.lower()}"
                lease = replica_lease(session.store, name, holder)
                tx = TxManager(
                    session.rpc,
                    key,
                    session.deployment.chain_id,
                    journal=Journal(session.store, audit),
                    max_fee_gwei=settings.max_fee_gwei,
                    fence=None if lease is None else lease.fence,
                )
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
                mine=shards.shard_filter(i, signing.shards) if signing.shards > 1 else None,
            )
            units.append(Unit(liquidator, wiring, engine, tx, lease))
        for unit in units:
            if unit.tx is not None and unit.lease is None:
                await unit.tx.start()  # settle the journal with the chain before anything new is signed
    except BaseException:
        await Fleet(units).close()
        raise
    leases = [u.lease for u in units if u.lease is not None]
    presence = replica_lease(session.store, f"replica:{holder}", holder) if signing.shards > 1 else None
    if presence is not None and isinstance(session.store, PgStore):
        ShardShare(session.store, presence, leases)
    return Fleet(units, presence)


def replica_lease(store: Store, name: str, holder: str | None = None) -> LeaseKeeper | None:
    """With PostgreSQL state, any number of `run` processes act as one keeper: a lease per signing key
    (or shard) elects the one that signs (docs/replicas.md). SQLite is one instance: no lease."""
    if not isinstance(store, PgStore):
        return None
    replica = config.replica_settings()
    return LeaseKeeper(store, name, holder or replica.replica_id, ttl=replica.ttl, renew=replica.renew)


class ShardShare:
    """Spreads shard leases over the live replicas: each holds about ceil(shards / replicas).

    Every replica keeps a presence lease `replica:<id>` (never a fence; rows of replicas long gone are
    deleted). A shard lease is asked for only while this replica holds fewer than its share, and the
    highest-numbered one it holds is handed over while it holds more (a replica joined): the taker
    reconciles the journal first, so nothing in flight is lost or signed twice. A replica that dies
    stops counting once its presence lapses, as its shard leases do: the others take them over."""

    def __init__(self, store: PgStore, presence: LeaseKeeper, shards: Sequence[LeaseKeeper]) -> None:
        self.store, self.presence, self.shards = store, presence, list(shards)
        self._replicas, self._counted_at = 1, float("-inf")
        for lease in self.shards:
            lease.wants = self.wants
            lease.surplus = functools.partial(self.surplus, lease)

    def wants(self) -> bool:
        return self.held() < self.share()

    def surplus(self, lease: LeaseKeeper) -> bool:
        return self.held() > self.share() and lease is self._last_held()

    def held(self) -> int:
        return sum(lease.active for lease in self.shards)

    def share(self) -> int:
        now = self.presence.clock()
        if now - self._counted_at >= self.presence.renew:
            try:
                self._replicas = max(1, self.store.live_replicas())
                self._counted_at = now
            except Exception as exc:  # the database is away: the last count stands
                log.warning("counting replicas: %s: %s", type(exc).__name__, exc)
        return -(-len(self.shards) // self._replicas)

    def _last_held(self) -> LeaseKeeper | None:
        return next((lease for lease in reversed(self.shards) if lease.active), None)
