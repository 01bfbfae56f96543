"""`perp-keeper check` for Perp v2: the engine's checks plus the price oracle and the keeper's funds
(wallet USDC and the Vault's allowance for collateral repayments, Vault free collateral for takeovers)."""

from __future__ import annotations

from eth_abi.abi import decode

from keeper.check import chain_and_code, keeper_gas, sequence_simulation, uint_view
from keeper.codec import encode_call
from keeper.errors import RpcError
from keeper.protocol import Check
from keeper.rpc import Rpc
from strategies.perp_v2.metadata import Deployment

MIN_FREE_COLLATERAL = 1_000 * 10**6  # USDC, 6 dp


async def run_checks(rpc: Rpc, deployment: Deployment, keeper: str | None) -> list[Check]:
    named = {name: ref.address for name, ref in deployment.contracts.items()}
    named.update({"USDC": deployment.usdc, "Multicall3": deployment.multicall3})
    for market in deployment.markets:
        named.update({market.base_symbol: market.base_token, f"{market.base_symbol} pool": market.pool})
    named.update({c.symbol: c.address for c in deployment.collaterals})
    checks = await chain_and_code(rpc, deployment.chain_id, named)
    if deployment.eth_market is not None:
        checks.append(await _price_oracle(rpc, deployment.eth_market))
    checks.append(await keeper_gas(rpc, keeper))
    checks.append(await sequence_simulation(rpc, keeper or deployment.clearing_house))
    if keeper is None:
        return checks
    return checks + await _funds(rpc, deployment, keeper)


async def _price_oracle(rpc: Rpc, eth_market: str) -> Check:
    try:
        (price,) = decode(["uint256"], await rpc.call(eth_market, encode_call("getIndexPrice(uint256)", 0)))
        return Check("price oracle", price > 0, f"vETH index {price / 10**18:,.2f} USD")
    except RpcError as exc:
        return Check("price oracle", False, f"vETH getIndexPrice reverted: {exc.message}")


async def _funds(rpc: Rpc, deployment: Deployment, keeper: str) -> list[Check]:
    usdc, vault = deployment.usdc, deployment.vault
    wallet = await uint_view(rpc, usdc, "balanceOf(address)", keeper)
    allowance = await uint_view(rpc, usdc, "allowance(address,address)", keeper, vault)
    free = await uint_view(rpc, vault, "getFreeCollateral(address)", keeper)
    return [
        Check("wallet USDC (collateral repayments)", wallet > 0, f"{wallet / 10**6:,.2f} USDC"),
        Check(
            "Vault allowance for USDC (information)",
            True,
            f"{'unlimited' if allowance >= 2**255 else f'{allowance / 10**6:,.2f} USDC'}: the keeper "
            "approves exactly what each collateral liquidation repays",
        ),
        Check(
            "Vault free collateral (position takeovers)",
            free >= MIN_FREE_COLLATERAL,
            f"{free / 10**6:,.2f} USDC (takes over up to ~{free / 10**5:,.0f} USD of notional at 10 % IM)",
        ),
    ]
