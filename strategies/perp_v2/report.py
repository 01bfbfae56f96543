"""`perp-keeper scan` for Perp v2: one full exact scan written as a table of liquidatable and at-risk
accounts, or as a JSON array of opportunities in execution order (the README documents its fields)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, TextIO

from eth_utils.address import to_checksum_address

from strategies.perp_v2 import risk
from strategies.perp_v2.metadata import Deployment
from strategies.perp_v2.scanner import Scanner


async def report(scanner: Scanner, as_json: bool, out: TextIO) -> list[risk.Opportunity]:
    """One full exact scan, written as the table or the JSON array; returns the opportunities."""
    await scanner.full_scan()
    snapshot, params = scanner.snapshot, scanner.params
    assert snapshot is not None
    assert params is not None
    found = scanner.opportunities()
    if as_json:
        write_json(found, snapshot.block, out)
    else:
        write_table(snapshot, params, found, symbols(scanner.deployment), out)
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
