"""JSON-RPC on the wire, without I/O: decoding answers, matching batches by id, block headers, and
which failures are worth another try.

`keeper.rpc.Rpc` encodes requests with the provider's own ids and decodes answers here rather than
through web3's `make_request` / `make_batch_request`: in web3 8 those raise `json.JSONDecodeError` (a
`ValueError`) for a body that is not JSON or is cut short and `UnicodeDecodeError` for one that is not
UTF-8, and `make_batch_request` sorts a batch answer by `id` (`sort_batch_response_by_response_ids`),
which raises `AttributeError`/`TypeError` for elements that are not objects or ids of mixed types, only
warns when an id is missing and never notices a missing, duplicate or unknown element. Here a batch
answer is matched to its requests by `id`, in whatever order the server wrote it (JSON-RPC allows any).

Malformed-answer messages never say "range", "limit", "more than", "too many" nor quote ids: the
indexer reads those words (and "10000") in an `eth_getLogs` error as "ask for fewer blocks" (TOO_MUCH).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from keeper.endpoints import already_sent, transient_answer
from keeper.errors import RpcError, RpcMalformedError

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


class RpcBusyError(RpcError):
    """Endpoints answered, but only with HTTP 429/5xx, through every retry: the provider is busy or
    rate-limiting, which is not an operator mistake (unlike an endpoint that cannot be reached)."""

    def __init__(self, method: str, description: str) -> None:
        super().__init__(method, -32000, description)


def is_transient(exc: BaseException) -> bool:
    """Worth another try, on another endpoint when there is one: transport failures and timeouts, HTTP
    429/5xx, malformed answers, the rate-limit codes and the JSON-RPC errors `transient_answer` names
    (-32603 unless it reports a revert, and what load-balanced providers answer when a node is behind
    or overloaded). A revert or any other genuine error answer is not."""
    if isinstance(exc, RpcBusyError):
        return False  # already the end of the retries
    if isinstance(exc, RpcMalformedError):
        return True
    if isinstance(exc, RpcError):
        return exc.code in RATE_LIMIT_CODES or transient_answer(exc.code, exc.message)
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, TRANSPORT_ERRORS)


def failure_kind(exc: BaseException) -> str:
    """The label a failed request is counted under: transport, rate-limit, http-5xx, malformed, answer."""
    if isinstance(exc, RpcMalformedError):
        return "malformed"
    if isinstance(exc, RpcError):
        return "rate-limit" if exc.code in RATE_LIMIT_CODES else "answer"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "rate-limit" if exc.status == 429 else f"http-{exc.status // 100}xx"
    return "transport"


def most_telling(failures: Sequence[Exception]) -> Exception:
    """What to raise when no endpoint accepted a transaction: an "already known" / "nonce too low" first
    (it may have got through: the transaction manager looks it up by hash rather than signing again),
    then any other genuine refusal, then a transient failure (retried)."""
    maybe_sent = [f for f in failures if isinstance(f, RpcError) and already_sent(f.message)]
    genuine = [f for f in failures if not is_transient(f)]
    return (maybe_sent or genuine or list(failures))[0]


def describe(exc: BaseException) -> str:
    """A short description that never contains a URL."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, RpcError):
        return f"{exc.message} (code {exc.code})"
    return type(exc).__name__ + (f" ({exc.strerror})" if isinstance(exc, OSError) and exc.strerror else "")


def decode(method: str, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise RpcMalformedError(method, "answer is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        cut = exc.pos >= len(exc.doc.rstrip())
        raise RpcMalformedError(
            method, f"answer is not JSON{' (cut short)' if cut else ''}: {exc.msg}"
        ) from None


def single_result(method: str, answer: Any) -> Any:
    if not isinstance(answer, dict):
        raise RpcMalformedError(method, f"answer is a JSON {json_type(answer)}, not an object")
    return result_of(method, answer)


def batch_results(methods: Sequence[str], ids: Sequence[Any], answer: Any) -> list[Any]:
    """Each request's result or its genuine `RpcError`, matched by id; a transient error in any
    element, or an answer that does not match the requests, raises (the batch is tried again)."""
    if isinstance(answer, dict):  # the node refused the whole batch
        if answer.get("error") is None:
            raise RpcMalformedError("batch", "batch answer is an object without an error")
        result_of("batch", answer)
    if not isinstance(answer, list):
        raise RpcMalformedError("batch", f"batch answer is a JSON {json_type(answer)}, not an array")
    by_id = _by_id(answer)
    if unknown := by_id.keys() - set(ids):
        raise RpcMalformedError("batch", f"batch answer has {len(unknown)} unknown id(s)")
    if missing := [i for i in ids if i not in by_id]:
        raise RpcMalformedError("batch", f"batch answer lacks {len(missing)} of {len(ids)} elements")
    results: list[Any] = []
    for method, request_id in zip(methods, ids, strict=True):
        try:
            results.append(result_of(method, by_id[request_id]))
        except RpcError as exc:
            if is_transient(exc):
                raise
            results.append(exc)
    return results


def result_of(method: str, response: dict[str, Any]) -> Any:
    error = response.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise RpcMalformedError(method, f"error member is a JSON {json_type(error)}, not an object")
        code, message = error.get("code"), error.get("message")
        if not isinstance(code, int) or isinstance(code, bool) or not isinstance(message, str):
            raise RpcMalformedError(method, "error member lacks an integer code or a string message")
        raise RpcError(method, code, message, error.get("data"))
    if "result" not in response:
        raise RpcMalformedError(method, "answer has neither a result nor an error")
    return response["result"]


def quantity(method: str, value: Any) -> int:
    """A hex quantity (`0x1a`) as an int."""
    if isinstance(value, RpcError):
        raise value
    try:
        return int(value, 16)
    except (TypeError, ValueError):
        raise RpcMalformedError(method, f"result is a JSON {json_type(value)}, not a hex quantity") from None


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


def block_param(block: BlockId) -> str:
    return hex(block) if isinstance(block, int) else block


def call_params(to: str, data: bytes, block: BlockId, gas: int | None) -> list[Any]:
    tx: dict[str, str] = {"to": to, "data": "0x" + data.hex()}
    if gas is not None:
        tx["gas"] = hex(gas)
    return [tx, block_param(block)]


def call_result(result: Any) -> bytes:
    if not isinstance(result, str):
        raise RpcMalformedError("eth_call", f"result is a JSON {json_type(result)}, not a hex string")
    try:
        return bytes.fromhex(result.removeprefix("0x"))
    except ValueError:
        raise RpcMalformedError("eth_call", "result is not hex") from None


def _by_id(answer: list[Any]) -> dict[int | str | None, dict[str, Any]]:
    by_id: dict[int | str | None, dict[str, Any]] = {}
    for item in answer:
        if not isinstance(item, dict):
            raise RpcMalformedError("batch", f"batch element is a JSON {json_type(item)}, not an object")
        key = item.get("id")
        if isinstance(key, bool) or not isinstance(key, int | str | None):
            raise RpcMalformedError("batch", f"batch element has an id that is a JSON {json_type(key)}")
        if key in by_id:
            raise RpcMalformedError("batch", "batch answer has one id twice")
        by_id[key] = item
    return by_id


def json_type(value: Any) -> str:
    names: tuple[tuple[type | tuple[type, ...], str], ...] = (
        (dict, "object"),
        (list, "array"),
        (str, "string"),
        (bool, "boolean"),
        ((int, float), "number"),
    )
    return next((name for cls, name in names if isinstance(value, cls)), "null")
