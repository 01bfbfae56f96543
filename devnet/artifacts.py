"""Compiled contracts: the real ones from the npm packages, our stand-ins from solc-js."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_utils.crypto import keccak

from devnet import toolchain

PERP_CONTRACTS = (
    "AccountBalance",
    "BaseToken",
    "ClearingHouse",
    "ClearingHouseConfig",
    "CollateralManager",
    "Exchange",
    "InsuranceFund",
    "MarketRegistry",
    "OrderBook",
    "QuoteToken",
    "Vault",
)
_UNISWAP = {
    "UniswapV3Factory": (toolchain.UNISWAP_CORE, "UniswapV3Factory.sol/UniswapV3Factory.json"),
    "UniswapV3Pool": (toolchain.UNISWAP_CORE, "UniswapV3Pool.sol/UniswapV3Pool.json"),
    "SwapRouter": (toolchain.UNISWAP_PERIPHERY, "SwapRouter.sol/SwapRouter.json"),
    "QuoterV2": (toolchain.UNISWAP_PERIPHERY, "lens/QuoterV2.sol/QuoterV2.json"),
    "NonfungiblePositionManager": (
        toolchain.UNISWAP_PERIPHERY,
        "NonfungiblePositionManager.sol/NonfungiblePositionManager.json",
    ),
}
STAND_INS = (
    "TestToken",
    "WETH9",
    "SettablePriceFeed",
    "Multicall3",
    "GasPriceOracleStandIn",
    "ExchangeRatesStandIn",
    "ExchangerStandIn",
    "SynthsUSDStandIn",
    "FeePoolStandIn",
)
# Real Synthetix (solc 0.5.16) builds from `synthetix`'s sepolia-ovm deployment file: its mainnet-ovm
# core contracts were built with the OVM 1.0 compiler and revert on a plain EVM; the PerpsV2 bytecode
# is byte-identical in both.
SYNTHETIX_CONTRACTS = (
    "SafeDecimalMath",
    "AddressResolver",
    "FlexibleStorage",
    "SystemStatus",
    "FuturesMarketManager",
    "PerpsV2MarketSettings",
    "PerpsV2ExchangeRate",
    "PerpsV2MarketData",
    "ProxyPerpsV2",
    "PerpsV2MarketState",
    "PerpsV2Market",
    "PerpsV2MarketLiquidate",
    "PerpsV2MarketDelayedIntent",
    "PerpsV2MarketDelayedExecution",
    "PerpsV2MarketViews",
)
SYNTHETIX_DEPLOYMENT = "publish/deployed/sepolia-ovm/deployment.json"
_PLACEHOLDER = re.compile(r"__\$[0-9a-f]{34}\$__")


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str


def artifact_path(name: str) -> Path:
    """The hardhat artifact of a real (third-party) contract."""
    if name == "IERC20Metadata":
        root = toolchain.package_dir(toolchain.PERP_CONTRACTS) / "artifacts/contracts/interface"
        return root / "IERC20Metadata.sol/IERC20Metadata.json"
    if name in PERP_CONTRACTS:
        root = toolchain.package_dir(toolchain.PERP_CONTRACTS) / "artifacts/contracts"
        return root / f"{name}.sol/{name}.json"
    if name in _UNISWAP:
        pkg, rel = _UNISWAP[name]
        return toolchain.package_dir(pkg) / "artifacts/contracts" / rel
    raise KeyError(f"unknown contract {name!r}")


@cache
def _synthetix_sources() -> dict[str, Any]:
    path = toolchain.package_dir(toolchain.SYNTHETIX) / SYNTHETIX_DEPLOYMENT
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make setup` (python -m devnet.toolchain)")
    sources: dict[str, Any] = json.loads(path.read_text())["sources"]
    return sources


def link(artifact: Artifact, libraries: Mapping[str, str]) -> Artifact:
    """Fill Synthetix's library placeholders: `__$` + keccak256("<Contract>.sol:<Library>")[:34] + `$__`.

    Synthetix compiles flattened files, so the placeholder names the contract's own file."""
    code = artifact.bytecode
    for library, address in libraries.items():
        digest = keccak(text=f"{artifact.name}.sol:{library}").hex()[:34]
        code = code.replace(f"__${digest}$__", address.lower().removeprefix("0x"))
    if missing := _PLACEHOLDER.findall(code):
        raise ValueError(f"{artifact.name}: unlinked libraries {sorted(set(missing))}")
    return Artifact(artifact.name, artifact.abi, code)


def needs_linking(artifact: Artifact) -> bool:
    return bool(_PLACEHOLDER.search(artifact.bytecode))


@cache
def load(name: str) -> Artifact:
    """The ABI and creation code of a contract; Synthetix ones may still need `link`."""
    if name in SYNTHETIX_CONTRACTS:
        source = _synthetix_sources()[name]
        return Artifact(name, source["abi"], "0x" + source["bytecode"].removeprefix("0x"))
    if name in STAND_INS:
        compiled = json.loads(toolchain.stand_ins_path().read_text())[name]
        return Artifact(name, compiled["abi"], compiled["bytecode"])
    path = artifact_path(name)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make setup` (python -m devnet.toolchain)")
    data = json.loads(path.read_text())
    if data.get("linkReferences"):
        raise ValueError(f"{name} needs library linking, which the devnet does not do")
    return Artifact(name, data["abi"], data["bytecode"])
