"""Connecting to a deployment: settings, the RPC checked against the metadata, the state database bound
to that chain, the account index and the view reader. Every protocol opens its session here.

`--rpc-url` may list several endpoints (comma-separated). At start-up a provider that rate-limits or
answers 5xx is waited out (`STARTUP_PATIENCE_SECONDS`, honouring `Retry-After`): only a list none of
whose endpoints can be reached is an operator mistake (exit 2). Every endpoint that answers must serve
the metadata's chain; one that does not answer yet is used once a survey finds it on that chain.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from keeper import config, multicall
from keeper.endpoints import parse_urls, verify_chain
from keeper.errors import RpcError, SettingError
from keeper.indexer import Indexer, Progress
from keeper.protocol import ProtocolPlugin, Session
from keeper.rpc import Rpc, RpcBusyError, is_transient, redact
from keeper.store import Store
from keeper.store_pg import open_store

log = logging.getLogger(__name__)
DEFAULT_STATE_DB = Path("state/keeper.sqlite")
STARTUP_PATIENCE_SECONDS = 60.0
DEFAULT_RPC_TIMEOUT_SECONDS = 30


def connection_settings(args: Any) -> tuple[str, Path, Path | str]:
    """--rpc-url / --metadata / --state-db, else KEEPER_RPC_URL / KEEPER_METADATA / KEEPER_STATE_DB.
    The state is --database-url / KEEPER_DATABASE_URL (a postgresql:// URL, a str) when one is set."""
    rpc_url = args.rpc_url or os.environ.get("KEEPER_RPC_URL") or ""
    metadata = args.metadata or os.environ.get("KEEPER_METADATA")
    if not metadata:
        raise SettingError("--metadata / KEEPER_METADATA is required")
    state_db = getattr(args, "state_db", None) or os.environ.get("KEEPER_STATE_DB") or DEFAULT_STATE_DB
    url = config.database_url(getattr(args, "database_url", None))
    return check_rpc_url(rpc_url), Path(metadata), url or Path(state_db)


def check_rpc_url(url: str | None, setting: str = "--rpc-url / KEEPER_RPC_URL") -> str:
    """One http(s) URL or a comma-separated list of them, blanks around the commas dropped."""
    return ",".join(parse_urls(url, setting))


def rpc_timeout(env: Mapping[str, str] | None = None) -> float:
    """KEEPER_RPC_TIMEOUT_SECONDS: how long one request may take before it fails over (default 30)."""
    env = os.environ if env is None else env
    seconds = config.integer(env, "KEEPER_RPC_TIMEOUT_SECONDS", DEFAULT_RPC_TIMEOUT_SECONDS, low=1, high=600)
    return float(seconds or DEFAULT_RPC_TIMEOUT_SECONDS)


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
    rpc = Rpc(check_rpc_url(rpc_url), timeout=rpc_timeout())
    try:
        await check_chain(rpc, chain_id, metadata_path)
        code = await patiently(lambda: rpc.request("eth_getCode", [anchor, "latest"]))
        if code in (None, "0x", ""):
            raise SettingError(f"--metadata: no contract at {anchor_name} {anchor} on {redact(rpc_url)}")
        store = open_store(state_db)
        store.bind(chain_id, anchor)
    except BaseException:
        await rpc.close()
        raise
    return rpc, store


async def answering_chain_id(rpc: Rpc, patience: float = STARTUP_PATIENCE_SECONDS) -> int:
    """The chain id, once some endpoint answers (`patiently`)."""
    return int(await patiently(rpc.chain_id, patience))


async def patiently(ask: Callable[[], Awaitable[Any]], patience: float = STARTUP_PATIENCE_SECONDS) -> Any:
    """A start-up read, once some endpoint answers. A busy provider (HTTP 429/5xx, rate-limit codes,
    transient errors) is waited out for up to `patience` seconds, then `RpcBusyError` (exit 1); an
    endpoint list none of which can be reached raises `RpcUnavailableError` (exit 2) after the retries."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return await ask()
        except RpcError as exc:
            busy = isinstance(exc, RpcBusyError) or is_transient(exc)
            remaining = deadline - time.monotonic()
            if not busy or remaining <= 0:
                raise
            log.warning("start-up: %s; waiting up to %.0f s more", exc.message, remaining)


async def check_chain(rpc: Rpc, chain_id: int, metadata_path: Path) -> None:
    """Every endpoint that answers serves the metadata's chain; from now on reads go only to endpoints
    found on it (one that did not answer is used once a survey finds it there)."""
    actual = await answering_chain_id(rpc)
    several = len(rpc.endpoints) > 1
    sightings = await rpc.survey() if several else []
    for seen in sightings:
        if seen.chain_id is not None and seen.chain_id != chain_id:
            actual = seen.chain_id
            where = f" at {seen.name}"
            break
    else:
        where = ""
    if actual != chain_id:
        raise SettingError(
            f"--rpc-url: chain id {actual}{where} does not match the metadata's {chain_id} ({metadata_path})"
        )
    rpc.expected_chain_id = chain_id
    if several:
        verify_chain(rpc.endpoints, sightings, chain_id)
    else:
        rpc.endpoints[0].chain_id = chain_id
    for seen in sightings:
        if seen.error:
            log.warning("RPC %s does not answer (%s); it is used once it does", seen.name, seen.error)


PROGRESS_MIN_BLOCKS = 1_000  # a head's few blocks are not "indexing": only a backfill shows progress


def progress_bar(p: Progress) -> None:
    if p.to_block - p.from_block < PROGRESS_MIN_BLOCKS:
        return
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
