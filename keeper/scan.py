"""`perp-keeper scan`: connect, index, read every account at one block, and report what is liquidatable."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from eth_utils.address import to_checksum_address

from keeper import multicall
from keeper.errors import SettingError
from keeper.indexer import Indexer, Progress
from keeper.metadata import (
    PERP_V2,
    SYNTHETIX_PERPS_V2,
    Deployment,
    SynthetixDeployment,
    load_metadata,
    load_synthetix_metadata,
    metadata_protocol,
)
from keeper.multicall import Call, Result
from keeper.rpc import Rpc, redact
from keeper.store import Store
from strategies.perp_v2 import risk
from strategies.perp_v2.scanner import Reader, Scanner
from strategies.perp_v2.views import PARAMETER_CONTRACTS, account_sources
from strategies.synthetix_perps_v2.strategy import account_sources as synthetix_sources

DEFAULT_STATE_DB = Path("state/keeper.sqlite")


@dataclass
class Session:
    rpc: Rpc
    deployment: Deployment
    store: Store
    scanner: Scanner
    read: Reader

    async def close(self) -> None:
        self.store.close()
        await self.rpc.close()


def connection_settings(args: Any) -> tuple[str, Path, Path]:
    """--rpc-url / --metadata / --state-db, else KEEPER_RPC_URL / KEEPER_METADATA / KEEPER_STATE_DB."""
    rpc_url = args.rpc_url or os.environ.get("KEEPER_RPC_URL") or ""
    metadata = args.metadata or os.environ.get("KEEPER_METADATA")
    if not metadata:
        raise SettingError("--metadata / KEEPER_METADATA is required")
    state_db = args.state_db or os.environ.get("KEEPER_STATE_DB") or DEFAULT_STATE_DB
    return check_rpc_url(rpc_url), Path(metadata), Path(state_db)


def check_rpc_url(url: str | None, setting: str = "--rpc-url / KEEPER_RPC_URL") -> str:
    if not url:
        raise SettingError(f"{setting} is required")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingError(f"{setting}: expected an http(s):// URL, got {parts.scheme or 'no'} scheme")
    return url


async def open_session(
    rpc_url: str,
    metadata_path: Path,
    state_db: Path | str,
    *,
    progress: bool = False,
    sweep_blocks: int | None = None,
) -> Session:
    """Check the inputs against the chain (chain id, code at the ClearingHouse) and wire a scanner."""
    if metadata_protocol(metadata_path) != PERP_V2:
        raise SettingError(
            f"--metadata: {metadata_path} describes a {SYNTHETIX_PERPS_V2} deployment; this command reads "
            f"Perp v2 (for Synthetix: perp-keeper run [--dry-run] --protocol {SYNTHETIX_PERPS_V2})"
        )
    deployment = load_metadata(metadata_path)
    rpc, store = await connect(
        rpc_url, deployment.chain_id, deployment.clearing_house, "ClearingHouse", metadata_path, state_db
    )
    indexer = Indexer(
        rpc,
        store,
        account_sources(deployment),
        deployment.start_block,
        watched=[deployment.address(name) for name in PARAMETER_CONTRACTS],
        progress=_progress_bar if progress else None,
    )
    read = multicall_reader(rpc, deployment.multicall3)

    scanner = Scanner(deployment, indexer, read, **({"sweep_blocks": sweep_blocks} if sweep_blocks else {}))
    return Session(rpc, deployment, store, scanner, read)


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


@dataclass
class SynthetixSession:
    rpc: Rpc
    deployment: SynthetixDeployment
    store: Store
    indexer: Indexer
    read: Reader

    async def close(self) -> None:
        self.store.close()
        await self.rpc.close()


async def open_synthetix_session(
    rpc_url: str, metadata_path: Path, state_db: Path | str, *, progress: bool = False
) -> SynthetixSession:
    """Synthetix Perps V2: the same checks, one log indexer over the market proxies."""
    deployment = load_synthetix_metadata(metadata_path)
    rpc, store = await connect(
        rpc_url, deployment.chain_id, deployment.manager, "FuturesMarketManager", metadata_path, state_db
    )
    indexer = Indexer(
        rpc,
        store,
        synthetix_sources(deployment),
        deployment.start_block,
        watched=[deployment.settings],
        progress=_progress_bar if progress else None,
    )
    read = multicall_reader(rpc, deployment.multicall3)

    return SynthetixSession(rpc, deployment, store, indexer, read)


def multicall_reader(rpc: Rpc, multicall3: str) -> Reader:
    """Views at a pinned block, batched through the deployment's Multicall3."""

    async def read(calls: Sequence[Call], block: int) -> list[Result]:
        return await multicall.execute(rpc, calls, block, multicall=multicall3)

    return read


def _progress_bar(p: Progress) -> None:
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


async def report(session: Session, as_json: bool, out: TextIO) -> list[risk.Opportunity]:
    """One full exact scan, written as the table or the JSON array; returns the opportunities."""
    await session.scanner.full_scan()
    snapshot, params = session.scanner.snapshot, session.scanner.params
    assert snapshot is not None
    assert params is not None
    found = session.scanner.opportunities()
    if as_json:
        write_json(found, snapshot.block, out)
    else:
        write_table(snapshot, params, found, symbols(session.deployment), out)
    return found


def symbols(deployment: Deployment) -> dict[str, str]:
    """Market and collateral token addresses (lower case) to their symbols, for tables."""
    names = {m.base_token.lower(): m.base_symbol for m in deployment.markets}
    names.update({c.address.lower(): c.symbol for c in deployment.collaterals})
    return names


# --- output ------------------------------------------------------------------------------------


def usd(x18: int) -> float:
    """An X18 USD amount as a JSON number (the exact integer is given beside it)."""
    return float(Decimal(x18) / Decimal(10**18))


def opportunity_json(op: risk.Opportunity, block: int) -> dict[str, Any]:
    return {
        "account": to_checksum_address(op.account),
        "kind": op.kind,
        "base_token": to_checksum_address(op.base_token) if op.base_token else None,
        "collateral_token": to_checksum_address(op.collateral_token) if op.collateral_token else None,
        "notional": usd(op.notional),
        "account_value": usd(op.account_value),
        "margin_requirement": usd(op.margin_requirement),
        "liquidatable": op.liquidatable,
        "size": str(op.size),
        "cancel_markets": [to_checksum_address(m) for m in op.cancel_markets],
        "notional_x18": str(op.notional),
        "account_value_x18": str(op.account_value),
        "margin_requirement_x18": str(op.margin_requirement),
        "block": block,
    }


def write_json(opportunities: Sequence[risk.Opportunity], block: int, out: TextIO) -> None:
    json.dump([opportunity_json(op, block) for op in opportunities], out, indent=1)
    out.write("\n")


def write_table(
    snapshot: risk.Snapshot,
    params: risk.Params,
    opportunities: Sequence[risk.Opportunity],
    symbols: dict[str, str],
    out: TextIO,
) -> None:
    """Accounts liquidatable or at risk (margin ratio under the initial-margin ratio), riskiest first."""
    kinds: dict[str, list[str]] = {}
    for op in opportunities:
        label = op.kind if op.liquidatable else f"{op.kind} (cancel only)"
        if label not in kinds.setdefault(op.account, []):
            kinds[op.account].append(label)
    rows = []
    for account in snapshot.accounts.values():
        ratio = risk.margin_ratio(account, params)
        at_risk = ratio is not None and ratio < params.im_ratio
        if not (at_risk or account.address in kinds):
            continue
        positions = " ".join(
            f"{symbols.get(p.base_token, p.base_token[:10])}:{Decimal(p.total_size) / Decimal(10**18):+.4f}"
            for p in account.positions
        )
        rows.append((ratio if ratio is not None else 10**9, account, positions))
    rows.sort(key=lambda r: (r[0], r[1].address.lower()))
    print(
        f"{'account':<42} {'margin':>8} {'account value':>15} {'requirement':>13}  {'positions':<34} kind",
        file=out,
    )
    for ratio, account, positions in rows:
        margin = f"{Decimal(ratio) / 10_000:7.2f}%" if ratio != 10**9 else f"{'-':>8}"
        print(
            f"{to_checksum_address(account.address):<42} {margin} {usd(account.account_value):15,.2f} "
            f"{usd(account.margin_requirement):13,.2f}  {positions:<34} "
            f"{', '.join(kinds.get(account.address, ['at risk']))}",
            file=out,
        )
    counts = {k: sum(1 for op in opportunities if op.kind == k and op.liquidatable) for k in risk.KIND_ORDER}
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    print(
        f"\nblock {snapshot.block}: {len(snapshot.accounts)} accounts read, {len(rows)} shown; "
        f"liquidatable: {summary}",
        file=out,
    )
