"""The fault-injection suite: a live `perp-keeper run` behind RPC endpoints that fail the way providers do.

`bench/faults.py` (run here as a subprocess, on its own devnet mining a block every 2 s) puts a dead
endpoint and two seeded fault-injecting proxies in `--rpc-url` and injects delays beyond the client's
timeout, 429 with Retry-After, 500/502/503, JSON-RPC errors, malformed JSON, batch answers missing an
element, stale heads and lost send answers. Targets: 0 exits, 0 duplicate transactions, every
liquidatable account liquidated, no secret printed. CI injects `CI_FAULTS` (about a minute); the bench
runs the full count (`python bench/faults.py --faults 1000`, figures in the README).

Run alone: `pytest -m faults`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import figures

ROOT = Path(__file__).resolve().parent.parent
CI_FAULTS = 150
pytestmark = [pytest.mark.faults, pytest.mark.chain]


def bench(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "bench/faults.py", "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)  # the figures, in the test's output (pytest -s or on failure)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_the_keeper_survives_injected_faults_and_liquidates_everything() -> None:
    r = bench("--faults", str(CI_FAULTS), "--timeout", "300")
    assert r["exits"] == 0, r["stderr_tail"]
    assert r["exit_code"] == 0  # SIGTERM: a clean stop
    assert r["faults"] >= CI_FAULTS
    kinds = set(r["faults_by_kind"])
    assert {"delay", "http-429", "rpc-error", "malformed-json"} <= kinds, kinds
    assert kinds & {"http-500", "http-502", "http-503"}
    assert r["liquidatable_before"] > 0
    assert r["liquidatable_after"] == 0
    assert r["transactions"] >= r["liquidatable_before"]
    assert r["duplicates"] == 0
    assert r["unjournaled"] == 0
    assert r["keeper_positions"] == 0  # what it took over was closed, faults or not
    assert r["secrets"] == 0
    figures.record("faults", {k: v for k, v in r.items() if k != "stderr_tail"})
