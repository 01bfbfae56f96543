"""`bench/replicas.py` keeps working: a few chaos rounds (one of each fault), their JSON line, and the
targets: take-over within TTL + 1 block, nothing sent twice, nothing from an ex-holder, none missed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.chain
def test_bench_replicas_a_round_of_each_fault() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/replicas.py", "--rounds", "3", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rounds = proc.stderr[-3000:]  # one JSON line per round: which round, fault and moment, if one fails
    assert set(result) >= {
        "rounds", "duplicates", "ex_holder_sends", "ttl_seconds", "takeover_max_blocks",
        "takeover_max_seconds", "missed",
    }  # fmt: skip
    assert result["rounds"] == 3
    assert result["faults"] == {"kill": 1, "sigstop": 1, "pgterm": 1}
    assert result["duplicates"] == 0, rounds
    assert result["ex_holder_sends"] == 0, rounds
    assert result["missed"] == 0, rounds
    assert result["takeover_max_seconds"] <= result["ttl_seconds"] + result["block_seconds"] + 1.5, rounds
