"""aggregate3 encoding: pure properties, then exact agreement with the real contracts' own views."""

from __future__ import annotations

from eth_abi.abi import encode

from devnet import up
from devnet.deploy import MULTICALL3_ADDRESS
from keeper.codec import decode_revert
from keeper.multicall import AGGREGATE3_SELECTOR, Call, Result, batches, decode_aggregate3, encode_aggregate3

A = "0x" + "11" * 20


def test_calldata_is_selector_plus_abi_encoded_arguments() -> None:
    call = Call(A, "getAccountValue(address)", (A,), ("int256",))
    assert call.calldata() == bytes.fromhex("5ae80951") + encode(["address"], [A])
    assert Call(A, "getMmRatio()", (), ("uint24",)).calldata() == bytes.fromhex("a8549402")


def test_tuple_arguments_split_at_top_level_commas() -> None:
    call = Call(A, "f((address,uint256),bool)", ((A, 5), True), ())
    assert call.calldata()[4:] == encode(["(address,uint256)", "bool"], [(A, 5), True])


def test_aggregate3_round_trip_keeps_failures_apart() -> None:
    calls = [Call(A, "a()", (), ("int256",)), Call(A, "b()", (), ("bool",)), Call(A, "c()", (), ("uint256",))]
    assert encode_aggregate3(calls)[:4] == AGGREGATE3_SELECTOR
    reason = bytes.fromhex("08c379a0") + encode(["string"], ["CH_EAV"])
    returned = encode(["(bool,bytes)[]"], [[(True, encode(["int256"], [-7])), (False, reason), (True, b"")]])
    results = decode_aggregate3(calls, returned)
    assert results[0] == Result(True, (-7,))
    assert results[1].ok is False
    assert decode_revert(results[1].revert_data) == "CH_EAV"
    assert results[2].ok is False  # success with empty data: no code at the target


def test_batches_stay_under_the_gas_budget_and_keep_order() -> None:
    calls = [Call(A, f"f{i}()", (), (), gas=g) for i, g in enumerate([10, 20, 30, 40, 50, 200])]
    cut = list(batches(calls, max_gas=60))
    assert [[c.signature for c in b] for b in cut] == [["f0()", "f1()", "f2()"], ["f3()"], ["f4()"], ["f5()"]]
    assert [c for b in cut for c in b] == calls


def test_one_multicall_agrees_exactly_with_each_contracts_own_views(devnet: up.Devnet) -> None:
    d = devnet.deployment
    clearing_house, account_balance, vault = d["ClearingHouse"], d["AccountBalance"], d["Vault"]
    calls: list[Call] = []
    expected: list[object] = []
    for trader in devnet.scenario.traders.values():
        who = trader.address
        calls += [
            Call(clearing_house.address, "getAccountValue(address)", (who,), ("int256",)),
            Call(account_balance.address, "getMarginRequirementForLiquidation(address)", (who,), ("int256",)),
            Call(account_balance.address, "hasOrder(address)", (who,), ("bool",)),
            Call(vault.address, "isLiquidatable(address)", (who,), ("bool",)),
            Call(account_balance.address, "getBaseTokens(address)", (who,), ("address[]",)),
        ]
        expected += [
            clearing_house.functions.getAccountValue(who).call(),
            account_balance.functions.getMarginRequirementForLiquidation(who).call(),
            account_balance.functions.hasOrder(who).call(),
            vault.functions.isLiquidatable(who).call(),
            tuple(t.lower() for t in account_balance.functions.getBaseTokens(who).call()),
        ]
    # a view that reverts on its own does not hide the others
    calls.append(Call(account_balance.address, "getMarkPrice(address)", (A,), ("uint256",)))

    block = devnet.chain.w3.eth.block_number
    results = []
    for batch in batches(calls, max_gas=3_000_000):
        returned = devnet.chain.w3.eth.call(
            {"to": MULTICALL3_ADDRESS, "data": encode_aggregate3(batch)}, block_identifier=block
        )
        results += decode_aggregate3(batch, returned)

    assert len(results) == len(calls)
    assert [r.one() for r in results[:-1]] == expected
    assert results[-1].ok is False
