"""The error counters: what the loop survived and which background tasks it restarted, by label."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import cast

from prometheus_client import generate_latest

from keeper.errors import RpcUnavailableError, error_kind
from keeper.loop import HeadLoop
from keeper.metrics import Metrics
from keeper.rpc import BlockHeader, BlockId


def test_errors_and_task_restarts_are_exposed_by_label() -> None:
    metrics = Metrics()
    metrics.errors.labels(error_kind(KeyError("number"))).inc()
    metrics.errors.labels(error_kind(RpcUnavailableError("down"))).inc(2)
    metrics.task_restarts.labels("head-poll").inc()
    text = generate_latest(metrics.registry).decode()
    assert 'perp_keeper_errors_total{kind="internal"} 1.0' in text
    assert 'perp_keeper_errors_total{kind="rpc-unavailable"} 2.0' in text
    assert 'perp_keeper_task_restarts_total{task="head-poll"} 1.0' in text
    assert "# HELP perp_keeper_errors_total Failures survived, by kind" in text
    assert "# HELP perp_keeper_task_restarts_total Background tasks restarted after dying" in text


class OneHead:
    async def header(self, block: BlockId = "latest") -> BlockHeader:
        return BlockHeader(7, "0x" + "07" * 32, "0x" + "06" * 32, 7)


async def test_the_loop_hooks_feed_the_counters() -> None:
    metrics = Metrics()

    async def tick(_head: BlockHeader) -> None:
        raise ValueError("a bug in the tick")

    loop = HeadLoop(
        OneHead(),
        tick,
        poll_after=0.01,
        on_error=lambda kind, _exc: metrics.errors.labels(kind).inc(),
        on_restart=lambda task: metrics.task_restarts.labels(task).inc(),
    )
    running = asyncio.create_task(loop.run())
    for _ in range(500):
        if loop.ticks:
            break
        await asyncio.sleep(0.01)
    loop.stop.set()
    await asyncio.wait_for(running, 5)
    assert metrics.registry.get_sample_value("perp_keeper_errors_total", {"kind": "internal"}) == 1
    loop.stop.clear()  # a background task dies once (and the test stops the loop from inside it)
    await asyncio.wait_for(loop._supervise("head-poll", _dies_and_stops(loop)), 5)
    assert metrics.registry.get_sample_value("perp_keeper_task_restarts_total", {"task": "head-poll"}) == 1


def _dies_and_stops(loop: HeadLoop) -> Callable[[], Awaitable[None]]:
    async def task() -> None:
        loop.stop.set()
        raise RuntimeError("poller bug")

    return task


def test_a_replica_with_shard_leases_shows_each_and_is_active_while_it_holds_one() -> None:
    from keeper.lease import Lease, LeaseKeeper

    class Held:  # what the collector and /health read of a LeaseKeeper
        def __init__(self, name: str, active: bool, epoch: int) -> None:
            self.name, self.active = name, active
            self.current = Lease(name, "me", epoch, 10.0**10, 1.0, 1.0)

    metrics = Metrics(block_interval=2.0)
    leases = [Held("shard:0", True, 3), Held("shard:1", False, 7)]
    metrics.watch_leases(cast(list[LeaseKeeper], leases))
    text = generate_latest(metrics.registry).decode()
    assert 'perp_keeper_lease_held{lease="shard:0"} 1.0' in text
    assert 'perp_keeper_lease_held{lease="shard:1"} 0.0' in text
    assert 'perp_keeper_lease_epoch{lease="shard:1"} 7.0' in text
    assert "perp_keeper_replica_active 1.0" in text
    metrics.ticked(10**10)
    assert metrics.health()[1]["role"] == "active"
    assert metrics.health()[1]["leases"] == {"shard:0": True, "shard:1": False}
    leases[0].active = False
    assert metrics.health()[1]["role"] == "standby"
    assert "perp_keeper_replica_active 0.0" in generate_latest(metrics.registry).decode()
