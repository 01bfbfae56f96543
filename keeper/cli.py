"""`perp-keeper`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def _connection_args(command: argparse.ArgumentParser, state_db: bool) -> None:
    command.add_argument("--rpc-url", default=None, help="HTTP RPC endpoint (env KEEPER_RPC_URL)")
    command.add_argument(
        "--metadata", type=Path, default=None, help="Perp deployment metadata (env KEEPER_METADATA)"
    )
    if state_db:
        command.add_argument("--state-db", type=Path, default=None, help="SQLite state (env KEEPER_STATE_DB)")


def _devnet_args(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--protocol",
        default="perp-v2",
        choices=("perp-v2", "synthetix-perps-v2"),
        help="which protocol's contracts the devnet runs (default perp-v2)",
    )
    command.add_argument(
        "--scenario",
        default=None,
        help="perp-v2: all-kinds (default) or empty; synthetix-perps-v2: liquidations (default) or empty",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perp-keeper",
        description="Liquidation keeper for Perpetual Protocol v2 (Curie).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    devnet = commands.add_parser("devnet", help="a local devnet running the real Perp v2 contracts")
    devnet_commands = devnet.add_subparsers(dest="devnet_command", required=True, metavar="ACTION")
    up = devnet_commands.add_parser(
        "up",
        help="start anvil, deploy Perp v2 (or Synthetix Perps V2) and build a scenario",
        description="Start anvil, deploy the real Perp v2 (or Synthetix Perps V2) contracts, build a "
        "scenario, write the deployment metadata, print the accounts at risk, and serve until interrupted.",
    )
    _devnet_args(up)
    up.add_argument("--port", type=_port, default=0, help="RPC port (default: a free one)")
    up.add_argument("--out-dir", type=Path, default=Path("state/devnet"), help="where metadata.json goes")
    up.add_argument("--state-out", type=Path, help="also write an anvil state dump (for anvil --load-state)")
    up.add_argument("--once", action="store_true", help="print the report and exit instead of serving")

    demo = commands.add_parser(
        "demo",
        help="the embedded demo: a devnet with every kind of account, liquidated by the keeper",
        description="Start a local devnet with the real Perp v2 contracts and a scenario, show who is "
        "liquidatable, run the keeper once (live with the devnet's keeper account, or --dry-run), and show "
        "what it did and what is left.",
    )
    _devnet_args(demo)
    demo.add_argument("--dry-run", action="store_true", help="simulate and audit only; nothing is sent")
    demo.add_argument(
        "--out-dir", type=Path, default=Path("state/demo"), help="metadata, state db, audit log"
    )

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
        help="perp-v2 or synthetix-perps-v2 (env KEEPER_PROTOCOL; default: what the metadata describes)",
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
    run.add_argument("--ws-url", default=None, help="WebSocket endpoint for new heads (env KEEPER_WS_URL)")
    run.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        help="/metrics and /health port, 0 = off (env KEEPER_METRICS_PORT)",
    )
    return parser


def _fail(message: str, code: int) -> int:
    print(f"perp-keeper: {message}", file=sys.stderr)
    return code


def _devnet_up(args: argparse.Namespace) -> int:
    # The keeper imports the devnet tooling only here, never at run time.
    from devnet import up
    from devnet.anvil import AnvilError
    from devnet.scenario import SCENARIOS
    from devnet.synthetix_scenario import SCENARIOS as SYNTHETIX_SCENARIOS
    from devnet.toolchain import ToolchainError

    synthetix = args.protocol == "synthetix-perps-v2"
    scenarios = SYNTHETIX_SCENARIOS if synthetix else tuple(SCENARIOS)
    scenario = args.scenario or ("liquidations" if synthetix else "all-kinds")
    if scenario not in scenarios:
        choices = ", ".join(sorted(scenarios))
        return _fail(f"--scenario: unknown scenario {scenario!r} (choose from {choices})", EXIT_USAGE)
    try:
        launch = up.start_synthetix if synthetix else up.start
        net = launch(scenario=scenario, port=args.port, out_dir=args.out_dir)
    except ToolchainError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except AnvilError as exc:
        return _fail(str(exc), 1)
    try:
        if args.state_out:
            up.dump_state(net, args.state_out)
            print(f"State:    {args.state_out.resolve()}")
        print(f"RPC URL:  {net.url}")
        print(f"Metadata: {net.metadata_path}")
        print(f"Chain id: {net.chain.w3.eth.chain_id}")
        print()
        up.risk_report(net)
        sys.stdout.flush()
        if not args.once:
            up.serve_until_interrupted(net)
    finally:
        net.stop()
    return 0


def _scan(args: argparse.Namespace) -> int:
    from keeper import scan

    async def run() -> int:
        rpc_url, metadata, state_db = scan.connection_settings(args)
        session = await scan.open_session(rpc_url, metadata, state_db, progress=True)
        try:
            await scan.report(session, args.json, sys.stdout)
        finally:
            await session.close()
        return 0

    return _guarded(run)


def _demo(args: argparse.Namespace) -> int:
    from devnet import demo

    return _guarded(
        lambda: demo.main(args.scenario, args.out_dir, dry_run=args.dry_run, protocol=args.protocol)
    )


def _check(args: argparse.Namespace) -> int:
    from keeper import check, config
    from keeper.scan import connection_settings

    async def run() -> int:
        args.state_db = None
        rpc_url, metadata, _ = connection_settings(args)
        signer = config.signer()
        keeper = config.address(args.from_address, "--from") if args.from_address else None
        return await check.main(rpc_url, metadata, keeper or (signer.address if signer else None))

    return _guarded(run)


def _run(args: argparse.Namespace) -> int:
    from keeper import run

    return _guarded(lambda: run.main(args))


def _guarded(command: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run an async command; operator mistakes become one line and exit code 2, never a traceback."""
    from keeper.errors import MetadataError, RpcError, RpcUnavailableError, SettingError, StoreError

    try:
        return asyncio.run(command())
    except (SettingError, MetadataError, StoreError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except RpcUnavailableError as exc:
        return _fail(f"--rpc-url: {exc}", EXIT_USAGE)
    except RpcError as exc:
        return _fail(f"RPC error: {exc}", 1)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "devnet":
        from keeper.config import load_dotenv
        from keeper.errors import SettingError

        try:
            load_dotenv()
        except SettingError as exc:
            return _fail(str(exc), EXIT_USAGE)
    if args.command == "run":
        return _run(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "check":
        return _check(args)
    if args.command == "devnet" and args.devnet_command == "up":
        return _devnet_up(args)
    if args.command == "scan":
        return _scan(args)
    return EXIT_USAGE  # pragma: no cover - argparse rejects unknown commands first


if __name__ == "__main__":
    raise SystemExit(main())
