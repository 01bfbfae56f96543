"""`history --plot`: a self-contained HTML page (or one SVG) of a liquidation history, no dependency.

Three charts: liquidations over the range (stacked by kind; per block buckets, or per hour when the
range spans more than a day), notional by market, and rewards and bad debt by market.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from decimal import Decimal

from keeper.events import BAD_DEBT, COLLATERAL, KINDS, MISSED, POSITION, HistoryEvent

X18 = 10**18
COLOURS = {
    "position": "#d62728",
    "collateral": "#ff7f0e",
    "bad-debt": "#7f7f7f",
    "orders-cancelled": "#1f77b4",
    "flag": "#9467bd",
}
WIDTH, HEIGHT, PAD = 760, 260, 48
BUCKETS = 60
DAY = 86_400


def usd(x18: int) -> str:
    return f"{Decimal(x18) / Decimal(X18):,.0f}"


def _svg(title: str, body: str, height: int = HEIGHT) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="11">'
        f'<text x="{PAD}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>{body}</svg>'
    )


def timeline(events: Sequence[HistoryEvent], first: int, last: int) -> str:
    """Counts per bucket, stacked by kind: hours when the events span more than a day, else blocks."""
    listed = [e for e in events if e.kind != MISSED]
    stamps = [e.timestamp for e in listed]
    by_hour = bool(stamps) and max(stamps) - min(stamps) > DAY
    if by_hour:
        origin, width, unit = min(stamps) // 3600 * 3600, 3600, "hour"
        count = (max(stamps) - origin) // 3600 + 1
        key = [(e.timestamp - origin) // 3600 for e in listed]
    else:
        width = max(1, math.ceil((last - first + 1) / BUCKETS))
        origin, unit, count = first, f"{width} block(s)", (last - first) // width + 1
        key = [(e.block - first) // width for e in listed]
    stacks = [dict.fromkeys(KINDS, 0) for _ in range(count)]
    for e, k in zip(listed, key, strict=True):
        stacks[k][e.kind] += 1
    top = max([sum(s.values()) for s in stacks] + [1])
    plot_w, plot_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    bar = plot_w / count
    parts = []
    for i, stack in enumerate(stacks):
        y: float = HEIGHT - PAD
        for kind, n in stack.items():
            if n:
                h = plot_h * n / top
                y -= h
                label = f"{n} {kind} in bucket {i}"
                parts.append(
                    f'<rect x="{PAD + i * bar:.1f}" y="{y:.1f}" width="{max(bar - 1, 0.5):.1f}" '
                    f'height="{h:.1f}" fill="{COLOURS[kind]}"><title>{label}</title></rect>'
                )
    axis = f"{'hours from ' + str(origin) if by_hour else f'blocks {first}..{last}'}, one bar per {unit}"
    parts.append(f'<text x="{PAD}" y="{HEIGHT - 12}">{html.escape(axis)}; highest bar {top}</text>')
    legend = "".join(
        f'<rect x="{PAD + 110 * i}" y="26" width="10" height="10" fill="{COLOURS[k]}"/>'
        f'<text x="{PAD + 110 * i + 14}" y="35">{k}</text>'
        for i, k in enumerate(KINDS)
    )
    return _svg("Liquidations over the range", legend + "".join(parts))


def by_market(events: Sequence[HistoryEvent]) -> str:
    """Notional liquidated, rewards and bad debt per market, as horizontal bars."""
    rows: dict[str, list[int]] = {}
    for e in events:
        row = rows.setdefault(e.market or "-", [0, 0, 0])
        if e.kind in (POSITION, COLLATERAL):
            row[0] += e.notional_usd or 0
        if e.kind != MISSED:
            row[1] += e.liquidator_reward or 0
        if e.kind == BAD_DEBT:
            row[2] += e.notional_usd or 0
    names = sorted(rows, key=lambda m: -rows[m][0])
    height = 2 * PAD + 3 * 16 * max(1, len(names))
    parts = []
    for series, (label, colour) in enumerate(
        (("notional USD", "#d62728"), ("rewards", "#2ca02c"), ("bad debt USD", "#7f7f7f"))
    ):
        top = max([rows[m][series] for m in names] + [1])
        for i, market in enumerate(names):
            y = PAD + (3 * i + series) * 16
            w = (WIDTH - 3 * PAD - 120) * rows[market][series] / top
            parts.append(
                f'<text x="{PAD}" y="{y + 11}">{html.escape(market)} {label}</text>'
                f'<rect x="{PAD + 170}" y="{y}" width="{w:.1f}" height="12" fill="{colour}"/>'
                f'<text x="{PAD + 174 + w:.1f}" y="{y + 11}">{usd(rows[market][series])}</text>'
            )
    return _svg("Notional, rewards and bad debt by market", "".join(parts), height)


def render(events: Sequence[HistoryEvent], first: int, last: int, svg_only: bool = False) -> str:
    charts = [timeline(events, first, last), by_market(events)]
    if svg_only:  # one SVG: the charts one under the other
        heights = [int(c.split('height="', 1)[1].split('"', 1)[0]) for c in charts]
        inner = "".join(c.replace("<svg ", f'<svg y="{sum(heights[:i])}" ', 1) for i, c in enumerate(charts))
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{sum(heights)}">{inner}</svg>\n'
        )
    listed = sum(1 for e in events if e.kind != MISSED)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>perp-keeper history</title></head>"
        f"<body><h1>Liquidations, blocks {first}..{last}</h1><p>{listed} events</p>"
        + "".join(f"<div>{c}</div>" for c in charts)
        + "</body></html>\n"
    )
