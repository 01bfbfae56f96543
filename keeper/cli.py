"""`perp-keeper`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keeper.registry import Command

EXIT_USAGE = 2


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def block_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a block number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a block number is >= 0, got {value}")
    return value


def _connection_args(command: argparse.ArgumentParser, state_db: bool) -> None:
    command.add_argument(
        "--rpc-url",
        default=None,
        help="HTTP(S) JSON-RPC endpoint, or several comma-separated: reads fail over, sends go to all "
        "(env KEEPER_RPC_URL)",
    )
    command.add_argument(
        "--metadata", type=Path, default=None, help="Perp deployment metadata (env KEEPER_METADATA)"
    )
    if state_db:
        command.add_argument("--state-db", type=Path, default=None, help="SQLite state (env KEEPER_STATE_DB)")
    command.add_argument(
        "--database-url",
        default=None,
        help="postgresql://... state shared by replicas, instead of SQLite (env KEEPER_DATABASE_URL)",
    )


def build_parser(plugin_commands: Sequence[Command] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perp-keeper",
        description="Liquidation keeper for Perpetual Protocol v2 (Curie) and Synthetix Perps V2.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for extra in plugin_commands:
        extra.add(commands)

    check = commands.add_parser(
        "check",
        help="check the RPC, the deployment and the keeper's funds: a pass/fail table",
        description="Connectivity and chain id, code at every metadata address, the price oracle, and "
        "the keeper's ETH, wallet USDC, Vault allowance and free collateral. Exit 0 only when all pass.",
    )
    _connection_args(check, state_db=False)
    check.add_argument(
        "--from", dest="from_address", default=None, help="check this keeper address (default: the key's)"
    )

    scan = commands.add_parser(
        "scan",
        help="read every account at one block and list what is liquidatable",
        description="Index every account from the chain's logs (resuming from the state database), read "
        "them all at one block with Multicall3, and list the liquidation opportunities in execution order.",
    )
    _connection_args(scan, state_db=True)
    scan.add_argument("--json", action="store_true", help="print only a JSON array of opportunities")

    _add_run(commands)
    _add_history(commands)
    _add_compensation(commands)
    return parser


def _output_args(command: argparse.ArgumentParser, what: str) -> None:
    output = command.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help=f"print only {what} as JSON")
    output.add_argument("--csv", type=Path, default=None, metavar="FILE", help="write a CSV file")


def _add_history(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    history = commands.add_parser(
        "history",
        help="every liquidation-related event of a block range, with totals (and lateness)",
        description="List every liquidation-related event in the range, oldest first (logs cached in the "
        "state database, so a long range resumes). Without --json or --csv: a table and totals per "
        "liquidator, market and kind.",
    )
    _connection_args(history, state_db=True)
    history.add_argument(
        "--from-block", type=block_number, default=None, help="default: the deployment's first"
    )
    history.add_argument("--to-block", type=block_number, default=None, help="default: the head")
    _output_args(history, "a JSON array of events")
    history.add_argument(
        "--lateness",
        action="store_true",
        help="first liquidatable block of each position liquidation, and missed windows (archive node)",
    )
    history.add_argument(
        "--plot", type=Path, default=None, metavar="FILE", help="a picture: FILE.html or .svg"
    )


def _add_compensation(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    comp = commands.add_parser(
        "compensation",
        help="value accounts at a block and share a fund among them under a policy",
        description="Each account's value at --block (collateral at its oracle price, realised and pending "
        "PnL and funding, unrealised PnL at the index price), paid from --fund under --policy: pro-rata, "
        "smallest-first or threshold:X.",
    )
    _connection_args(comp, state_db=True)
    comp.add_argument("--block", type=block_number, default=None, help="value every account at this block")
    comp.add_argument("--fund", required=True, metavar="AMOUNT", help="the compensation fund, USD")
    comp.add_argument(
        "--policy", required=True, metavar="POLICY", help="pro-rata, smallest-first, threshold:X"
    )
    comp.add_argument("--exclude", type=Path, default=None, metavar="FILE", help="addresses left out")
    comp.add_argument(
        "--accounts", type=Path, default=None, metavar="FILE", help="the claimants (default: all)"
    )
    comp.add_argument(
        "--price", choices=("index", "mark"), default="index", help="unrealised PnL at this price"
    )
    comp.add_argument(
        "--liquidated-between",
        nargs=2,
        type=block_number,
        default=None,
        metavar=("A", "B"),
        help="claimants: accounts liquidated in blocks A..B, each valued at the block before its first",
    )
    _output_args(comp, "the report")


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="liquidate: scan, price and execute every profitable liquidation, largest first",
        description="Liquidate profitable Perp v2 or Synthetix Perps V2 positions, largest first. The key "
        "comes from KEEPER_PRIVATE_KEY, KEEPER_PRIVATE_KEY_FILE or KEEPER_KEYSTORE + "
        "KEEPER_KEYSTORE_PASSWORD_FILE and is never printed; --dry-run needs none and never signs.",
    )
    _connection_args(run, state_db=True)
    run.add_argument(
        "--protocol",
        default=None,
        help="a registered protocol, e.g. perp-v2 (env KEEPER_PROTOCOL; default: the metadata's)",
    )
    run.add_argument("--once", action="store_true", help="one complete pass, a summary, then exit")
    run.add_argument(
        "--dry-run", action="store_true", help="never sign or send; simulate and audit (env KEEPER_DRY_RUN)"
    )
    run.add_argument(
        "--audit-log",
        type=Path,
        default=None,
        help="JSONL audit trail of every decision (env KEEPER_AUDIT_LOG)",
    )
    run.add_argument("--from", dest="from_address", default=None, help="dry-run: simulate as this liquidator")
    run.add_argument(
        "--ws-url",
        default=None,
        help="WebSocket endpoint for new heads, or several comma-separated: the first that works "
        "(env KEEPER_WS_URL)",
    )
    run.add_argument(
        "--metrics-port",
        type=port_number,
        default=None,
        help="/metrics and /health port, 0 = off (env KEEPER_METRICS_PORT)",
    )


def fail(message: str, code: int) -> int:
    print(f"perp-keeper: {message}", file=sys.stderr)
    return code


def _scan(args: argparse.Namespace) -> int:
    from keeper import scan

    return guarded(lambda: scan.main(args))


def _check(args: argparse.Namespace) -> int:
    from keeper import check, config, registry
    from keeper.session import connection_settings

    async def run() -> int:
        args.state_db = None
        rpc_url, metadata, state = connection_settings(args)
        plugin = registry.described_by(metadata)
        signer = config.signer()
        keeper = config.address(args.from_address, "--from") if args.from_address else None
        who = keeper or (signer.address if signer else None)
        return await check.main(plugin, rpc_url, metadata, who, state=state)

    return guarded(run)


def _history(args: argparse.Namespace) -> int:
    from keeper import history

    return guarded(lambda: history.main(args))


def _compensation(args: argparse.Namespace) -> int:
    from keeper import compensate

    return guarded(lambda: compensate.main(args))


def _run(args: argparse.Namespace) -> int:
    from keeper import run

    return guarded(lambda: run.main(args))


def guarded(command: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run an async command; operator mistakes become one line and exit code 2, never a traceback."""
    from keeper.errors import ConfigurationError, RpcError, RpcUnavailableError

    try:
        return asyncio.run(command())
    except ConfigurationError as exc:
        return fail(str(exc), EXIT_USAGE)
    except RpcUnavailableError as exc:
        return fail(f"--rpc-url: {exc}", EXIT_USAGE)
    except RpcError as exc:
        return fail(f"RPC error: {exc}", 1)


def main(argv: Sequence[str] | None = None) -> int:
    from keeper import registry
    from keeper.errors import ConfigurationError

    try:
        extra = registry.commands()
    except ConfigurationError as exc:
        return fail(str(exc), EXIT_USAGE)
    args = build_parser(extra).parse_args(argv)
    handler = {
        "run": _run,
        "check": _check,
        "scan": _scan,
        "history": _history,
        "compensation": _compensation,
    }.get(args.command)
    command = next((c for c in extra if c.name == args.command), None)
    if command is None or command.loads_env:
        from keeper.config import load_dotenv

        try:
            load_dotenv()
        except ConfigurationError as exc:
            return fail(str(exc), EXIT_USAGE)
    if command is not None:
        return command.run(args)
    assert handler is not None  # argparse rejects unknown commands first
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
