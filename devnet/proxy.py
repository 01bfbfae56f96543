"""A counting JSON-RPC proxy in front of anvil: latency per HTTP request, limits like a hosted RPC.

Benchmarks put it between the keeper and anvil to count HTTP requests and add a round-trip time
(20 ms stands for a hosted provider); tests use its `max_log_range` to behave like providers that
refuse wide `eth_getLogs` ranges, and its method counts to prove what reached the node.

Fault injection (devnet/faults.py) makes it a flaky or hostile provider: `inject(kind, times, method)`
queues faults for the next matching requests, `chaos(seed, rate, kinds)` applies random ones, and
`injected` counts what was applied.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpx

from devnet import faults
from devnet.faults import FAULTS, Fault, FaultPlan

__all__ = ["FAULTS", "RpcProxy"]
Reply = tuple[str, bytes, dict[str, str]]  # status line, body, extra headers
OK = "200 OK"
FAILURE = b'{"message": "upstream failure"}'


class RpcProxy:
    def __init__(self, upstream: str, rtt_ms: float = 0.0, max_log_range: int | None = None) -> None:
        self.upstream = upstream
        self.rtt = rtt_ms / 1000
        self.max_log_range = max_log_range
        self.http_requests = 0
        self.methods: Counter[str] = Counter()
        self.refused_log_ranges = 0
        self.faults = FaultPlan()
        self.injected: Counter[str] = self.faults.injected  # faults applied, by kind
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RpcProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)

    def __enter__(self) -> RpcProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self.http_requests = 0
            self.methods.clear()

    # --- faults (devnet/faults.py) -----------------------------------------------------------------
    def inject(
        self, kind: str, times: int = 1, method: str | None = None, delay_seconds: float = 1.0
    ) -> None:
        """Apply fault `kind` to the next `times` HTTP requests it matches (see `faults.FAULTS`)."""
        self.faults.inject(kind, times, method, delay_seconds)

    def chaos(
        self, seed: int, rate: float, kinds: Sequence[str] = FAULTS, delay_seconds: float = 1.0
    ) -> None:
        """Apply a random kind to a fraction `rate` of the requests (reproducible for one `seed`)."""
        self.faults.chaos(seed, rate, kinds, delay_seconds)

    def calm(self) -> None:
        """Drop queued faults and stop chaos."""
        self.faults.clear()

    # --- server -----------------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=600)
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    break
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length)
                status, answer, headers = await self._handle(body)
                extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
                    f"Content-Length: {len(answer)}\r\nConnection: keep-alive\r\n\r\n".encode()
                    + answer
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _handle(self, body: bytes) -> Reply:
        payload = json.loads(body)
        batch = isinstance(payload, list)
        requests = payload if batch else [payload]
        with self._lock:
            self.http_requests += 1
            for r in requests:
                self.methods[r.get("method", "?")] += 1
        if self.rtt:
            await asyncio.sleep(self.rtt)
        fault = self.faults.take(requests, batch)
        if fault is None:
            return await self._upstream(payload, body)
        return await self._inject(fault, payload, body)

    async def _upstream(self, payload: Any, body: bytes) -> Reply:
        """The node's own answer, with this proxy's refusals; head answers are kept for stale-head."""
        requests = payload if isinstance(payload, list) else [payload]
        refusal = [self._refuse(r) for r in requests]
        if any(refusal):
            answers = []
            for r, refused in zip(requests, refusal, strict=True):
                answers.append(refused or (await self._forward(r)))
            result: Any = answers if isinstance(payload, list) else answers[0]
            return OK, json.dumps(result).encode(), {}
        response = await self._client.post(
            self.upstream, content=body, headers={"Content-Type": "application/json"}
        )
        if response.status_code == 200 and any(faults.is_head_request(r) for r in requests):
            self.faults.remember(requests, response.json())
        return f"{response.status_code} {response.reason_phrase}", response.content, {}

    async def _inject(self, fault: Fault, payload: Any, body: bytes) -> Reply:
        """The answer with `fault` applied; counted in `injected` when it changes something (a fault
        that finds nothing to change, no logs or a refused batch, is used up uncounted)."""
        batch = isinstance(payload, list)
        requests = payload if batch else [payload]
        kind = fault.kind
        if kind not in (faults.BATCH_MISSING_ELEMENT, faults.BATCH_REVERSED, faults.REORGED_LOG):
            self.faults.count(kind)
        if kind in faults.HTTP_STATUS:
            return faults.HTTP_STATUS[kind], FAILURE, {"Retry-After": "1"} if kind == faults.HTTP_429 else {}
        if kind == faults.MALFORMED_JSON:
            return OK, faults.NOT_JSON, {}
        if kind == faults.RPC_ERROR:
            return OK, faults.rpc_errors(requests, batch), {}
        if kind == faults.DELAY:
            await asyncio.sleep(fault.delay_seconds)
            return await self._upstream(payload, body)
        if kind == faults.STALE_HEAD:
            answers = [self.faults.stale(r) or await self._forward(r) for r in requests]
            return OK, json.dumps(answers if batch else answers[0]).encode(), {}
        status, content, headers = await self._upstream(payload, body)
        if kind == faults.LOST_SEND_ANSWER:
            return faults.HTTP_STATUS[faults.HTTP_502], FAILURE, {}
        if kind == faults.TRUNCATED:
            return status, content[: len(content) // 2], headers
        if kind == faults.BATCH_MISSING_ELEMENT:
            changed = faults.drop_last_element(content)
        elif kind == faults.BATCH_REVERSED:
            changed = faults.reverse_elements(content)
        else:
            changed = faults.reorg_logs(requests, content)
        if changed is None:
            return status, content, headers
        self.faults.count(kind)
        return status, changed, headers

    async def _forward(self, request: dict[str, Any]) -> Any:
        response = await self._client.post(self.upstream, json=request)
        return response.json()

    def _refuse(self, request: dict[str, Any]) -> dict[str, Any] | None:
        if self.max_log_range is None or request.get("method") != "eth_getLogs":
            return None
        query = request["params"][0]
        span = int(query["toBlock"], 16) - int(query["fromBlock"], 16) + 1
        if span <= self.max_log_range:
            return None
        with self._lock:
            self.refused_log_ranges += 1
        message = f"query exceeds max block range {self.max_log_range}"
        return {"jsonrpc": "2.0", "id": request.get("id"), "error": {"code": -32602, "message": message}}
