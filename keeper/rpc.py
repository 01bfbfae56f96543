"""The one RPC client: AsyncWeb3's HTTP transport, JSON-RPC batches, tenacity retries, request counts.

Hot paths (`eth_call` of a multicall, `eth_getLogs`, block headers) go straight to the provider:
web3's middleware would add two `eth_chainId` round trips to every call. The provider's own retries
are off so that tenacity's are the only ones; they back off on transport failures, HTTP 429/5xx,
malformed answers (`RpcMalformedError`: not JSON, cut short, a batch answer missing an element) and
the JSON-RPC codes providers use for rate limits, never on a genuine error answer.

The client encodes requests with the provider's own ids and decodes answers itself rather than through
`make_request` / `make_batch_request`: in web3 8 those raise `json.JSONDecodeError` (a `ValueError`)
for a body that is not JSON or is cut short and `UnicodeDecodeError` for one that is not UTF-8, and
`make_batch_request` sorts a batch answer by `id` (`sort_batch_response_by_response_ids`), which
raises `AttributeError`/`TypeError` for elements that are not objects or ids of mixed types, only warns
when an id is missing and never notices a missing, duplicate or unknown element. Here a batch answer
is matched to its requests by `id`, in whatever order the server wrote it (JSON-RPC allows any).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.types import RPCEndpoint

from keeper.errors import RpcError, RpcMalformedError, RpcUnavailableError

RATE_LIMIT_CODES = frozenset({-32005, -32029, 429})  # "limit exceeded" / "too many requests"
BlockId = int | str
TRANSPORT_ERRORS = (TimeoutError, aiohttp.ClientError, OSError)


@dataclass(frozen=True)
class BlockHeader:
    number: int
    hash: str
    parent_hash: str
    timestamp: int
    gas_limit: int = 0  # 0: not reported


def redact(url: str) -> str:
    """scheme://host[:port] only: hosted RPC URLs carry API keys in the path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, RpcMalformedError):
        return True
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
        # by kind: transport, rate-limit, http-5xx, malformed, answer
        self.errors: Counter[str] = Counter()
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
            request = self.provider.form_request(RPCEndpoint(method), list(params))
            answer = await self._post(method, self.provider.encode_rpc_dict(request))
            if not isinstance(answer, dict):
                raise RpcMalformedError(method, f"answer is a JSON {_json_type(answer)}, not an object")
            return _result(method, answer)

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
        # ids come from the provider's counter, so they are unique within this client
        requests = [self.provider.form_request(RPCEndpoint(m), list(p)) for m, p in chunk]
        answer = await self._post("batch", self.provider.encode_batch_request_dicts(requests))
        if isinstance(answer, dict):  # the node refused the whole batch
            if answer.get("error") is None:
                raise RpcMalformedError("batch", "batch answer is an object without an error")
            _result("batch", answer)
        if not isinstance(answer, list):
            raise RpcMalformedError("batch", f"batch answer is a JSON {_json_type(answer)}, not an array")
        by_id = _by_id(answer)
        ids = [r["id"] for r in requests]
        if unknown := by_id.keys() - set(ids):
            raise RpcMalformedError("batch", f"batch answer has {len(unknown)} unknown id(s)")
        if missing := [i for i in ids if i not in by_id]:
            raise RpcMalformedError("batch", f"batch answer lacks {len(missing)} of {len(ids)} elements")
        answers: list[Any] = []
        for (method, _), request_id in zip(chunk, ids, strict=True):
            try:
                answers.append(_result(method, by_id[request_id]))
            except RpcError as exc:
                if _transient(exc):
                    raise
                answers.append(exc)
        return answers

    async def _post(self, method: str, body: bytes) -> Any:
        """POST one JSON-RPC body through the provider's session; the decoded JSON answer."""
        raw = await self.provider._make_request(RPCEndpoint(method), body)
        try:
            return json.loads(raw)
        except UnicodeDecodeError:
            raise RpcMalformedError(method, "answer is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            cut = exc.pos >= len(exc.doc.rstrip())
            raise RpcMalformedError(
                method, f"answer is not JSON{' (cut short)' if cut else ''}: {exc.msg}"
            ) from None

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
        if isinstance(exc, RpcMalformedError):
            kind = "malformed"
        elif isinstance(exc, RpcError):
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
    try:
        return BlockHeader(
            number=int(raw["number"], 16),
            hash=str(raw["hash"]),
            parent_hash=str(raw["parentHash"]),
            timestamp=int(raw["timestamp"], 16),
            gas_limit=int(raw.get("gasLimit") or "0x0", 16),
        )
    except (KeyError, TypeError, ValueError):
        raise RpcMalformedError(
            "eth_getBlockByNumber", "block header lacks a field or has a bad one"
        ) from None


def _block_param(block: BlockId) -> str:
    return hex(block) if isinstance(block, int) else block


def _call_params(to: str, data: bytes, block: BlockId, gas: int | None) -> list[Any]:
    tx: dict[str, str] = {"to": to, "data": "0x" + data.hex()}
    if gas is not None:
        tx["gas"] = hex(gas)
    return [tx, _block_param(block)]


def _call_result(result: Any) -> bytes:
    if not isinstance(result, str):
        raise RpcMalformedError("eth_call", f"result is a JSON {_json_type(result)}, not a hex string")
    try:
        return bytes.fromhex(result.removeprefix("0x"))
    except ValueError:
        raise RpcMalformedError("eth_call", "result is not hex") from None


def _result(method: str, response: dict[str, Any]) -> Any:
    # malformed-answer messages never say "range", "limit", "more than" etc. nor quote ids: the indexer
    # reads those words (and "10000") in an `eth_getLogs` error as "ask for fewer blocks" (TOO_MUCH)
    error = response.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise RpcMalformedError(method, f"error member is a JSON {_json_type(error)}, not an object")
        code, message = error.get("code"), error.get("message")
        if not isinstance(code, int) or isinstance(code, bool) or not isinstance(message, str):
            raise RpcMalformedError(method, "error member lacks an integer code or a string message")
        raise RpcError(method, code, message, error.get("data"))
    if "result" not in response:
        raise RpcMalformedError(method, "answer has neither a result nor an error")
    return response["result"]


def _by_id(answer: list[Any]) -> dict[int | str | None, dict[str, Any]]:
    by_id: dict[int | str | None, dict[str, Any]] = {}
    for item in answer:
        if not isinstance(item, dict):
            raise RpcMalformedError("batch", f"batch element is a JSON {_json_type(item)}, not an object")
        key = item.get("id")
        if isinstance(key, bool) or not isinstance(key, int | str | None):
            raise RpcMalformedError("batch", f"batch element has an id that is a JSON {_json_type(key)}")
        if key in by_id:
            raise RpcMalformedError("batch", "batch answer has one id twice")
        by_id[key] = item
    return by_id


def _json_type(value: Any) -> str:
    names: tuple[tuple[type | tuple[type, ...], str], ...] = (
        (dict, "object"),
        (list, "array"),
        (str, "string"),
        (bool, "boolean"),
        ((int, float), "number"),
    )
    return next((name for cls, name in names if isinstance(value, cls)), "null")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return type(exc).__name__ + (f" ({exc.strerror})" if isinstance(exc, OSError) and exc.strerror else "")
