"""Leases: which of several replicas sharing one database may sign.

A lease is a row (name, holder, epoch, expires_at). The holder renews it about every second for a TTL of
a few seconds; another replica takes it only once it has expired, and the epoch grows with every
change of holder (a holder re-taking its own lapsed lease counts as a change: whatever it was doing
when it lapsed belongs to an older epoch). Every journal write of a signed transaction is *fenced*:
checked against the lease row in the same database transaction as the insert
(`Journal.record_signed(fence=...)`), so a replica paused past its TTL (SIGSTOP, a long GC, a
partition) that wakes up signs nothing: its epoch is no longer the row's. Expiry is judged by the
database's clock (PostgreSQL's `clock_timestamp()`), one clock for every replica.

The rules are pure functions here; the stores (`keeper/store.py`, `keeper/store_pg.py`) apply them
inside their transactions, and `LeaseKeeper` renews in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from keeper.errors import KeeperError

log = logging.getLogger(__name__)
DEFAULT_TTL_SECONDS = 5
DEFAULT_RENEW_SECONDS = 1.0


class LeaseLostError(KeeperError, RuntimeError):
    """The sender no longer holds the lease at its epoch: nothing was recorded, nothing may be sent."""


@dataclass(frozen=True)
class Fence:
    """What a journal write must still be true of, in its own database transaction."""

    name: str
    holder: str
    epoch: int


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    epoch: int
    expires_at: float  # database clock, Unix seconds
    acquired_at: float  # when this holder took it (this epoch began)
    renewed_at: float

    def live(self, now: float) -> bool:
        return self.expires_at > now


def claim(current: Lease | None, name: str, holder: str, now: float, ttl: float) -> Lease | None:
    """The row to write when `holder` asks for the lease at `now`, or None when another holds it.

    Renewal keeps the epoch; any take-over (a free, an expired, or one's own lapsed lease) bumps it."""
    if current is None:
        return Lease(name, holder, 1, now + ttl, now, now)
    if current.live(now):
        if current.holder != holder:
            return None
        return Lease(name, holder, current.epoch, now + ttl, current.acquired_at, now)
    return Lease(name, holder, current.epoch + 1, now + ttl, now, now)


def check_fence(current: Lease | None, fence: Fence, now: float) -> None:
    """Raise `LeaseLostError` unless the lease is live and still the fence's holder at its epoch."""
    if current is None or current.holder != fence.holder or current.epoch != fence.epoch:
        found = "nobody" if current is None else f"{current.holder} at epoch {current.epoch}"
        raise LeaseLostError(
            f"lease {fence.name} is held by {found}, not {fence.holder} at epoch {fence.epoch}: not sent"
        )
    if not current.live(now):
        raise LeaseLostError(f"lease {fence.name} of {fence.holder} expired: not sent")


def replica_id() -> str:
    """Who this process is, in the lease rows: host, pid and a random part (a restarted process, even
    with the same pid in a new container, is a new holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class LeaseStore(Protocol):
    def lease_claim(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Apply `claim` in one transaction; the row as it is afterwards (None: no row)."""
        ...

    def lease_release(self, name: str, holder: str) -> None: ...


class LeaseKeeper:
    """Holds (or waits for) one lease: renews every `renew` seconds. Believes itself the holder only
    until `ttl` seconds after the start of its last successful renewal, by its own monotonic clock, so
    a process paused past that stops at once, before the database says so."""

    def __init__(
        self,
        store: LeaseStore,
        name: str,
        holder: str | None = None,
        *,
        ttl: float = DEFAULT_TTL_SECONDS,
        renew: float = DEFAULT_RENEW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.name, self.holder = store, name, holder or replica_id()
        self.ttl, self.renew, self.clock = ttl, renew, clock
        self.current: Lease | None = None  # the row as last seen
        self._valid_until = 0.0
        self.stop = asyncio.Event()
        # shards (keeper/fleet.py): ask for a free lease only while under this replica's fair share,
        # hand one over while above it; a single lease always asks and never hands over
        self.wants: Callable[[], bool] = lambda: True
        self.surplus: Callable[[], bool] = lambda: False
        self.handed_over = False  # released for the share, not lost: no alert

    def fence(self) -> Fence | None:
        """The fence to send under, or None when this replica must not send."""
        if self.current is None or self.current.holder != self.holder or self.clock() >= self._valid_until:
            return None
        return Fence(self.name, self.holder, self.current.epoch)

    @property
    def active(self) -> bool:
        return self.fence() is not None

    def renew_once(self) -> Lease | None:
        """One claim or renewal; a database failure leaves this replica not holding (until the next)."""
        if not self.active and not self.wants():
            return self.current
        if self.active and self.surplus():
            log.info("lease %s: handed over (more than this replica's share)", self.name)
            self.release()
            self.handed_over = True
            return self.current
        started = self.clock()
        try:
            row = self.store.lease_claim(self.name, self.holder, self.ttl)
        except Exception as exc:
            log.warning("lease %s: %s: %s", self.name, type(exc).__name__, exc)
            self._valid_until = 0.0
            return self.current
        before = self.current
        self.current = row
        mine = row is not None and row.holder == self.holder
        self._valid_until = started + self.ttl if mine else 0.0
        if (
            row is not None
            and mine
            and (before is None or (before.epoch, before.holder) != (row.epoch, row.holder))
        ):
            log.info("lease %s: taken at epoch %d", self.name, row.epoch)
            self.handed_over = False
        elif not mine and before is not None and before.holder == self.holder:
            log.warning("lease %s: lost to %s", self.name, row.holder if row else "nobody")
        return row

    async def run(self) -> None:
        """Renew until `stop` is set, then hand the lease over at once (release)."""
        while not self.stop.is_set():
            self.renew_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.renew)
        self.release()

    def release(self) -> None:
        if self.active:
            try:
                self.store.lease_release(self.name, self.holder)
            except Exception as exc:
                log.warning("lease %s: release: %s", self.name, exc)
        self._valid_until = 0.0


class Gate:
    """The engine's "may I send?": only the lease holder, and only once it has reconciled the journal
    for its current epoch (a new holder settles what the last one left in flight before signing)."""

    def __init__(self, lease: LeaseKeeper, reconcile: Callable[[], Awaitable[object]]) -> None:
        self.lease, self.reconcile = lease, reconcile
        self.reconciled_epoch: int | None = None

    async def __call__(self) -> bool:
        fence = self.lease.fence()
        if fence is None:
            return False
        if self.reconciled_epoch != fence.epoch:
            await self.reconcile()
            self.reconciled_epoch = fence.epoch
        return self.lease.fence() == fence
