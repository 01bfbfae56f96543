"""Write `abi/*.json`: only the functions and events the keeper uses, taken from the real artifacts.

Run `python -m devnet.abi_gen` after changing SELECTION; tests/test_abi.py checks that every entry
is identical to the artifact's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devnet import artifacts, toolchain

ABI_DIR = Path(__file__).resolve().parent.parent / "abi"

# keeper ABI name -> (artifact, functions, events)
SELECTION: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "ClearingHouse": (
        "ClearingHouse",
        (
            "liquidate",
            "cancelAllExcessOrders",
            "cancelExcessOrders",
            "getAccountValue",
            "openPosition",
            "closePosition",
            "settleAllFunding",
            "quitMarket",
        ),
        (
            "PositionChanged",
            "LiquidityChanged",
            "PositionLiquidated",
            "PositionClosed",
            "FundingPaymentSettled",
        ),
    ),
    "AccountBalance": (
        "AccountBalance",
        (
            "getMarginRequirementForLiquidation",
            "getTotalAbsPositionValue",
            "getLiquidatablePositionSize",
            "getTakerPositionSize",
            "getTotalPositionSize",
            "getTakerOpenNotional",
            "getBaseTokens",
            "hasOrder",
            "getMarkPrice",
            "getPnlAndPendingFee",
            "getTotalDebtValue",
        ),
        ("PnlRealized",),
    ),
    "OrderBook": ("OrderBook", ("getOpenOrderIds", "getOpenOrderById"), ()),
    "Vault": (
        "Vault",
        (
            "isLiquidatable",
            "liquidateCollateral",
            "getMaxRepaidSettlementAndLiquidatableCollateral",
            "getLiquidatableCollateralBySettlement",
            "getRepaidSettlementByCollateral",
            "getMarginRequirementForCollateralLiquidation",
            "getCollateralMmRatio",
            "getAccountValue",
            "getFreeCollateral",
            "getFreeCollateralByRatio",
            "getSettlementTokenValue",
            "getBalanceByToken",
            "getCollateralTokens",
            "getSettlementToken",
            "decimals",
            "deposit",
            "withdraw",
            "settleBadDebt",
        ),
        ("Deposited", "Withdrawn", "CollateralLiquidated", "BadDebtSettled"),
    ),
    "CollateralManager": (
        "CollateralManager",
        (
            "getCollateralConfig",
            "getPrice",
            "getDebtThresholdByTrader",
            "getLiquidationRatio",
            "getCLInsuranceFundFeeRatio",
            "getCollateralValueDust",
            "getDebtNonSettlementTokenValueRatio",
            "getMmRatioBuffer",
        ),
        ("CollateralAdded",),
    ),
    "ClearingHouseConfig": (
        "ClearingHouseConfig",
        (
            "getMmRatio",
            "getImRatio",
            "getLiquidationPenaltyRatio",
            "getMarkPriceConfig",
            "getTwapInterval",
            "getMaxMarketsPerAccount",
        ),
        (),
    ),
    "BaseToken": ("BaseToken", ("getIndexPrice", "isOpen"), ()),
    "Exchange": (
        "Exchange",
        ("getSqrtMarketTwapX96", "getAllPendingFundingPayment", "isOverPriceSpread"),
        ("FundingUpdated",),
    ),
    "MarketRegistry": ("MarketRegistry", ("getPool", "getMarketInfo", "getFeeRatio"), ("PoolAdded",)),
    "InsuranceFund": ("InsuranceFund", ("getInsuranceFundCapacity",), ()),
    "QuoterV2": ("QuoterV2", ("quoteExactInputSingle",), ()),
    "SwapRouter": ("SwapRouter", ("exactInputSingle",), ()),
    "ERC20": (
        "IERC20Metadata",
        ("balanceOf", "allowance", "approve", "transfer", "decimals", "symbol"),
        ("Transfer",),
    ),
    "Multicall3": ("Multicall3", ("aggregate3", "getBlockNumber", "getEthBalance"), ()),
}


def select(artifact: str, functions: tuple[str, ...], events: tuple[str, ...]) -> list[dict[str, Any]]:
    abi = artifacts.load(artifact).abi
    chosen: list[dict[str, Any]] = []
    for kind, names in (("function", functions), ("event", events)):
        for name in names:
            entries = [e for e in abi if e.get("type") == kind and e.get("name") == name]
            if not entries:
                raise KeyError(f"{artifact} has no {kind} {name}")
            chosen.extend(entries)
    return chosen


def main() -> None:
    toolchain.ensure()
    ABI_DIR.mkdir(exist_ok=True)
    for name, (artifact, functions, events) in SELECTION.items():
        path = ABI_DIR / f"{name}.json"
        path.write_text(json.dumps(select(artifact, functions, events), indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
