"""The faults `RpcProxy` injects: what a flaky or hostile RPC provider does to a keeper.

A `FaultPlan` holds a queue of faults (`inject`) applied to the next HTTP requests they match, and an
optional seeded random mode (`chaos`) that applies a random kind to a fraction of the requests. Each
kind applies only to requests it can affect (`_applies`): `batch-missing-element` and
`batch-reversed` to batches, `stale-head` to head requests it has seen an answer for, `reorged-log` to
`eth_getLogs`, `lost-send-answer` to `eth_sendRawTransaction`; a queued fault waits for such a request.
`injected` counts the faults that changed an answer.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MALFORMED_JSON = "malformed-json"  # 200 with a body that is not JSON (not forwarded)
TRUNCATED = "truncated"  # 200 with the real answer cut in half
BATCH_MISSING_ELEMENT = "batch-missing-element"  # the real batch answer without its last element
BATCH_REVERSED = "batch-reversed"  # the real batch answer in reverse order (JSON-RPC allows any order)
HTTP_500 = "http-500"  # these four are not forwarded
HTTP_502 = "http-502"
HTTP_503 = "http-503"
HTTP_429 = "http-429"  # with Retry-After: 1
RPC_ERROR = "rpc-error"  # a JSON-RPC error -32603 "internal error" for each request (not forwarded)
DELAY = "delay"  # sleep `delay_seconds`, then forward
STALE_HEAD = "stale-head"  # eth_blockNumber / eth_getBlockByNumber("latest"): the previous answer seen
REORGED_LOG = "reorged-log"  # eth_getLogs: the logs of the answer's highest block get another blockHash
LOST_SEND_ANSWER = "lost-send-answer"  # eth_sendRawTransaction reaches the node, the answer is HTTP 502

FAULTS = (
    MALFORMED_JSON,
    TRUNCATED,
    BATCH_MISSING_ELEMENT,
    BATCH_REVERSED,
    HTTP_500,
    HTTP_502,
    HTTP_503,
    HTTP_429,
    RPC_ERROR,
    DELAY,
    STALE_HEAD,
    REORGED_LOG,
    LOST_SEND_ANSWER,
)
HTTP_STATUS = {
    HTTP_500: "500 Internal Server Error",
    HTTP_502: "502 Bad Gateway",
    HTTP_503: "503 Service Unavailable",
    HTTP_429: "429 Too Many Requests",
}
NOT_JSON = b"<html><body><h1>502 Bad Gateway</h1></body></html>\n"


@dataclass
class Fault:
    kind: str
    times: int = 1
    method: str | None = None  # None: any request; a batch matches when one of its requests has it
    delay_seconds: float = 1.0


def is_head_request(request: dict[str, Any]) -> bool:
    method, params = request.get("method"), request.get("params") or []
    return method == "eth_blockNumber" or (
        method == "eth_getBlockByNumber" and bool(params) and params[0] == "latest"
    )


class FaultPlan:
    def __init__(self) -> None:
        self.injected: Counter[str] = Counter()
        self._queue: list[Fault] = []
        self._heads: dict[str, Any] = {}  # the last result seen for each head request
        self._rng: random.Random | None = None
        self._rate = 0.0
        self._kinds: tuple[str, ...] = ()
        self._delay = 1.0
        self._lock = threading.Lock()

    def inject(
        self, kind: str, times: int = 1, method: str | None = None, delay_seconds: float = 1.0
    ) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}: one of {', '.join(FAULTS)}")
        with self._lock:
            self._queue.append(Fault(kind, times, method, delay_seconds))

    def chaos(
        self, seed: int, rate: float, kinds: Sequence[str] = FAULTS, delay_seconds: float = 1.0
    ) -> None:
        """Apply a random kind (of those that apply) to a fraction `rate` of requests; rate 0 stops."""
        if unknown := set(kinds) - set(FAULTS):
            raise ValueError(f"unknown faults {sorted(unknown)}")
        with self._lock:
            self._rng = random.Random(seed)
            self._rate, self._kinds, self._delay = rate, tuple(kinds), delay_seconds

    def clear(self) -> None:
        """Drop queued faults and stop chaos (the counts stay)."""
        with self._lock:
            self._queue.clear()
            self._rng, self._rate = None, 0.0

    def pending(self) -> int:
        with self._lock:
            return sum(f.times for f in self._queue)

    def take(self, requests: list[dict[str, Any]], batch: bool) -> Fault | None:
        """The fault to apply to this HTTP request, if any: the first queued one that matches, else chaos."""
        with self._lock:
            for fault in self._queue:
                if (
                    fault.method is None or any(r.get("method") == fault.method for r in requests)
                ) and self._applies(fault.kind, requests, batch):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._queue.remove(fault)
                    return Fault(fault.kind, 1, fault.method, fault.delay_seconds)
            if self._rng is not None and self._rng.random() < self._rate:
                kinds = [k for k in self._kinds if self._applies(k, requests, batch)]
                if kinds:
                    return Fault(self._rng.choice(kinds), delay_seconds=self._delay)
        return None

    def count(self, kind: str) -> None:
        with self._lock:
            self.injected[kind] += 1

    def _applies(self, kind: str, requests: list[dict[str, Any]], batch: bool) -> bool:
        methods = {r.get("method") for r in requests}
        if kind in (BATCH_MISSING_ELEMENT, BATCH_REVERSED):
            return batch
        if kind == STALE_HEAD:
            return any(is_head_request(r) and _key(r) in self._heads for r in requests)
        if kind == REORGED_LOG:
            return "eth_getLogs" in methods
        if kind == LOST_SEND_ANSWER:
            return "eth_sendRawTransaction" in methods
        return True

    # --- stale heads --------------------------------------------------------------------------------
    def remember(self, requests: list[dict[str, Any]], answer: Any) -> None:
        """Keep the results of the head requests in a real answer (single or batch)."""
        answers = answer if isinstance(answer, list) else [answer]
        by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
        with self._lock:
            for request in requests:
                got = by_id.get(request.get("id"))
                if is_head_request(request) and got is not None and "result" in got:
                    self._heads[_key(request)] = got["result"]

    def stale(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The previous answer seen for this head request, under this request's id (None: none seen)."""
        with self._lock:
            if not is_head_request(request) or _key(request) not in self._heads:
                return None
            result = self._heads[_key(request)]
        return {"jsonrpc": "2.0", "id": request.get("id"), "result": result}


def rpc_errors(requests: list[dict[str, Any]], batch: bool) -> bytes:
    errors = [
        {"jsonrpc": "2.0", "id": r.get("id"), "error": {"code": -32603, "message": "internal error"}}
        for r in requests
    ]
    return json.dumps(errors if batch else errors[0]).encode()


def drop_last_element(content: bytes) -> bytes | None:
    answer = _json(content)
    if not isinstance(answer, list) or not answer:
        return None
    return json.dumps(answer[:-1]).encode()


def reverse_elements(content: bytes) -> bytes | None:
    answer = _json(content)
    if not isinstance(answer, list) or len(answer) < 2:
        return None
    return json.dumps(answer[::-1]).encode()


def reorg_logs(requests: list[dict[str, Any]], content: bytes) -> bytes | None:
    """Give every log of the answer's highest block another `blockHash` (None: no logs to change)."""
    answer = _json(content)
    answers = answer if isinstance(answer, list) else [answer]
    log_ids = {r.get("id") for r in requests if r.get("method") == "eth_getLogs"}
    logs = [
        entry
        for a in answers
        if isinstance(a, dict) and a.get("id") in log_ids and isinstance(a.get("result"), list)
        for entry in a["result"]
        if isinstance(entry, dict) and "blockNumber" in entry and "blockHash" in entry
    ]
    if not logs:
        return None
    highest = max(int(entry["blockNumber"], 16) for entry in logs)
    for entry in logs:
        if int(entry["blockNumber"], 16) == highest:
            entry["blockHash"] = other_hash(str(entry["blockHash"]))
    return json.dumps(answer).encode()


def other_hash(block_hash: str) -> str:
    """A hash that differs from `block_hash` in every hex digit."""
    return "0x" + "".join(f"{15 - int(c, 16):x}" for c in block_hash.removeprefix("0x"))


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:  # the node's own answer was not JSON: nothing to rewrite
        return None


def _key(request: dict[str, Any]) -> str:
    return json.dumps([request.get("method"), request.get("params") or []])
