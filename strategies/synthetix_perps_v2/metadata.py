"""Synthetix Perps V2 deployment metadata -> typed addresses.

`"protocol": "synthetix-perps-v2"`, its core contracts and market proxies (docs/synthetix.md), written
by the devnet or by hand from Synthetix's `deployment.json`. A missing or malformed entry is a
`MetadataError` that names the file and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress

from keeper.metadata import DEFAULT_MULTICALL3, ContractRef, Parser, kind_of, read_json

SYNTHETIX_PERPS_V2 = "synthetix-perps-v2"
SYNTHETIX_CORE_CONTRACTS = ("FuturesMarketManager", "PerpsV2MarketSettings", "PerpsV2MarketData")


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

    @property
    def anchor(self) -> tuple[str, ChecksumAddress]:
        """The contract whose code proves the RPC serves this deployment (and binds the state db)."""
        return "FuturesMarketManager", self.manager

    @property
    def eth_market(self) -> ChecksumAddress | None:
        """The sETH market, whose oracle price values gas."""
        return next((m.proxy for m in self.markets if m.asset == "sETH"), None)


def load_synthetix_metadata(path: str | Path) -> SynthetixDeployment:
    return parse_synthetix_metadata(read_json(Path(path)), str(path))


def parse_synthetix_metadata(data: Any, source: str = "metadata") -> SynthetixDeployment:
    parser = Parser(source)
    root = parser.mapping(data, "the top level")
    if root.get("protocol") != SYNTHETIX_PERPS_V2:
        raise parser.fail(f'protocol must be "{SYNTHETIX_PERPS_V2}", got {kind_of(root.get("protocol"))}')
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
