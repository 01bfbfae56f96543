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
from keeper.config import SettingError
from keeper.indexer import Indexer, Progress
from keeper.metadata import Deployment, load_metadata
from keeper.multicall import Call, Result
from keeper.rpc import Rpc, redact
from keeper.store import Store
from strategies.perp_v2 import risk
from strategies.perp_v2.scanner import Reader, Scanner
from strategies.perp_v2.views import PARAMETER_CONTRACTS, account_sources

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
    deployment = load_metadata(metadata_path)
    rpc = Rpc(check_rpc_url(rpc_url))
    try:
        chain_id = await rpc.chain_id()
        if chain_id != deployment.chain_id:
            raise SettingError(
                f"--rpc-url: chain id {chain_id} does not match the metadata's {deployment.chain_id} "
                f"({metadata_path})"
            )
        code = await rpc.request("eth_getCode", [deployment.clearing_house, "latest"])
        if code in (None, "0x", ""):
            raise SettingError(
                f"--metadata: no contract at ClearingHouse {deployment.clearing_house} on {redact(rpc_url)}"
            )
        store = Store(state_db)
        store.bind(chain_id, deployment.clearing_house)
    except BaseException:
        await rpc.close()
        raise
    indexer = Indexer(
        rpc,
        store,
        account_sources(deployment),
        deployment.start_block,
        watched=[deployment.address(name) for name in PARAMETER_CONTRACTS],
        progress=_progress_bar if progress else None,
    )

    async def read(calls: Sequence[Call], block: int) -> list[Result]:
        return await multicall.execute(rpc, calls, block, multicall=deployment.multicall3)

    scanner = Scanner(deployment, indexer, read, **({"sweep_blocks": sweep_blocks} if sweep_blocks else {}))
    return Session(rpc, deployment, store, scanner, read)


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
