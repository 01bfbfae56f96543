"""The block-driven loop: one tick per new head, the latest head wins, ticks never overlap.

Heads come from a WebSocket `newHeads` subscription when a WS URL is given (reconnecting when the
node drops it) and from HTTP polling whenever no head arrived for `poll_after` seconds. A head that
goes backwards by more than `reset_depth` blocks is taken as a node reset, not ignored. Side jobs
(account refresh, balance checks, the stale-head watchdog) run on APScheduler 3 with
`max_instances=1, coalesce=True`; they never send transactions, so stopping them can never abandon
one. SIGTERM/SIGINT stop the loop after the tick in progress, whose sends complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from web3 import AsyncWeb3, WebSocketProvider

from keeper.errors import RpcError, RpcUnavailableError
from keeper.rpc import BlockHeader, Rpc, parse_header

log = logging.getLogger(__name__)

Tick = Callable[[BlockHeader], Awaitable[object]]
SideJob = Callable[[], Awaitable[None]]


class HeadLoop:
    def __init__(
        self,
        rpc: Rpc,
        tick: Tick,
        *,
        ws_url: str | None = None,
        poll_after: float = 1.5,
        reset_depth: int = 64,
        stale_after: float = 30.0,
    ) -> None:
        self.rpc, self.tick_fn, self.ws_url = rpc, tick, ws_url
        self.poll_after, self.reset_depth, self.stale_after = poll_after, reset_depth, stale_after
        self.stop = asyncio.Event()
        self._arrived = asyncio.Event()
        self._latest: BlockHeader | None = None
        self.last_head_at = time.monotonic()
        self.ticks = 0
        self.heads_seen = 0
        self.scheduler = AsyncIOScheduler()

    # --- heads ----------------------------------------------------------------------------------------
    def offer(self, head: BlockHeader) -> None:
        """A head from any source: newer replaces the pending one; much older means the node reset."""
        self.heads_seen += 1
        self.last_head_at = time.monotonic()
        current = self._latest
        if current is None or head.number > current.number or head.number < current.number - self.reset_depth:
            if current is not None and head.number < current.number:
                log.warning(
                    "head went back from %d to %d: taking it as a node reset", current.number, head.number
                )
            self._latest = head
            self._arrived.set()

    async def _poll(self) -> None:
        while not self.stop.is_set():
            quiet = time.monotonic() - self.last_head_at
            if quiet >= self.poll_after or self.ws_url is None:
                try:
                    self.offer(await self.rpc.header("latest"))
                except (RpcError, RpcUnavailableError) as exc:
                    log.warning("polling the head failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.poll_after)

    async def _subscribe(self) -> None:
        assert self.ws_url is not None
        while not self.stop.is_set():
            try:
                async with AsyncWeb3(WebSocketProvider(self.ws_url)) as w3:
                    await w3.eth.subscribe("newHeads")
                    async for message in w3.socket.process_subscriptions():
                        raw = message.get("result") if isinstance(message, dict) else None
                        if isinstance(raw, dict) and "number" in raw:
                            self.offer(parse_header({k: _hex(v) for k, v in raw.items()}))
                        if self.stop.is_set():
                            return
            except Exception as exc:  # the node went away: polling covers while we reconnect
                log.warning("newHeads subscription lost (%s); reconnecting", type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 1.0)

    # --- running ---------------------------------------------------------------------------------------
    def every(self, seconds: float, job: SideJob, name: str) -> None:
        self.scheduler.add_job(job, "interval", seconds=seconds, id=name, max_instances=1, coalesce=True)

    async def watchdog(self) -> None:
        if time.monotonic() - self.last_head_at > self.stale_after:
            log.error("no new head for %.0f s: the RPC may be stale", time.monotonic() - self.last_head_at)

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._poll())]
        if self.ws_url:
            tasks.append(asyncio.create_task(self._subscribe()))
        self.every(max(5.0, self.stale_after / 3), self.watchdog, "stale-head-watchdog")
        self.scheduler.start()
        try:
            while not self.stop.is_set():
                waiter = asyncio.create_task(self._arrived.wait())
                stopper = asyncio.create_task(self.stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                if self.stop.is_set():
                    break
                self._arrived.clear()
                head = self._latest
                assert head is not None
                try:
                    await self.tick_fn(head)  # heads that arrive meanwhile: only the latest is kept
                except (RpcError, RpcUnavailableError) as exc:
                    log.warning("tick at block %d failed: %s", head.number, exc)
                self.ticks += 1
        finally:
            self.scheduler.shutdown(wait=False)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _hex(value: object) -> object:
    """newHeads fields come decoded by web3 (ints, HexBytes): back to the JSON-RPC hex shape."""
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return value
