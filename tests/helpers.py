"""Running the CLI in process, its stdout captured: what the chain tests share."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

from keeper import cli


def cli_output(*argv: str) -> tuple[int, str]:
    """`perp-keeper ARGV`: its exit code and what it printed."""
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(list(argv))
    return code, out.getvalue()


def run_once(url: str, metadata: Path, state_db: Path, *extra: str) -> tuple[int, str]:
    """`perp-keeper run --once` against `url`."""
    return cli_output(
        "run", "--once", "--rpc-url", url, "--metadata", str(metadata), "--state-db", str(state_db), *extra
    )
