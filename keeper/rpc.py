"""The one RPC client: AsyncWeb3's HTTP transport, JSON-RPC batches, tenacity retries, request counts.

Hot paths (`eth_call` of a multicall, `eth_getLogs`, block headers) go straight to the provider:
web3's middleware would add two `eth_chainId` round trips to every call. The provider's own retries
are off so that tenacity's are the only ones; they back off on transport failures, HTTP 429/5xx and
the JSON-RPC codes providers use for rate limits, never on a genuine error answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.types import RPCEndpoint

from keeper.errors import RpcError, RpcUnavailableError

RATE_LIMIT_CODES = frozenset({-32005, -32029, 429})  # "limit exceeded" / "too many requests"
BlockId = int | str
TRANSPORT_ERRORS = (TimeoutError, aiohttp.ClientError, OSError)


@dataclass(frozen=True)
class BlockHeader:
    number: int
    hash: str
    parent_hash: str
    timestamp: int


def redact(url: str) -> str:
    """scheme://host[:port] only: hosted RPC URLs carry API keys in the path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, RpcError):
        return exc.code in RATE_LIMIT_CODES
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, TRANSPORT_ERRORS)


class Rpc:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        attempts: int = 5,
        backoff_seconds: float = 0.25,
        max_batch: int = 100,
    ) -> None:
        self.url = url
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.max_batch = max_batch
        self.provider = AsyncHTTPProvider(
            url,
            request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)},
            exception_retry_configuration=None,
        )
        self.w3 = AsyncWeb3(self.provider)
        self.http_requests = 0
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()  # by kind: transport, rate-limit, http-5xx, answer
        self.on_error: Callable[[str], None] | None = None

    async def close(self) -> None:
        await self.provider.disconnect()

    async def __aenter__(self) -> Rpc:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # --- transport ----------------------------------------------------------------------------
    async def request(self, method: str, params: Sequence[Any] = (), *, retry: bool = True) -> Any:
        async def once() -> Any:
            self.http_requests += 1
            self.calls[method] += 1
            response = await self.provider.make_request(RPCEndpoint(method), list(params))
            return _result(method, cast(dict[str, Any], response))

        return await self._retrying(once, method, self.attempts if retry else 1)

    async def batch(self, requests: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several requests in as few HTTP round trips as `max_batch` allows.

        Each element of the answer is the result or the `RpcError` for that request, so one failing
        request does not lose the others.
        """
        answers: list[Any] = []
        for start in range(0, len(requests), self.max_batch):
            chunk = requests[start : start + self.max_batch]
            answers += await self._retrying(
                lambda chunk=chunk: self._batch_once(chunk), "batch", self.attempts
            )
        return answers

    async def _batch_once(self, chunk: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        self.http_requests += 1
        for method, _ in chunk:
            self.calls[method] += 1
        response = await self.provider.make_batch_request([(RPCEndpoint(m), list(p)) for m, p in chunk])
        if not isinstance(response, list):  # the node refused the whole batch
            _result("batch", cast(dict[str, Any], response))
            raise RpcError("batch", -32600, "batch refused without an error")
        answers: list[Any] = []
        for (method, _), item in zip(chunk, response, strict=True):
            try:
                answers.append(_result(method, cast(dict[str, Any], item)))
            except RpcError as exc:
                if _transient(exc):
                    raise
                answers.append(exc)
        return answers

    async def _retrying(self, attempt: Any, method: str, attempts: int) -> Any:
        retrying = AsyncRetrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(attempts),
            # tenacity's default jitter (up to 1 s) would swamp these short waits: add a small one
            wait=wait_exponential(multiplier=self.backoff_seconds, max=8)
            + wait_random(0, self.backoff_seconds / 2),
            reraise=True,
        )
        try:
            async for trial in retrying:
                with trial:
                    try:
                        return await attempt()
                    except Exception as exc:
                        self._count_error(exc)
                        raise
        except RpcError:
            raise
        except TRANSPORT_ERRORS as exc:
            raise RpcUnavailableError(
                f"{method}: RPC {redact(self.url)} unreachable: {_describe(exc)}"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _count_error(self, exc: BaseException) -> None:
        if isinstance(exc, RpcError):
            kind = "rate-limit" if exc.code in RATE_LIMIT_CODES else "answer"
        elif isinstance(exc, aiohttp.ClientResponseError):
            kind = "rate-limit" if exc.status == 429 else f"http-{exc.status // 100}xx"
        else:
            kind = "transport"
        self.errors[kind] += 1
        if self.on_error is not None:
            self.on_error(kind)

    # --- the reads a keeper needs ---------------------------------------------------------------
    async def chain_id(self) -> int:
        return int(await self.request("eth_chainId"), 16)

    async def block_number(self) -> int:
        return int(await self.request("eth_blockNumber"), 16)

    async def header(self, block: BlockId = "latest") -> BlockHeader:
        raw = await self.request("eth_getBlockByNumber", [_block_param(block), False])
        if raw is None:
            raise RpcError("eth_getBlockByNumber", -32000, f"no block {block}")
        return parse_header(raw)

    async def headers(self, blocks: Sequence[BlockId]) -> list[BlockHeader | None]:
        answers = await self.batch([("eth_getBlockByNumber", [_block_param(b), False]) for b in blocks])
        out: list[BlockHeader | None] = []
        for answer in answers:
            if isinstance(answer, RpcError):
                raise answer
            out.append(parse_header(answer) if answer else None)
        return out

    async def call(self, to: str, data: bytes, block: BlockId = "latest", gas: int | None = None) -> bytes:
        return _call_result(await self.request("eth_call", _call_params(to, data, block, gas)))

    async def calls_at(
        self, requests: Sequence[tuple[str, bytes]], block: BlockId, gas: int | None = None
    ) -> list[bytes | RpcError]:
        """Several `eth_call`s at one block, in JSON-RPC batches."""
        answers = await self.batch(
            [("eth_call", _call_params(to, data, block, gas)) for to, data in requests]
        )
        return [a if isinstance(a, RpcError) else _call_result(a) for a in answers]


def parse_header(raw: dict[str, Any]) -> BlockHeader:
    return BlockHeader(
        number=int(raw["number"], 16),
        hash=str(raw["hash"]),
        parent_hash=str(raw["parentHash"]),
        timestamp=int(raw["timestamp"], 16),
    )


def _block_param(block: BlockId) -> str:
    return hex(block) if isinstance(block, int) else block


def _call_params(to: str, data: bytes, block: BlockId, gas: int | None) -> list[Any]:
    tx: dict[str, str] = {"to": to, "data": "0x" + data.hex()}
    if gas is not None:
        tx["gas"] = hex(gas)
    return [tx, _block_param(block)]


def _call_result(result: Any) -> bytes:
    return bytes.fromhex(str(result).removeprefix("0x"))


def _result(method: str, response: dict[str, Any]) -> Any:
    error = response.get("error")
    if error is not None:
        if isinstance(error, dict):
            raise RpcError(
                method, int(error.get("code", 0)), str(error.get("message", "")), error.get("data")
            )
        raise RpcError(method, 0, str(error))
    return response.get("result")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return type(exc).__name__ + (f" ({exc.strerror})" if isinstance(exc, OSError) and exc.strerror else "")
