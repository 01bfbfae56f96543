"""Every anvil the project starts keeps bounded history and leaves nothing behind, even on a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from devnet.anvil import DEFAULT_STATES, Anvil


def _rpc(url: str, method: str, *params: Any) -> dict[str, Any]:
    answer: dict[str, Any] = requests.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}, timeout=30
    ).json()
    return answer


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def test_history_is_bounded_in_memory_and_nothing_reaches_the_disk() -> None:
    with Anvil() as node:
        assert node.cache_dir is not None
        assert node.cache_dir.is_dir()
        folder = node.cache_dir
        _rpc(node.url, "anvil_mine", hex(DEFAULT_STATES * 4))
        head = DEFAULT_STATES * 4
        me = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        assert "result" in _rpc(node.url, "eth_getBalance", me, hex(head - DEFAULT_STATES + 2))
        old = _rpc(node.url, "eth_getBalance", me, hex(head - 2 * DEFAULT_STATES))
        assert "BlockOutOfRange" in str(old.get("error"))
        assert "result" in _rpc(node.url, "eth_getBlockByNumber", "0x1", False)  # blocks stay, states go
        assert node.disk_bytes() == 0
    assert not folder.exists()


SCRIPT = """
import sys, time
from devnet.anvil import Anvil
node = Anvil().start()
print(node._proc.pid, node.cache_dir, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_signalled_parent_takes_its_anvil_and_folder_with_it(sig: signal.Signals) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    parent = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True, env=env)
    assert parent.stdout is not None
    pid_text, folder_text = parent.stdout.readline().split()
    anvil_pid, folder = int(pid_text), Path(folder_text)
    assert _alive(anvil_pid)
    assert folder.is_dir()
    parent.send_signal(sig)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 15
    while _alive(anvil_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(anvil_pid)
    if sig != signal.SIGKILL:  # nothing can run in a SIGKILLed process: only its (empty) folder stays
        assert not folder.exists()
    else:
        assert not any(folder.iterdir())
        folder.rmdir()
