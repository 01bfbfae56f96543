"""The engines of one run tick together: one head for all, the observers told once, a failing engine
neither stops nor hides the others."""

from __future__ import annotations

from typing import Any, cast

import pytest

from keeper.engine import Engine
from keeper.fleet import Fleet, Unit
from keeper.flights import Result
from keeper.rpc import BlockHeader
from keeper.tx import TxManager

HEAD = BlockHeader(number=7, hash="0x07", parent_hash="0x06", timestamp=70)


class FakeEngine:
    def __init__(self, name: str, fails: bool = False) -> None:
        self.name, self.fails, self.heads = name, fails, list[int]()

    async def tick(self, head: BlockHeader) -> list[Result]:
        self.heads.append(head.number)
        if self.fails:
            raise RuntimeError(f"{self.name} failed")
        return [cast(Result, self.name)]


def fleet(*engines: FakeEngine) -> Fleet:
    return Fleet(
        [Unit(e.name, cast(Any, None), cast(Engine, e), cast(TxManager, None), None) for e in engines]
    )


async def test_every_engine_ticks_at_the_one_head_and_the_observers_hear_once() -> None:
    a, b = FakeEngine("shard 0"), FakeEngine("shard 1")
    told: list[tuple[int, list[Any]]] = []
    both = fleet(a, b)
    both.ticked = lambda number, results: told.append((number, results))
    assert await both.tick(HEAD) == cast(list[Result], ["shard 0", "shard 1"])
    assert a.heads == b.heads == [7]
    assert told == [(7, ["shard 0", "shard 1"])]


async def test_a_failing_engine_does_not_hide_the_others_results() -> None:
    a, b = FakeEngine("shard 0", fails=True), FakeEngine("shard 1")
    told: list[tuple[int, list[Any]]] = []
    both = fleet(a, b)
    both.ticked = lambda number, results: told.append((number, results))
    with pytest.raises(RuntimeError, match="shard 0 failed"):
        await both.tick(HEAD)
    assert b.heads == [7]
    assert told == [(7, ["shard 1"])]
