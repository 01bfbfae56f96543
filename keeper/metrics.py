"""What an operator watches: Prometheus `/metrics`, a `/health` for the container, and the logs' shape.

`/health` is 503 when the last tick is older than 3 block intervals or the newest head is stale (its
timestamp too far behind the wall clock): either the RPC stopped moving or the keeper stopped
ticking, and a supervisor should restart or page.

Each RPC endpoint has its own series (`watch_rpc`), labelled with its redacted name and read from the
client's endpoint records at every scrape: requests, errors by kind, latency, head, lag and healthy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from keeper.endpoints import Endpoint
from keeper.lease import LeaseKeeper

log = logging.getLogger(__name__)


@dataclass
class Metrics:
    block_interval: float = 2.0
    stale_head_seconds: float = 120.0  # 0: off (a devnet's clock is not the wall clock)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    last_tick_at: float | None = None
    last_head_timestamp: int | None = None

    def __post_init__(self) -> None:
        r = self.registry
        self.scan_seconds = Histogram(
            "perp_keeper_scan_seconds", "Seconds to refresh the risk picture", registry=r
        )
        self.accounts = Gauge("perp_keeper_accounts_tracked", "Accounts indexed", registry=r)
        self.liquidatable = Gauge("perp_keeper_liquidatable", "Liquidation opportunities now", registry=r)
        self.transactions = Counter(
            "perp_keeper_transactions", "Transactions by outcome", ["status"], registry=r
        )
        self.replaced = Counter("perp_keeper_transactions_replaced", "Fee-bumped replacements", registry=r)
        self.realised = Counter(
            "perp_keeper_realised_reward_usd", "Rewards of executed liquidations", registry=r
        )
        self.head_lag = Gauge(
            "perp_keeper_head_lag_seconds", "Wall clock minus the newest head's time", registry=r
        )
        self.rpc_errors = Counter("perp_keeper_rpc_errors", "RPC failures by kind", ["kind"], registry=r)
        self.errors = Counter("perp_keeper_errors", "Failures survived, by kind", ["kind"], registry=r)
        self.task_restarts = Counter(
            "perp_keeper_task_restarts", "Background tasks restarted after dying", ["task"], registry=r
        )
        self.alerts = Counter("perp_keeper_alerts", "Alert deliveries by outcome", ["outcome"], registry=r)
        self.alert_firing = Gauge(
            "perp_keeper_alert_firing", "1 while an alert condition fires", ["condition"], registry=r
        )
        self.eth_balance = Gauge("perp_keeper_eth_balance", "The keeper's ETH for gas", registry=r)
        self.last_tick = Gauge(
            "perp_keeper_last_tick_timestamp_seconds", "When the last tick ran", registry=r
        )

    def watch_rpc(self, rpc: Endpoints) -> None:
        """Expose every endpoint of this RPC client (call once per client)."""
        self.registry.register(EndpointCollector(rpc))

    def watch_leases(self, leases: Sequence[LeaseKeeper]) -> None:
        """Expose a replica's leases (one, or one per shard): held, epoch, age, standby vs active (read
        at every scrape). Active: it holds at least one."""
        self.registry.register(LeaseCollector(leases))
        self.leases = list(leases)

    def ticked(self, head_timestamp: int) -> None:
        self.last_tick_at = time.time()
        self.last_tick.set(self.last_tick_at)
        self.last_head_timestamp = head_timestamp
        self.head_lag.set(max(0.0, time.time() - head_timestamp))

    def health(self, now: float | None = None) -> tuple[bool, dict[str, Any]]:
        now = time.time() if now is None else now
        tick_age = None if self.last_tick_at is None else now - self.last_tick_at
        head_age = None if self.last_head_timestamp is None else now - self.last_head_timestamp
        problems = []
        if tick_age is None or tick_age > 3 * self.block_interval:
            problems.append("no recent tick")
        if self.stale_head_seconds and head_age is not None and head_age > self.stale_head_seconds:
            problems.append("head is stale")
        detail: dict[str, Any] = {
            "ok": not problems,
            "problems": problems,
            "tick_age_s": tick_age,
            "head_age_s": head_age,
        }
        if leases := getattr(self, "leases", None):
            # a warm standby ticks (healthy); a stalled holder does not (unhealthy)
            detail["role"] = "active" if any(lease.active for lease in leases) else "standby"
            detail["leases"] = {lease.name: lease.active for lease in leases}
        return not problems, detail

    async def serve(self, port: int, host: str = "0.0.0.0") -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                path = request.split()[1].decode() if len(request.split()) > 1 else "/"
                if path == "/metrics":
                    status, kind, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
                elif path == "/health":
                    ok, detail = self.health()
                    status = "200 OK" if ok else "503 Service Unavailable"
                    kind, body = "application/json", json.dumps(detail).encode()
                else:
                    status, kind, body = "404 Not Found", "text/plain", b"not found\n"
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
            finally:
                writer.close()

        return await asyncio.start_server(handle, host, port)


class Endpoints(Protocol):
    """What the endpoint series are read from (`keeper.rpc.Rpc` is one)."""

    @property
    def endpoints(self) -> Sequence[Endpoint]: ...

    def is_healthy(self, ep: Endpoint) -> bool: ...


class EndpointCollector(Collector):
    def __init__(self, rpc: Endpoints) -> None:
        self.rpc = rpc

    def collect(self) -> Iterator[Metric]:
        prefix, by = "perp_keeper_rpc_endpoint", ["endpoint"]
        requests = CounterMetricFamily(f"{prefix}_requests", "HTTP requests per RPC endpoint", labels=by)
        errors = CounterMetricFamily(
            f"{prefix}_errors", "RPC failures per endpoint, by kind", labels=["endpoint", "kind"]
        )
        latency = GaugeMetricFamily(
            f"{prefix}_latency_seconds", "Moving average of the endpoint's answer time", labels=by
        )
        head = GaugeMetricFamily(f"{prefix}_head", "Newest block number the endpoint reported", labels=by)
        lag = GaugeMetricFamily(f"{prefix}_lag_blocks", "Blocks behind the best endpoint's head", labels=by)
        healthy = GaugeMetricFamily(f"{prefix}_healthy", "1 when reads may go to the endpoint", labels=by)
        for ep in self.rpc.endpoints:
            requests.add_metric([ep.name], ep.requests)
            for kind, count in sorted(ep.errors.items()):
                errors.add_metric([ep.name, kind], count)
            if ep.latency is not None:
                latency.add_metric([ep.name], ep.latency)
            if ep.head is not None:
                head.add_metric([ep.name], ep.head)
            lag.add_metric([ep.name], ep.lag)
            healthy.add_metric([ep.name], 1.0 if self.rpc.is_healthy(ep) else 0.0)
        yield from (requests, errors, latency, head, lag, healthy)


class LeaseCollector(Collector):
    def __init__(self, leases: Sequence[LeaseKeeper]) -> None:
        self.leases = leases

    def collect(self) -> Iterator[Metric]:
        by = ["lease"]
        held = GaugeMetricFamily("perp_keeper_lease_held", "1 while this replica holds the lease", labels=by)
        epoch = GaugeMetricFamily("perp_keeper_lease_epoch", "The lease's epoch as last seen", labels=by)
        age = GaugeMetricFamily(
            "perp_keeper_lease_age_seconds", "Seconds since the current holder took the lease", labels=by
        )
        active = GaugeMetricFamily("perp_keeper_replica_active", "1: active (signs), 0: warm standby")
        for lease in self.leases:
            current = lease.current
            held.add_metric([lease.name], 1.0 if lease.active else 0.0)
            if current is not None:
                epoch.add_metric([lease.name], current.epoch)
                age.add_metric([lease.name], max(0.0, time.time() - current.acquired_at))
        active.add_metric([], 1.0 if any(lease.active for lease in self.leases) else 0.0)
        yield from (held, epoch, age, active)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with whatever context (`account`, `tx`, ...) the call passed in `extra`."""

    STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self.STANDARD})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(fmt: str = "auto", level: str = "INFO") -> None:
    """JSON lines for machines, plain text on a terminal (`auto`), or forced with `json` / `text`."""
    handler = logging.StreamHandler(sys.stderr)
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(
        JsonFormatter() if as_json else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for chatty in ("web3", "websockets", "apscheduler", "httpx"):  # their INFO is per request
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
