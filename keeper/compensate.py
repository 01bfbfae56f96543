"""`perp-keeper compensation`: value accounts at a block and share a fund among them under a policy.

Claimants: the accounts of `--accounts FILE` (one address a line, `#` comments; or a JSON array),
else every account the index knows, else (`--liquidated-between A B`) the accounts liquidated in
blocks A..B (a position or collateral liquidation), each valued at the block before its first one
there (the flash-crash case). `--exclude FILE` leaves addresses out. Values come from the protocol
(`History.values`); the waterfall is `keeper/compensation.py`.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from eth_abi.exceptions import DecodingError
from eth_utils.address import is_address, to_checksum_address

from keeper import compensation, registry
from keeper.compensation import Claim, Payment
from keeper.config import usd_amount
from keeper.errors import SettingError
from keeper.events import COLLATERAL, POSITION
from keeper.history import collect, history_of
from keeper.history_report import amount
from keeper.protocol import History, Session
from keeper.session import connection_settings, open_session

LIQUIDATIONS = (POSITION, COLLATERAL)


def read_addresses(path: Path, setting: str) -> list[str]:
    """Addresses from a file: a JSON array, or one a line (blank lines and # comments ignored)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingError(f"{setting}: {path} is not a JSON array: {exc.msg}") from None
        lines = [(i + 1, str(item)) for i, item in enumerate(items)]
    else:
        lines = [(n, line.split("#", 1)[0].strip()) for n, line in enumerate(text.splitlines(), start=1)]
    out = []
    for n, item in lines:
        if not item:
            continue
        if not is_address(item):
            raise SettingError(f"{setting}: {path} entry {n} is not an address: {item[:60]!r}")
        out.append(str(to_checksum_address(item)))
    return sorted(set(out), key=str.lower)


async def claimants(
    session: Session, history: History, protocol: str, args: Any, head: int
) -> dict[str, int]:
    """account -> the block it is valued at."""
    wanted = read_addresses(Path(args.accounts), "--accounts") if args.accounts else None
    if args.liquidated_between:
        first, last = args.liquidated_between
        if not 0 <= first <= last <= head:
            raise SettingError(
                f"--liquidated-between: expected A <= B <= the head {head}, got {first} {last}"
            )
        events = await collect(session, history, protocol, first, last, False)
        found: dict[str, int] = {}
        for e in events:
            if e.kind in LIQUIDATIONS:
                found.setdefault(e.trader, e.block - 1)
        return {a: b for a, b in found.items() if wanted is None or a in wanted}
    if args.block is None:
        raise SettingError("--block N (or --liquidated-between A B) is required")
    if not 0 <= args.block <= head:
        raise SettingError(f"--block: {args.block} is beyond the chain's head {head}")
    if wanted is None:
        wanted = sorted({account for account, _ in await history.subjects()}, key=str.lower)
    return dict.fromkeys(wanted, args.block)


async def value_claims(history: History, blocks: dict[str, int], price: str) -> list[Claim]:
    by_block: dict[int, list[str]] = {}
    for account, block in blocks.items():
        by_block.setdefault(block, []).append(account)
    claims = []
    for block, accounts in sorted(by_block.items()):
        try:
            values = await history.values(accounts, block, price)
        except DecodingError:
            raise SettingError(f"--block: no Multicall3 at block {block} yet: choose a later block") from None
        claims += [Claim(a, v, block) for a, v in zip(accounts, values, strict=True)]
    return claims


async def main(args: Any, out: TextIO | None = None) -> int:
    rpc_url, metadata, state_db = connection_settings(args)
    plugin = registry.described_by(metadata)
    fund = usd_amount(args.fund, "--fund")
    policy = compensation.parse_policy(args.policy)
    excluded = set(read_addresses(Path(args.exclude), "--exclude")) if args.exclude else set()
    session = await open_session(plugin, rpc_url, metadata, state_db)
    try:
        history = history_of(plugin, session)
        head = await session.rpc.block_number()
        blocks = await claimants(session, history, plugin.name, args, head)
        left_out = [a for a in blocks if a in excluded]
        for account in left_out:
            del blocks[account]
        claims = await value_claims(history, blocks, args.price)
        anchor = session.deployment.anchor[1]
        chain_id = session.deployment.chain_id
    finally:
        await session.close()
    payments = compensation.waterfall(claims, fund, policy)
    inputs = {
        "protocol": plugin.name,
        "chain_id": chain_id,
        "deployment": anchor.lower(),
        "block": args.block if not args.liquidated_between else None,
        "liquidated_between": list(args.liquidated_between) if args.liquidated_between else None,
        "policy": str(policy),
        "price": args.price,
        "fund": str(fund),
        "exclusions": sorted(a.lower() for a in excluded),
        "accounts": sorted(a.lower() for a in blocks),
    }
    report = {
        **{k: inputs[k] for k in ("protocol", "block", "liquidated_between", "policy", "price")},
        "fund": fund,
        "inputs_sha256": compensation.inputs_sha256(inputs),
        "rows": [p.row() for p in payments],
        "totals": compensation.totals(payments, fund, len(left_out)),
    }
    write(report, payments, args, out or sys.stdout)
    return 0


def write(report: dict[str, Any], payments: Sequence[Payment], args: Any, out: TextIO) -> None:
    if args.json:
        json.dump(report, out, indent=1)
        out.write("\n")
        return
    if args.csv is not None:
        with Path(args.csv).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["rank", "account", "block", "value", "paid", "shortfall"])
            for p in payments:
                writer.writerow(
                    ["" if p.rank is None else p.rank, p.account, p.block, p.value, p.paid, p.shortfall]
                )
            t = report["totals"]
            writer.writerow(["total", "", "", t["claims"], t["paid"], t["shortfall"]])
            writer.writerow(["inputs_sha256", report["inputs_sha256"], "", "", "", ""])
        print(f"wrote {len(payments)} rows to {args.csv}", file=sys.stderr)
        return
    out.write(
        f"{'rank':>5} {'account':<42} {'block':>9} {'value USD':>16} {'paid USD':>16} {'shortfall':>16}\n"
    )
    for p in payments:
        rank = "-" if p.rank is None else str(p.rank)
        out.write(
            f"{rank:>5} {p.account:<42} {p.block:>9} {amount(p.value):>16} {amount(p.paid):>16} "
            f"{amount(p.shortfall):>16}\n"
        )
    t = report["totals"]
    out.write(
        f"\n{t['claimants']} claimants of {t['accounts']} accounts ({t['excluded']} excluded); "
        f"claims {amount(t['claims'])}, paid {amount(t['paid'])} of the fund {amount(report['fund'])}, "
        f"shortfall {amount(t['shortfall'])}\npolicy {report['policy']}, price {report['price']}; "
        f"inputs sha256 {report['inputs_sha256']}\n"
    )
