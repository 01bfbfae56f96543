"""`perp-keeper demo`: the README's first command. A devnet, a scenario, the keeper, a before/after."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from devnet import up
from devnet.scenario import KEEPER_ADDRESS, KEEPER_KEY
from devnet.synthetix import SynthetixDeployment
from keeper import run
from strategies.perp_v2.plugin import PLUGIN as PERP_V2_PLUGIN
from strategies.perp_v2.plugin import open_session
from strategies.synthetix_perps_v2.metadata import SYNTHETIX_PERPS_V2

PERP_V2 = PERP_V2_PLUGIN.name


async def main(scenario: str | None, out_dir: Path, dry_run: bool = False, protocol: str = PERP_V2) -> int:
    net: up.Devnet | up.SynthetixDevnet
    if protocol == SYNTHETIX_PERPS_V2:
        net = await asyncio.to_thread(up.start_synthetix, scenario or "liquidations", 0, out_dir)
    else:
        net = await asyncio.to_thread(up.start, scenario or "all-kinds", 0, out_dir)
    try:
        print(f"devnet: {net.url} (metadata {net.metadata_path})\n\nBefore:")
        await _report(net, out_dir)
        if not dry_run:
            # the devnet keeper is anvil's dev account #1, whose key is public: fine here, nowhere else
            os.environ["KEEPER_PRIVATE_KEY"] = KEEPER_KEY
        audit = out_dir / "audit.jsonl"
        audit.unlink(missing_ok=True)
        print(f"\nperp-keeper run --once{' --dry-run' if dry_run else ''} (audit trail: {audit}):")
        args = SimpleNamespace(
            once=True,
            dry_run=dry_run,
            audit_log=audit,
            from_address=KEEPER_ADDRESS if dry_run else None,
            rpc_url=net.url,
            ws_url=None,
            metrics_port=0,
            metadata=net.metadata_path,
            state_db=_fresh(out_dir / "keeper.sqlite"),
            protocol=protocol,
        )
        await run.main(args)
        print("\nAfter:")
        left = await _report(net, out_dir)
        if not left:
            print("\nnothing is liquidatable.")
        elif dry_run:
            print(f"\n{left} liquidation(s) left (a dry-run sends nothing).")
        else:
            print(f"\n{left} liquidation(s) left, skipped for the reasons above.")
    finally:
        net.stop()
    return 0


async def _report(net: up.Devnet | up.SynthetixDevnet, out_dir: Path) -> int:
    if isinstance(net.deployment, SynthetixDeployment):
        return await asyncio.to_thread(up.synthetix_report, net.deployment, net.scenario.traders.values())
    session = await open_session(net.url, net.metadata_path, _fresh(out_dir / "scan.sqlite"))
    try:
        return await PERP_V2_PLUGIN.report(session.session, False, sys.stdout)
    finally:
        await session.close()


def _fresh(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path
