"""The one RPC client: one object over one or several endpoints, AsyncWeb3's HTTP transport, JSON-RPC
batches, tenacity retries with failover, request counts.

Hot paths (`eth_call` of a multicall, `eth_getLogs`, block headers) go straight to the provider:
web3's middleware would add two `eth_chainId` round trips to every call. The provider's own retries
are off so that tenacity's are the only ones, on the failures `keeper.jsonrpc.is_transient` names
(transport, timeouts, HTTP 429/5xx, malformed answers, transient JSON-RPC errors), never on a genuine
error answer such as a revert.

The client encodes requests with the provider's own ids and decodes answers itself
(`keeper/jsonrpc.py` says why).

Several endpoints (`--rpc-url a,b,c`): each attempt goes to the endpoint `keeper.endpoints.rank`
puts first; a transient failure puts it in a window (`Retry-After`, capped, honoured by new requests
too, or a back-off) and the next attempt goes to the next one, or waits for the first window to end.
`eth_sendRawTransaction` goes to every endpoint at once, the first acceptance is the answer; when none
accepts, an "already known" / "nonce too low" is raised first, so the transaction manager looks the
transaction up by hash instead of signing again. Every `probe_seconds` a background survey asks every
endpoint for its head (and its chain id until verified): lagging ones are avoided, recovered ones used.

After the retries: the last JSON-RPC error as it is; `RpcBusyError` when endpoints answered, but only
with HTTP 429/5xx or garbage (busy, not an operator mistake); `RpcUnavailableError` when none could
be reached at all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from web3 import AsyncHTTPProvider
from web3.types import RPCEndpoint

from keeper import endpoints as health
from keeper.endpoints import MAX_LAG_BLOCKS, Endpoint, Sighting, redact
from keeper.errors import RpcError, RpcUnavailableError
from keeper.jsonrpc import (
    TRANSPORT_ERRORS,
    BlockHeader,
    BlockId,
    RpcBusyError,
    batch_results,
    block_param,
    call_params,
    call_result,
    decode,
    describe,
    failure_kind,
    is_transient,
    most_telling,
    parse_header,
    quantity,
    single_result,
)

__all__ = ["BlockHeader", "BlockId", "Rpc", "RpcBusyError", "is_transient", "parse_header", "redact"]
log = logging.getLogger(__name__)
SEND = "eth_sendRawTransaction"
Send = Callable[[int], Awaitable[Any]]  # one attempt on the endpoint of that index
T = TypeVar("T")


class Rpc:
    def __init__(
        self,
        url: str | Sequence[str],
        *,
        timeout: float = 30.0,
        attempts: int = 5,
        backoff_seconds: float = 0.25,
        max_batch: int = 100,
        max_lag: int = MAX_LAG_BLOCKS,
        probe_seconds: float = 2.0,
        max_retry_after: float = 30.0,
    ) -> None:
        urls = health.split_urls(url) if isinstance(url, str) else [u.strip() for u in url]
        if not urls or not all(urls):
            raise ValueError("Rpc needs at least one URL and no empty one")
        self.endpoints = [Endpoint(u, n) for u, n in zip(urls, health.endpoint_names(urls), strict=True)]
        self.providers = [
            AsyncHTTPProvider(
                u,
                request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)},
                exception_retry_configuration=None,
            )
            for u in urls
        ]
        self.timeout, self.attempts, self.backoff_seconds = timeout, attempts, backoff_seconds
        self.max_batch, self.max_lag, self.max_retry_after = max_batch, max_lag, max_retry_after
        self.probe_seconds = probe_seconds
        self.expected_chain_id: int | None = None  # set once checked: reads then go only to verified ones
        self.http_requests = 0
        self.calls: Counter[str] = Counter()
        # by kind: transport, rate-limit, http-5xx, malformed, answer
        self.errors: Counter[str] = Counter()
        self.on_error: Callable[[str], None] | None = None
        self._current: int | None = None  # the endpoint reads went to last: kept unless clearly beaten
        self._last_probe = time.monotonic()  # the first survey is the caller's (start-up, check)
        self._probe: asyncio.Task[list[Sighting]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        """Every endpoint's URL, comma-separated: show it only through `redact`."""
        return ",".join(ep.url for ep in self.endpoints)

    def is_healthy(self, ep: Endpoint) -> bool:
        return health.healthy(ep, time.monotonic(), self.expected_chain_id, self.max_lag)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for provider in self.providers:
            await provider.disconnect()

    async def __aenter__(self) -> Rpc:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # --- requests -----------------------------------------------------------------------------------
    async def request(self, method: str, params: Sequence[Any] = (), *, retry: bool = True) -> Any:
        args = list(params)
        attempts = self.attempts if retry else 1
        if method == SEND and len(self.endpoints) > 1:
            return await self._retrying(lambda: self._broadcast(args), method, attempts)

        async def once(i: int) -> Any:
            self.calls[method] += 1
            return await self._single(i, method, args)

        needed = health.pinned_block(method, args)
        return await self._retrying(lambda: self._on_best(needed, once), method, attempts)

    async def batch(self, requests: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several requests in as few HTTP round trips as `max_batch` allows.

        Each element of the answer is the result or the `RpcError` for that request, so one failing
        request does not lose the others.
        """
        answers: list[Any] = []
        for start in range(0, len(requests), self.max_batch):
            chunk = [(m, list(p)) for m, p in requests[start : start + self.max_batch]]
            needed = max((b for m, p in chunk if (b := health.pinned_block(m, p)) is not None), default=None)
            answers += await self._chunk(chunk, needed)
        return answers

    async def _chunk(self, chunk: list[tuple[str, list[Any]]], needed: int | None) -> list[Any]:
        answers: list[Any] = await self._retrying(
            lambda: self._on_best(needed, lambda i: self._batch_once(i, chunk)), "batch", self.attempts
        )
        return answers

    async def _single(self, i: int, method: str, params: list[Any]) -> Any:
        provider = self.providers[i]
        request = provider.form_request(RPCEndpoint(method), params)
        result = single_result(method, await self._post(i, method, provider.encode_rpc_dict(request)))
        if (head := health.head_of(method, params, result)) is not None:
            health.saw_head(self.endpoints[i], head)
        return result

    async def _batch_once(self, i: int, chunk: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        provider = self.providers[i]
        for method, _ in chunk:
            self.calls[method] += 1
        # ids come from the provider's counter, so they are unique within this client
        requests = [provider.form_request(RPCEndpoint(m), p) for m, p in chunk]
        answer = await self._post(i, "batch", provider.encode_batch_request_dicts(requests))
        results = batch_results([m for m, _ in chunk], [r["id"] for r in requests], answer)
        for (method, params), result in zip(chunk, results, strict=True):
            if (
                not isinstance(result, RpcError)
                and (head := health.head_of(method, params, result)) is not None
            ):
                health.saw_head(self.endpoints[i], head)
        return results

    async def _post(self, i: int, method: str, body: bytes) -> Any:
        """POST one JSON-RPC body to endpoint `i` through its provider's session; the decoded answer."""
        return decode(method, await self.providers[i]._make_request(RPCEndpoint(method), body))

    # --- where each attempt goes --------------------------------------------------------------------
    async def _on_best(self, needed: int | None, send: Send) -> Any:
        """One attempt on the endpoint ranked first (after any `Retry-After` every endpoint asked for)."""
        self._maybe_probe()
        if wait := health.rate_limit_wait(self.endpoints, time.monotonic(), self.expected_chain_id):
            await asyncio.sleep(min(wait, self.max_retry_after))
        order = health.rank(
            self.endpoints,
            time.monotonic(),
            needed=needed,
            expected=self.expected_chain_id,
            current=self._current,
            max_lag=self.max_lag,
        )
        result = await self._attempt(order[0], send)
        self._current = order[0]
        return result

    async def _broadcast(self, params: list[Any]) -> Any:
        """The raw transaction to every endpoint at once; the first acceptance is the answer (the
        others finish in the background, their failures recorded)."""
        now = time.monotonic()
        targets = [
            i
            for i, ep in enumerate(self.endpoints)
            if ep.wrong_chain is None and ep.rate_limited_until <= now
        ] or list(range(len(self.endpoints)))
        self.calls[SEND] += 1
        sends = [self._spawn(self._attempt(i, lambda i: self._single(i, SEND, params))) for i in targets]
        failures: list[Exception] = []
        for next_done in asyncio.as_completed(sends):
            try:
                return await next_done
            except Exception as exc:
                failures.append(exc)
        raise most_telling(failures)

    async def _attempt(self, i: int, send: Send) -> Any:
        """One HTTP request to endpoint `i`, its outcome recorded in the endpoint's health."""
        ep = self.endpoints[i]
        ep.requests += 1
        self.http_requests += 1
        started = time.monotonic()
        try:
            result = await send(i)
        except Exception as exc:
            self._record_failure(ep, exc, time.monotonic() - started)
            raise
        health.answered(ep, time.monotonic() - started)
        return result

    def _record_failure(self, ep: Endpoint, exc: Exception, latency: float) -> None:
        kind = failure_kind(exc)
        self.errors[kind] += 1
        ep.errors[kind] += 1
        if self.on_error is not None:
            self.on_error(kind)
        if not is_transient(exc):
            health.answered(ep, latency)  # a genuine error answer: the endpoint works
            return
        headers = exc.headers if isinstance(exc, aiohttp.ClientResponseError) else None
        pause = health.retry_after_seconds(headers.get("Retry-After") if headers else None, time.time())
        health.failed(ep, kind, time.monotonic(), self.backoff_seconds, pause, self.max_retry_after)

    async def _retrying(self, attempt: Callable[[], Awaitable[Any]], method: str, attempts: int) -> Any:
        seen: list[BaseException] = []
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(attempts + len(self.endpoints) - 1),
            wait=self._wait,
            reraise=True,
        )
        try:
            async for trial in retrying:
                with trial:
                    try:
                        return await attempt()
                    except Exception as exc:
                        seen.append(exc)
                        raise
        except RpcError:
            raise
        except TRANSPORT_ERRORS as exc:  # an endpoint that answered, even with HTTP 429, is only busy
            busy = next(
                (e for e in reversed(seen) if isinstance(e, aiohttp.ClientResponseError | RpcError)), None
            )
            if busy is not None:
                raise RpcBusyError(method, f"RPC {redact(self.url)} busy: {describe(busy)}") from None
            raise RpcUnavailableError(
                f"{method}: RPC {redact(self.url)} unreachable: {describe(exc)}"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, _state: RetryCallState) -> float:
        """Before a retry: none while another endpoint is available, else until the first window ends
        (tenacity's default jitter, up to 1 s, would swamp short waits: a small one is added)."""
        delay = min(
            health.wait_seconds(self.endpoints, time.monotonic(), self.expected_chain_id),
            self.max_retry_after,
        )
        return delay + random.uniform(0, self.backoff_seconds / 2) if delay > 0 else 0.0

    # --- surveys ------------------------------------------------------------------------------------
    def _maybe_probe(self) -> None:
        now = time.monotonic()
        if len(self.endpoints) < 2 or now - self._last_probe < self.probe_seconds:
            return
        if self._probe is None or self._probe.done():
            self._last_probe = now
            self._probe = self._spawn(self.probe())

    async def probe(self) -> list[Sighting]:
        """Every endpoint out of its window asked for its head at once (and its chain id while not
        verified): lags are set from the answers, recovered endpoints used again."""
        now = time.monotonic()
        asked = [ep.wrong_chain is None and ep.avoid_until <= now for ep in self.endpoints]
        return await self._survey(asked, always_chain=False)

    async def survey(self) -> list[Sighting]:
        """Every endpoint asked for its chain id and head at once (what `check` shows)."""
        return await self._survey([True] * len(self.endpoints), always_chain=True)

    async def _survey(self, asked: list[bool], always_chain: bool) -> list[Sighting]:
        expected = self.expected_chain_id
        sightings = await asyncio.gather(
            *(
                self._sight(i, ask, always_chain or (expected is not None and ep.chain_id is None))
                for i, (ep, ask) in enumerate(zip(self.endpoints, asked, strict=True))
            )
        )
        health.surveyed(self.endpoints, [s.head for s in sightings])
        if expected is not None:
            for ep in health.verify_chain(self.endpoints, sightings, expected):
                log.error("RPC %s answers chain id %s: never used", ep.name, ep.wrong_chain)
        return list(sightings)

    async def _sight(self, i: int, ask: bool, with_chain: bool) -> Sighting:
        ep = self.endpoints[i]
        if not ask:
            return Sighting(ep.name, error="not asked: in a back-off window")
        asks: list[tuple[str, list[Any]]] = [("eth_chainId", [])] if with_chain else []
        asks.append(("eth_blockNumber", []))
        probe_timeout = min(self.timeout, 5.0)
        started = time.monotonic()
        try:
            answers = await self._attempt(
                i, lambda i: asyncio.wait_for(self._batch_once(i, asks), probe_timeout)
            )
            chain_id = quantity("eth_chainId", answers[0]) if with_chain else None
            head = quantity("eth_blockNumber", answers[-1])
        except Exception as exc:
            return Sighting(ep.name, error=describe(exc))
        return Sighting(ep.name, chain_id, head, time.monotonic() - started)

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A background task closed with the client; its failure is already recorded where it happened."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: asyncio would otherwise warn about it

    # --- the reads a keeper needs ---------------------------------------------------------------
    async def chain_id(self) -> int:
        return int(await self.request("eth_chainId"), 16)

    async def block_number(self) -> int:
        return int(await self.request("eth_blockNumber"), 16)

    async def header(self, block: BlockId = "latest") -> BlockHeader:
        raw = await self.request("eth_getBlockByNumber", [block_param(block), False])
        if raw is None:
            raise RpcError("eth_getBlockByNumber", -32000, f"no block {block}")
        return parse_header(raw)

    async def headers(self, blocks: Sequence[BlockId]) -> list[BlockHeader | None]:
        answers = await self.batch([("eth_getBlockByNumber", [block_param(b), False]) for b in blocks])
        out: list[BlockHeader | None] = []
        for answer in answers:
            if isinstance(answer, RpcError):
                raise answer
            out.append(parse_header(answer) if answer else None)
        return out

    async def call(self, to: str, data: bytes, block: BlockId = "latest", gas: int | None = None) -> bytes:
        return call_result(await self.request("eth_call", call_params(to, data, block, gas)))

    async def calls_at(
        self, requests: Sequence[tuple[str, bytes]], block: BlockId, gas: int | None = None
    ) -> list[bytes | RpcError]:
        """Several `eth_call`s at one block, in JSON-RPC batches."""
        answers = await self.batch([("eth_call", call_params(to, data, block, gas)) for to, data in requests])
        return [a if isinstance(a, RpcError) else call_result(a) for a in answers]
