"""The block-driven loop: one tick per new head, the latest head wins, ticks never overlap.

Heads come from a WebSocket `newHeads` subscription when a WS URL is given (a comma-separated list:
the loop subscribes to the first that works and, when it drops, fails over to the next) and from HTTP
polling whenever no head arrived for `poll_after` seconds. A head that
goes backwards by more than `reset_depth` blocks is taken as a node reset, not ignored. Side jobs
(account refresh, balance checks, the stale-head watchdog) run on APScheduler 3 with
`max_instances=1, coalesce=True`; they never send transactions, so stopping them can never abandon
one. SIGTERM/SIGINT stop the loop after the tick in progress, whose sends complete.

One error policy: the running loop ends only on `stop` (SIGTERM/SIGINT) or a `BaseException`
(cancellation, KeyboardInterrupt). A tick that raises is logged (one warning line, the traceback at
DEBUG), reported through `on_error(kind, exc)` and the loop waits for the next head. The background
tasks (HTTP polling, the WebSocket subscription) run supervised: one that dies is logged at ERROR,
counted in `restarts` and `on_restart(name)`, and restarted after a backoff (1 s doubling to 30 s,
back to 1 s once it has run fine for `healthy_after` seconds). A side job that raises is logged
with its name and runs again at its next interval. `last_head_at` moves only when a head is
accepted, so a provider stuck on one block trips the stale-head watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from web3 import AsyncWeb3, WebSocketProvider

from keeper.endpoints import parse_urls
from keeper.errors import error_kind
from keeper.rpc import BlockHeader, BlockId, parse_header, redact

log = logging.getLogger(__name__)

Tick = Callable[[BlockHeader], Awaitable[object]]
SideJob = Callable[[], Awaitable[None]]
ErrorHook = Callable[[str, BaseException], None]  # (error_kind(exc), exc): a failure survived
RestartHook = Callable[[str], None]  # the name of a background task that died and is restarted


class HeadSource(Protocol):
    """What the loop needs from the node (`keeper.rpc.Rpc` is one)."""

    async def header(self, block: BlockId = "latest") -> BlockHeader: ...


class HeadLoop:
    def __init__(
        self,
        rpc: HeadSource,
        tick: Tick,
        *,
        ws_url: str | None = None,
        poll_after: float = 1.5,
        reset_depth: int = 64,
        stale_after: float = 30.0,
        on_error: ErrorHook | None = None,
        on_restart: RestartHook | None = None,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        healthy_after: float = 60.0,
    ) -> None:
        self.rpc, self.tick_fn, self.ws_url = rpc, tick, ws_url
        self.ws_urls = parse_urls(ws_url, "--ws-url / KEEPER_WS_URL", ("ws", "wss")) if ws_url else []
        self._ws_index = 0  # the WebSocket endpoint subscribed to (or tried next)
        self._ws_heads = 0  # heads the subscriptions delivered
        self.poll_after, self.reset_depth, self.stale_after = poll_after, reset_depth, stale_after
        self.on_error, self.on_restart = on_error, on_restart
        self.backoff, self.max_backoff, self.healthy_after = backoff, max_backoff, healthy_after
        self.restarts: Counter[str] = Counter()
        self.stop = asyncio.Event()
        self._arrived = asyncio.Event()
        self._latest: BlockHeader | None = None
        self.last_head_at = time.monotonic()
        self.ticks = 0
        self.heads_seen = 0
        self.scheduler = AsyncIOScheduler()

    # --- heads ----------------------------------------------------------------------------------------
    def offer(self, head: BlockHeader) -> None:
        """A head from any source: newer replaces the pending one; much older means the node reset.

        Only an accepted head moves `last_head_at`: a provider answering the same (or a slightly
        older) block again and again is not live, and the watchdog must see it go stale.
        """
        self.heads_seen += 1
        current = self._latest
        if current is None or head.number > current.number or head.number < current.number - self.reset_depth:
            if current is not None and head.number < current.number:
                log.warning(
                    "head went back from %d to %d: taking it as a node reset", current.number, head.number
                )
            self._latest = head
            self.last_head_at = time.monotonic()
            self._arrived.set()

    async def _poll(self) -> None:
        while not self.stop.is_set():
            quiet = time.monotonic() - self.last_head_at
            if quiet >= self.poll_after or self.ws_url is None:
                try:
                    self.offer(await self.rpc.header("latest"))
                except Exception as exc:  # one bad answer must not end polling
                    self._survived("polling the head", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.poll_after)

    async def _subscribe(self) -> None:
        """Subscribe to the first WebSocket endpoint that works; when it fails, the next one. After a
        round in which every endpoint failed, a pause (1 s doubling to 30 s, reset once heads flow)."""
        failures = 0
        while not self.stop.is_set():
            url, seen = self.ws_urls[self._ws_index], self._ws_heads
            try:
                await self._follow(url)
                return
            except Exception as exc:  # the node went away: polling covers while we reconnect
                failures = 1 if self._ws_heads > seen else failures + 1
                self._ws_index = (self._ws_index + 1) % len(self.ws_urls)
                log.warning(
                    "newHeads subscription to %s lost (%s); next: %s",
                    redact(url),
                    type(exc).__name__,
                    redact(self.ws_urls[self._ws_index]),
                )
            if failures % len(self.ws_urls) == 0:
                pause = min(30.0, 2.0 ** (failures // len(self.ws_urls) - 1))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), pause)

    async def _follow(self, url: str) -> None:
        """Offer every head of one WebSocket subscription until `stop` (returns) or it fails (raises)."""
        # one connection attempt: the next endpoint is tried at once, the pause is ours
        async with AsyncWeb3(WebSocketProvider(url, max_connection_retries=1)) as w3:
            await w3.eth.subscribe("newHeads")
            async for message in w3.socket.process_subscriptions():
                # web3 hands the head over as an AttributeDict: a Mapping, not a dict
                raw = message.get("result") if isinstance(message, Mapping) else None
                if isinstance(raw, Mapping) and "number" in raw:
                    self._ws_heads += 1
                    try:
                        self.offer(parse_header({k: _hex(v) for k, v in raw.items()}))
                    except Exception as exc:  # one malformed head: keep the connection
                        self._survived("reading a newHeads message", exc)
                if self.stop.is_set():
                    return
        if not self.stop.is_set():
            raise ConnectionError("the newHeads subscription ended")

    # --- failures ---------------------------------------------------------------------------------------
    def _survived(self, what: str, exc: Exception) -> None:
        """One warning line (`what failed: Type: message`), the traceback at DEBUG, then `on_error`."""
        log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
        log.debug("%s failed", what, exc_info=exc)
        if self.on_error is not None:
            try:
                self.on_error(error_kind(exc), exc)
            except Exception:
                log.exception("the on_error hook failed")

    async def _supervise(self, name: str, task: Callable[[], Awaitable[None]]) -> None:
        """Run `task` until `stop`; whenever it dies (or returns early), log, count and restart it."""
        delay = self.backoff
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                await task()
            except Exception as exc:
                failure: Exception | None = exc
            else:
                failure = None
                if self.stop.is_set():
                    return
            if time.monotonic() - started >= self.healthy_after:
                delay = self.backoff  # it ran fine for a while: this is a fresh failure
            if failure is None:
                log.error("background task %s ended unexpectedly; restarting in %.2f s", name, delay)
            else:
                log.error(
                    "background task %s died (%s: %s); restarting in %.2f s",
                    name,
                    type(failure).__name__,
                    failure,
                    delay,
                    exc_info=failure,
                )
            self.restarts[name] += 1
            if self.on_restart is not None:
                try:
                    self.on_restart(name)
                except Exception:
                    log.exception("the on_restart hook failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
            delay = min(delay * 2, self.max_backoff)

    # --- running ---------------------------------------------------------------------------------------
    def every(self, seconds: float, job: SideJob, name: str) -> None:
        """Run `job` every `seconds` while the loop runs; an exception is logged with `name`, never raised."""

        async def guarded() -> None:
            try:
                await job()
            except Exception as exc:
                self._survived(f"side job {name}", exc)

        self.scheduler.add_job(
            guarded, "interval", seconds=seconds, id=name, name=name, max_instances=1, coalesce=True
        )

    async def watchdog(self) -> None:
        quiet = time.monotonic() - self.last_head_at
        if quiet > self.stale_after:
            log.error("no new head for %.0f s: the RPC may be stale", quiet)

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._supervise("head-poll", lambda: self._poll()))]
        if self.ws_url:
            tasks.append(
                asyncio.create_task(self._supervise("newheads-subscription", lambda: self._subscribe()))
            )
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
                except Exception as exc:  # not BaseException: cancellation and Ctrl-C still end the loop
                    self._survived(f"tick at block {head.number}", exc)
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
