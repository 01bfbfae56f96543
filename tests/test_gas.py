"""Gas prices read from a real node; the L1 fee is optional (anvil has no GasPriceOracle)."""

from __future__ import annotations

from devnet import up
from keeper import gas
from keeper.rpc import Rpc


async def test_gas_price_and_missing_oracle_on_anvil(devnet: up.Devnet) -> None:
    async with Rpc(devnet.url) as rpc:
        price = await gas.gas_price(rpc, max_fee_gwei=1)
        assert price.base_fee >= 0
        assert price.effective <= 10**9
        fee = await gas.l1_fee_upper_bound(rpc, 200)
        assert fee.wei == 0
        assert "no GasPriceOracle" in fee.note
