"""The head-driven loop on a real node: WebSocket heads, polling fallback, latest head wins, no overlap."""

from __future__ import annotations

import asyncio

from devnet import up
from devnet.chain import DevChain
from keeper.loop import HeadLoop
from keeper.rpc import BlockHeader, Rpc

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
