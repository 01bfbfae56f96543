"""Perp v2 revert codes a keeper meets, in words (contracts 2.8.4)."""

from __future__ import annotations

REASONS = {
    "CH_CLWTISO": "the trader still has open orders: cancel them in every market first",
    "CH_EAV": "the account is not liquidatable (enough account value)",
    "CH_WLD": "wrong liquidation direction: the size must have the position's sign",
    "CH_PSZ": "the trader has no position in this market",
    "CH_NEFCI": "the keeper lacks free collateral for the initial margin of the position it takes over",
    "CH_NEXO": "the maker's orders cannot be cancelled yet (not liquidatable, free collateral >= 0)",
    "CH_IIC": "the insurance fund cannot absorb the bad debt this liquidation leaves",
    "CH_MNO": "the market is not open (paused or closed)",
    "AB_MNE": "the keeper is in too many markets to take over another position",
    "V_NL": "the account is not collateral-liquidatable",
    "V_MSAE": "the repaid USDC exceeds the maximum (it shrinks as funding accrues)",
    "V_MCAE": "the collateral amount exceeds the maximum",
    "V_TINAC": "not a collateral token of this account",
    "EX_OPLAS": "the trade would cross too many ticks in this block",
    "EX_OPB": "the trade would push the market more than 10 % from the index",
    "CH_TLRS": "too little received: the price moved past the slippage bound",
    "CH_TMRS": "too much requested: the price moved past the slippage bound",
}


def explain(reason: str) -> str:
    """`CH_EAV` -> `CH_EAV: the account is not liquidatable ...`; unknown reasons unchanged."""
    for code, words in REASONS.items():
        if code in reason:
            return f"{code}: {words}"
    return reason
