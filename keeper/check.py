"""`perp-keeper check`: is everything an operator must provide in place? A pass/fail table.

Synthetix Perps V2 metadata gets its own list: oracle prices, a sUSD quote, ETH and endorsement.

Connectivity and chain id, code at every metadata address, the keeper's ETH for gas, wallet USDC and
the Vault's allowance (collateral liquidations repay from the wallet), Vault free collateral (position
takeovers need initial margin), and the protocol's price oracle answering.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

from eth_abi.abi import decode

from keeper.codec import encode_call
from keeper.errors import QuoteError, RpcError
from keeper.metadata import (
    SYNTHETIX_PERPS_V2,
    Deployment,
    SynthetixDeployment,
    load_metadata,
    load_synthetix_metadata,
    metadata_protocol,
)
from keeper.quotes import UniswapV3
from keeper.rpc import Rpc, redact

MIN_ETH_WEI = 10**16  # 0.01 ETH: a few hundred liquidations on Optimism
MIN_FREE_COLLATERAL = 1_000 * 10**6  # USDC, 6 dp


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


async def run_checks(rpc: Rpc, deployment: Deployment, keeper: str | None) -> list[Check]:
    named = {name: ref.address for name, ref in deployment.contracts.items()}
    named.update({"USDC": deployment.usdc, "Multicall3": deployment.multicall3})
    for market in deployment.markets:
        named.update({market.base_symbol: market.base_token, f"{market.base_symbol} pool": market.pool})
    named.update({c.symbol: c.address for c in deployment.collaterals})
    checks = await _chain_and_code(rpc, deployment.chain_id, named)
    eth_market = next((m.base_token for m in deployment.markets if m.base_symbol in ("vETH", "ETH")), None)
    if eth_market is not None:
        try:
            (price,) = decode(
                ["uint256"], await rpc.call(eth_market, encode_call("getIndexPrice(uint256)", 0))
            )
            checks.append(Check("price oracle", price > 0, f"vETH index {price / 10**18:,.2f} USD"))
        except RpcError as exc:
            checks.append(Check("price oracle", False, f"vETH getIndexPrice reverted: {exc.message}"))
    checks.append(await _keeper_gas(rpc, keeper))
    if keeper is None:
        return checks
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


async def _chain_and_code(rpc: Rpc, chain_id: int, named: Mapping[str, str]) -> list[Check]:
    """The RPC answers the metadata's chain, and every address the metadata names holds code."""
    actual = await rpc.chain_id()  # unreachable: RpcUnavailableError, a one-line exit 2 upstream
    checks = [
        Check(
            "RPC and chain id",
            actual == chain_id,
            f"{redact(rpc.url)} answers chain id {actual}; the metadata says {chain_id}",
        )
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


async def run_synthetix_checks(rpc: Rpc, d: SynthetixDeployment, keeper: str | None) -> list[Check]:
    """Synthetix Perps V2: the markets' oracle prices, a sUSD quote, the keeper's ETH and endorsement."""
    named: dict[str, str] = {name: ref.address for name, ref in d.contracts.items()}
    named.update({"sUSD": d.susd, "Multicall3": d.multicall3})
    for m in d.markets:
        named.update({f"{m.key} proxy": m.proxy, f"{m.key} state": m.state})
    named.update({k: v for k, v in (("USDC", d.usdc), ("QuoterV2", d.quoter_v2)) if v is not None})
    checks = await _chain_and_code(rpc, d.chain_id, named)
    answers = await rpc.calls_at([(m.proxy, encode_call("assetPrice()")) for m in d.markets], "latest")
    bad = [
        m.key
        for m, answer in zip(d.markets, answers, strict=True)
        if isinstance(answer, RpcError) or decode(["uint256", "bool"], answer)[1]
    ]
    checks.append(
        Check("oracle prices", not bad, f"invalid: {', '.join(bad)}" if bad else "every market's is valid")
    )
    if d.usdc is None:
        checks.append(Check("sUSD quote", False, "no USDC in the metadata: set KEEPER_SUSD_USD"))
    else:
        try:
            quoter = UniswapV3.configured(rpc, d.quoter_v2, d.swap_router, os.environ)
            quote = await quoter.quote(d.susd, d.usdc, 1_000 * 10**18, d.susd, 0)
            checks.append(Check("sUSD quote", True, f"1,000 sUSD -> {quote.buy_amount:,} USDC units"))
        except (QuoteError, RpcError) as exc:
            checks.append(Check("sUSD quote", False, f"{exc}: set KEEPER_SUSD_USD to value sUSD"))
    checks.append(await _keeper_gas(rpc, keeper))
    if keeper is None:
        return checks
    (endorsed,) = decode(["bool"], await rpc.call(d.manager, encode_call("isEndorsed(address)", keeper)))
    detail = (
        "endorsed: forceLiquidatePosition is open to the keeper"
        if endorsed
        else "not endorsed: positions only forceLiquidatePosition can take are skipped"
    )
    checks.append(Check("endorsement (information)", True, detail))
    return checks


async def _keeper_gas(rpc: Rpc, keeper: str | None) -> Check:
    if keeper is None:
        return Check("keeper key", False, "no key: set KEEPER_PRIVATE_KEY, _FILE or KEEPER_KEYSTORE")
    balance = int(await rpc.request("eth_getBalance", [keeper, "latest"]), 16)
    return Check("ETH for gas", balance >= MIN_ETH_WEI, f"{balance / 10**18:.4f} ETH (want >= 0.01)")


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
    synthetix = metadata_protocol(str(metadata_path)) == SYNTHETIX_PERPS_V2
    snx = load_synthetix_metadata(str(metadata_path)) if synthetix else None
    perp = None if synthetix else load_metadata(str(metadata_path))
    async with Rpc(rpc_url, attempts=2) as rpc:
        if snx is not None:
            checks = await run_synthetix_checks(rpc, snx, keeper)
        else:
            assert perp is not None
            checks = await run_checks(rpc, perp, keeper)
    write_table(checks, out)
    return 0 if all(c.ok for c in checks) else 1
