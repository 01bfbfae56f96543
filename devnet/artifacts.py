"""Compiled contracts: the real ones from the npm packages, our stand-ins from solc-js."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

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
STAND_INS = ("TestToken", "WETH9", "SettablePriceFeed", "Multicall3", "GasPriceOracleStandIn")


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
def load(name: str) -> Artifact:
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
