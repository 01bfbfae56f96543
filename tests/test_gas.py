"""Gas prices read from a real node; the L1 fee is optional (anvil has no GasPriceOracle)."""

from __future__ import annotations

from devnet import up
from devnet.chain import DevChain
from keeper import gas
from keeper.rpc import Rpc

BASE_FEE = 7 * 10**9 + 123  # wei: a value no default of anvil's or the keeper's would produce


async def test_gas_price_is_the_pending_blocks_base_fee_and_the_nodes_tip_under_the_ceiling(
    devnet: up.Devnet, chain: DevChain
) -> None:
    chain.rpc("anvil_setNextBlockBaseFeePerGas", hex(BASE_FEE))
    tip = chain.w3.eth.max_priority_fee
    assert tip > 0
    async with Rpc(devnet.url) as rpc:
        price = await gas.gas_price(rpc)
        assert (price.base_fee, price.tip, price.max_fee) == (BASE_FEE, tip, None)
        assert price.effective == BASE_FEE + tip
        # the operator's ceiling (KEEPER_MAX_FEE_GWEI) caps what a unit of gas may cost
        capped = await gas.gas_price(rpc, max_fee_gwei=5)
        assert (capped.base_fee, capped.max_fee, capped.effective) == (BASE_FEE, 5 * 10**9, 5 * 10**9)
        roomy = await gas.gas_price(rpc, max_fee_gwei=100)
        assert roomy.effective == BASE_FEE + tip

        # after an empty block at BASE_FEE the next (pending) block's fee falls (EIP-1559) while the
        # latest block's is still BASE_FEE: this tells the pending block from the latest
        chain.rpc("evm_mine")
        assert chain.w3.eth.get_block("latest")["baseFeePerGas"] == BASE_FEE
        pending = (await gas.gas_price(rpc)).base_fee
        assert pending == chain.w3.eth.get_block("pending")["baseFeePerGas"]
        assert 0 < pending < BASE_FEE


async def test_l1_fee_is_zero_with_a_reason_where_there_is_no_gas_price_oracle(devnet: up.Devnet) -> None:
    async with Rpc(devnet.url) as rpc:
        fee = await gas.l1_fee_upper_bound(rpc, 200)
        assert fee.wei == 0
        assert "no GasPriceOracle" in fee.note
