"""Deploy the real Synthetix Perps V2 (npm `synthetix@2.102.1`) on anvil, as Synthetix wires it.

Real bytecode: AddressResolver, FlexibleStorage, SystemStatus, FuturesMarketManager,
PerpsV2MarketSettings, PerpsV2ExchangeRate, PerpsV2MarketData and, per market, ProxyPerpsV2,
PerpsV2MarketState and the five implementations (SafeDecimalMath linked). Four stand-ins take the
place of core contracts a keeper never depends on: ExchangeRates (settable oracle prices), Exchanger,
SynthsUSD and FeePool. A real Uniswap v3 sUSD/USDC pool gives the keeper a market quote for sUSD.
See ../shared/docs/synthetix-perps-v2.md, "Local deployment recipe", for why each step is there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from eth_utils.crypto import keccak
from web3.contract import Contract

from devnet import artifacts, units
from devnet.chain import DEPLOYER, DevChain
from devnet.deploy import add_full_range_liquidity, install_multicall3

PROTOCOL = "synthetix-perps-v2"
IMPLEMENTATIONS = (  # route order: where two define a selector, the first wins
    "PerpsV2Market",
    "PerpsV2MarketLiquidate",
    "PerpsV2MarketDelayedIntent",
    "PerpsV2MarketDelayedExecution",
    "PerpsV2MarketViews",
)
MUTATING = IMPLEMENTATIONS[:4]
# plumbing of the implementations themselves, never reachable through the market proxy
UNROUTED = frozenset(
    {
        "owner",
        "nominatedOwner",
        "nominateNewOwner",
        "acceptOwnership",
        "proxy",
        "setProxy",
        "messageSender",
        "setMessageSender",
        "resolver",
        "rebuildCache",
        "isResolverCached",
        "resolverAddressesRequired",
    }
)
SUSD_POOL_FEE = 100
SUSD_USDC_PRICE = "0.998"  # sUSD trades below its peg (SIP-423): the keeper must not count it at 1 USD


@dataclass(frozen=True)
class GlobalSettings:
    """The SIP-2005 launch values (`index.js` defaults with keeperLiquidationFee 2, minKeeperFee 2)."""

    min_initial_margin: str = "40"
    liquidation_fee_ratio: str = "0.0035"
    min_keeper_fee: str = "2"
    max_keeper_fee: str = "1000"
    keeper_liquidation_fee: str = "2"


@dataclass(frozen=True)
class MarketSpec:
    key: str  # e.g. "sETHPERP"
    asset: str  # e.g. "sETH"
    price: str  # initial oracle price, USD
    skew_scale: str  # base units
    max_liquidation_delta: str = "0.0012"
    max_pd: str = "0.0024"
    taker_fee: str = "0.0003"
    maker_fee: str = "0.0002"
    max_leverage: str = "100"
    liquidation_premium_multiplier: str = "1.5625"
    liquidation_buffer_ratio: str = "0.0025"
    max_funding_velocity: str = "9"

    def parameters(self) -> tuple[Any, ...]:
        """IPerpsV2MarketSettings.Parameters, in field order."""
        e = units.ether
        return (
            e(self.taker_fee),
            e(self.maker_fee),
            e("0.001"),  # takerFeeDelayedOrder
            e("0.0005"),  # makerFeeDelayedOrder
            e("0.0006"),  # takerFeeOffchainDelayedOrder
            e("0.0002"),  # makerFeeOffchainDelayedOrder
            e(self.max_leverage),
            e(self.skew_scale) * 10,  # maxMarketValue
            e(self.max_funding_velocity),
            e(self.skew_scale),
            2,  # nextPriceConfirmWindow (rounds)
            120,  # delayedOrderConfirmWindow (s)
            60,  # minDelayTimeDelta
            6_000,  # maxDelayTimeDelta
            15,  # offchainDelayedOrderMinAge
            60,  # offchainDelayedOrderMaxAge
            bytes32(f"oc{self.key}"),
            e("0.05"),  # offchainPriceDivergence
            e(self.liquidation_premium_multiplier),
            e(self.liquidation_buffer_ratio),
            e(self.max_liquidation_delta),
            e(self.max_pd),
        )


DEFAULT_MARKETS = (
    MarketSpec("sETHPERP", "sETH", "2000", skew_scale="1000000"),
    MarketSpec("sBTCPERP", "sBTC", "30000", skew_scale="10000"),
)


def bytes32(text: str) -> bytes:
    return text.encode().ljust(32, b"\0")


@dataclass
class PerpsMarket:
    key: str
    asset: str
    proxy: Contract  # the market's address, with every implementation's ABI
    state: Contract
    implementations: dict[str, Contract]
    created_block: int


@dataclass
class SynthetixDeployment:
    chain: DevChain
    contracts: dict[str, Contract] = field(default_factory=dict)
    created_block: dict[str, int] = field(default_factory=dict)
    markets: dict[str, PerpsMarket] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Contract:
        return self.contracts[name]

    def market(self, asset_or_key: str) -> PerpsMarket:
        for m in self.markets.values():
            if asset_or_key in (m.key, m.asset):
                return m
        raise KeyError(asset_or_key)

    def set_price(self, asset: str, price: str | Decimal) -> None:
        """Move the oracle price the markets read (ExchangeRates)."""
        rates = self.contracts["ExchangeRates"]
        self.chain.send(rates.functions.setRate(bytes32(asset), units.ether(str(price))))

    def metadata(self) -> dict[str, Any]:
        """What the keeper reads (`--metadata`): core contracts, markets, and external contracts."""
        core = ("FuturesMarketManager", "PerpsV2MarketSettings", "PerpsV2MarketData", "AddressResolver")
        return {
            "protocol": PROTOCOL,
            "chainId": self.chain.w3.eth.chain_id,
            "network": "devnet",
            "contracts": {
                name: {
                    "address": self.contracts[name].address,
                    "createdBlockNumber": self.created_block[name],
                }
                for name in core
            },
            "markets": [
                {
                    "marketKey": m.key,
                    "asset": m.asset,
                    "proxy": m.proxy.address,
                    "state": m.state.address,
                    "createdBlockNumber": m.created_block,
                }
                for m in self.markets.values()
            ],
            "externalContracts": {
                "sUSD": self.contracts["SynthsUSD"].address,
                "USDC": self.contracts["USDC"].address,
                "QuoterV2": self.contracts["QuoterV2"].address,
                "SwapRouter": self.contracts["SwapRouter"].address,
                "Multicall3": self.contracts["Multicall3"].address,
                "ExchangeRates": self.contracts["ExchangeRates"].address,
            },
        }


@dataclass(frozen=True)
class Route:
    selector: bytes
    implementation: str
    is_view: bool
    entry: dict[str, Any]


def routes() -> list[Route]:
    """Every selector the market proxy routes, to the first implementation (in route order) with it."""
    out: list[Route] = []
    seen: set[bytes] = set()
    for name in IMPLEMENTATIONS:
        for entry in artifacts.load(name).abi:
            if entry["type"] != "function" or entry["name"] in UNROUTED:
                continue
            selector = _selector(entry)
            if selector not in seen:
                seen.add(selector)
                view = entry.get("stateMutability") in ("view", "pure")
                out.append(Route(selector, name, view, entry))
    return out


def proxy_abi() -> list[dict[str, Any]]:
    """The market proxy's ABI: every routed function and every implementation's events."""
    events = {e["name"]: e for n in IMPLEMENTATIONS for e in artifacts.load(n).abi if e["type"] == "event"}
    return [r.entry for r in routes()] + list(events.values())


def _selector(entry: dict[str, Any]) -> bytes:
    types = ",".join(_abi_type(i) for i in entry["inputs"])
    return keccak(text=f"{entry['name']}({types})")[:4]


def _abi_type(param: dict[str, Any]) -> str:
    if param["type"].startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in param["components"]) + ")" + str(param["type"])[5:]
    return str(param["type"])


class Deployer:
    def __init__(self, chain: DevChain) -> None:
        self.chain = chain
        self.out = SynthetixDeployment(chain)

    def _deploy(
        self, key: str, name: str, *args: Any, libraries: Mapping[str, str] | None = None
    ) -> Contract:
        art = artifacts.load(name)
        if libraries:
            art = artifacts.link(art, libraries)
        contract = self.chain.deploy_artifact(art, *args)
        self.out.contracts[key] = contract
        self.out.created_block[key] = self.chain.w3.eth.block_number
        return contract

    def _send(self, call: Any) -> None:
        self.chain.send(call, DEPLOYER)

    def run(self, markets: tuple[MarketSpec, ...], settings: GlobalSettings) -> SynthetixDeployment:
        send, owner = self._send, DEPLOYER
        self._deploy("SafeDecimalMath", "SafeDecimalMath")
        resolver = self._deploy("AddressResolver", "AddressResolver", owner)
        core = {
            "SystemStatus": self._deploy("SystemStatus", "SystemStatus", owner),
            "FlexibleStorage": self._deploy("FlexibleStorage", "FlexibleStorage", resolver.address),
            "FuturesMarketManager": self._deploy(
                "FuturesMarketManager", "FuturesMarketManager", owner, resolver.address
            ),
            "PerpsV2MarketSettings": self._deploy(
                "PerpsV2MarketSettings", "PerpsV2MarketSettings", owner, resolver.address
            ),
            "PerpsV2ExchangeRate": self._deploy(
                "PerpsV2ExchangeRate", "PerpsV2ExchangeRate", owner, resolver.address
            ),
            "ExchangeRates": self._deploy("ExchangeRates", "ExchangeRatesStandIn"),
            "Exchanger": self._deploy("Exchanger", "ExchangerStandIn"),
            "SynthsUSD": self._deploy("SynthsUSD", "SynthsUSDStandIn"),
            "FeePool": self._deploy("FeePool", "FeePoolStandIn"),
        }
        self._deploy("PerpsV2MarketData", "PerpsV2MarketData", resolver.address)
        send(
            resolver.functions.importAddresses(
                [bytes32(name) for name in core], [c.address for c in core.values()]
            )
        )
        for name in ("FuturesMarketManager", "PerpsV2MarketSettings", "PerpsV2ExchangeRate"):
            send(core[name].functions.rebuildCache())
        send(core["SynthsUSD"].functions.setIssuer(core["FuturesMarketManager"].address))

        s, e = core["PerpsV2MarketSettings"].functions, units.ether
        send(s.setMinInitialMargin(e(settings.min_initial_margin)))
        send(s.setMaxKeeperFee(e(settings.max_keeper_fee)))  # before min: min <= max
        send(s.setMinKeeperFee(e(settings.min_keeper_fee)))
        send(s.setLiquidationFeeRatio(e(settings.liquidation_fee_ratio)))
        send(s.setKeeperLiquidationFee(e(settings.keeper_liquidation_fee)))

        for spec in markets:
            self._add_market(spec)
        self._deploy_susd_pool()
        self.out.contracts["Multicall3"] = install_multicall3(self.chain)
        self.out.created_block["Multicall3"] = self.chain.w3.eth.block_number
        return self.out

    def _add_market(self, spec: MarketSpec) -> None:
        send, owner = self._send, DEPLOYER
        resolver = self.out["AddressResolver"].address
        self.out.set_price(spec.asset, spec.price)
        proxy = self._deploy(f"{spec.key}:proxy", "ProxyPerpsV2", owner)
        created = self.chain.w3.eth.block_number
        state = self._deploy(
            f"{spec.key}:state",
            "PerpsV2MarketState",
            owner,
            [],
            bytes32(spec.asset),
            bytes32(spec.key),
            "0x0000000000000000000000000000000000000000",
        )
        library = {"SafeDecimalMath": self.out["SafeDecimalMath"].address}
        impls: dict[str, Contract] = {}
        for name in IMPLEMENTATIONS:
            args = (
                (state.address, owner, resolver)
                if name == "PerpsV2MarketViews"
                else (
                    proxy.address,
                    state.address,
                    owner,
                    resolver,
                )
            )
            impls[name] = self._deploy(f"{spec.key}:{name}", name, *args, libraries=library)
        send(state.functions.linkOrInitializeState())
        send(state.functions.addAssociatedContracts([impls[n].address for n in MUTATING]))
        for route in routes():
            send(proxy.functions.addRoute(route.selector, impls[route.implementation].address, route.is_view))
        for impl in impls.values():
            send(impl.functions.rebuildCache())
        manager, settings = self.out["FuturesMarketManager"], self.out["PerpsV2MarketSettings"]
        send(manager.functions.addProxiedMarkets([proxy.address]))  # before setSkewScale & co.
        send(settings.functions.setParameters(bytes32(spec.key), spec.parameters()))
        market_proxy = self.chain.w3.eth.contract(address=proxy.address, abi=proxy_abi())
        self.out.markets[spec.key] = PerpsMarket(spec.key, spec.asset, market_proxy, state, impls, created)

    def _deploy_susd_pool(self) -> None:
        """sUSD/USDC on a real Uniswap v3 pool, QuoterV2 and SwapRouter: the keeper's sUSD quote."""
        usdc = self._deploy("USDC", "TestToken", "USD Coin", "USDC", 6)
        weth = self._deploy("WETH9", "WETH9")
        factory = self._deploy("UniswapV3Factory", "UniswapV3Factory")
        self._deploy("SwapRouter", "SwapRouter", factory.address, weth.address)
        self._deploy("QuoterV2", "QuoterV2", factory.address, weth.address)
        manager = self._deploy(
            "NonfungiblePositionManager",
            "NonfungiblePositionManager",
            factory.address,
            weth.address,
            "0x0000000000000000000000000000000000000000",
        )
        self._send(factory.functions.enableFeeAmount(SUSD_POOL_FEE, 1))  # the stablecoin tier (not in 1.0.1)
        susd = self.out["SynthsUSD"]
        depth = 10_000_000
        self._send(susd.functions.issue(DEPLOYER, units.ether(depth)))
        self._send(usdc.functions.mint(DEPLOYER, units.usdc(depth)))
        add_full_range_liquidity(
            self.chain,
            factory,
            manager,
            (susd, 18, units.ether(depth)),
            (usdc, 6, units.usdc(depth)),
            SUSD_POOL_FEE,
            Decimal(SUSD_USDC_PRICE),
        )


def deploy(
    chain: DevChain,
    markets: tuple[MarketSpec, ...] = DEFAULT_MARKETS,
    settings: GlobalSettings = GlobalSettings(),
) -> SynthetixDeployment:
    chain.make_deterministic()
    chain.set_balance(DEPLOYER, units.ether(1_000_000))
    return Deployer(chain).run(markets, settings)
