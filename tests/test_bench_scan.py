"""`bench/scan.py` keeps working: a small run prints its JSON line and misses nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.chain
def test_bench_scan_small_run_misses_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/scan.py", "--accounts", "40", "--rtt-ms", "0", "--blocks", "3", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) >= {
        "accounts",
        "rtt_ms",
        "cold_requests",
        "cold_seconds",
        "naive_requests",
        "naive_seconds",
        "block_requests",
        "block_seconds",
        "missed",
    }
    assert result["accounts"] >= 40
    assert result["missed"] == 0
    assert result["cold_requests"] < result["naive_requests"]
