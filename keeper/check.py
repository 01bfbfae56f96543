"""`perp-keeper check`: is everything an operator must provide in place? A pass/fail table.

Connectivity and chain id, code at every metadata address, the keeper's ETH for gas, wallet USDC and
the Vault's allowance (collateral liquidations repay from the wallet), Vault free collateral (position
takeovers need initial margin), and the protocol's price oracle answering.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from eth_abi.abi import decode

from keeper.metadata import Deployment, load_metadata
from keeper.multicall import encode_call
from keeper.rpc import Rpc, RpcError, redact

MIN_ETH_WEI = 10**16  # 0.01 ETH: a few hundred liquidations on Optimism
MIN_FREE_COLLATERAL = 1_000 * 10**6  # USDC, 6 dp


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


async def run_checks(rpc: Rpc, deployment: Deployment, keeper: str | None) -> list[Check]:
    checks: list[Check] = []
    chain_id = await rpc.chain_id()  # unreachable: RpcUnavailableError, a one-line exit 2 upstream
    checks.append(
        Check(
            "RPC and chain id",
            chain_id == deployment.chain_id,
            f"{redact(rpc.url)} answers chain id {chain_id}; the metadata says {deployment.chain_id}",
        )
    )
    named = {name: ref.address for name, ref in deployment.contracts.items()}
    named.update({"USDC": deployment.usdc, "Multicall3": deployment.multicall3})
    for market in deployment.markets:
        named.update({market.base_symbol: market.base_token, f"{market.base_symbol} pool": market.pool})
    named.update({c.symbol: c.address for c in deployment.collaterals})
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
    eth_market = next((m.base_token for m in deployment.markets if m.base_symbol in ("vETH", "ETH")), None)
    if eth_market is not None:
        try:
            (price,) = decode(
                ["uint256"], await rpc.call(eth_market, encode_call("getIndexPrice(uint256)", 0))
            )
            checks.append(Check("price oracle", price > 0, f"vETH index {price / 10**18:,.2f} USD"))
        except RpcError as exc:
            checks.append(Check("price oracle", False, f"vETH getIndexPrice reverted: {exc.message}"))
    if keeper is None:
        checks.append(Check("keeper key", False, "no key: set KEEPER_PRIVATE_KEY, _FILE or KEEPER_KEYSTORE"))
        return checks
    balance = int(await rpc.request("eth_getBalance", [keeper, "latest"]), 16)
    checks.append(Check("ETH for gas", balance >= MIN_ETH_WEI, f"{balance / 10**18:.4f} ETH (want >= 0.01)"))
    wallet = await _uint(rpc, deployment.usdc, "balanceOf(address)", keeper)
    allowance = await _uint(rpc, deployment.usdc, "allowance(address,address)", keeper, deployment.vault)
    checks.append(Check("wallet USDC (collateral repayments)", wallet > 0, f"{wallet / 10**6:,.2f} USDC"))
    checks.append(
        Check(
            "Vault allowance for USDC",
            allowance >= wallet,
            f"{'unlimited' if allowance >= 2**255 else f'{allowance / 10**6:,.2f} USDC'} "
            "(the keeper also approves by itself when short)",
        )
    )
    free = await _uint(rpc, deployment.vault, "getFreeCollateral(address)", keeper)
    checks.append(
        Check(
            "Vault free collateral (position takeovers)",
            free >= MIN_FREE_COLLATERAL,
            f"{free / 10**6:,.2f} USDC (takes over up to ~{free / 10**5:,.0f} USD of notional at 10 % IM)",
        )
    )
    return checks


async def _uint(rpc: Rpc, to: str, signature: str, *args: object) -> int:
    (value,) = decode(["uint256"], await rpc.call(to, encode_call(signature, *args)))
    return int(value)


def write_table(checks: list[Check], out: TextIO = sys.stdout) -> None:
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{'PASS' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}", file=out)
    failed = sum(not c.ok for c in checks)
    print(f"\n{len(checks) - failed} passed, {failed} failed", file=out)


async def main(rpc_url: str, metadata_path: object, keeper: str | None, out: TextIO = sys.stdout) -> int:
    deployment = load_metadata(str(metadata_path))
    async with Rpc(rpc_url, attempts=2) as rpc:
        checks = await run_checks(rpc, deployment, keeper)
    write_table(checks, out)
    return 0 if all(c.ok for c in checks) else 1
