"""`perp-keeper devnet up` as an operator runs it: a real process, a real devnet."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from strategies.perp_v2.metadata import load_metadata

CLI = [sys.executable, "-m", "keeper.cli"]


@pytest.mark.chain
def test_devnet_up_prints_rpc_url_and_metadata_that_the_keeper_loads(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CLI, "devnet", "up", "--scenario", "all-kinds", "--once", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    url = re.search(r"^RPC URL:\s+(http://127\.0\.0\.1:\d+)$", proc.stdout, re.M)
    path = re.search(r"^Metadata:\s+(\S+)$", proc.stdout, re.M)
    assert url, proc.stdout
    assert path, proc.stdout
    deployment = load_metadata(path.group(1))
    assert Path(path.group(1)) == tmp_path / "metadata.json"
    assert deployment.network == "devnet"
    assert len(deployment.markets) == 2
    # the report lists every kind of liquidatable account
    for kind in ("taker", "maker", "collateral"):
        assert re.search(rf"\s{kind}(,|$)", proc.stdout, re.M), kind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["devnet", "up", "--scenario", "nope"],
            "--scenario: unknown scenario 'nope' (choose from all-kinds",
        ),
        (["devnet", "up", "--port", "70000"], "port must be 0-65535, got 70000"),
        (["devnet", "up", "--port", "http"], "not a port number: 'http'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(args: list[str], message: str) -> None:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_keeper_does_not_import_the_devnet_tooling() -> None:
    code = (
        "import sys, keeper.cli, keeper.metadata;"
        "print(sorted(m for m in sys.modules if m.startswith('devnet')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"
