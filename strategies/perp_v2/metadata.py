"""Perp v2 deployment metadata -> typed addresses.

Perp's own format (`@perp/curie-deployments`), so the same loader reads Perp's published Optimism file
and the devnet's. Unknown sections are ignored; a missing or malformed entry is a `MetadataError` that
names the file and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress

from keeper.metadata import DEFAULT_MULTICALL3, ContractRef, Parser, read_json

CORE_CONTRACTS = (
    "ClearingHouse",
    "ClearingHouseConfig",
    "Exchange",
    "OrderBook",
    "AccountBalance",
    "Vault",
    "CollateralManager",
    "InsuranceFund",
    "MarketRegistry",
    "QuoteToken",
)


@dataclass(frozen=True)
class Market:
    base_token: ChecksumAddress
    base_symbol: str
    pool: ChecksumAddress
    quote_token: ChecksumAddress


@dataclass(frozen=True)
class CollateralToken:
    address: ChecksumAddress
    symbol: str
    decimals: int
    price_feed: ChecksumAddress | None


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    network: str
    contracts: Mapping[str, ContractRef]
    usdc: ChecksumAddress
    weth9: ChecksumAddress | None
    uniswap_v3_factory: ChecksumAddress | None
    swap_router: ChecksumAddress | None
    quoter_v2: ChecksumAddress | None
    multicall3: ChecksumAddress
    markets: tuple[Market, ...]
    collaterals: tuple[CollateralToken, ...]

    def address(self, name: str) -> ChecksumAddress:
        return self.contracts[name].address

    @property
    def clearing_house(self) -> ChecksumAddress:
        return self.address("ClearingHouse")

    @property
    def vault(self) -> ChecksumAddress:
        return self.address("Vault")

    @property
    def account_balance(self) -> ChecksumAddress:
        return self.address("AccountBalance")

    @property
    def start_block(self) -> int:
        """The first block a log indexer must read: the earliest core contract's creation."""
        return min(self.contracts[name].created_block for name in CORE_CONTRACTS)

    @property
    def anchor(self) -> tuple[str, ChecksumAddress]:
        """The contract whose code proves the RPC serves this deployment (and binds the state db)."""
        return "ClearingHouse", self.clearing_house

    @property
    def eth_market(self) -> ChecksumAddress | None:
        """The vETH market, whose index price values gas."""
        return next((m.base_token for m in self.markets if m.base_symbol in ("vETH", "ETH")), None)


def load_metadata(path: str | Path) -> Deployment:
    return parse_metadata(read_json(Path(path)), str(path))


def parse_metadata(data: Any, source: str = "metadata") -> Deployment:
    parser = Parser(source)
    root = parser.mapping(data, "the top level")
    contracts_section = parser.mapping(root.get("contracts"), "contracts")
    contracts = {name: parser.contract(contracts_section, name) for name in CORE_CONTRACTS}
    external = parser.mapping(root.get("externalContracts", {}), "externalContracts")
    quote = contracts["QuoteToken"].address

    markets = []
    for i, pool in enumerate(parser.sequence(root.get("pools", []), "pools")):
        where = f"pools[{i}]"
        entry = parser.mapping(pool, where)
        markets.append(
            Market(
                base_token=parser.address(entry.get("baseAddress"), f"{where}.baseAddress"),
                base_symbol=parser.string(entry.get("baseSymbol"), f"{where}.baseSymbol"),
                pool=parser.address(entry.get("address"), f"{where}.address"),
                quote_token=parser.address(entry.get("quoteAddress", quote), f"{where}.quoteAddress"),
            )
        )
    collaterals = []
    for i, item in enumerate(parser.sequence(root.get("collaterals", []), "collaterals")):
        where = f"collaterals[{i}]"
        entry = parser.mapping(item, where)
        feed = entry.get("priceFeedAddress")
        collaterals.append(
            CollateralToken(
                address=parser.address(entry.get("address"), f"{where}.address"),
                symbol=parser.string(entry.get("symbol"), f"{where}.symbol"),
                decimals=parser.integer(entry.get("decimals"), f"{where}.decimals"),
                price_feed=None if feed is None else parser.address(feed, f"{where}.priceFeedAddress"),
            )
        )

    def optional(name: str) -> ChecksumAddress | None:
        return parser.optional_address(external, name, "externalContracts")

    return Deployment(
        chain_id=parser.integer(root.get("chainId"), "chainId"),
        network=parser.string(root.get("network", "unknown"), "network"),
        contracts=contracts,
        usdc=parser.address(external.get("USDC"), "externalContracts.USDC"),
        weth9=optional("WETH9"),
        uniswap_v3_factory=optional("UniswapV3Factory"),
        swap_router=optional("SwapRouter"),
        quoter_v2=optional("QuoterV2"),
        multicall3=optional("Multicall3") or DEFAULT_MULTICALL3,
        markets=tuple(markets),
        collaterals=tuple(collaterals),
    )
