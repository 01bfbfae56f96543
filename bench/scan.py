"""Scan cost at scale: the keeper's exact scan vs a naive per-account reader, cold and block by block.

    python bench/scan.py --accounts 10000 [--rtt-ms 20] [--blocks 24] [--json]

Creates N real accounts on the devnet (USDC or WETH collateral, long and short takers at 1-8.5x in one
or two markets; the state is cached in .cache/bench so reruns start in seconds), then puts a counting
proxy that adds --rtt-ms per HTTP request between the reader and anvil, and measures in one run:

* cold: one full exact scan by the keeper (indexing from the deployment block included), and the naive
  baseline (two sequential eth_calls per account, getAccountValue and getMarginRequirementForLiquidation,
  on a sample of at most 1,000 accounts, scaled linearly to N);
* steady state: --blocks ticks, each with price moves (ETH down, BTC up), new accounts and added
  positions; per tick the keeper's HTTP requests and seconds, and `missed`: accounts that became
  liquidatable at that block (checked with the contracts' views for every account, off the clock) but
  that the keeper's picture of that block did not flag.

It also reports the disk the node used: anvil's state folder at its largest (0: every anvil the project
starts keeps its recent states in memory only, devnet/anvil.py) and the size of the cached state dump.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from devnet import toolchain, units, up
from devnet.anvil import Anvil
from devnet.chain import DEPLOYER, DevChain
from devnet.deploy import UINT256_MAX, attach
from devnet.proxy import RpcProxy
from devnet.scenario import DEADLINE, ScenarioBuilder
from keeper import multicall
from keeper.codec import encode_call
from keeper.multicall import Call
from keeper.rpc import Rpc
from strategies.perp_v2.metadata import Deployment, load_metadata
from strategies.perp_v2.plugin import open_session
from strategies.perp_v2.scanner import UpdateStats

NAIVE_SAMPLE = 1_000
BATCH = 400


def bench_address(i: int) -> str:
    return str(to_checksum_address(keccak(text=f"perp-keeper/bench/{i}")[:20]))


def selector_call(signature: str, *args: Any) -> str:
    return "0x" + encode_call(signature, *args).hex()


class Driver:
    """Sends many dev transactions fast: JSON-RPC batches of eth_sendTransaction (anvil automine)."""

    def __init__(self, url: str, d: Deployment) -> None:
        self.client = httpx.Client(timeout=600)
        self.url, self.d = url, d
        self.ids = 0

    def batch(self, requests: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        answers: list[Any] = []
        for start in range(0, len(requests), BATCH):
            chunk = requests[start : start + BATCH]
            body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(chunk)]
            reply = sorted(self.client.post(self.url, json=body).json(), key=lambda r: r["id"])
            for r in reply:
                if "error" in r:
                    raise RuntimeError(f"{r['error']}")
            answers += [r["result"] for r in reply]
        return answers

    def send_all(self, txs: Sequence[dict[str, str]], tolerate: bool = False) -> int:
        """Send and wait for all; returns how many failed (raises unless `tolerate`)."""
        # anvil runs a batch's requests concurrently: give every transaction its nonce up front
        senders = sorted({tx["from"] for tx in txs})
        counts = self.batch([("eth_getTransactionCount", [s, "pending"]) for s in senders])
        nonce = {s: int(c, 16) for s, c in zip(senders, counts, strict=True)}
        numbered = []
        for tx in txs:
            numbered.append({**tx, "gas": hex(3_000_000), "nonce": hex(nonce[tx["from"]])})
            nonce[tx["from"]] += 1
        hashes = self.batch([("eth_sendTransaction", [tx]) for tx in numbered])
        receipts = self.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
        deadline = time.monotonic() + 60
        while not all(receipts) and time.monotonic() < deadline:
            time.sleep(0.005)
            receipts = self.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
        failed = [tx for tx, r in zip(txs, receipts, strict=True) if r is None or r["status"] != "0x1"]
        if failed and not tolerate:
            reply = self.client.post(
                self.url,
                json={"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [failed[0], "latest"]},
            ).json()
            raise RuntimeError(
                f"{len(failed)} of {len(txs)} transactions failed, first: {reply.get('error')}"
            )
        return len(failed)

    def base(self, symbol: str) -> str:
        return next(m.base_token for m in self.d.markets if m.base_symbol == symbol)

    def open(self, trader: str, base: str, short: bool, quote: int) -> dict[str, str]:
        data = selector_call(
            "openPosition((address,bool,bool,uint256,uint256,uint256,uint160,bytes32))",
            (base, short, not short, quote, 0, DEADLINE, 0, b"\x00" * 32),
        )
        return {"from": trader, "to": self.d.clearing_house, "data": data}

    def create_accounts(self, first: int, count: int, tolerate: bool = False) -> list[str]:
        """Fund, deposit and open a position for accounts first..first+count (deterministic mix)."""
        vault = self.d.vault
        eth, btc = self.base("vETH"), self.base("vBTC")
        traders = [bench_address(i) for i in range(first, first + count)]
        self.batch([("anvil_setBalance", [t, hex(units.ether(1_000))]) for t in traders])
        deposits, opens = [], []
        for i, trader in zip(range(first, first + count), traders, strict=True):
            # accounts come in pairs with the same notional on opposite sides, so the pools return
            # to the index after each pair (a drifting pool against the lagging mark fails CH_NEFCI)
            pair = i // 2
            margin = 200 + (pair * 7_919) % 19_800  # 200 .. 20,000 USDC
            leverage_tenths = 10 + (pair * 37) % 76  # 1.0x .. 8.5x
            notional = margin * leverage_tenths // 10
            if i % 20 == 7:  # a WETH collateral holder with a little USDC
                weth = units.ether(margin) // 1_500
                deposits.append(
                    {
                        "from": trader,
                        "to": vault,
                        "data": selector_call("depositEther()"),
                        "value": hex(weth),
                    }
                )
                deposits.append(self._deposit_for(trader, margin // 10))
            else:
                deposits.append(self._deposit_for(trader, margin))
            short = i % 2 == 1
            if pair % 5 == 1:  # two markets
                opens.append(self.open(trader, eth, short, units.ether(notional // 2)))
                opens.append(self.open(trader, btc, not short, units.ether(notional // 2)))
            else:
                opens.append(
                    self.open(trader, btc if pair % 10 in (2, 5, 8) else eth, short, units.ether(notional))
                )
        self.send_all(deposits)
        # one at a time: anvil runs a batch's requests concurrently, and a run of same-side trades
        # would move the pool far from the lagging mark price (CH_NEFCI)
        for tx in opens:
            self.send_all([tx], tolerate)
        return traders

    def _deposit_for(self, trader: str, usdc_amount: int) -> dict[str, str]:
        data = selector_call(
            "depositFor(address,address,uint256)", trader, self.d.usdc, units.usdc(usdc_amount)
        )
        return {"from": DEPLOYER, "to": self.d.vault, "data": data}


def build_state(n: int, out: Path) -> None:
    started = time.monotonic()
    net = up.start(scenario="empty", out_dir=out, log=False)
    try:
        d = load_metadata(net.metadata_path)
        usdc = net.deployment["USDC"]
        net.chain.send(usdc.functions.mint(DEPLOYER, units.usdc(10**12)))
        net.chain.send(usdc.functions.approve(d.vault, UINT256_MAX))
        driver = Driver(net.url, d)
        for first in range(0, n, BATCH):
            driver.create_accounts(first, min(BATCH, n - first))
            print(
                f"  {min(n, first + BATCH)}/{n} accounts ({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
            )
        net.chain.advance_time(3600)  # marks settle
        up.dump_state(net, out / "state.json")
        (out / "accounts.json").write_text(json.dumps({"accounts": n}))
    finally:
        net.stop()


async def truth(rpc: Rpc, d: Deployment, accounts: Sequence[str], block: int) -> set[str]:
    """Accounts the contracts' own views call liquidatable (position or collateral) at `block`."""
    calls = []
    for a in accounts:
        calls += [
            Call(d.clearing_house, "getAccountValue(address)", (a,), ("int256",), 400_000),
            Call(
                d.account_balance, "getMarginRequirementForLiquidation(address)", (a,), ("int256",), 300_000
            ),
            Call(d.vault, "isLiquidatable(address)", (a,), ("bool",), 300_000),
        ]
    results = await multicall.execute(rpc, calls, block, multicall=d.multicall3)
    flagged = set()
    for i, a in enumerate(accounts):
        value, requirement, vault = (r.one() for r in results[3 * i : 3 * i + 3])
        if value < requirement or vault:
            flagged.add(a)
    return flagged


def naive(url: str, d: Deployment, accounts: Sequence[str]) -> tuple[int, float]:
    """Two sequential eth_calls per account, the way a per-account loop reads."""
    client = httpx.Client(timeout=60)
    requests = 0
    started = time.monotonic()
    for a in accounts:
        for to, sig in (
            (d.clearing_house, "getAccountValue(address)"),
            (d.account_balance, "getMarginRequirementForLiquidation(address)"),
        ):
            body = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "eth_call",
                "params": [{"to": to, "data": selector_call(sig, a)}, "latest"],
            }
            client.post(url, json=body).raise_for_status()
            requests += 1
    return requests, time.monotonic() - started


def tick(builder: ScenarioBuilder, driver: Driver, k: int, n: int) -> None:
    """One tick of market life: ETH -0.6 %, BTC +0.5 %, two new accounts, two positions added to
    (a trade the market refuses, e.g. CH_NEFCI for an account already near liquidation, just fails)."""
    eth = 1_780 * (1 - 0.006 * (k + 1))
    btc = 30_000 * (1 + 0.005 * (k + 1))
    builder.move_market("vETH", f"{eth:.2f}", builder.traders["price-mover"])
    builder.move_market("vBTC", f"{btc:.2f}", builder.traders["price-mover"])
    driver.create_accounts(n + 2 * k, 2, tolerate=True)
    eth_base = driver.base("vETH")
    driver.send_all(
        [
            driver.open(bench_address((k * 97 + j * 13) % n), eth_base, False, units.ether(500))
            for j in range(2)
        ],
        tolerate=True,
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    toolchain.ensure()
    cache = toolchain.cache_root() / "bench" / f"scan-{args.accounts}"
    if not (cache / "accounts.json").exists():
        print(f"creating {args.accounts} accounts (cached in {cache}) ...", file=sys.stderr)
        build_state(args.accounts, cache)
    anvil = Anvil(load_state=cache / "state.json").start()
    try:
        chain = DevChain(anvil.url)
        chain.resume_clock()
        d = load_metadata(cache / "metadata.json")
        direct = Rpc(anvil.url)
        with RpcProxy(anvil.url, rtt_ms=args.rtt_ms) as proxy:
            session = await open_session(
                proxy.url, cache / "metadata.json", ":memory:", sweep_blocks=args.sweep_blocks
            )
            proxy.reset()
            cold = await session.scanner.full_scan()
            cold_requests = proxy.http_requests
            accounts = sorted(session.scanner.indexer.known)
            print(
                f"cold: {len(accounts)} accounts, {cold_requests} requests, {cold.seconds:.2f} s",
                file=sys.stderr,
            )

            sample = [a for a in accounts][:NAIVE_SAMPLE]
            proxy.reset()
            naive_requests, naive_seconds = naive(proxy.url, d, sample)
            scale = len(accounts) / len(sample)
            naive_requests, naive_seconds = round(naive_requests * scale), naive_seconds * scale
            print(
                f"naive: {naive_requests} requests, {naive_seconds:.1f} s "
                f"(sample {len(sample)}, x{scale:.2f})",
                file=sys.stderr,
            )

            builder = await asyncio.to_thread(_builder, anvil.url, cache)
            driver = Driver(anvil.url, d)
            before = await truth(direct, d, accounts, chain.w3.eth.block_number)
            per_block: list[tuple[int, float, UpdateStats]] = []
            missed = became = disk_peak = 0
            for k in range(args.blocks):
                await asyncio.to_thread(tick, builder, driver, k, args.accounts)
                proxy.reset()
                stats = await session.scanner.update()
                per_block.append((proxy.http_requests, stats.seconds, stats))
                snapshot = session.scanner.snapshot
                assert snapshot is not None
                now = await truth(direct, d, sorted(snapshot.accounts), stats.block)
                flagged = {
                    a for a, acc in snapshot.accounts.items() if acc.liquidatable or acc.vault_liquidatable
                }
                new = now - before
                disk_peak = max(disk_peak, anvil.disk_bytes())
                became += len(new)
                missed += len(new - flagged)
                before = now
                print(
                    f"  block {stats.block}: {proxy.http_requests} requests, {stats.seconds:.3f} s, "
                    f"read {stats.read} (dirty {stats.dirty}, hot {stats.hot}, sweep {stats.swept}), "
                    f"{len(new)} newly liquidatable",
                    file=sys.stderr,
                )
            await session.close()
        await direct.close()
    finally:
        anvil.stop()
    return {
        "accounts": len(accounts),
        "rtt_ms": args.rtt_ms,
        "cold_requests": cold_requests,
        "cold_seconds": round(cold.seconds, 3),
        "naive_requests": naive_requests,
        "naive_seconds": round(naive_seconds, 3),
        "naive_sampled": len(sample),
        "block_requests": statistics.median(r for r, _, _ in per_block),
        "block_seconds": round(statistics.median(s for _, s, _ in per_block), 3),
        "blocks": len(per_block),
        "became_liquidatable": became,
        "missed": missed,
        "anvil_disk_bytes": disk_peak,  # the node's state folder at its largest (history is pruned)
        "state_dump_bytes": (cache / "state.json").stat().st_size,
    }


def _builder(url: str, cache: Path) -> ScenarioBuilder:
    builder = ScenarioBuilder(attach(DevChain(url), json.loads((cache / "metadata.json").read_text())))
    builder.trader("price-mover")
    return builder


def report(r: dict[str, Any]) -> None:
    print()
    print(f"accounts {r['accounts']}, RTT {r['rtt_ms']} ms")
    print(f"{'':<22}{'HTTP requests':>15}{'seconds':>12}")
    print(f"{'cold, perp-keeper':<22}{r['cold_requests']:>15,}{r['cold_seconds']:>12.2f}")
    naive_note = f"   (sample of {r['naive_sampled']}, scaled)"
    print(f"{'cold, naive':<22}{r['naive_requests']:>15,}{r['naive_seconds']:>12.2f}{naive_note}")
    fewer = r["naive_requests"] / r["cold_requests"]
    faster = r["naive_seconds"] / r["cold_seconds"]
    print(f"{'naive / perp-keeper':<22}{fewer:>14.0f}x{faster:>11.0f}x")
    blocks = f"   median over {r['blocks']} blocks"
    print(f"{'per block':<22}{r['block_requests']:>15}{r['block_seconds']:>12.3f}{blocks}")
    print(f"became liquidatable {r['became_liquidatable']}, missed {r['missed']}")
    print(
        f"disk: anvil's state folder at most {r['anvil_disk_bytes'] / 1e6:,.1f} MB during the run, "
        f"the cached state dump {r['state_dump_bytes'] / 1e6:,.1f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--blocks", type=int, default=24)
    parser.add_argument("--sweep-blocks", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    report(result)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
