"""Connecting to a deployment: settings, the RPC checked against the metadata, the state database bound
to that chain, the account index and the view reader. Every protocol opens its session here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from keeper import multicall
from keeper.errors import SettingError
from keeper.indexer import Indexer, Progress
from keeper.protocol import ProtocolPlugin, Session
from keeper.rpc import Rpc, redact
from keeper.store import Store

DEFAULT_STATE_DB = Path("state/keeper.sqlite")


def connection_settings(args: Any) -> tuple[str, Path, Path]:
    """--rpc-url / --metadata / --state-db, else KEEPER_RPC_URL / KEEPER_METADATA / KEEPER_STATE_DB."""
    rpc_url = args.rpc_url or os.environ.get("KEEPER_RPC_URL") or ""
    metadata = args.metadata or os.environ.get("KEEPER_METADATA")
    if not metadata:
        raise SettingError("--metadata / KEEPER_METADATA is required")
    state_db = getattr(args, "state_db", None) or os.environ.get("KEEPER_STATE_DB") or DEFAULT_STATE_DB
    return check_rpc_url(rpc_url), Path(metadata), Path(state_db)


def check_rpc_url(url: str | None, setting: str = "--rpc-url / KEEPER_RPC_URL") -> str:
    if not url:
        raise SettingError(f"{setting} is required")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingError(f"{setting}: expected an http(s):// URL, got {parts.scheme or 'no'} scheme")
    return url


async def open_session(
    plugin: ProtocolPlugin,
    rpc_url: str,
    metadata_path: Path,
    state_db: Path | str,
    *,
    progress: bool = False,
) -> Session:
    """Check the inputs against the chain (chain id, code at the protocol's anchor contract) and wire
    the account index and the reader every strategy and report of that protocol uses."""
    deployment = plugin.load_metadata(metadata_path)
    anchor_name, anchor = deployment.anchor
    rpc, store = await connect(rpc_url, deployment.chain_id, anchor, anchor_name, metadata_path, state_db)
    indexer = Indexer(
        rpc,
        store,
        plugin.account_sources(deployment),
        deployment.start_block,
        watched=plugin.watched(deployment),
        progress=progress_bar if progress else None,
    )
    read = multicall.reader(rpc, deployment.multicall3)
    return Session(rpc, deployment, store, indexer, read, metadata_path)


async def connect(
    rpc_url: str, chain_id: int, anchor: str, anchor_name: str, metadata_path: Path, state_db: Path | str
) -> tuple[Rpc, Store]:
    """The RPC, checked against the metadata (chain id, code at its anchor contract), and the state
    database bound to that chain and deployment."""
    rpc = Rpc(check_rpc_url(rpc_url))
    try:
        actual = await rpc.chain_id()
        if actual != chain_id:
            raise SettingError(
                f"--rpc-url: chain id {actual} does not match the metadata's {chain_id} ({metadata_path})"
            )
        code = await rpc.request("eth_getCode", [anchor, "latest"])
        if code in (None, "0x", ""):
            raise SettingError(f"--metadata: no contract at {anchor_name} {anchor} on {redact(rpc_url)}")
        store = Store(state_db)
        store.bind(chain_id, anchor)
    except BaseException:
        await rpc.close()
        raise
    return rpc, store


def progress_bar(p: Progress) -> None:
    done = int(p.fraction * 30)
    end = "\n" if p.done_to >= p.to_block else ""
    if sys.stderr.isatty() or end:
        print(
            f"\rindexing blocks {p.from_block}..{p.to_block} [{'#' * done}{'.' * (30 - done)}] "
            f"{p.fraction:4.0%}  {p.accounts} accounts",
            end=end,
            file=sys.stderr,
            flush=True,
        )
