"""Compensation waterfalls: who gets how much of a fund, over exact integers (pure; no I/O).

Claims are account values in X18 USD; only positive ones claim. Claimants are ranked by value,
smallest first (ties by address), and every policy pays out exactly min(fund, Σ claims), never more
than a claim:

* `pro-rata`: each gets fund x value / Σ values, rounded down; the wei left by rounding go one each
  to the largest remainders (ties to the better rank) - so the sum is exact;
* `smallest-first`: pay each in full from the smallest value up while the fund lasts; the first one
  that does not fit gets what is left, the rest nothing;
* `threshold:X`: everyone is first paid up to X (pro rata on those capped claims if the fund cannot
  cover them); what is left is shared pro rata on what remains of the claims above X.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from keeper.config import X18, usd_amount
from keeper.errors import SettingError

POLICIES = ("pro-rata", "smallest-first", "threshold:X")


@dataclass(frozen=True)
class Policy:
    name: str  # pro-rata | smallest-first | threshold
    threshold: int | None = None  # X18 USD

    def __str__(self) -> str:
        if self.threshold is None:
            return self.name
        return f"threshold:{Decimal(self.threshold) / Decimal(X18)}"


@dataclass(frozen=True)
class Claim:
    account: str
    value: int  # X18 USD; <= 0 claims nothing
    block: int  # where it was valued


@dataclass(frozen=True)
class Payment:
    rank: int | None  # 1 = the smallest positive claim; None for accounts without a claim
    account: str
    block: int
    value: int
    paid: int
    shortfall: int

    def row(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "account": self.account,
            "block": self.block,
            "value": self.value,
            "paid": self.paid,
            "shortfall": self.shortfall,
        }


def parse_policy(text: str) -> Policy:
    if text in ("pro-rata", "smallest-first"):
        return Policy(text)
    if text.startswith("threshold:"):
        return Policy("threshold", usd_amount(text.removeprefix("threshold:"), "--policy threshold:X"))
    raise SettingError(f"--policy: expected one of {', '.join(POLICIES)}, got {text!r}")


def pro_rata(claims: Sequence[int], fund: int) -> list[int]:
    """fund shared in proportion to `claims` (in rank order), exactly min(fund, Σ claims) in all."""
    total = sum(claims)
    if fund >= total:
        return list(claims)
    shares = [fund * c // total for c in claims]
    left = fund - sum(shares)
    by_remainder = sorted(range(len(claims)), key=lambda i: (-(fund * claims[i] % total), i))
    for i in by_remainder[:left]:
        shares[i] += 1
    return shares


def smallest_first(claims: Sequence[int], fund: int) -> list[int]:
    """`claims` in rank order (smallest first), each paid in full while the fund lasts."""
    paid = []
    for claim in claims:
        pay = min(claim, fund)
        paid.append(pay)
        fund -= pay
    return paid


def threshold(claims: Sequence[int], fund: int, cap: int) -> list[int]:
    first = [min(c, cap) for c in claims]
    if fund <= sum(first):
        return pro_rata(first, fund)
    rest = pro_rata([c - f for c, f in zip(claims, first, strict=True)], fund - sum(first))
    return [f + r for f, r in zip(first, rest, strict=True)]


def waterfall(claims: Sequence[Claim], fund: int, policy: Policy) -> list[Payment]:
    """Rank the positive claims smallest first and pay them under `policy`; accounts without a claim
    follow, unranked and unpaid."""
    ranked = sorted((c for c in claims if c.value > 0), key=lambda c: (c.value, c.account.lower()))
    values = [c.value for c in ranked]
    if policy.name == "pro-rata":
        paid = pro_rata(values, fund)
    elif policy.name == "smallest-first":
        paid = smallest_first(values, fund)
    else:
        assert policy.threshold is not None
        paid = threshold(values, fund, policy.threshold)
    out = [
        Payment(i + 1, c.account, c.block, c.value, p, c.value - p)
        for i, (c, p) in enumerate(zip(ranked, paid, strict=True))
    ]
    rest = sorted((c for c in claims if c.value <= 0), key=lambda c: (-c.value, c.account.lower()))
    return out + [Payment(None, c.account, c.block, c.value, 0, 0) for c in rest]


def totals(payments: Sequence[Payment], fund: int, excluded: int) -> dict[str, int]:
    claims = sum(p.value for p in payments if p.rank is not None)
    paid = sum(p.paid for p in payments)
    return {
        "accounts": len(payments),
        "claimants": sum(1 for p in payments if p.rank is not None),
        "excluded": excluded,
        "claims": claims,
        "paid": paid,
        "shortfall": claims - paid,
        "fund_left": fund - paid,
    }


def inputs_sha256(inputs: Mapping[str, Any]) -> str:
    """sha256 of the inputs as canonical JSON (sorted keys, no spaces, amounts as X18 integers,
    addresses lower case and sorted): two people with the same inputs get the same hash."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
