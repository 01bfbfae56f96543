"""Write `abi/*.json`: only the functions and events the keeper uses, taken from the real artifacts.

Run `python -m devnet.abi_gen` after changing SELECTION; tests/test_abi.py checks that every entry
is identical to the artifact's and that abi/ holds exactly the signatures the keeper uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devnet import artifacts, signatures, toolchain

ABI_DIR = Path(__file__).resolve().parent.parent / "abi"

# keeper ABI name -> (artifact, the canonical signatures of the functions and events the keeper uses
# on that contract). tests/test_abi.py checks that together they are exactly the signatures the keeper
# uses (devnet/signatures.py extracts them from keeper/ and strategies/): add a signature here and run
# this module whenever the keeper starts using one.
SELECTION: dict[str, tuple[str, tuple[str, ...]]] = {
    "ClearingHouse": (
        "ClearingHouse",
        (
            "liquidate(address,address,int256)",
            "cancelAllExcessOrders(address,address)",
            "getAccountValue(address)",
            "openPosition((address,bool,bool,uint256,uint256,uint256,uint160,bytes32))",
            "closePosition((address,uint160,uint256,uint256,bytes32))",
            "PositionChanged(address,address,int256,int256,uint256,int256,int256,uint256)",
            "LiquidityChanged(address,address,address,int24,int24,int256,int256,int128,uint256)",
            "PositionLiquidated(address,address,uint256,uint256,uint256,address)",
            "PositionClosed(address,address,int256,int256,int256,int256,uint256)",
        ),
    ),
    "AccountBalance": (
        "AccountBalance",
        (
            "getMarginRequirementForLiquidation(address)",
            "getTotalAbsPositionValue(address)",
            "getTakerPositionSize(address,address)",
            "getTotalPositionSize(address,address)",
            "getBaseTokens(address)",
            "hasOrder(address)",
            "getMarkPrice(address)",
            "getPnlAndPendingFee(address)",
        ),
    ),
    "Exchange": ("Exchange", ("getAllPendingFundingPayment(address)",)),
    "OrderBook": ("OrderBook", ("getOpenOrderIds(address,address)",)),
    "Vault": (
        "Vault",
        (
            "isLiquidatable(address)",
            "liquidateCollateral(address,address,uint256,bool)",
            "getMaxRepaidSettlementAndLiquidatableCollateral(address,address)",
            "getLiquidatableCollateralBySettlement(address,uint256)",
            "getRepaidSettlementByCollateral(address,uint256)",
            "getFreeCollateral(address)",
            "getFreeCollateralByRatio(address,uint24)",
            "getSettlementTokenValue(address)",
            "getBalanceByToken(address,address)",
            "getCollateralTokens(address)",
            "getFreeCollateralByToken(address,address)",
            "deposit(address,uint256)",
            "withdraw(address,uint256)",
            "Deposited(address,address,uint256)",
            "Withdrawn(address,address,uint256)",
            "CollateralLiquidated(address,address,address,uint256,uint256,uint256,uint24)",
            "BadDebtSettled(address,uint256)",
        ),
    ),
    "CollateralManager": (
        "CollateralManager",
        (
            "getCollateralConfig(address)",
            "getPrice(address,uint256)",
            "getPriceFeedDecimals(address)",
            "getDebtThresholdByTrader(address)",
            "getLiquidationRatio()",
            "getDebtNonSettlementTokenValueRatio()",
            "getMmRatioBuffer()",
        ),
    ),
    "ClearingHouseConfig": (
        "ClearingHouseConfig",
        ("getMmRatio()", "getImRatio()", "getLiquidationPenaltyRatio()"),
    ),
    "BaseToken": ("BaseToken", ("getIndexPrice(uint256)",)),
    "MarketRegistry": ("MarketRegistry", ("getFeeRatio(address)",)),
    "QuoterV2": ("QuoterV2", ("quoteExactInputSingle((address,address,uint256,uint24,uint160))",)),
    "SwapRouter": (
        "SwapRouter",
        ("exactInputSingle((address,address,uint24,address,uint256,uint256,uint256,uint160))",),
    ),
    # Perp's own IERC20Metadata artifact: USDC and the collateral tokens.
    "ERC20": (
        "IERC20Metadata",
        (
            "balanceOf(address)",
            "allowance(address,address)",
            "approve(address,uint256)",
            "decimals()",
            "Transfer(address,address,uint256)",
            "Approval(address,address,uint256)",
        ),
    ),
    # The standard Multicall3 interface, from our stand-in (its ABI is Multicall3's; the keeper uses the
    # canonical deployment).
    "Multicall3": ("Multicall3", ("aggregate3((address,bool,bytes)[])", "getEthBalance(address)")),
    # WETH9's interface (the canonical WETH9 bytecode's), from our stand-in: unwrapping for gas.
    "WETH9": ("WETH9", ("withdraw(uint256)",)),
    # The OP Stack GasPriceOracle predeploy's (Fjord) interface, from our stand-in.
    "GasPriceOracle": ("GasPriceOracleStandIn", ("getL1FeeUpperBound(uint256)",)),
    # Synthetix Perps V2, from the deployment file the devnet deploys (devnet/synthetix.py).
    "FuturesMarketManager": ("FuturesMarketManager", ("isEndorsed(address)",)),
    "PerpsV2MarketSettings": (
        "PerpsV2MarketSettings",
        (
            "liquidationFeeRatio()",
            "minKeeperFee()",
            "maxKeeperFee()",
            "keeperLiquidationFee()",
            "maxLiquidationDelta(bytes32)",
            "maxPD(bytes32)",
            "skewScale(bytes32)",
        ),
    ),
    "PerpsV2MarketState": ("PerpsV2MarketState", ("positionFlagger(address)",)),
    # A market's proxy routes each selector to one implementation; these are the ones the keeper calls.
    "PerpsV2MarketViews": (
        "PerpsV2MarketViews",
        (
            "assetPrice()",
            "marketSkew()",
            "positions(address)",
            "canLiquidate(address)",
            "isFlagged(address)",
            "liquidationFee(address)",
            "remainingMargin(address)",
        ),
    ),
    "PerpsV2MarketLiquidate": (
        "PerpsV2MarketLiquidate",
        (
            "flagPosition(address)",
            "liquidatePosition(address)",
            "forceLiquidatePosition(address)",
            "PositionFlagged(uint256,address,address,uint256,uint256)",
            "PositionLiquidated(uint256,address,address,int256,uint256,uint256,uint256,uint256)",
        ),
    ),
    # The event every market implementation emits through the proxy.
    "PerpsV2Market": (
        "PerpsV2Market",
        ("PositionModified(uint256,address,uint256,int256,int256,uint256,uint256,uint256,int256)",),
    ),
}


def select(artifact: str, chosen: tuple[str, ...]) -> list[dict[str, Any]]:
    """The artifact's entries with these canonical signatures, in this order."""
    entries = {
        signatures.canonical(e): e
        for e in artifacts.load(artifact).abi
        if e.get("type") in ("function", "event")
    }
    missing = [s for s in chosen if s not in entries]
    if missing:
        raise KeyError(f"{artifact} defines none of {missing}")
    return [entries[s] for s in chosen]


def main() -> None:
    toolchain.ensure()
    ABI_DIR.mkdir(exist_ok=True)
    for stale in set(ABI_DIR.glob("*.json")) - {ABI_DIR / f"{name}.json" for name in SELECTION}:
        stale.unlink()
        print(f"removed {stale}")
    for name, (artifact, chosen) in SELECTION.items():
        path = ABI_DIR / f"{name}.json"
        path.write_text(json.dumps(select(artifact, chosen), indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
