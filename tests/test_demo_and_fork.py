"""The README's demo command end to end, and the keeper on a fork of a live chain (anvil forking anvil)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devnet import up
from devnet.anvil import Anvil
from devnet.chain import DevChain
from devnet.scenario import KEEPER_KEY
from tests.helpers import run_once

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.chain
def test_the_demo_liquidates_everything(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "keeper.cli", "demo", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Before:" in proc.stdout
    assert " executed" in proc.stdout
    assert proc.stdout.rstrip().endswith("nothing is liquidatable.")


def liquidatable(chain: DevChain, devnet: up.Devnet) -> set[str]:
    d = devnet.deployment
    ch = chain.contract("ClearingHouse", d["ClearingHouse"].address)
    ab = chain.contract("AccountBalance", d["AccountBalance"].address)
    block = chain.w3.eth.block_number
    return {
        t.label
        for t in devnet.scenario.traders.values()
        if ch.functions.getAccountValue(t.address).call(block_identifier=block)
        < ab.functions.getMarginRequirementForLiquidation(t.address).call(block_identifier=block)
        and ab.functions.getMarginRequirementForLiquidation(t.address).call(block_identifier=block) > 0
    }


def test_the_keeper_liquidates_on_a_fork_and_the_origin_is_untouched(
    devnet: up.Devnet, chain: DevChain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = liquidatable(chain, devnet)
    assert before
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", KEEPER_KEY)
    with Anvil(fork_url=devnet.url) as fork_node:
        fork = DevChain(fork_node.url)
        code, out = run_once(fork_node.url, devnet.metadata_path, tmp_path / "fork.sqlite")
        assert code == 0, out
        assert " executed" in out
        assert liquidatable(fork, devnet) == set()
    assert liquidatable(chain, devnet) == before  # the origin never saw a transaction
