"""`anvil --optimism` with L1 prices set: the L1 data fee alone turns a liquidation unprofitable."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devnet import up
from devnet.optimism import set_l1_prices
from devnet.scenario import KEEPER_ADDRESS
from keeper import gas
from keeper.profit import X18
from strategies.perp_v2.plugin import PerpSession, open_session
from strategies.perp_v2.positions import PerpV2Positions, PositionSettings


@pytest.fixture(scope="module")
def op_devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[up.Devnet]:
    net = up.start(out_dir=tmp_path_factory.mktemp("op"), log=False, anvil_args=["--optimism"])
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture
async def session(op_devnet: up.Devnet, tmp_path: Path) -> AsyncIterator[PerpSession]:
    opened = await open_session(op_devnet.url, op_devnet.metadata_path, tmp_path / "op.sqlite")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.mark.chain
async def test_only_the_l1_fee_makes_a_liquidation_unprofitable(
    op_devnet: up.Devnet, session: PerpSession
) -> None:
    strategy = PerpV2Positions(
        session.deployment,
        session.scanner,
        session.rpc,
        session.read,
        PositionSettings(min_profit=X18, inherited="hold"),
    )
    await strategy.refresh()
    smallest = min(strategy.opportunities(), key=lambda o: o.notional)
    without_l1 = await strategy.plan(smallest, KEEPER_ADDRESS)
    assert without_l1.execute, without_l1.reason
    assert without_l1.estimate is not None
    assert without_l1.estimate.l1_cost == 0
    assert "no GasPriceOracle" in without_l1.detail["l1_note"]

    # an L1 congested enough that posting a keeper tx costs more than the reward
    reward = without_l1.estimate.reward.capped
    set_l1_prices(
        op_devnet.chain,
        l1_base_fee=10**17,
        blob_base_fee=10**15,
        base_fee_scalar=1_368,
        blob_base_fee_scalar=810_949,
    )
    assert (await gas.l1_fee_upper_bound(session.rpc, 200)).wei > 0
    with_l1 = await strategy.plan(smallest, KEEPER_ADDRESS)
    assert with_l1.estimate is not None
    assert not with_l1.execute
    assert with_l1.estimate.l1_cost > reward
    assert with_l1.estimate.gas_cost == pytest.approx(without_l1.estimate.gas_cost, rel=0.2)  # L2 unchanged
    assert reward - with_l1.estimate.gas_cost >= X18  # the L2 gas alone would have been fine
    assert "L1" in with_l1.reason


@pytest.mark.chain
def test_anvil_charges_the_l1_fee_the_oracle_quotes(op_devnet: up.Devnet) -> None:
    chain = op_devnet.chain
    set_l1_prices(
        chain,
        l1_base_fee=30 * 10**9,
        blob_base_fee=5 * 10**9,
        base_fee_scalar=1_368,
        blob_base_fee_scalar=810_949,
    )
    sender = chain.w3.to_checksum_address(KEEPER_ADDRESS)
    before = chain.w3.eth.get_balance(sender)
    tx_hash = chain.w3.eth.send_transaction({"from": sender, "to": sender})
    receipt = chain.w3.eth.wait_for_transaction_receipt(tx_hash)
    paid = before - chain.w3.eth.get_balance(sender)
    l2 = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    oracle = chain.w3.eth.contract(
        address=chain.w3.to_checksum_address("0x420000000000000000000000000000000000000F"),
        abi=[
            {
                "type": "function",
                "name": "getL1FeeUpperBound",
                "stateMutability": "view",
                "inputs": [{"name": "size", "type": "uint256"}],
                "outputs": [{"name": "", "type": "uint256"}],
            }
        ],
    )
    quoted = oracle.functions.getL1FeeUpperBound(0).call()  # a bare transfer sits on the 100-byte floor
    assert paid - l2 == quoted
