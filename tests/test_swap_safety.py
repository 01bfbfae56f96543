"""A hostile or compromised aggregator cannot turn the sale of seized collateral against the keeper.

On the devnet, the fake aggregator serves each hostile answer (a foreign `to`, a foreign spender, the
token's own `transfer` of the seized WETH to the attacker, USDC's `approve` of the attacker for
everything, an inflated `buyAmount`, a swap to the attacker, a swap that accepts any output) from the
0x and from the 1inch client. The keeper liquidates a WETH account and sells what it seized: the
hostile quote is refused with its reason in the audit record, the honest source sells, and no token
and no allowance leaves the keeper. Without a chain: the calldata decoders, the pure checks and the
setting.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from devnet import up
from devnet.chain import DevChain
from devnet.fake_aggregator import ATTACKER, FakeAggregators
from devnet.faults import RPC_ERROR
from devnet.proxy import RpcProxy
from devnet.scenario import KEEPER_ADDRESS, KEEPER_KEY
from keeper import config, routers
from keeper.audit import AuditLog
from keeper.codec import encode_call
from keeper.engine import Engine
from keeper.errors import SettingError
from keeper.quotes import OneInch, Quote, QuoteSource, UniswapV3, ZeroEx
from keeper.routers import (
    ALLOWANCE_HOLDER_EXEC,
    EXACT_INPUT_SINGLE,
    ONEINCH_SWAP,
    SETTLER_EXECUTE,
    QuoteRejectedError,
    SwapCall,
    decode_swap,
)
from keeper.swaps import APPROVAL, TRANSFER, Effects, SwapGuard, call_problems, effect_problems
from keeper.tx import TxManager
from strategies.perp_v2 import risk
from strategies.perp_v2.collateral import CollateralSettings, PerpV2Collateral
from strategies.perp_v2.inventory import InventorySettings, PerpV2Inventory
from strategies.perp_v2.plugin import PerpSession, open_session
from strategies.perp_v2.sale import Seller
from tests import figures
from tests.helpers import run_once

KEEPER = Web3.to_checksum_address(KEEPER_ADDRESS)
WETH = "0x4200000000000000000000000000000000000006"
USDC = "0x0b2C639c533813f4Aa9D7837CAf62653d097Ff85"
SETTLER = "0x7f6ceE965959295cC64d0E6c00d99d6532d8e86b"
TARGET = "weth-debt-threshold"
# (client, mode): what the keeper must say about the refused quote
EXPECTED = {
    "foreign-to": "`to` {attacker} is not a listed {api} contract",
    "foreign-spender": "allowance target {attacker} is not a listed 0x contract",
    "transfer": "`to` {weth} is not a listed {api} contract",
    "approve": "`to` {usdc} is not a listed {api} contract",
    "inflate": "the simulated sale reverts: Too little received",
    "recipient": "its calldata pays {attacker}, not the keeper",
    "no-min": "its calldata accepts 0, below minOut",
}
# 1inch's answer names no spender: the client approves its `to`, so a foreign spender is a foreign `to`
CASES = [
    (api, mode) for api in ("0x", "1inch") for mode in EXPECTED if (api, mode) != ("1inch", "foreign-spender")
]


# --- on the devnet -----------------------------------------------------------------------------------


@pytest.fixture
def fake(devnet: up.Devnet) -> Iterator[FakeAggregators]:
    d = devnet.deployment
    with FakeAggregators(devnet.url, d["QuoterV2"].address, d["SwapRouter"].address) as server:
        server.haircut_bps = {"0x": 0, "1inch": 0}  # an honest aggregator wins Uniswap v3's tie
        yield server


def aggregator_env(devnet: up.Devnet) -> dict[str, str]:
    """The fake aggregators swap through the devnet's SwapRouter: listed the way an operator would."""
    router = devnet.deployment["SwapRouter"].address
    return {"KEEPER_AGGREGATOR_CONTRACTS": f"0x:{router},1inch:{router}"}


def sources(devnet: up.Devnet, session: PerpSession, fake: FakeAggregators, first: str) -> list[QuoteSource]:
    """Both aggregators, `first` listed first, then Uniswap v3."""
    d, env = session.deployment, aggregator_env(devnet)
    assert d.quoter_v2 is not None
    assert d.swap_router is not None
    clients: dict[str, QuoteSource] = {
        kind.name: kind(fake.url, "k", d.chain_id, contracts=routers.listed(kind.name, d.chain_id, env))
        for kind in (ZeroEx, OneInch)
    }
    ordered = [clients[first], *(c for name, c in clients.items() if name != first)]
    return [*ordered, UniswapV3(session.rpc, d.quoter_v2, d.swap_router)]


def exposure(devnet: up.Devnet) -> dict[str, int]:
    """What could have left the keeper: the attacker's WETH and USDC, and every allowance the keeper
    gave a non-listed spender (the attacker, the tokens themselves)."""
    d = devnet.deployment
    tokens = {"WETH": d["WETH9"], "USDC": d["USDC"]}
    out = {f"attacker {n}": int(t.functions.balanceOf(ATTACKER).call()) for n, t in tokens.items()}
    for name, token in tokens.items():
        for spender in (ATTACKER, d["WETH9"].address, d["USDC"].address):
            out[f"{name} allowance to {spender}"] = int(token.functions.allowance(KEEPER, spender).call())
    return out


def weth(devnet: up.Devnet) -> int:
    return int(devnet.deployment["WETH9"].functions.balanceOf(KEEPER).call())


class OneAccount(PerpV2Collateral):
    """The collateral strategy for the target account only: one liquidation, one sale, a clear trail."""

    def __init__(self, target: str, *args: Any) -> None:
        super().__init__(*args)
        self.target = target

    def opportunities(self) -> list[risk.Opportunity]:
        return [o for o in super().opportunities() if o.account == self.target]


async def liquidate_and_sell(
    devnet: up.Devnet, session: PerpSession, quote_sources: list[QuoteSource], audit: Path
) -> list[dict[str, Any]]:
    """Liquidate the WETH account and sell what was seized (the inventory strategy); the audit records."""
    d = session.deployment
    target = devnet.scenario.traders[TARGET].address
    strategy = OneAccount(
        target, d, session.scanner, session.rpc, session.read, quote_sources, CollateralSettings()
    )
    seller = Seller(d.usdc, session.rpc, session.read, quote_sources, 100)
    inventory = PerpV2Inventory(
        d, session.scanner, session.rpc, session.read, seller, InventorySettings(KEEPER_ADDRESS)
    )
    tx = TxManager(session.rpc, Account.from_key(KEEPER_KEY), session.deployment.chain_id)
    engine = Engine([strategy, inventory], session.rpc, KEEPER_ADDRESS, AuditLog(audit), tx)
    results = await engine.run_once()
    (result,) = [r for r in results if r.account == target]
    assert result.status == "executed", result.reason
    return audit_records(audit)


def audit_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def sale_decision(records: list[dict[str, Any]]) -> dict[str, Any]:
    (sale,) = [r for r in records if r["event"] == "decision" and r["inputs"]["stage"] == "sell"]
    return sale


@pytest.mark.parametrize(("api", "mode"), CASES)
async def test_a_hostile_answer_is_refused_and_nothing_leaves_the_keeper(
    devnet: up.Devnet,
    chain: DevChain,
    fake: FakeAggregators,
    session: PerpSession,
    tmp_path: Path,
    api: str,
    mode: str,
) -> None:
    fake.modes[api] = mode
    honest = "1inch" if api == "0x" else "0x"
    before, weth_before = exposure(devnet), weth(devnet)
    records = await liquidate_and_sell(
        devnet, session, sources(devnet, session, fake, api), tmp_path / "a.jsonl"
    )

    d = devnet.deployment
    expected = EXPECTED[mode].format(
        attacker=ATTACKER, api=api, weth=d["WETH9"].address, usdc=d["USDC"].address
    )
    sale = sale_decision(records)
    refused = [r for r in sale["inputs"]["quotes_rejected"] if r["source"] == api]
    assert refused, sale["inputs"]
    assert expected in refused[0]["reason"]
    assert sale["decision"] == "execute"
    assert sale["inputs"]["best_quote"] == honest  # the next source sold, not Uniswap v3
    sold = [r for r in records if r["event"] == "transaction" and r["step"] == f"sell via {honest}"]
    assert [r["status"] for r in sold] == ["mined"]
    assert weth(devnet) == weth_before  # every seized WETH was sold
    assert exposure(devnet) == before  # no token and no allowance went to anyone else
    assert all(v == 0 for v in before.values())
    assert fake.requests[api] > 0
    figures.record(
        f"hostile {api} {mode}",
        {"refused": refused[0]["reason"][:80], "sold_by": honest, "weth_left": weth(devnet) - weth_before},
    )


async def test_when_every_aggregator_is_hostile_uniswap_v3_sells_last(
    devnet: up.Devnet, chain: DevChain, fake: FakeAggregators, session: PerpSession, tmp_path: Path
) -> None:
    fake.modes.update({"0x": "transfer", "1inch": "approve"})
    before = exposure(devnet)
    records = await liquidate_and_sell(
        devnet, session, sources(devnet, session, fake, "0x"), tmp_path / "a.jsonl"
    )
    sale = sale_decision(records)
    assert {r["source"] for r in sale["inputs"]["quotes_rejected"]} == {"0x", "1inch"}
    assert sale["inputs"]["best_quote"] == "uniswap-v3"
    assert exposure(devnet) == before


async def test_the_simulation_alone_refuses_a_drain_that_names_listed_contracts(
    devnet: up.Devnet, chain: DevChain, session: PerpSession
) -> None:
    """Past the static checks (a quote that lies about its calldata's effect): the simulated balance
    changes and logs still refuse a transfer to the attacker and an approval of the attacker."""
    d = devnet.deployment
    router = d["SwapRouter"].address
    weth_before = weth(devnet)
    chain.send(d["WETH9"].functions.deposit(), KEEPER, value=10**18)
    guard = SwapGuard(
        session.rpc, [ZeroEx("http://127.0.0.1:1", None, session.deployment.chain_id, contracts=[router])]
    )
    quote = _quote(d["WETH9"].address, d["USDC"].address, router, b"", source="0x")
    drain = encode_call("transfer(address,uint256)", ATTACKER, 10**18)
    with pytest.raises(QuoteRejectedError, match=r"returns 0 of .* below minOut 1000"):
        await guard.simulate(KEEPER, quote, [(d["WETH9"].address, drain)], 1_000)
    approve_all = encode_call("approve(address,uint256)", ATTACKER, 2**256 - 1)
    swap = _swap_data(d["WETH9"].address, d["USDC"].address, KEEPER, 10**18, 0)
    steps = [(d["USDC"].address, approve_all), (d["WETH9"].address, _approve(router, 10**18)), (router, swap)]
    with pytest.raises(QuoteRejectedError, match=f"has the keeper approve {ATTACKER}"):
        await guard.simulate(KEEPER, quote, steps, 1)
    effects = await guard.simulate(KEEPER, quote, steps[1:], 1)  # the honest sale passes, and is measured
    assert effects.sold == 10**18
    assert effects.received > 1_000 * 10**6
    assert weth(devnet) == weth_before + 10**18  # only simulated


async def test_a_0x_settler_must_be_the_one_the_registry_names(
    devnet: up.Devnet, chain: DevChain, session: PerpSession
) -> None:
    """0x's registry, stood in for at its real address by code that answers one address to every call
    (`ownerOf(2)`, `prev(2)`), then by code that reverts (a paused Settler)."""
    holder = routers.ALLOWANCE_HOLDER
    guard = SwapGuard(session.rpc, [ZeroEx("http://127.0.0.1:1", None, 10, contracts=[holder])])
    genuine = "0x" + "5e" * 20

    def quote_through(settler: str) -> Quote:
        return _quote(WETH, USDC, holder, _exec(settler, settler, KEEPER, USDC, 1_980 * 10**6))

    answer_genuine = "0x73" + genuine[2:] + "60005260206000f3"  # PUSH20 genuine; MSTORE; RETURN 32 bytes
    chain.rpc("anvil_setCode", routers.SETTLER_REGISTRY, answer_genuine)
    await guard.vet(quote_through(Web3.to_checksum_address(genuine)), KEEPER, 100)
    with pytest.raises(QuoteRejectedError, match=f"Settler {SETTLER} is not the one 0x's registry names"):
        await guard.vet(quote_through(SETTLER), KEEPER, 100)
    chain.rpc("anvil_setCode", routers.SETTLER_REGISTRY, "0x60006000fd")  # REVERT: paused
    with pytest.raises(QuoteRejectedError, match="names no Settler"):
        await guard.vet(quote_through(Web3.to_checksum_address(genuine)), KEEPER, 100)


async def test_without_eth_simulate_v1_no_collateral_is_taken_that_could_not_be_sold(
    devnet: up.Devnet, chain: DevChain, tmp_path: Path
) -> None:
    """A node that answers eth_simulateV1 with an error: every quote is refused when the liquidation is
    priced, so the keeper does not repay debt for collateral it would then hold unsold."""
    with RpcProxy(devnet.url) as proxy:
        proxy.inject(RPC_ERROR, times=1_000, method="eth_simulateV1")
        session = await open_session(proxy.url, devnet.metadata_path, tmp_path / "keeper.sqlite")
        try:
            d = session.deployment
            assert d.quoter_v2 is not None
            assert d.swap_router is not None
            uniswap = UniswapV3(session.rpc, d.quoter_v2, d.swap_router)
            strategy = PerpV2Collateral(
                d, session.scanner, session.rpc, session.read, [uniswap], CollateralSettings()
            )
            await strategy.refresh()
            op = next(
                o for o in strategy.opportunities() if o.account == devnet.scenario.traders[TARGET].address
            )
            plan = await strategy.plan(op, KEEPER_ADDRESS)
        finally:
            await session.close()
    assert not plan.execute
    assert "no quote for the collateral" in plan.reason
    (refused,) = plan.detail["quotes_rejected"]
    assert "cannot simulate a sale (eth_simulateV1)" in refused["reason"]
    assert proxy.injected[RPC_ERROR] >= 1


def test_a_malformed_aggregator_setting_is_one_line_and_exit_2(
    devnet: up.Devnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEEPER_AGGREGATOR_CONTRACTS", f"paraswap:{ATTACKER}")
    code, _ = run_once(devnet.url, devnet.metadata_path, tmp_path / "s.sqlite", "--dry-run")
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "KEEPER_AGGREGATOR_CONTRACTS" in line]
    assert len(errors) == 1
    assert "paraswap" in errors[0]


# --- without a chain ---------------------------------------------------------------------------------


def _quote(sell: str, buy: str, router: str, data: bytes, source: str = "0x", amount: int = 10**18) -> Quote:
    return Quote(source, sell, buy, amount, 2_000 * 10**6, 200_000, router, router, data, 0.0)


def _swap_data(sell: str, buy: str, recipient: str, amount: int, min_out: int, limit: int = 0) -> bytes:
    return encode_call(EXACT_INPUT_SINGLE, (sell, buy, 500, recipient, 2**64 - 1, amount, min_out, limit))


def _approve(spender: str, amount: int) -> bytes:
    return encode_call("approve(address,uint256)", spender, amount)


def _exec(
    operator: str, target: str, recipient: str, buy: str, min_out: int, inner: bytes | None = None
) -> bytes:
    settle = inner or encode_call(SETTLER_EXECUTE, (recipient, buy, min_out), [b"\x01" * 68], b"\0" * 32)
    return encode_call(ALLOWANCE_HOLDER_EXEC, operator, WETH, 10**18, target, settle)


def test_the_decoders_read_each_router_shape() -> None:
    uniswap = decode_swap(_swap_data(WETH, USDC, KEEPER, 10**18, 7))
    assert uniswap == SwapCall("exactInputSingle", WETH, 10**18, USDC, KEEPER, 7)

    desc = (WETH, USDC, "0x00000000000000000000000000000000000000E1", KEEPER, 10**18, 8, 4)  # flags: permit2
    assert decode_swap(encode_call(ONEINCH_SWAP, "0x" + "e1" * 20, desc, b"")) == SwapCall(
        "swap", WETH, 10**18, USDC, KEEPER, 8
    )
    to_sender = (WETH, USDC, KEEPER, "0x" + "00" * 20, 10**18, 8, 0)
    assert decode_swap(encode_call(ONEINCH_SWAP, KEEPER, to_sender, b"")).recipient is None

    flagged = (1 << 255) | int(WETH, 16)  # 1inch `Address`: flags above the low 160 bits
    unoswap = decode_swap(
        encode_call("unoswapTo(uint256,uint256,uint256,uint256,uint256)", int(KEEPER, 16), flagged, 5, 9, 77)
    )
    assert unoswap == SwapCall("unoswapTo", WETH, 5, None, KEEPER, 9)
    assert (
        decode_swap(
            encode_call("unoswap2(uint256,uint256,uint256,uint256,uint256)", flagged, 5, 9, 1, 2)
        ).recipient
        is None
    )

    zero_x = decode_swap(_exec(SETTLER, SETTLER, KEEPER, USDC, 11))
    assert zero_x == SwapCall("exec", WETH, 10**18, USDC, KEEPER, 11, SETTLER)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (encode_call("transfer(address,uint256)", ATTACKER, 1), "not a known swap function"),
        (encode_call("approve(address,uint256)", ATTACKER, 2**256 - 1), "not a known swap function"),
        (b"", "calls nothing"),
        (_swap_data(WETH, USDC, KEEPER, 10**18, 7, limit=1), "price limit"),
        (encode_call(ONEINCH_SWAP, KEEPER, (WETH, USDC, KEEPER, KEEPER, 10**18, 8, 1), b""), "partial-fill"),
        (_exec(SETTLER, ATTACKER, KEEPER, USDC, 11), "another contract than the one it calls"),
        (_exec(SETTLER, SETTLER, KEEPER, USDC, 0, inner=_approve(ATTACKER, 1)), "not Settler.execute"),
        (
            encode_call(ONEINCH_SWAP, KEEPER, (WETH, USDC, KEEPER, KEEPER, 10**18, 8, 0), b"")[:40],
            "does not decode",
        ),
    ],
)
def test_the_decoders_refuse_what_is_not_an_exact_sale(data: bytes, why: str) -> None:
    with pytest.raises(QuoteRejectedError, match=why):
        decode_swap(data)


def test_call_problems_name_every_difference_from_the_claimed_sale() -> None:
    quote = _quote(WETH, USDC, SETTLER, b"")
    min_out = quote.min_out(100)
    assert call_problems(SwapCall("exec", WETH, 10**18, USDC, KEEPER, min_out), quote, KEEPER, min_out) == []
    assert (
        call_problems(SwapCall("exec", WETH, 10**18, USDC, KEEPER, min_out - 1), quote, KEEPER, min_out) == []
    )
    wrong = SwapCall("exec", USDC, 2 * 10**18, WETH, ATTACKER, min_out - 2)
    problems = call_problems(wrong, quote, KEEPER, min_out)
    assert [p.split(" ")[2] for p in problems] == ["sells", "sells", "buys", "pays", "accepts"]
    assert call_problems(SwapCall("unoswap", WETH, 10**18, None, None, min_out), quote, KEEPER, min_out) == []


def _log(topic0: str, token: str, owner: str, other: str, value: int) -> dict[str, Any]:
    def word(address: str) -> str:
        return "0x" + "00" * 12 + address[2:].lower()

    return {
        "address": token,
        "topics": [topic0, word(owner), word(other)],
        "data": "0x" + value.to_bytes(32, "big").hex(),
    }


def test_effect_problems_see_balances_transfers_and_approvals() -> None:
    quote = _quote(WETH, USDC, SETTLER, b"")
    honest = [_log(APPROVAL, WETH, KEEPER, SETTLER, 10**18), _log(TRANSFER, WETH, KEEPER, SETTLER, 10**18)]
    assert effect_problems(KEEPER, quote, 5, Effects(10**18, 5), honest) == []
    assert effect_problems(KEEPER, quote, 5, Effects(10**18 + 1, 5), []) == [
        f"takes {10**18 + 1} of {WETH}, more than the {10**18} sold"
    ]
    assert effect_problems(KEEPER, quote, 5, Effects(10**18, 4), []) == [
        f"returns 4 of {USDC}, below minOut 5"
    ]
    hostile = [
        _log(TRANSFER, USDC, KEEPER, ATTACKER, 1),
        _log(APPROVAL, USDC, KEEPER, ATTACKER, 2**256 - 1),
        _log(APPROVAL, WETH, KEEPER, ATTACKER, 1),
        _log(APPROVAL, WETH, KEEPER, SETTLER, 10**18 + 1),
        _log(TRANSFER, USDC, ATTACKER, KEEPER, 10**6),  # into the keeper: fine
    ]
    problems = effect_problems(KEEPER, quote, 5, Effects(10**18, 5), hostile)
    assert len(problems) == 4
    assert problems[0] == f"moves {USDC} from the keeper to {ATTACKER}"


def test_the_router_table_and_the_operator_setting() -> None:
    assert routers.listed("0x", 10, {}) == {routers.ALLOWANCE_HOLDER}
    assert routers.listed("1inch", 8453, {}) == {routers.ONEINCH_ROUTER_V6}
    assert routers.listed("0x", 31337, {}) == frozenset()
    env = {"KEEPER_AGGREGATOR_CONTRACTS": f" 0x:{SETTLER.lower()} , 1inch:{ATTACKER}, 0x:{USDC}"}
    assert routers.listed("0x", 10, env) == {routers.ALLOWANCE_HOLDER, SETTLER, USDC}
    assert routers.listed("1inch", 31337, env) == {ATTACKER}
    for bad, named in (
        ("paraswap:" + USDC, "paraswap"),
        ("0x:0x1234", "not an address"),
        ("0x" + USDC, "AGGREGATOR"),
    ):
        with pytest.raises(SettingError, match=named):
            config.aggregator_contracts({"KEEPER_AGGREGATOR_CONTRACTS": bad})
