"""Signatures of third-party contracts whose artifacts the project does not fetch: the DEX aggregators'
routers that keeper/routers.py decodes. `devnet/signatures.py` accepts each only when its selector is
the one published beside the contract's interface or seen in its real calldata (a typo would compute
another)."""

from __future__ import annotations

PUBLISHED: dict[str, tuple[str, str]] = {
    # 1inch AggregationRouterV6 (0x111111125421cA6dc452d289314280a0f8842A65), selectors as listed beside
    # its interface (IAggregationRouterV6, `Address` = uint256)
    "swap(address,(address,address,address,address,uint256,uint256,uint256),bytes)": ("1inch v6", "07ed2379"),
    "unoswap(uint256,uint256,uint256,uint256)": ("1inch v6", "83800a8e"),
    "unoswap2(uint256,uint256,uint256,uint256,uint256)": ("1inch v6", "8770ba91"),
    "unoswap3(uint256,uint256,uint256,uint256,uint256,uint256)": ("1inch v6", "19367472"),
    "unoswapTo(uint256,uint256,uint256,uint256,uint256)": ("1inch v6", "e2c95c82"),
    "unoswapTo2(uint256,uint256,uint256,uint256,uint256,uint256)": ("1inch v6", "ea76dddf"),
    "unoswapTo3(uint256,uint256,uint256,uint256,uint256,uint256,uint256)": ("1inch v6", "f7a70056"),
    # 0x (github.com/0xProject/0x-settler): AllowanceHolder.exec and Settler.execute, the first words of
    # /swap/allowance-holder calldata; the deployer/registry's ownerOf (ERC-721) and prev
    "exec(address,address,uint256,address,bytes)": ("0x AllowanceHolder", "2213bc0b"),
    "execute((address,address,uint256),bytes[],bytes32)": ("0x Settler", "1fff991f"),
    "ownerOf(uint256)": ("0x Settler registry", "6352211e"),
    "prev(uint128)": ("0x Settler registry", "e2603dc2"),
}
