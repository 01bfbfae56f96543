"""Compensation: the waterfalls' arithmetic (property-tested over random claims and funds), and each
policy on the devnet reproducing a golden file whose numbers the test checks by hand."""

from __future__ import annotations

import json
import os
import random
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from devnet import up
from devnet.chain import DevChain
from keeper import compensation
from keeper.compensation import Claim, Policy, pro_rata, smallest_first, threshold, waterfall
from tests.helpers import cli_output

GOLDEN = Path(__file__).parent / "golden"
X18 = 10**18


# --- pure arithmetic ------------------------------------------------------------------------------
def test_hand_examples() -> None:
    assert pro_rata([1, 1, 1], 2) == [1, 1, 0]  # the wei left by rounding go to the better rank
    assert pro_rata([10, 30], 20) == [5, 15]
    assert pro_rata([10, 30], 100) == [10, 30]  # never more than a claim
    assert pro_rata([3, 7], 5) == [2, 3]  # 1.5 / 3.5: equal remainders, the better rank first
    assert pro_rata([2, 7], 5) == [1, 4]  # 1.11 / 3.89: the larger remainder first
    assert smallest_first([10, 20, 30], 35) == [10, 20, 5]
    assert threshold([10, 20, 30], 35, 10) == [10, 10 + 2, 10 + 3]  # 30 up to the cap, 5 pro rata on 0/10/20
    assert threshold([10, 20, 30], 15, 10) == [5, 5, 5]  # the capped claims pro rata
    assert compensation.parse_policy("threshold:2.5") == Policy("threshold", 2_500_000_000_000_000_000)


def random_case(rng: random.Random) -> tuple[list[int], int]:
    n = rng.randint(1, 40)
    scale = rng.choice([1, 10**6, X18, 10**24])
    claims = sorted(rng.randint(1, 10 * scale) for _ in range(n))
    total = sum(claims)
    fund = rng.choice(
        [0, 1, rng.randint(0, total), total, total + rng.randint(1, scale), rng.randint(0, 3 * n)]
    )
    return claims, fund


@pytest.mark.parametrize("policy", ["pro-rata", "smallest-first", "threshold"])
def test_every_waterfall_pays_exactly_the_fund_or_all_claims_and_never_more_than_a_claim(policy: str) -> None:
    rng = random.Random(f"waterfall-{policy}")
    for _ in range(3_000):
        values, fund = random_case(rng)
        cap = rng.randint(1, max(values) + 1)
        paid = {
            "pro-rata": lambda v, f: pro_rata(v, f),
            "smallest-first": lambda v, f: smallest_first(v, f),
            "threshold": lambda v, f: threshold(v, f, cap),  # noqa: B023
        }[policy](values, fund)
        assert sum(paid) == min(fund, sum(values))
        assert all(0 <= p <= v for p, v in zip(paid, values, strict=True))
        if policy == "pro-rata" and fund < sum(values):
            exact = [Fraction(fund * v, sum(values)) for v in values]
            assert all(abs(p - e) < 1 for p, e in zip(paid, exact, strict=True))  # rounding only
        if policy == "smallest-first":
            partial = [i for i, (p, v) in enumerate(zip(paid, values, strict=True)) if p < v]
            assert all(paid[i] == 0 for i in partial[1:])  # at most one partial payment, then nothing
            full = partial[0] if partial else len(paid)
            assert paid[:full] == values[:full]
        if policy == "threshold":
            floor = [min(v, cap) for v in values]
            if fund >= sum(floor):
                assert all(p >= f for p, f in zip(paid, floor, strict=True))  # everyone up to X first
            else:
                assert paid == pro_rata(floor, fund)


def test_waterfall_ranks_smallest_first_and_leaves_non_positive_values_unpaid() -> None:
    claims = [
        Claim("0xB", 30, 7),
        Claim("0xA", 30, 7),
        Claim("0xC", -5, 7),
        Claim("0xD", 0, 7),
        Claim("0xE", 10, 7),
    ]
    out = waterfall(claims, 45, Policy("smallest-first"))
    assert [(p.rank, p.account, p.paid, p.shortfall) for p in out] == [
        (1, "0xE", 10, 0),
        (2, "0xA", 30, 0),
        (3, "0xB", 5, 25),
        (None, "0xD", 0, 0),
        (None, "0xC", 0, 0),
    ]


# --- on the devnet: golden files -----------------------------------------------------------------
CLAIMANTS = (
    "eth-long-7x",
    "eth-long-4x",
    "eth-long-2x",
    "btc-short-2x",
    "weth-healthy",
    "eth-long-8x-bad-debt",
)
EXCLUDED = ("eth-long-2x",)
FUND = "20000"


def run(devnet: up.Devnet, tmp_path: Path, block: int, policy: str, *extra: str) -> dict[str, Any]:
    traders = devnet.scenario.traders
    (tmp_path / "accounts.txt").write_text(
        "# claimants\n" + "\n".join(traders[c].address for c in CLAIMANTS) + "\n"
    )
    (tmp_path / "exclude.json").write_text(json.dumps([traders[c].address.lower() for c in EXCLUDED]))
    code, out = cli_output(
        "compensation",
        *(
            "--rpc-url",
            devnet.url,
            "--metadata",
            str(devnet.metadata_path),
            "--state-db",
            str(tmp_path / "s.sqlite"),
        ),
        *("--block", str(block), "--fund", FUND, "--policy", policy, "--json"),
        *("--accounts", str(tmp_path / "accounts.txt"), "--exclude", str(tmp_path / "exclude.json"), *extra),
    )
    assert code == 0, out
    report: dict[str, Any] = json.loads(out)
    return report


@pytest.mark.parametrize("policy", ["pro-rata", "smallest-first", "threshold:5000"])
def test_each_policy_reproduces_its_golden_file(
    devnet: up.Devnet, chain: DevChain, tmp_path: Path, policy: str
) -> None:
    block = chain.w3.eth.block_number
    report = run(devnet, tmp_path, block, policy)
    golden = GOLDEN / f"compensation-{policy.replace(':', '-')}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(json.dumps(report, indent=1) + "\n")
    assert report == json.loads(golden.read_text())
    # by hand: the claimants, ranked smallest first, the excluded one left out, the fund paid out
    labels = {t.address: t.label for t in devnet.scenario.traders.values()}
    rows = report["rows"]
    assert {labels[r["account"]] for r in rows} == set(CLAIMANTS) - set(EXCLUDED)
    ranked = [r for r in rows if r["rank"] is not None]
    assert [r["rank"] for r in ranked] == list(range(1, len(ranked) + 1))
    assert [r["value"] for r in ranked] == sorted(r["value"] for r in ranked)
    assert all(r["value"] <= 0 and r["paid"] == 0 for r in rows if r["rank"] is None)
    unranked = {labels[r["account"]] for r in rows if r["rank"] is None}
    assert unranked == {"eth-long-7x", "eth-long-8x-bad-debt"}  # under water: no claim
    fund = int(FUND) * X18
    assert sum(r["paid"] for r in rows) == report["totals"]["paid"] == min(fund, report["totals"]["claims"])
    assert all(r["value"] - r["paid"] == r["shortfall"] for r in rows if r["rank"] is not None)
    values, paid = [r["value"] for r in ranked], [r["paid"] for r in ranked]
    if policy == "pro-rata":
        assert all(abs(p - Fraction(fund * v, sum(values))) < 1 for p, v in zip(paid, values, strict=True))
    elif policy == "smallest-first":
        assert paid[:2] == values[:2]
        assert 0 < paid[2] < values[2]
        assert paid[3:] == [0] * (len(paid) - 3)
    else:
        assert paid[0] == values[0] < 5000 * X18  # a claim under X is paid in full first
        assert all(p >= 5000 * X18 for p in paid[1:])
    inputs = {
        "protocol": "perp-v2",
        "chain_id": chain.w3.eth.chain_id,
        "deployment": devnet.deployment["ClearingHouse"].address.lower(),
        "block": block,
        "liquidated_between": None,
        "policy": policy,
        "price": "index",
        "fund": str(fund),
        "exclusions": sorted(devnet.scenario.traders[c].address.lower() for c in EXCLUDED),
        "accounts": sorted(r["account"].lower() for r in rows),
    }
    assert report["inputs_sha256"] == compensation.inputs_sha256(inputs)


def test_values_at_the_mark_are_the_vaults_account_values(
    devnet: up.Devnet, chain: DevChain, tmp_path: Path
) -> None:
    """At the mark price a USDC-only account's value is Vault.getAccountValue before its cut to 6
    decimals (rounded down); at the index price it differs by exactly size x (index - mark)."""
    block = chain.w3.eth.block_number
    at_mark = {
        r["account"]: r["value"] for r in run(devnet, tmp_path, block, "pro-rata", "--price", "mark")["rows"]
    }
    at_index = {r["account"]: r["value"] for r in run(devnet, tmp_path, block, "pro-rata")["rows"]}
    d = devnet.deployment
    base = d.market("vETH").base_token.address
    index = d.market("vETH").base_token.functions.getIndexPrice(0).call(block_identifier=block)
    mark = d["AccountBalance"].functions.getMarkPrice(base).call(block_identifier=block)
    for label in ("eth-long-7x", "eth-long-4x", "eth-long-8x-bad-debt"):
        who = devnet.scenario.traders[label].address
        vault = d["Vault"].functions.getAccountValue(who).call(block_identifier=block)
        value = at_mark[who]
        assert value // 10**12 == vault, label  # SettlementTokenMath.formatSettlementToken rounds down
        size = d["AccountBalance"].functions.getTotalPositionSize(who, base).call(block_identifier=block)
        expected = size * index // X18 - size * mark // X18  # longs: both positive, floor = toward zero
        assert at_index[who] - value == expected, label
    assert Web3.is_checksum_address(next(iter(at_mark)))


def test_spans_and_names_pure() -> None:
    from keeper.events import snake_case
    from keeper.logcache import missing

    assert missing([(10, 19), (30, 39)], 0, 50) == [(0, 9), (20, 29), (40, 50)]
    assert missing([(0, 100)], 5, 50) == []
    assert missing([], 5, 4) == []
    assert snake_case("repaidSettlementWithoutInsuranceFundFeeX10_S") == (
        "repaid_settlement_without_insurance_fund_fee_x10_s"
    )
    assert snake_case("discountRatio") == "discount_ratio"
    assert snake_case("id") == "id"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--block", "1", "--fund", "ten", "--policy", "pro-rata"), "--fund: not a number"),
        (("--block", "1", "--fund", "-5", "--policy", "pro-rata"), "--fund: must be a non-negative"),
        (("--block", "1", "--fund", "5", "--policy", "largest-first"), "--policy: expected one of"),
        (("--fund", "5", "--policy", "pro-rata"), "--block N (or --liquidated-between A B) is required"),
        (("--block", "99999999", "--fund", "5", "--policy", "pro-rata"), "is beyond the chain's head"),
        (
            ("--block", "1", "--fund", "5", "--policy", "pro-rata", "--accounts", "BAD"),
            "entry 2 is not an address",
        ),
    ],
)
def test_operator_mistakes_are_one_line_and_exit_2(
    devnet: up.Devnet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    message: str,
) -> None:
    (tmp_path / "bad.txt").write_text(f"{devnet.scenario.traders['eth-long-7x'].address}\n0x1234\n")
    argv = [a.replace("BAD", str(tmp_path / "bad.txt")) for a in extra]
    code, out = cli_output(
        *("compensation", "--rpc-url", devnet.url, "--metadata", str(devnet.metadata_path)),
        *("--state-db", str(tmp_path / "s.sqlite"), *argv),
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert out == ""
    assert len(err) == 1
    assert message in err[0]
