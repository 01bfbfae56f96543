"""Shared fixtures: one real devnet per session, isolated per test with evm_snapshot/evm_revert.

Tests that use the `devnet` fixture (directly or through `chain`), or the Synthetix one (`snx`), are
marked `chain`
automatically: `pytest -m chain` selects them, `pytest -m "not chain"` the pure ones.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from devnet import up
from devnet.chain import DevChain
from devnet.scenario import Trader
from strategies.perp_v2.plugin import PerpSession, open_session


@pytest.fixture(scope="session")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[up.Devnet]:
    net = up.start(scenario="all-kinds", out_dir=tmp_path_factory.mktemp("devnet"), log=False)
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture
def chain(devnet: up.Devnet) -> Iterator[DevChain]:
    """The devnet's chain, restored after the test (a snapshot is used up by one revert)."""
    snapshot = devnet.chain.snapshot()
    try:
        yield devnet.chain
    finally:
        devnet.chain.revert(snapshot)


@pytest.fixture
async def session(devnet: up.Devnet, chain: DevChain, tmp_path: Path) -> AsyncIterator[PerpSession]:
    """The keeper's scan session on the devnet (fresh state db), closed after the test."""
    opened = await open_session(devnet.url, devnet.metadata_path, tmp_path / "keeper.sqlite")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def traders(devnet: up.Devnet) -> dict[str, Trader]:
    return devnet.scenario.traders


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"devnet", "snx"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.chain)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What the tests measured (tests/figures.py), so CI's output carries the figures."""
    from tests.figures import MEASURED

    if not MEASURED:
        return
    terminalreporter.section("figures measured")
    for name, figures in MEASURED:
        terminalreporter.write_line(f"{name}: {json.dumps(figures, sort_keys=True, default=str)}")
