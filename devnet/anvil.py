"""Run an anvil node as a child process on a free port."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from devnet import toolchain

_LISTENING = re.compile(r"Listening on ([\d.]+):(\d+)")


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
    ) -> None:
        self.fork_url = fork_url
        self.load_state = load_state
        self.port = port
        self.extra_args = tuple(extra_args)
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
        ]
        if self.fork_url:
            cmd += ["--fork-url", self.fork_url]
        if self.load_state:
            cmd += ["--load-state", str(self.load_state)]
        return cmd + list(self.extra_args)

    def start(self, timeout: float = 30.0) -> Anvil:
        binary = toolchain.anvil_path()
        if not binary.exists():
            raise AnvilError(f"anvil not found at {binary}: run `make setup` (python -m devnet.toolchain)")
        self._proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
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

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Anvil:
        return self.start() if self._proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
