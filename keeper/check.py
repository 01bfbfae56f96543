"""`perp-keeper check`: is everything an operator must provide in place? A pass/fail table.

The engine checks what every protocol needs (the RPC answers the metadata's chain, each endpoint of
`--rpc-url` is up, on that chain and not lagging, code at every address the metadata names, the
keeper's key and ETH for gas); each protocol adds its own checks (oracle prices, the funds its
liquidations need) through its plugin.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from eth_abi.abi import decode

from keeper import preflight
from keeper.codec import encode_call
from keeper.endpoints import MAX_LAG_BLOCKS, Sighting, verify_chain
from keeper.errors import RpcError, StoreError
from keeper.lease import Lease
from keeper.protocol import Check, ProtocolPlugin
from keeper.receipts import TxRequest
from keeper.rpc import Rpc, redact
from keeper.session import answering_chain_id, rpc_timeout
from keeper.store_pg import open_store

MIN_ETH_WEI = 10**16  # 0.01 ETH: a few hundred liquidations on Optimism


async def chain_and_code(rpc: Rpc, chain_id: int, named: Mapping[str, str]) -> list[Check]:
    """The RPC answers the metadata's chain (a row per endpoint), and every address the metadata
    names holds code (read only from endpoints on that chain)."""
    actual = await answering_chain_id(rpc)  # unreachable: RpcUnavailableError, a one-line exit 2 upstream
    sightings = await rpc.survey()
    verify_chain(rpc.endpoints, sightings, chain_id)
    rpc.expected_chain_id = chain_id
    checks = [
        Check(
            "RPC and chain id",
            actual == chain_id,
            f"{redact(rpc.url)} answers chain id {actual}; the metadata says {chain_id}",
        ),
        *endpoint_rows(sightings, chain_id, rpc.max_lag),
    ]
    codes = await rpc.batch([("eth_getCode", [address, "latest"]) for address in named.values()])
    missing = [
        name
        for name, code in zip(named, codes, strict=True)
        if code in (None, "0x", "") or isinstance(code, RpcError)
    ]
    checks.append(
        Check(
            "code at every metadata address",
            not missing,
            f"{len(named) - len(missing)}/{len(named)} have code"
            + (f"; missing: {', '.join(missing)}" if missing else ""),
        )
    )
    return checks


def endpoint_rows(sightings: Sequence[Sighting], chain_id: int, max_lag: int = MAX_LAG_BLOCKS) -> list[Check]:
    """One row per RPC endpoint: up, on the metadata's chain, and not lagging the best head."""
    best = max((s.head for s in sightings if s.head is not None), default=None)
    rows = []
    for seen in sightings:
        name = f"RPC endpoint {seen.name}"
        if seen.error or seen.head is None or best is None:
            rows.append(Check(name, False, f"down: {seen.error or 'no head'}"))
        elif seen.chain_id != chain_id:
            rows.append(Check(name, False, f"answers chain id {seen.chain_id}; the metadata says {chain_id}"))
        elif best - seen.head > max_lag:
            rows.append(Check(name, False, f"head {seen.head} is {best - seen.head} blocks behind the best"))
        else:
            latency = f", {seen.latency * 1000:.0f} ms" if seen.latency is not None else ""
            rows.append(Check(name, True, f"chain id {chain_id}, head {seen.head}{latency}"))
    return rows


async def keeper_gas(rpc: Rpc, keeper: str | None) -> Check:
    if keeper is None:
        return Check("keeper key", False, "no key: set KEEPER_PRIVATE_KEY, _FILE or KEEPER_KEYSTORE")
    balance = int(await rpc.request("eth_getBalance", [keeper, "latest"]), 16)
    return Check("ETH for gas", balance >= MIN_ETH_WEI, f"{balance / 10**18:.4f} ETH (want >= 0.01)")


async def sequence_simulation(rpc: Rpc, sender: str) -> Check:
    """`eth_simulateV1`: every plan of a head is proven as the one sequence it will be mined as, and a
    sale's balance changes are checked before signing. Without it plans go out one step a block and
    aggregator quotes are refused."""
    probe = TxRequest("check", sender, sender, b"", "probe")
    try:
        supported = await preflight.simulate_sequence(rpc, sender, [probe, probe], "latest") is not None
    except RpcError as exc:
        return Check("sequence simulation (eth_simulateV1)", False, f"the node refused it: {exc.message}")
    detail = (
        "supported: a head's plans are proven together before signing"
        if supported
        else "not supported: plans go out one step a block and aggregator quotes are refused"
    )
    return Check("sequence simulation (eth_simulateV1)", supported, detail)


async def uint_view(rpc: Rpc, to: str, signature: str, *args: object) -> int:
    (value,) = decode(["uint256"], await rpc.call(to, encode_call(signature, *args)))
    return int(value)


def state_rows(target: Path | str) -> list[Check]:
    """The state database (a redacted URL or the SQLite path), its schema version, and a row per lease:
    who holds it, at which epoch, for how long. A SQLite file not made yet is not created here."""
    if isinstance(target, Path) and not target.exists():
        return [Check("state database", True, f"SQLite {target} (not created yet: made by scan or run)")]
    try:
        store = open_store(target)
    except StoreError as exc:
        return [Check("state database", False, str(exc))]
    try:
        rows = [Check("state database", True, f"{store.describe()}, schema version {store.schema_version()}")]
        now = store.now()
        rows += [Check(f"lease {lease.name}", True, lease_text(lease, now)) for lease in store.leases()]
    except StoreError as exc:
        rows = [Check("state database", False, str(exc))]
    finally:
        store.close()
    return rows


def lease_text(lease: Lease, now: float) -> str:
    """Holder, epoch and age of a lease as `check` shows it (database clock)."""
    if not lease.live(now):
        how = (
            "released"
            if lease.expires_at <= lease.acquired_at
            else f"lapsed {now - lease.expires_at:.1f} s ago"
        )
        return f"free: last held by {lease.holder} at epoch {lease.epoch}, {how}"
    return (
        f"held by {lease.holder} at epoch {lease.epoch} for {now - lease.acquired_at:.1f} s, "
        f"renewed {now - lease.renewed_at:.1f} s ago"
    )


def write_table(checks: list[Check], out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up at call time: callers may redirect it
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{'PASS' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}", file=out)
    failed = sum(not c.ok for c in checks)
    print(f"\n{len(checks) - failed} passed, {failed} failed", file=out)


async def main(
    plugin: ProtocolPlugin,
    rpc_url: str,
    metadata_path: Path,
    keeper: str | None,
    out: TextIO | None = None,
    state: Path | str | None = None,
) -> int:
    deployment = plugin.load_metadata(metadata_path)
    async with Rpc(rpc_url, attempts=2, timeout=rpc_timeout()) as rpc:
        checks = await plugin.checks(rpc, deployment, keeper, os.environ)
    if state is not None:
        checks += state_rows(state)
    write_table(checks, out)
    return 0 if all(c.ok for c in checks) else 1
