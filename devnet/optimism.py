"""OP-stack L1 data fees on anvil: L1Block prices (which `anvil --optimism` charges) and a
GasPriceOracle stand-in at 0x42..0F (which anvil lacks) that quotes the same Fjord fee."""

from __future__ import annotations

from web3 import Web3

from devnet.chain import DevChain

GAS_PRICE_ORACLE = Web3.to_checksum_address("0x420000000000000000000000000000000000000F")
L1_BLOCK = "0x4200000000000000000000000000000000000015"


def _word(value: int) -> str:
    return "0x" + value.to_bytes(32, "big").hex()


def set_l1_prices(
    chain: DevChain, l1_base_fee: int, blob_base_fee: int, base_fee_scalar: int, blob_base_fee_scalar: int
) -> None:
    # L1Block storage as anvil --optimism reads it: slot 1 base fee, slot 3 the scalars, slot 7 blob base fee
    chain.rpc("anvil_setStorageAt", L1_BLOCK, _word(1), _word(l1_base_fee))
    chain.rpc(
        "anvil_setStorageAt", L1_BLOCK, _word(3), _word(base_fee_scalar << 96 | blob_base_fee_scalar << 64)
    )
    chain.rpc("anvil_setStorageAt", L1_BLOCK, _word(7), _word(blob_base_fee))
    # anvil --optimism charges the L1 fee even inside eth_call, where op-geth does not; a call without
    # `from` runs as the zero address, which must then afford it
    chain.set_balance("0x0000000000000000000000000000000000000000", 10**24)
    if chain.w3.eth.get_code(GAS_PRICE_ORACLE) in (b"", None):
        stand_in = chain.deploy("GasPriceOracleStandIn")
        chain.rpc(
            "anvil_setCode", GAS_PRICE_ORACLE, "0x" + bytes(chain.w3.eth.get_code(stand_in.address)).hex()
        )
    for slot, value in enumerate((l1_base_fee, blob_base_fee, base_fee_scalar, blob_base_fee_scalar)):
        chain.rpc("anvil_setStorageAt", GAS_PRICE_ORACLE, _word(slot), _word(value))
