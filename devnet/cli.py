"""The devnet's commands, `perp-keeper devnet up` and `perp-keeper demo`, plugged into the CLI.

Registered in the `perp_keeper.commands` entry-point group (pyproject.toml): the keeper's CLI lists
them without importing the devnet tooling, which is loaded only when one of them runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from keeper.cli import EXIT_USAGE, fail, guarded, port_number
from keeper.registry import Command

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

PROTOCOLS = ("perp-v2", "synthetix-perps-v2")


def commands() -> list[Command]:
    return [
        Command("devnet", _add_devnet, _devnet_up, loads_env=False),
        Command("demo", _add_demo, _demo),
    ]


def _devnet_args(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--protocol",
        default="perp-v2",
        choices=PROTOCOLS,
        help="which protocol's contracts the devnet runs (default perp-v2)",
    )
    command.add_argument(
        "--scenario",
        default=None,
        help="perp-v2: all-kinds (default) or empty; synthetix-perps-v2: liquidations (default) or empty",
    )


def _add_devnet(commands: Subparsers) -> argparse.ArgumentParser:
    devnet = commands.add_parser("devnet", help="a local devnet running the real Perp v2 contracts")
    devnet_commands = devnet.add_subparsers(dest="devnet_command", required=True, metavar="ACTION")
    up = devnet_commands.add_parser(
        "up",
        help="start anvil, deploy Perp v2 (or Synthetix Perps V2) and build a scenario",
        description="Start anvil, deploy the real Perp v2 (or Synthetix Perps V2) contracts, build a "
        "scenario, write the deployment metadata, print the accounts at risk, and serve until interrupted.",
    )
    _devnet_args(up)
    up.add_argument("--port", type=port_number, default=0, help="RPC port (default: a free one)")
    up.add_argument("--out-dir", type=Path, default=Path("state/devnet"), help="where metadata.json goes")
    up.add_argument("--state-out", type=Path, help="also write an anvil state dump (for anvil --load-state)")
    up.add_argument("--once", action="store_true", help="print the report and exit instead of serving")
    return devnet


def _add_demo(commands: Subparsers) -> argparse.ArgumentParser:
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
    return demo


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
        return fail(f"--scenario: unknown scenario {scenario!r} (choose from {choices})", EXIT_USAGE)
    try:
        launch = up.start_synthetix if synthetix else up.start
        net = launch(scenario=scenario, port=args.port, out_dir=args.out_dir)
    except ToolchainError as exc:
        return fail(str(exc), EXIT_USAGE)
    except AnvilError as exc:
        return fail(str(exc), 1)
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


def _demo(args: argparse.Namespace) -> int:
    from devnet import demo

    return guarded(
        lambda: demo.main(args.scenario, args.out_dir, dry_run=args.dry_run, protocol=args.protocol)
    )
