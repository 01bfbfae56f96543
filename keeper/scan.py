"""`perp-keeper scan`: connect, index, read every account at one block, and report what is liquidatable.

The report itself is the protocol's (`ProtocolPlugin.report`); a protocol without one says so."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from keeper import registry
from keeper.errors import SettingError
from keeper.session import connection_settings, open_session


async def main(args: Any, out: TextIO | None = None) -> int:
    rpc_url, metadata, state_db = connection_settings(args)
    plugin = registry.described_by(metadata)
    if not plugin.can_scan():
        readers = ", ".join(p.name for p in registry.protocols().values() if p.can_scan())
        raise SettingError(
            f"--metadata: {metadata} describes a {plugin.name} deployment; this command reads {readers} "
            f"(for {plugin.title}: perp-keeper run [--dry-run] --protocol {plugin.name})"
        )
    session = await open_session(plugin, rpc_url, metadata, state_db, progress=True)
    try:
        await plugin.report(session, bool(args.json), out or sys.stdout)
    finally:
        await session.close()
    return 0
