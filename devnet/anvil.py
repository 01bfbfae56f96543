"""Run an anvil node as a child process on a free port, with bounded history and no leftovers.

Left alone, anvil keeps old block states on disk under `~/.foundry/anvil/tmp` (~11 MB a block at
10,000 accounts: one 10k-account bench wrote ~43 GB) and leaves that folder behind when stopped. So
every anvil started here keeps only its `states` most recent states, in memory (`--prune-history`:
nothing is written to disk), its cache folder is a private temporary one removed when it stops, and it
is stopped when its parent exits, is interrupted or gets SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType

from devnet import toolchain

_LISTENING = re.compile(r"Listening on ([\d.]+):(\d+)")
# Recent states kept in memory: the keeper reads at its head (and endpoints may lag a few blocks), a
# fork reads its origin at the fork block, tests read at blocks they just saw. 128 blocks is over four
# minutes of 2-second blocks; older states answer "BlockOutOfRangeError".
DEFAULT_STATES = 128
_LIVE: weakref.WeakSet[Anvil] = weakref.WeakSet()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the thread that started it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_all() -> None:
    for node in list(_LIVE):
        node.stop()


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    """Stop every anvil (and remove its folder), then die of the signal as if no handler were set."""
    stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _guard_signals() -> None:
    """SIGTERM would kill Python without running `finally`: stop the anvils first. Only where no one
    else handles it, and only from the main thread (where handlers can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


atexit.register(stop_all)


class AnvilError(RuntimeError):
    pass


class Anvil:
    """One anvil process. Use as a context manager, or call `start()`/`stop()`.

    Port 0 lets the OS pick a free port (8545 may be taken); the real port is read from anvil's
    banner. anvil logs every request, so a thread keeps draining its output (the last lines are kept
    for error messages).
    """

    def __init__(
        self,
        *,
        fork_url: str | None = None,
        load_state: Path | None = None,
        port: int = 0,
        extra_args: Sequence[str] = (),
        states: int = DEFAULT_STATES,
    ) -> None:
        self.fork_url = fork_url
        self.load_state = load_state
        self.port = port
        self.extra_args = tuple(extra_args)
        self.states = states
        self.cache_dir: Path | None = None  # anvil's state folder, private to this node
        self._proc: subprocess.Popen[str] | None = None
        self._tail: deque[str] = deque(maxlen=40)
        self.url = ""

    def command(self) -> list[str]:
        cmd = [
            str(toolchain.anvil_path()),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--gas-limit",
            "100000000",
            "--no-request-size-limit",
            "--prune-history",
            str(self.states),
        ]
        if self.cache_dir is not None:
            cmd += ["--cache-path", str(self.cache_dir)]
        if self.fork_url:
            cmd += ["--fork-url", self.fork_url]
        if self.load_state:
            cmd += ["--load-state", str(self.load_state)]
        return cmd + list(self.extra_args)

    def start(self, timeout: float = 30.0) -> Anvil:
        binary = toolchain.anvil_path()
        if not binary.exists():
            raise AnvilError(f"anvil not found at {binary}: run `make setup` (python -m devnet.toolchain)")
        _guard_signals()
        self.cache_dir = Path(tempfile.mkdtemp(prefix="perp-keeper-anvil-"))
        self._proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            preexec_fn=_die_with_parent,
        )
        _LIVE.add(self)
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        for line in self._proc.stdout:
            self._tail.append(line.rstrip())
            if match := _LISTENING.search(line):
                self.url = f"http://{match.group(1)}:{match.group(2)}"
                break
            if time.monotonic() > deadline:
                break
        if not self.url:
            self.stop()
            raise AnvilError("anvil did not start: " + " | ".join(self._tail))
        threading.Thread(target=self._drain, name="anvil-drain", daemon=True).start()
        return self

    def _drain(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        for line in proc.stdout:
            self._tail.append(line.rstrip())

    def disk_bytes(self) -> int:
        """What this node's state folder holds now (0 while history is pruned)."""
        if self.cache_dir is None or not self.cache_dir.exists():
            return 0
        return sum(f.stat().st_size for f in self.cache_dir.rglob("*") if f.is_file())

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.cache_dir is not None:
            shutil.rmtree(self.cache_dir, ignore_errors=True)

    def __enter__(self) -> Anvil:
        return self.start() if self._proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
