"""Deploy the real Perp v2 (curie 2.8.4) system and a real Uniswap v3 spot market on anvil.

The implementations are deployed directly and `initialize()`d (no proxies). Only what production
gets from outside npm is a stand-in: USDC, WETH9, price feeds and Multicall3. Parameters follow
Perp's defaults (`ClearingHouseConfig.initialize`) and its own test fixtures for the collateral
manager. See docs/devnet.md for why each step is there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from web3.contract import Contract

from devnet import units
from devnet.chain import DEPLOYER, DevChain
from keeper.metadata import DEFAULT_MULTICALL3

MULTICALL3_ADDRESS = DEFAULT_MULTICALL3
PRICE_FEED_DECIMALS = 8
PERP_POOL_FEE = 3000  # Uniswap fee tier of the vAMM pools (tick spacing 60)
PERP_TICK_SPACING = 60
EXCHANGE_FEE_RATIO = 1000  # 0.1 % taker/maker fee charged by the ClearingHouse
MAX_TICK_CROSSED_WITHIN_BLOCK = 1000
# 1 s or more between blocks, so 1,802 observations always reach back past the 30-min mark TWAP.
OBSERVATION_CARDINALITY = 1802
SPOT_POOL_FEE = 500  # USDC/WETH
UINT256_MAX = 2**256 - 1

# CollateralManager values from Perp's own test fixtures (see docs/perp-v2.md).
MAX_COLLATERAL_TOKENS_PER_ACCOUNT = 3
DEBT_NON_SETTLEMENT_TOKEN_VALUE_RATIO = 750_000
LIQUIDATION_RATIO = 500_000
MM_RATIO_BUFFER = 2_000
CL_INSURANCE_FUND_FEE_RATIO = 30_000
DEBT_THRESHOLD = units.usdc(10_000)
COLLATERAL_VALUE_DUST = units.usdc(500)
WETH_COLLATERAL_RATIO = 800_000
WETH_DISCOUNT_RATIO = 100_000
INSURANCE_FUND_CAPITAL = units.usdc(1_000_000)


@dataclass(frozen=True)
class MarketSpec:
    symbol: str  # the virtual base token, e.g. "vETH"
    index_price: str  # initial index and pool price in USD


DEFAULT_MARKETS = (MarketSpec("vETH", "1780"), MarketSpec("vBTC", "30000"))
WETH_PRICE = "1780"


@dataclass
class Market:
    symbol: str
    base_token: Contract
    pool: Contract
    price_feed: Contract


@dataclass
class Deployment:
    chain: DevChain
    contracts: dict[str, Contract] = field(default_factory=dict)
    created_block: dict[str, int] = field(default_factory=dict)
    markets: dict[str, Market] = field(default_factory=dict)
    weth_price_feed: Contract | None = None
    spot_pool: Contract | None = None

    def __getitem__(self, name: str) -> Contract:
        return self.contracts[name]

    def market(self, symbol: str) -> Market:
        return self.markets[symbol]

    def metadata(self) -> dict[str, Any]:
        """The deployment in Perp's own metadata format (`@perp/curie-deployments`)."""
        contracts: dict[str, dict[str, Any]] = {}
        for name, contract in self.contracts.items():
            if name in _EXTERNAL:
                continue
            solidity = "BaseToken" if name in self.markets else name
            contracts[name] = {
                "address": contract.address,
                "createdBlockNumber": self.created_block[name],
                "name": f"contracts/{solidity}.sol:{solidity}",
            }
        weth = self.contracts["WETH9"]
        quote = self.contracts["QuoteToken"]
        assert self.weth_price_feed is not None
        return {
            "chainId": self.chain.w3.eth.chain_id,
            "network": "devnet",
            "contracts": contracts,
            "externalContracts": {name: self.contracts[name].address for name in _EXTERNAL},
            "collaterals": [
                {
                    "address": weth.address,
                    "decimals": 18,
                    "name": "Wrapped Ether",
                    "priceFeedAddress": self.weth_price_feed.address,
                    "symbol": "WETH",
                }
            ],
            "pools": [
                {
                    "address": m.pool.address,
                    "baseAddress": m.base_token.address,
                    "baseSymbol": m.symbol,
                    "quoteAddress": quote.address,
                    "quoteSymbol": "vUSD",
                }
                for m in self.markets.values()
            ],
        }


_EXTERNAL = (
    "USDC",
    "WETH9",
    "UniswapV3Factory",
    "SwapRouter",
    "QuoterV2",
    "NonfungiblePositionManager",
    "Multicall3",
)


class Deployer:
    def __init__(self, chain: DevChain) -> None:
        self.chain = chain
        self.out = Deployment(chain)

    def _deploy(self, key: str, artifact: str, *args: Any) -> Contract:
        contract = self.chain.deploy(artifact, *args)
        self.out.contracts[key] = contract
        self.out.created_block[key] = self.chain.w3.eth.block_number
        return contract

    def _send(self, call: Any, value: int = 0) -> None:
        self.chain.send(call, DEPLOYER, value)

    def run(self, markets: tuple[MarketSpec, ...] = DEFAULT_MARKETS) -> Deployment:
        chain, send = self.chain, self._send
        usdc = self._deploy("USDC", "TestToken", "USD Coin", "USDC", 6)
        weth = self._deploy("WETH9", "WETH9")
        factory = self._deploy("UniswapV3Factory", "UniswapV3Factory")

        config = self._deploy("ClearingHouseConfig", "ClearingHouseConfig")
        send(config.functions.initialize())
        send(config.functions.setSettlementTokenBalanceCap(UINT256_MAX))

        quote = self._deploy_quote_token()
        market_registry = self._deploy("MarketRegistry", "MarketRegistry")
        send(market_registry.functions.initialize(factory.address, quote.address))
        order_book = self._deploy("OrderBook", "OrderBook")
        send(order_book.functions.initialize(market_registry.address))
        insurance_fund = self._deploy("InsuranceFund", "InsuranceFund")
        send(insurance_fund.functions.initialize(usdc.address))
        exchange = self._deploy("Exchange", "Exchange")
        send(exchange.functions.initialize(market_registry.address, order_book.address, config.address))
        account_balance = self._deploy("AccountBalance", "AccountBalance")
        send(account_balance.functions.initialize(config.address, order_book.address))
        send(exchange.functions.setAccountBalance(account_balance.address))
        send(order_book.functions.setExchange(exchange.address))

        vault = self._deploy("Vault", "Vault")
        send(
            vault.functions.initialize(
                insurance_fund.address, config.address, account_balance.address, exchange.address
            )
        )
        collateral_manager = self._deploy("CollateralManager", "CollateralManager")
        send(
            collateral_manager.functions.initialize(
                config.address,
                vault.address,
                MAX_COLLATERAL_TOKENS_PER_ACCOUNT,
                DEBT_NON_SETTLEMENT_TOKEN_VALUE_RATIO,
                LIQUIDATION_RATIO,
                MM_RATIO_BUFFER,
                CL_INSURANCE_FUND_FEE_RATIO,
                DEBT_THRESHOLD,
                COLLATERAL_VALUE_DUST,
            )
        )
        send(vault.functions.setCollateralManager(collateral_manager.address))
        send(vault.functions.setWETH9(weth.address))
        send(insurance_fund.functions.setVault(vault.address))
        send(account_balance.functions.setVault(vault.address))

        weth_feed = chain.deploy(
            "SettablePriceFeed", PRICE_FEED_DECIMALS, units.to_units(WETH_PRICE, PRICE_FEED_DECIMALS)
        )
        self.out.weth_price_feed = weth_feed
        send(
            collateral_manager.functions.addCollateral(
                weth.address, (weth_feed.address, WETH_COLLATERAL_RATIO, WETH_DISCOUNT_RATIO, UINT256_MAX)
            )
        )

        clearing_house = self._deploy("ClearingHouse", "ClearingHouse")
        send(
            clearing_house.functions.initialize(
                config.address,
                vault.address,
                quote.address,
                factory.address,
                exchange.address,
                account_balance.address,
                insurance_fund.address,
            )
        )
        send(vault.functions.setClearingHouse(clearing_house.address))
        send(quote.functions.mintMaximumTo(clearing_house.address))
        send(quote.functions.addWhitelist(clearing_house.address))
        for callee in (market_registry, order_book, exchange, account_balance):
            send(callee.functions.setClearingHouse(clearing_house.address))

        for spec in markets:
            self._add_market(spec)

        send(usdc.functions.mint(insurance_fund.address, INSURANCE_FUND_CAPITAL))
        self._deploy_spot_market()
        self.out.contracts["Multicall3"] = install_multicall3(chain)
        self.out.created_block["Multicall3"] = chain.w3.eth.block_number
        # Pools need 30 min of history before anything reading the mark price works (`OLD`).
        chain.advance_time(3600)
        return self.out

    def _deploy_quote_token(self) -> Contract:
        # Base tokens must sort below vUSD (MR_IB); a high vUSD address makes that quick to find.
        while True:
            quote = self._deploy("QuoteToken", "QuoteToken")
            if int(quote.address, 16) >= 2**159:
                break
        self._send(quote.functions.initialize("Perp Quote Token", "vUSD"))
        return quote

    def _add_market(self, spec: MarketSpec) -> None:
        chain, send = self.chain, self._send
        quote = self.out["QuoteToken"]
        feed = chain.deploy(
            "SettablePriceFeed", PRICE_FEED_DECIMALS, units.to_units(spec.index_price, PRICE_FEED_DECIMALS)
        )
        while True:
            base = self._deploy(spec.symbol, "BaseToken")
            if int(base.address, 16) < int(quote.address, 16):
                break
        send(base.functions.initialize(f"Perp {spec.symbol[1:]} Virtual Token", spec.symbol, feed.address))
        clearing_house = self.out["ClearingHouse"]
        send(base.functions.mintMaximumTo(clearing_house.address))
        send(base.functions.addWhitelist(clearing_house.address))

        factory = self.out["UniswapV3Factory"]
        send(factory.functions.createPool(base.address, quote.address, PERP_POOL_FEE))
        pool = chain.contract(
            "UniswapV3Pool", factory.functions.getPool(base.address, quote.address, PERP_POOL_FEE).call()
        )
        send(pool.functions.initialize(units.sqrt_price_x96(spec.index_price)))
        send(pool.functions.increaseObservationCardinalityNext(OBSERVATION_CARDINALITY))
        send(base.functions.addWhitelist(pool.address))
        send(quote.functions.addWhitelist(pool.address))

        market_registry = self.out["MarketRegistry"]
        send(market_registry.functions.addPool(base.address, PERP_POOL_FEE))
        send(market_registry.functions.setFeeRatio(base.address, EXCHANGE_FEE_RATIO))
        send(
            self.out["Exchange"].functions.setMaxTickCrossedWithinBlock(
                base.address, MAX_TICK_CROSSED_WITHIN_BLOCK
            )
        )
        self.out.markets[spec.symbol] = Market(spec.symbol, base, pool, feed)

    def _deploy_spot_market(self) -> None:
        """A real Uniswap v3 USDC/WETH pool with deep liquidity, SwapRouter and QuoterV2."""
        usdc, weth, factory = self.out["USDC"], self.out["WETH9"], self.out["UniswapV3Factory"]
        self._deploy("SwapRouter", "SwapRouter", factory.address, weth.address)
        self._deploy("QuoterV2", "QuoterV2", factory.address, weth.address)
        manager = self._deploy(
            "NonfungiblePositionManager",
            "NonfungiblePositionManager",
            factory.address,
            weth.address,
            "0x0000000000000000000000000000000000000000",
        )
        weth_amount = units.ether(10_000)
        usdc_amount = units.usdc(10_000) * int(WETH_PRICE)
        self.chain.set_balance(DEPLOYER, units.ether(1_000_000))
        self._send(weth.functions.deposit(), value=weth_amount)
        self._send(usdc.functions.mint(DEPLOYER, usdc_amount))
        self.out.spot_pool = add_full_range_liquidity(
            self.chain,
            factory,
            manager,
            (weth, 18, weth_amount),
            (usdc, 6, usdc_amount),
            SPOT_POOL_FEE,
            Fraction(WETH_PRICE),
        )


def add_full_range_liquidity(
    chain: DevChain,
    factory: Contract,
    manager: Contract,
    a: tuple[Contract, int, int],
    b: tuple[Contract, int, int],
    fee: int,
    b_per_a: Fraction | Decimal,
) -> Contract:
    """Create and initialise the a/b pool at `b_per_a` (whole tokens) and add the deployer's a and b
    over the full range. `a` and `b` are (token, decimals, amount)."""
    (token_a, dec_a, amount_a), (token_b, dec_b, amount_b) = a, b
    chain.send(factory.functions.createPool(token_a.address, token_b.address, fee))
    pool = chain.contract(
        "UniswapV3Pool", factory.functions.getPool(token_a.address, token_b.address, fee).call()
    )
    a_is_token0 = int(token_a.address, 16) < int(token_b.address, 16)
    price = Fraction(b_per_a)
    # pool price = token1 per token0
    sqrt_price = (
        units.sqrt_price_x96(price, dec_a, dec_b)
        if a_is_token0
        else units.sqrt_price_x96(1 / price, dec_b, dec_a)
    )
    chain.send(pool.functions.initialize(sqrt_price))
    chain.send(token_a.functions.approve(manager.address, UINT256_MAX))
    chain.send(token_b.functions.approve(manager.address, UINT256_MAX))
    lower, upper = units.full_range(factory.functions.feeAmountTickSpacing(fee).call())
    (token0, amount0), (token1, amount1) = sorted(
        ((token_a, amount_a), (token_b, amount_b)), key=lambda t: int(t[0].address, 16)
    )
    deadline = 2**64
    chain.send(
        manager.functions.mint(
            (token0.address, token1.address, fee, lower, upper, amount0, amount1, 0, 0, DEPLOYER, deadline)
        )
    )
    return pool


def install_multicall3(chain: DevChain) -> Contract:
    """Multicall3 at its canonical address, where every chain has it."""
    deployed = chain.deploy("Multicall3")
    code = chain.w3.eth.get_code(deployed.address)
    chain.rpc("anvil_setCode", MULTICALL3_ADDRESS, "0x" + code.hex().removeprefix("0x"))
    return chain.contract("Multicall3", MULTICALL3_ADDRESS)


def deploy(chain: DevChain, markets: tuple[MarketSpec, ...] = DEFAULT_MARKETS) -> Deployment:
    chain.make_deterministic()
    chain.set_balance(DEPLOYER, units.ether(1_000_000))
    return Deployer(chain).run(markets)


_ARTIFACT_OF_EXTERNAL = {"USDC": "TestToken"}


def attach(chain: DevChain, metadata: dict[str, Any]) -> Deployment:
    """The `Deployment` of a devnet written earlier (e.g. restored with `anvil --load-state`)."""
    out = Deployment(chain)
    for name, entry in metadata["contracts"].items():
        artifact = entry["name"].rsplit(":", 1)[-1]
        out.contracts[name] = chain.contract(artifact, entry["address"])
        out.created_block[name] = entry["createdBlockNumber"]
    for name, address in metadata["externalContracts"].items():
        out.contracts[name] = chain.contract(_ARTIFACT_OF_EXTERNAL.get(name, name), address)
    for pool in metadata["pools"]:
        base = out.contracts[pool["baseSymbol"]]
        feed = chain.contract("SettablePriceFeed", base.functions.getPriceFeed().call())
        out.markets[pool["baseSymbol"]] = Market(
            pool["baseSymbol"], base, chain.contract("UniswapV3Pool", pool["address"]), feed
        )
    collateral = metadata["collaterals"][0]
    out.weth_price_feed = chain.contract("SettablePriceFeed", collateral["priceFeedAddress"])
    return out
