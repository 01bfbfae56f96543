"""A counting JSON-RPC proxy in front of anvil: latency per HTTP request, limits like a hosted RPC.

Benchmarks put it between the keeper and anvil to count HTTP requests and add a round-trip time
(20 ms stands for a hosted provider); tests use its `max_log_range` to behave like providers that
refuse wide `eth_getLogs` ranges, and its method counts to prove what reached the node.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from typing import Any

import httpx


class RpcProxy:
    def __init__(self, upstream: str, rtt_ms: float = 0.0, max_log_range: int | None = None) -> None:
        self.upstream = upstream
        self.rtt = rtt_ms / 1000
        self.max_log_range = max_log_range
        self.http_requests = 0
        self.methods: Counter[str] = Counter()
        self.refused_log_ranges = 0
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
                status, answer = await self._handle(body)
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(answer)}\r\nConnection: keep-alive\r\n\r\n".encode()
                    + answer
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _handle(self, body: bytes) -> tuple[str, bytes]:
        payload = json.loads(body)
        requests = payload if isinstance(payload, list) else [payload]
        with self._lock:
            self.http_requests += 1
            for r in requests:
                self.methods[r.get("method", "?")] += 1
        if self.rtt:
            await asyncio.sleep(self.rtt)
        refusal = [self._refuse(r) for r in requests]
        if any(refusal):
            answers = []
            for r, refused in zip(requests, refusal, strict=True):
                answers.append(refused or (await self._forward(r)))
            result: Any = answers if isinstance(payload, list) else answers[0]
            return "200 OK", json.dumps(result).encode()
        response = await self._client.post(
            self.upstream, content=body, headers={"Content-Type": "application/json"}
        )
        return f"{response.status_code} {response.reason_phrase}", response.content

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
