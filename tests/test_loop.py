"""The head-driven loop: on a real node (WebSocket heads, polling fallback, latest head wins, no
overlap) and on a fake one (the error policy: failing ticks, dying tasks, failing side jobs, a head
that stops advancing)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from devnet import up
from devnet.chain import DevChain
from keeper.errors import RpcError
from keeper.loop import HeadLoop
from keeper.metrics import Metrics
from keeper.rpc import BlockHeader, BlockId, Rpc

MINED = 6


def header(n: int) -> BlockHeader:
    return BlockHeader(n, f"0x{n:064x}", f"0x{n - 1:064x}", n)


def test_latest_head_wins_and_a_big_step_back_is_a_reset() -> None:
    loop = HeadLoop(Rpc("http://127.0.0.1:1"), tick=lambda _h: asyncio.sleep(0), reset_depth=10)
    loop.offer(header(100))
    loop.offer(header(99))  # a lagging node behind a load balancer: ignored
    assert loop._latest == header(100)
    loop.offer(header(102))
    assert loop._latest == header(102)
    loop.offer(header(5))  # far behind: the node was reset
    assert loop._latest == header(5)


async def _run_loop(devnet: up.Devnet, chain: DevChain, ws: bool) -> tuple[HeadLoop, list[int]]:
    ticked: list[int] = []
    busy = False

    async with Rpc(devnet.url) as rpc:

        async def tick(head: BlockHeader) -> None:
            nonlocal busy
            assert not busy, "ticks overlapped"
            busy = True
            ticked.append(head.number)
            await asyncio.sleep(0.4)  # a slow tick: heads pile up meanwhile
            busy = False

        ws_url = devnet.url.replace("http://", "ws://") if ws else None
        loop = HeadLoop(rpc, tick, ws_url=ws_url, poll_after=0.3)
        running = asyncio.create_task(loop.run())
        for _ in range(100):  # the first tick (the current head) is under way
            if busy:
                break
            await asyncio.sleep(0.02)
        for _ in range(MINED):  # a burst of heads while it runs
            await asyncio.to_thread(chain.advance_time, 1)
        target = chain.w3.eth.block_number
        for _ in range(100):
            if ticked and ticked[-1] == target:
                break
            await asyncio.sleep(0.1)
        loop.stop.set()
        await asyncio.wait_for(running, 10)
    return loop, ticked


async def test_websocket_heads_drive_ticks_latest_wins(devnet: up.Devnet, chain: DevChain) -> None:
    loop, ticked = await _run_loop(devnet, chain, ws=True)
    assert ticked[-1] == chain.w3.eth.block_number
    assert ticked == sorted(ticked)
    assert len(ticked) < 1 + MINED  # intermediate heads were skipped, not queued
    assert loop.heads_seen >= 2


async def test_polling_alone_drives_ticks(devnet: up.Devnet, chain: DevChain) -> None:
    _, ticked = await _run_loop(devnet, chain, ws=False)
    assert ticked[-1] == chain.w3.eth.block_number


# --- the error policy, on a fake node ------------------------------------------------------------------


class FakeNode:
    """Answers `header()` with block `number`; `failures` are raised first, one per call."""

    def __init__(self, number: int = 100, *, advancing: bool = False, born: int = 0) -> None:
        self.number, self.advancing, self.born = number, advancing, born  # block n's time: born + n
        self.failures: list[Exception] = []
        self.calls = 0

    async def header(self, block: BlockId = "latest") -> BlockHeader:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        if self.advancing:
            self.number += 1
        n = self.number
        return BlockHeader(n, f"0x{n:064x}", f"0x{n - 1:064x}", self.born + n)


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def stopped(loop: HeadLoop, running: asyncio.Task[None]) -> None:
    assert not running.done(), "the loop ended on its own"
    loop.stop.set()
    await asyncio.wait_for(running, 5)


class Fatal(BaseException):
    pass


async def test_a_failing_tick_is_logged_reported_and_the_next_head_still_ticks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="keeper.loop")
    node = FakeNode(100)
    raising: dict[int, Exception] = {
        100: RuntimeError("boom"),
        101: ValueError("bad value"),
        102: KeyError("number"),
        103: RpcError("eth_call", -32000, "header not found"),
    }
    tried: list[int] = []
    reported: list[tuple[str, BaseException]] = []

    async def tick(head: BlockHeader) -> None:
        tried.append(head.number)
        if head.number in raising:
            raise raising[head.number]

    loop = HeadLoop(node, tick, poll_after=0.01, on_error=lambda kind, exc: reported.append((kind, exc)))
    running = asyncio.create_task(loop.run())
    for _ in range(5):  # each head is tried, failing or not, before the next one is mined
        await until(lambda: tried[-1:] == [node.number])
        node.number += 1
    await stopped(loop, running)

    assert tried[:5] == [100, 101, 102, 103, 104]
    assert [(kind, type(exc)) for kind, exc in reported] == [
        ("internal", RuntimeError),
        ("internal", ValueError),
        ("internal", KeyError),
        ("rpc-error", RpcError),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "tick at block 100 failed: RuntimeError: boom" in warnings
    assert "tick at block 101 failed: ValueError: bad value" in warnings
    assert "tick at block 102 failed: KeyError: 'number'" in warnings
    tracebacks = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert any(isinstance(r.exc_info[1], KeyError) for r in tracebacks if r.exc_info)
    assert loop.restarts == {}


async def test_a_base_exception_from_a_tick_still_ends_the_loop() -> None:
    async def tick(_head: BlockHeader) -> None:
        raise Fatal

    loop = HeadLoop(FakeNode(), tick, poll_after=0.01)
    with pytest.raises(Fatal):
        await asyncio.wait_for(loop.run(), 5)


async def test_polling_survives_malformed_answers_without_dying(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="keeper.loop")
    node = FakeNode(100)
    node.failures = [KeyError("number"), ValueError("invalid literal for int() with base 16: '0xzz'")]
    kinds: list[str] = []
    tried: list[int] = []

    async def tick(head: BlockHeader) -> None:
        tried.append(head.number)

    loop = HeadLoop(node, tick, poll_after=0.01, on_error=lambda kind, _exc: kinds.append(kind))
    running = asyncio.create_task(loop.run())
    await until(lambda: tried == [100])
    node.number = 101
    await until(lambda: tried == [100, 101])
    await stopped(loop, running)

    assert kinds == ["internal", "internal"]
    assert "polling the head failed: KeyError: 'number'" in caplog.messages
    assert loop.restarts == {}  # the per-poll catch held: no restart was needed


async def test_a_dead_poll_task_is_restarted_and_ticks_go_on(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.ERROR, logger="keeper.loop")
    node = FakeNode(100)
    tried: list[int] = []
    restarted: list[str] = []

    async def tick(head: BlockHeader) -> None:
        tried.append(head.number)

    loop = HeadLoop(node, tick, poll_after=0.01, backoff=0.01, on_restart=restarted.append)
    original = loop._poll
    deaths = 0

    async def dies_once() -> None:
        nonlocal deaths
        if deaths == 0:
            deaths += 1
            raise RuntimeError("poller bug")
        await original()

    monkeypatch.setattr(loop, "_poll", dies_once)
    running = asyncio.create_task(loop.run())
    await until(lambda: tried == [100])
    node.number = 101
    await until(lambda: tried == [100, 101])
    await stopped(loop, running)

    assert loop.restarts == {"head-poll": 1}
    assert restarted == ["head-poll"]
    died = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(died) == 1
    assert died[0].getMessage().startswith("background task head-poll died (RuntimeError: poller bug)")


async def test_a_task_that_keeps_dying_is_restarted_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="keeper.loop")

    async def tick(_head: BlockHeader) -> None:
        pass

    def dying(loop: HeadLoop, times: int) -> Callable[[], Awaitable[None]]:
        async def task() -> None:
            if sum(loop.restarts.values()) + 1 >= times:
                loop.stop.set()
            raise ValueError("still broken")

        return task

    def delays() -> list[float]:  # as logged: "... restarting in %.2f s"
        logged = []
        for record in caplog.records:
            assert isinstance(record.args, tuple)
            delay = record.args[-1]
            assert isinstance(delay, float)
            logged.append(delay)
        return logged

    loop = HeadLoop(FakeNode(), tick, backoff=0.001, max_backoff=0.004, healthy_after=60)
    await asyncio.wait_for(loop._supervise("flaky", dying(loop, 5)), 5)
    assert loop.restarts == {"flaky": 5}
    assert delays() == [0.001, 0.002, 0.004, 0.004, 0.004]  # doubling, capped

    caplog.clear()
    loop = HeadLoop(FakeNode(), tick, backoff=0.001, max_backoff=0.004, healthy_after=0)
    await asyncio.wait_for(loop._supervise("flaky", dying(loop, 3)), 5)
    assert delays() == [0.001, 0.001, 0.001]  # it "ran fine" each time: the backoff starts over

    loop = HeadLoop(FakeNode(), tick)
    loop.stop.set()
    await asyncio.wait_for(loop._supervise("flaky", dying(loop, 1)), 5)
    assert loop.restarts == {}  # stopping ends supervision without a restart


async def test_a_failing_side_job_is_logged_with_its_name_and_runs_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="keeper.loop")
    calls = 0
    kinds: list[str] = []

    async def flaky_job() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError(f"job bug {calls}")

    async def tick(_head: BlockHeader) -> None:
        pass

    loop = HeadLoop(FakeNode(), tick, poll_after=0.01, on_error=lambda kind, _exc: kinds.append(kind))
    loop.every(0.05, flaky_job, "funds-check")
    running = asyncio.create_task(loop.run())
    await until(lambda: calls >= 3)
    await stopped(loop, running)

    assert "side job funds-check failed: RuntimeError: job bug 1" in caplog.messages
    assert "side job funds-check failed: RuntimeError: job bug 2" in caplog.messages
    assert kinds[:2] == ["internal", "internal"]


def test_only_an_accepted_head_moves_last_head_at() -> None:
    loop = HeadLoop(FakeNode(), tick=lambda _h: asyncio.sleep(0), reset_depth=10)
    loop.offer(header(100))
    accepted = loop.last_head_at
    time.sleep(0.01)
    loop.offer(header(100))  # the same head again
    loop.offer(header(95))  # slightly older: a lagging node
    assert loop.last_head_at == accepted
    assert loop.heads_seen == 3
    loop.offer(header(101))
    assert loop.last_head_at > accepted
    newer = loop.last_head_at
    time.sleep(0.01)
    loop.offer(header(50))  # far back: a reset is accepted
    assert loop.last_head_at > newer


async def test_a_provider_stuck_on_one_block_trips_the_watchdog(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="keeper.loop")
    tried: list[int] = []

    async def tick(head: BlockHeader) -> None:
        tried.append(head.number)

    stuck = FakeNode(100)
    loop = HeadLoop(stuck, tick, poll_after=0.01, stale_after=0.2)
    running = asyncio.create_task(loop.run())
    await until(lambda: stuck.calls >= 30 and time.monotonic() - loop.last_head_at > 0.25)
    await loop.watchdog()
    await stopped(loop, running)
    assert tried == [100]  # the same head is not ticked twice
    assert any(m.startswith("no new head for") for m in caplog.messages)

    caplog.clear()  # control: a provider whose head advances keeps the watchdog quiet
    moving = FakeNode(100, advancing=True)
    loop = HeadLoop(moving, tick, poll_after=0.01, stale_after=0.2)
    running = asyncio.create_task(loop.run())
    await asyncio.sleep(0.3)
    await loop.watchdog()
    await stopped(loop, running)
    assert moving.calls >= 10
    assert not any(m.startswith("no new head for") for m in caplog.messages)


async def test_health_fails_when_heads_stop_advancing() -> None:
    metrics = Metrics(block_interval=2.0, stale_head_seconds=120)
    stuck = FakeNode(100, born=int(time.time()) - 100)  # block 100 is "now"

    async def tick(head: BlockHeader) -> None:
        metrics.ticked(head.timestamp)

    loop = HeadLoop(stuck, tick, poll_after=0.01)
    running = asyncio.create_task(loop.run())
    await until(lambda: loop.ticks == 1 and stuck.calls >= 20)
    await stopped(loop, running)
    assert loop.ticks == 1  # the repeated head did not tick again (and did not refresh the tick time)
    assert metrics.last_tick_at is not None
    ticked_at = metrics.last_tick_at

    assert metrics.health(now=ticked_at + 5.9) == (
        True,
        {
            "ok": True,
            "problems": [],
            "tick_age_s": pytest.approx(5.9),
            "head_age_s": pytest.approx(5.9, abs=1.5),
        },
    )
    ok, detail = metrics.health(now=ticked_at + 6.1)  # no tick within 3 block intervals
    assert (ok, detail["problems"]) == (False, ["no recent tick"])
    ok, detail = metrics.health(now=ticked_at + 122)
    assert (ok, detail["problems"]) == (False, ["no recent tick", "head is stale"])

    metrics.block_interval = 1_000.0  # the tick check alone would pass: the stale head still fails it
    ok, detail = metrics.health(now=ticked_at + 122)
    assert (ok, detail["problems"]) == (False, ["head is stale"])
    assert metrics.health(now=ticked_at + 100)[0] is True  # under stale_head_seconds
    metrics.stale_head_seconds = 0  # off (a devnet's clock)
    assert metrics.health(now=ticked_at + 122)[0] is True


def test_health_fails_before_the_first_tick() -> None:
    ok, detail = Metrics(block_interval=2.0).health()
    assert (ok, detail["problems"]) == (False, ["no recent tick"])
