"""`perp-keeper check` for Synthetix Perps V2: the engine's checks plus the markets' oracle prices, a
sUSD quote (rewards are valued at one), and whether the keeper is endorsed."""

from __future__ import annotations

from collections.abc import Mapping

from eth_abi.abi import decode

from keeper.check import chain_and_code, keeper_gas, sequence_simulation
from keeper.codec import encode_call
from keeper.errors import QuoteError, RpcError
from keeper.protocol import Check
from keeper.quotes import UniswapV3
from keeper.rpc import Rpc
from strategies.synthetix_perps_v2.metadata import SynthetixDeployment


async def run_checks(
    rpc: Rpc, d: SynthetixDeployment, keeper: str | None, env: Mapping[str, str]
) -> list[Check]:
    named: dict[str, str] = {name: ref.address for name, ref in d.contracts.items()}
    named.update({"sUSD": d.susd, "Multicall3": d.multicall3})
    for m in d.markets:
        named.update({f"{m.key} proxy": m.proxy, f"{m.key} state": m.state})
    named.update({k: v for k, v in (("USDC", d.usdc), ("QuoterV2", d.quoter_v2)) if v is not None})
    checks = await chain_and_code(rpc, d.chain_id, named)
    checks.append(await _oracle_prices(rpc, d))
    checks.append(await _susd_quote(rpc, d, env))
    checks.append(await keeper_gas(rpc, keeper))
    checks.append(await sequence_simulation(rpc, keeper or d.manager))
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


async def _oracle_prices(rpc: Rpc, d: SynthetixDeployment) -> Check:
    answers = await rpc.calls_at([(m.proxy, encode_call("assetPrice()")) for m in d.markets], "latest")
    bad = [
        m.key
        for m, answer in zip(d.markets, answers, strict=True)
        if isinstance(answer, RpcError) or decode(["uint256", "bool"], answer)[1]
    ]
    return Check("oracle prices", not bad, f"invalid: {', '.join(bad)}" if bad else "every market's is valid")


async def _susd_quote(rpc: Rpc, d: SynthetixDeployment, env: Mapping[str, str]) -> Check:
    if d.usdc is None:
        return Check("sUSD quote", False, "no USDC in the metadata: set KEEPER_SUSD_USD")
    try:
        quoter = UniswapV3.configured(rpc, d.quoter_v2, d.swap_router, env)
        quote = await quoter.quote(d.susd, d.usdc, 1_000 * 10**18, d.susd, 0)
        return Check("sUSD quote", True, f"1,000 sUSD -> {quote.buy_amount:,} USDC units")
    except (QuoteError, RpcError) as exc:
        return Check("sUSD quote", False, f"{exc}: set KEEPER_SUSD_USD to value sUSD")
