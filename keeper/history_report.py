"""`perp-keeper history` without --json: a table of the events, then totals per liquidator, per market
and per kind (count, notional, rewards, bad debt); with --csv, one row per event.

Totals count notional over liquidations (kinds `position` and `collateral`: a flag or a cancelled
order is not a second notional), rewards over every event that has one, and bad debt over `bad-debt`
events; a bad debt settled in a liquidator's transaction is that liquidator's.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from keeper.events import BAD_DEBT, COLLATERAL, MISSED, POSITION, HistoryEvent, columns

X18 = 10**18


def amount(x18: int | None) -> str:
    """An X18 amount with two decimals and thousands separators ("-" when there is none)."""
    if x18 is None:
        return "-"
    return f"{Decimal(x18) / Decimal(X18):,.2f}"


def short(address: str | None) -> str:
    return "-" if address is None else f"{address[:8]}..{address[-4:]}"


@dataclass
class Total:
    count: int = 0
    notional: int = 0
    rewards: int = 0
    bad_debt: int = 0


def totals(events: Iterable[HistoryEvent]) -> dict[str, dict[str, Total]]:
    """Per liquidator, per market and per kind (missed windows are not events and not counted)."""
    listed = [e for e in events if e.kind != MISSED]
    liquidator_of_tx = {e.tx: e.liquidator for e in listed if e.liquidator is not None}
    out: dict[str, dict[str, Total]] = {"liquidator": {}, "market": {}, "kind": {}}
    for e in listed:
        who = e.liquidator or liquidator_of_tx.get(e.tx) or "-"
        for group, key in (("liquidator", who), ("market", e.market or "-"), ("kind", e.kind)):
            total = out[group].setdefault(key, Total())
            total.count += 1
            if e.kind in (POSITION, COLLATERAL):
                total.notional += e.notional_usd or 0
            total.rewards += e.liquidator_reward or 0
            if e.kind == BAD_DEBT:
                total.bad_debt += e.notional_usd or 0
    return out


def table(events: Sequence[HistoryEvent], with_lateness: bool, out: TextIO) -> None:
    late = f"{'late':>6}" if with_lateness else ""
    out.write(
        f"{'block':>9} {'kind':<16} {'market':<10} {'trader':<14} {'liquidator':<14} "
        f"{'notional USD':>16} {'reward':>12}{late}\n"
    )
    for e in events:
        if e.kind == MISSED:
            note = f"liquidatable, not liquidated: blocks {e.args['from_block']}..{e.args['to_block']}"
            out.write(f"{e.block:>9} {e.kind:<16} {e.market or '-':<10} {short(e.trader):<14} {note}\n")
            continue
        lag = ""
        if with_lateness:
            lag = f"{e.blocks_late:>6}" if e.blocks_late is not None else f"{'':>6}"
        out.write(
            f"{e.block:>9} {e.kind:<16} {e.market or '-':<10} {short(e.trader):<14} "
            f"{short(e.liquidator):<14} {amount(e.notional_usd):>16} {amount(e.liquidator_reward):>12}{lag}\n"
        )
    listed = [e for e in events if e.kind != MISSED]
    missed = len(events) - len(listed)
    out.write(f"\n{len(listed)} events" + (f", {missed} missed windows" if with_lateness else "") + "\n")
    for group, rows in totals(events).items():
        out.write(f"\nper {group}\n")
        out.write(f"{group:<44} {'count':>6} {'notional USD':>18} {'rewards':>14} {'bad debt USD':>14}\n")
        for key, t in sorted(rows.items(), key=lambda kv: (-kv[1].notional, kv[0])):
            out.write(
                f"{key:<44} {t.count:>6} {amount(t.notional):>18} {amount(t.rewards):>14} "
                f"{amount(t.bad_debt):>14}\n"
            )


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns(rows), restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
