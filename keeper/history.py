"""`perp-keeper history`: every liquidation-related event of a block range, oldest first.

The protocol names its events and decodes them (`keeper.protocol.History`); this reads their logs
(adaptive ranges, cached in the state database: `keeper/logcache.py`), stamps each with its block's
time, optionally measures lateness and missed windows (`keeper/lateness.py`) and writes a JSON array,
a CSV file or a table with totals per liquidator, market and kind (`keeper/history_report.py`), and a
picture (`keeper/plot.py`).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from keeper import history_report, lateness, registry
from keeper.config import integer
from keeper.errors import RpcError, SettingError
from keeper.events import HistoryEvent
from keeper.logcache import LogCache
from keeper.protocol import History, ProtocolPlugin, Session
from keeper.session import connection_settings, open_session

MAX_PROBES = 2_000  # default missed-window probes over a range (KEEPER_LATENESS_STEP overrides)


def history_of(plugin: ProtocolPlugin, session: Session) -> History:
    found = plugin.history(session)
    if found is None:
        raise SettingError(f"--metadata: {plugin.title} offers no liquidation history")
    return found


def block_range(first: int | None, last: int | None, start: int, head: int) -> tuple[int, int]:
    """--from-block (default: the deployment's first block) .. --to-block (default: the head)."""
    first = start if first is None else first
    last = head if last is None else last
    if last > head:
        raise SettingError(f"--to-block: {last} is beyond the chain's head {head}")
    if first > last:
        raise SettingError(f"--from-block: {first} is after --to-block {last}")
    return first, last


def lateness_step(first: int, last: int, env: dict[str, str] | None = None) -> int:
    """KEEPER_LATENESS_STEP, else every block up to 2,000 probes, else evenly spaced 2,000 probes."""
    default = max(1, math.ceil((last - first + 1) / MAX_PROBES))
    step = integer(os.environ if env is None else env, "KEEPER_LATENESS_STEP", default, low=1)
    assert step is not None
    return step


async def collect(
    session: Session, history: History, protocol: str, first: int, last: int, with_lateness: bool
) -> list[HistoryEvent]:
    """The range's events (and, with lateness, the missed windows), oldest first, time-stamped."""
    head = await session.rpc.block_number()
    cache = LogCache(session.rpc, session.store.db)
    logs = await cache.logs(history.queries(), first, last, head)
    events = sorted(await history.decode(logs), key=HistoryEvent.order)
    if with_lateness:
        windows = await _lateness(session, history, protocol, events, first, last)
        _name_markets(windows, events)
        events = sorted([*events, *windows], key=HistoryEvent.order)
    stamps = await cache.timestamps([e.block for e in events], head)
    for e in events:
        e.timestamp = stamps[e.block]
    return events


async def _lateness(
    session: Session, history: History, protocol: str, events: list[HistoryEvent], first: int, last: int
) -> list[HistoryEvent]:
    oracle = lateness.Oracle(history)
    step = lateness_step(first, last)
    print(f"lateness: probing every {step} block(s) (KEEPER_LATENESS_STEP)", file=sys.stderr)
    try:
        runs = await lateness.liquidatable_runs(oracle, await history.subjects(), first, last, step)
        await lateness.first_liquidatable(oracle, events, runs, first, session.deployment.start_block)
    except RpcError as exc:
        raise SettingError(f"--lateness needs an archive node (views at past blocks): {exc}") from None
    return lateness.missed_windows(protocol, runs, events)


def _name_markets(windows: list[HistoryEvent], events: list[HistoryEvent]) -> None:
    names = {e.subject: e.market for e in events if e.subject is not None}
    for w in windows:
        w.market = None if w.subject is None else names.get(w.subject)


async def main(args: Any, out: TextIO | None = None) -> int:
    rpc_url, metadata, state_db = connection_settings(args)
    plugin = registry.described_by(metadata)
    if args.plot is not None and Path(args.plot).suffix.lower() not in (".html", ".svg"):
        raise SettingError(
            f"--plot: write a .html or .svg file (no plotting library needed), got {args.plot}"
        )
    session = await open_session(plugin, rpc_url, metadata, state_db)
    try:
        history = history_of(plugin, session)
        head = await session.rpc.block_number()
        first, last = block_range(args.from_block, args.to_block, session.deployment.start_block, head)
        events = await collect(session, history, plugin.name, first, last, bool(args.lateness))
    finally:
        await session.close()
    write(events, args, out or sys.stdout, first, last)
    return 0


def write(events: list[HistoryEvent], args: Any, out: TextIO, first: int, last: int) -> None:
    rows = [e.row(bool(args.lateness)) for e in events]
    if args.json:
        json.dump(rows, out, indent=1)
        out.write("\n")
    elif args.csv is not None:
        history_report.write_csv(rows, Path(args.csv))
        print(f"wrote {len(rows)} rows to {args.csv}", file=sys.stderr)
    else:
        history_report.table(events, bool(args.lateness), out)
    if args.plot is not None:
        from keeper import plot

        path = Path(args.plot)
        path.write_text(plot.render(events, first, last, svg_only=path.suffix.lower() == ".svg"))
        print(f"wrote {path}", file=sys.stderr)
