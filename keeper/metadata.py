"""Deployment metadata -> typed addresses, for each protocol the keeper serves.

Perp v2: Perp's own format (`@perp/curie-deployments`), so the same loader reads Perp's published
Optimism file and the devnet's. Synthetix Perps V2: `"protocol": "synthetix-perps-v2"`, its core
contracts and market proxies (docs/synthetix.md), written by the devnet or by hand from Synthetix's
`deployment.json`. Unknown sections are ignored; a missing or malformed entry is an error that names
the file and the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress
from eth_utils.address import is_hex_address, to_checksum_address

from keeper.errors import MetadataError

# Multicall3 lives at this address on Optimism and most chains; the devnet installs it there too.
DEFAULT_MULTICALL3 = to_checksum_address("0xcA11bde05977b3631167028862bE2a173976CA11")

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


PERP_V2 = "perp-v2"
SYNTHETIX_PERPS_V2 = "synthetix-perps-v2"
PROTOCOLS = (PERP_V2, SYNTHETIX_PERPS_V2)
SYNTHETIX_CORE_CONTRACTS = ("FuturesMarketManager", "PerpsV2MarketSettings", "PerpsV2MarketData")


@dataclass(frozen=True)
class ContractRef:
    address: ChecksumAddress
    created_block: int


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


@dataclass(frozen=True)
class PerpsV2Market:
    key: str  # e.g. "sETHPERP"
    asset: str  # e.g. "sETH"
    proxy: ChecksumAddress  # the market's address: it routes every call and emits every event
    state: ChecksumAddress  # PerpsV2MarketState: who flagged a position
    created_block: int


@dataclass(frozen=True)
class SynthetixDeployment:
    chain_id: int
    network: str
    contracts: Mapping[str, ContractRef]
    markets: tuple[PerpsV2Market, ...]
    susd: ChecksumAddress
    usdc: ChecksumAddress | None
    quoter_v2: ChecksumAddress | None
    swap_router: ChecksumAddress | None
    multicall3: ChecksumAddress

    def address(self, name: str) -> ChecksumAddress:
        return self.contracts[name].address

    @property
    def manager(self) -> ChecksumAddress:
        return self.address("FuturesMarketManager")

    @property
    def settings(self) -> ChecksumAddress:
        return self.address("PerpsV2MarketSettings")

    @property
    def start_block(self) -> int:
        return min(m.created_block for m in self.markets)


def metadata_protocol(path: str | Path) -> str:
    """Which protocol a metadata file describes (`"protocol"`; Perp's own files have none)."""
    data = _read_json(Path(path))
    protocol = data.get("protocol", PERP_V2) if isinstance(data, Mapping) else PERP_V2
    if protocol not in PROTOCOLS:
        raise MetadataError(f"{path}: protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return str(protocol)


def load_synthetix_metadata(path: str | Path) -> SynthetixDeployment:
    return parse_synthetix_metadata(_read_json(Path(path)), str(path))


def parse_synthetix_metadata(data: Any, source: str = "metadata") -> SynthetixDeployment:
    parser = _Parser(source)
    root = parser.mapping(data, "the top level")
    if root.get("protocol") != SYNTHETIX_PERPS_V2:
        raise parser.fail(f'protocol must be "{SYNTHETIX_PERPS_V2}", got {_kind(root.get("protocol"))}')
    section = parser.mapping(root.get("contracts"), "contracts")
    contracts = {name: parser.contract(section, name) for name in SYNTHETIX_CORE_CONTRACTS}
    markets = []
    for i, item in enumerate(parser.sequence(root.get("markets"), "markets")):
        where = f"markets[{i}]"
        entry = parser.mapping(item, where)
        markets.append(
            PerpsV2Market(
                key=parser.string(entry.get("marketKey"), f"{where}.marketKey"),
                asset=parser.string(entry.get("asset"), f"{where}.asset"),
                proxy=parser.address(entry.get("proxy"), f"{where}.proxy"),
                state=parser.address(entry.get("state"), f"{where}.state"),
                created_block=parser.integer(
                    entry.get("createdBlockNumber", 0), f"{where}.createdBlockNumber"
                ),
            )
        )
    if not markets:
        raise parser.fail("markets is empty: list the market proxies to watch")
    external = parser.mapping(root.get("externalContracts", {}), "externalContracts")

    def optional(name: str) -> ChecksumAddress | None:
        return parser.optional_address(external, name, "externalContracts")

    return SynthetixDeployment(
        chain_id=parser.integer(root.get("chainId"), "chainId"),
        network=parser.string(root.get("network", "unknown"), "network"),
        contracts=contracts,
        markets=tuple(markets),
        susd=parser.address(external.get("sUSD"), "externalContracts.sUSD"),
        usdc=optional("USDC"),
        quoter_v2=optional("QuoterV2"),
        swap_router=optional("SwapRouter"),
        multicall3=optional("Multicall3") or DEFAULT_MULTICALL3,
    )


def load_metadata(path: str | Path) -> Deployment:
    return parse_metadata(_read_json(Path(path)), str(path))


def _read_json(source: Path) -> Any:
    try:
        text = source.read_text()
    except FileNotFoundError:
        raise MetadataError(f"metadata file {source} does not exist") from None
    except OSError as exc:
        raise MetadataError(f"metadata file {source} cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetadataError(f"metadata file {source} is not JSON: {exc.msg} at line {exc.lineno}") from None
    return data


def parse_metadata(data: Any, source: str = "metadata") -> Deployment:
    parser = _Parser(source)
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


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str) -> MetadataError:
        return MetadataError(f"{self.source}: {message}")

    def mapping(self, value: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(f"{where} must be an object, got {_kind(value)}")
        return value

    def sequence(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(f"{where} must be a list, got {_kind(value)}")
        return value

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(f"{where} must be a non-empty string, got {_kind(value)}")
        return value

    def integer(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(f"{where} must be a non-negative integer, got {_kind(value)}")
        return value

    def address(self, value: Any, where: str) -> ChecksumAddress:
        if value is None:
            raise self.fail(f"{where} is missing")
        if not isinstance(value, str) or not is_hex_address(value):
            raise self.fail(f"{where} is not an address: {value!r}")
        return to_checksum_address(value)

    def optional_address(self, section: Mapping[str, Any], name: str, where: str) -> ChecksumAddress | None:
        value = section.get(name)
        return None if value is None else self.address(value, f"{where}.{name}")

    def contract(self, section: Mapping[str, Any], name: str) -> ContractRef:
        if name not in section:
            raise self.fail(f"contracts.{name} is missing")
        entry = self.mapping(section[name], f"contracts.{name}")
        return ContractRef(
            address=self.address(entry.get("address"), f"contracts.{name}.address"),
            created_block=self.integer(
                entry.get("createdBlockNumber", 0), f"contracts.{name}.createdBlockNumber"
            ),
        )


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return repr(value)
    return type(value).__name__
