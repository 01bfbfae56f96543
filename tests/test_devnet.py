"""The devnet is right: the real contracts put each scenario account where the scenario says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from web3 import Web3
from web3.contract import Contract
from web3.logs import DISCARD

from devnet import up
from devnet.anvil import Anvil
from devnet.chain import DevChain, TransactionFailedError
from devnet.deploy import MULTICALL3_ADDRESS
from devnet.scenario import KEEPER_ADDRESS, ScenarioBuilder, Trader


def _views(net: up.Devnet, account: str) -> dict[str, Any]:
    d = net.deployment
    return {
        "account_value": d["ClearingHouse"].functions.getAccountValue(account).call(),
        "requirement": d["AccountBalance"].functions.getMarginRequirementForLiquidation(account).call(),
        "has_order": d["AccountBalance"].functions.hasOrder(account).call(),
        "vault_liquidatable": d["Vault"].functions.isLiquidatable(account).call(),
    }


@dataclass(frozen=True)
class Perp:
    clearing_house: Contract
    account_balance: Contract
    veth: str
    vbtc: str


@pytest.fixture
def perp(devnet: up.Devnet) -> Perp:
    d = devnet.deployment
    return Perp(
        d["ClearingHouse"],
        d["AccountBalance"],
        d.market("vETH").base_token.address,
        d.market("vBTC").base_token.address,
    )


def _kinds(views: dict[str, Any]) -> set[str]:
    kinds = set()
    if views["account_value"] < views["requirement"]:
        kinds.add("maker" if views["has_order"] else "taker")
    if views["vault_liquidatable"]:
        kinds.add("collateral")
    return kinds


def test_every_scenario_account_is_as_the_manifest_says(devnet: up.Devnet) -> None:
    found = {label: _kinds(_views(devnet, t.address)) for label, t in devnet.scenario.traders.items()}
    expected = {label: set(t.expect) for label, t in devnet.scenario.traders.items()}
    assert found == expected
    everything = set().union(*found.values())
    assert everything == {"taker", "maker", "collateral"}
    assert any(not kinds for kinds in found.values()), "healthy accounts too"


def test_a_taker_becomes_liquidatable_after_a_price_move(devnet: up.Devnet, chain: DevChain) -> None:
    at_risk = devnet.scenario.traders["eth-long-4x"]
    before = _views(devnet, at_risk.address)
    assert before["account_value"] >= before["requirement"]

    builder = ScenarioBuilder(devnet.deployment, dict(devnet.scenario.traders))
    builder.move_market("vETH", "1440", builder.traders["price-mover"])
    builder.settle_twaps()

    after = _views(devnet, at_risk.address)
    assert after["account_value"] < after["requirement"]
    assert _kinds(after) == {"taker"}


def test_a_taker_liquidation_transfers_the_position_to_the_liquidator(
    perp: Perp, chain: DevChain, traders: dict[str, Trader]
) -> None:
    clearing_house, account_balance, veth = perp.clearing_house, perp.account_balance, perp.veth
    trader = traders["eth-long-7x"].address
    size = account_balance.functions.getTakerPositionSize(trader, veth).call()
    assert size > 0

    receipt = chain.send(clearing_house.functions.liquidate(trader, veth), KEEPER_ADDRESS)

    events = clearing_house.events.PositionLiquidated().process_receipt(receipt, errors=DISCARD)
    assert len(events) == 1
    assert events[0]["args"]["trader"] == trader
    liquidated = events[0]["args"]["positionSize"]
    remaining = account_balance.functions.getTakerPositionSize(trader, veth).call()
    assert remaining == size - liquidated
    assert account_balance.functions.getTakerPositionSize(KEEPER_ADDRESS, veth).call() == liquidated


def test_a_maker_cannot_be_liquidated_until_its_orders_are_cancelled_in_every_market(
    devnet: up.Devnet, perp: Perp, chain: DevChain, traders: dict[str, Trader]
) -> None:
    clearing_house, account_balance, veth, vbtc = (
        perp.clearing_house,
        perp.account_balance,
        perp.veth,
        perp.vbtc,
    )
    maker = traders["maker-two-markets"].address
    views = _views(devnet, maker)
    assert views["has_order"]
    assert views["account_value"] < views["requirement"]

    with pytest.raises(TransactionFailedError, match="CH_CLWTISO"):
        chain.send(clearing_house.functions.liquidate(maker, veth), KEEPER_ADDRESS)

    chain.send(clearing_house.functions.cancelAllExcessOrders(maker, veth), KEEPER_ADDRESS)
    assert account_balance.functions.hasOrder(maker).call(), "still has orders in vBTC"
    with pytest.raises(TransactionFailedError, match="CH_CLWTISO"):
        chain.send(clearing_house.functions.liquidate(maker, veth), KEEPER_ADDRESS)

    chain.send(clearing_house.functions.cancelAllExcessOrders(maker, vbtc), KEEPER_ADDRESS)
    assert not account_balance.functions.hasOrder(maker).call()
    # the removed liquidity left a taker position, which is now liquidatable
    assert account_balance.functions.getTakerPositionSize(maker, veth).call() > 0
    receipt = chain.send(clearing_house.functions.liquidate(maker, veth), KEEPER_ADDRESS)
    assert clearing_house.events.PositionLiquidated().process_receipt(receipt, errors=DISCARD)


def _collateral_conditions(net: up.Devnet, account: str) -> dict[str, bool]:
    """Vault.isLiquidatable's three conditions (Vault.sol 424-456), recomputed from public views."""
    d = net.deployment
    vault, manager = d["Vault"], d["CollateralManager"]
    weth = d["WETH9"].address
    account_value = d["ClearingHouse"].functions.getAccountValue(account).call()  # 18 dp
    requirement = vault.functions.getMarginRequirementForCollateralLiquidation(account).call()  # 18 dp
    debt = max(0, -vault.functions.getSettlementTokenValue(account).call())
    balance = vault.functions.getBalanceByToken(account, weth).call()
    price = manager.functions.getPrice(weth, 900).call()  # 8 dp
    collateral_ratio = manager.functions.getCollateralConfig(weth).call()[1]
    debt_ratio = manager.functions.getDebtNonSettlementTokenValueRatio().call()
    weighted = balance * price // 10**20 * collateral_ratio // 10**6  # 18 + 8 - 20 = 6 dp
    return {
        "margin": account_value < requirement,
        "debt_ratio": debt > weighted * debt_ratio // 10**6,
        "debt_threshold": debt > manager.functions.getDebtThresholdByTrader(account).call(),
    }


@pytest.mark.parametrize(
    ("label", "conditions"),
    [
        ("weth-leveraged", {"margin", "debt_ratio"}),
        ("weth-debt-threshold", {"debt_threshold"}),
        ("weth-debt-ratio", {"debt_ratio"}),
        ("weth-healthy", set()),
    ],
)
def test_weth_only_accounts_are_vault_liquidatable_by_each_condition(
    devnet: up.Devnet, traders: dict[str, Trader], label: str, conditions: set[str]
) -> None:
    account = traders[label].address
    vault = devnet.deployment["Vault"]
    assert vault.functions.getCollateralTokens(account).call() == [devnet.deployment["WETH9"].address]
    assert vault.functions.getBalanceByToken(account, devnet.deployment["USDC"].address).call() <= 0
    found = {name for name, holds in _collateral_conditions(devnet, account).items() if holds}
    assert found == conditions
    assert vault.functions.isLiquidatable(account).call() == bool(conditions)


def test_multicall3_is_at_its_canonical_address(devnet: up.Devnet) -> None:
    multicall = devnet.deployment["Multicall3"]
    assert multicall.address == Web3.to_checksum_address(MULTICALL3_ADDRESS)
    vault = devnet.deployment["Vault"]
    trader = devnet.scenario.traders["weth-debt-threshold"].address
    call = (vault.address, True, vault.functions.isLiquidatable(trader)._encode_transaction_data())
    [(ok, data)] = multicall.functions.aggregate3([call]).call()
    assert ok
    assert int.from_bytes(data, "big") == 1


def test_a_fork_sees_the_same_chain_and_leaves_the_origin_untouched(
    devnet: up.Devnet, perp: Perp, chain: DevChain, traders: dict[str, Trader]
) -> None:
    clearing_house, account_balance, veth = perp.clearing_house, perp.account_balance, perp.veth
    trader = traders["eth-long-5.5x"].address
    origin_head = chain.w3.eth.block_number
    origin_size = account_balance.functions.getTakerPositionSize(trader, veth).call()

    with Anvil(fork_url=devnet.url) as fork_node:
        fork = DevChain(fork_node.url)
        fork.make_deterministic()
        assert fork.w3.eth.chain_id == chain.w3.eth.chain_id
        assert fork.w3.eth.block_number == origin_head
        assert fork.w3.eth.get_code(clearing_house.address) == chain.w3.eth.get_code(clearing_house.address)
        for t in traders.values():
            assert (
                fork.contract("ClearingHouse", clearing_house.address)
                .functions.getAccountValue(t.address)
                .call()
                == clearing_house.functions.getAccountValue(t.address).call()
            )

        fork_clearing_house = fork.contract("ClearingHouse", clearing_house.address)
        fork.send(fork_clearing_house.functions.liquidate(trader, veth), KEEPER_ADDRESS)
        fork_balance = fork.contract("AccountBalance", account_balance.address)
        assert fork_balance.functions.getTakerPositionSize(trader, veth).call() != origin_size

    assert chain.w3.eth.block_number == origin_head
    assert account_balance.functions.getTakerPositionSize(trader, veth).call() == origin_size
