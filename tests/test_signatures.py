"""Every Solidity signature the keeper uses is one the real contracts (or a standard interface) define.

A typo in a type list computes a wrong selector or topic and fails only on chain; this catches it from
the source, without a chain: devnet/signatures.py extracts the signature literals of keeper/ and
strategies/ and looks each up in the artifacts' ABIs (read once per session, ~0.2 s).
"""

import textwrap
from pathlib import Path

from devnet import artifacts, signatures


def test_every_signature_the_keeper_uses_is_defined_by_a_real_contract() -> None:
    found, _ = signatures.keeper()
    _, unknown = signatures.resolve(found)
    assert not unknown, (
        "no real contract (Perp curie-contract, Uniswap v3, Synthetix PerpsV2 deployment) or standard "
        "interface (ERC20, WETH9, Multicall3, OP GasPriceOracle) defines:\n"
        + "\n".join(f"  {u.where}: {u.signature}" for u in unknown)
        + "\nthe selector or topic it computes would not match the contract's (check the name and the "
        "canonical type list: uint256 not uint, no spaces, tuples as (type,...))"
    )


def test_no_signature_is_built_at_run_time() -> None:
    _, dynamic = signatures.keeper()
    assert not dynamic, (
        "signatures built at run time cannot be checked against the contracts; write each as a string "
        'literal (e.g. "maxPD(bytes32)"):\n' + "\n".join(f"  {d.where}: {d.source}" for d in dynamic)
    )


def test_the_scan_sees_the_keeper_signatures_wherever_they_live() -> None:
    found, _ = signatures.keeper()
    resolved, _ = signatures.resolve(found)
    used = {f.signature for f in resolved}
    assert len(used) > 50
    assert {
        "liquidate(address,address,int256)",
        "openPosition((address,bool,bool,uint256,uint256,uint256,uint160,bytes32))",
        "PositionLiquidated(address,address,uint256,uint256,uint256,address)",
        "getL1FeeUpperBound(uint256)",
        "aggregate3((address,bool,bytes)[])",  # from the hard-coded selector 0x82ad56cb
    } <= used
    assert {f.where.split("/")[0] for f in found} == {"keeper", "strategies"}


SYNTHETIC = textwrap.dedent(
    """
    from keeper.codec import encode_call, topic

    LIQUIDATE = "liquidate(address,address,uint256)"
    OK = "liquidate(address,address,int256)"
    EVENT = topic("PositionLiquidated(address,address,uint256,uint256,uint256,address)")
    SELECTOR = bytes.fromhex("deadbeef")
    MULTICALL = bytes.fromhex("82ad56cb")
    PRICE = "getIndexPrice(uint)"
    SPACED = "allowance(address, address)"
    GLOBALS = ("minKeeperFee", "maxKeeperFee")


    def calls(name, market):
        out = [encode_call(f"{name}(address)", market)]
        out += [encode_call(name + "(uint256)", 0), encode_call("%s()" % name), "{}()".format(name)]
        out += [encode_call(f"{n}()") for n in GLOBALS]
        out += [encode_call(f"{n}(bytes32)", b"") for n in ("maxPD", "skewScale")]
        for k in ("assetPrice",):
            out.append(encode_call(f"{k}()"))
        names = ("a",)
        names = ("b",)
        out += [f"{n}()" for n in names]  # bound twice: not literal any more
        listed = ["c"]
        out += [f"{n}()" for n in listed]  # a list may grow
        out.append(f"approve {market}")  # a label, not a signature
        return out


    def shadowed(GLOBALS):
        return [f"{n}()" for n in GLOBALS]  # the parameter, not the module's tuple
    """
)


def test_the_checker_reports_wrong_and_dynamic_signatures() -> None:
    found, dynamic = signatures.extract(SYNTHETIC, "strategies/example.py")
    ok, unknown = signatures.resolve(found)
    assert {(u.signature, u.where) for u in unknown} == {
        ("liquidate(address,address,uint256)", "strategies/example.py:4"),
        ("0xdeadbeef", "strategies/example.py:7"),
        ("getIndexPrice(uint)", "strategies/example.py:9"),
        ("allowance(address, address)", "strategies/example.py:10"),
    }
    assert {(f.signature, f.where) for f in ok} == {
        ("liquidate(address,address,int256)", "strategies/example.py:5"),
        ("PositionLiquidated(address,address,uint256,uint256,uint256,address)", "strategies/example.py:6"),
        ("aggregate3((address,bool,bytes)[])", "strategies/example.py:8"),
        ("minKeeperFee()", "strategies/example.py:17"),
        ("maxKeeperFee()", "strategies/example.py:17"),
        ("maxPD(bytes32)", "strategies/example.py:18"),
        ("skewScale(bytes32)", "strategies/example.py:18"),
        ("assetPrice()", "strategies/example.py:20"),
    }
    assert [(d.source, d.where) for d in dynamic] == [
        ("f'{name}(address)'", "strategies/example.py:15"),
        ("name + '(uint256)'", "strategies/example.py:16"),
        ("'%s()' % name", "strategies/example.py:16"),
        ("'{}()'.format(name)", "strategies/example.py:16"),
        ("f'{n}()'", "strategies/example.py:23"),
        ("f'{n}()'", "strategies/example.py:25"),
        ("f'{n}()'", "strategies/example.py:31"),
    ]


def test_the_scan_walks_every_module_under_keeper_and_strategies(tmp_path: Path) -> None:
    (tmp_path / "strategies" / "perp_v2").mkdir(parents=True)
    (tmp_path / "keeper").mkdir()
    (tmp_path / "devnet").mkdir()
    (tmp_path / "strategies" / "perp_v2" / "views.py").write_text('X = "hasOrder(address)"\n')
    (tmp_path / "keeper" / "gas.py").write_text('\n\nY = f"{z}(uint256)"\n')
    (tmp_path / "devnet" / "deploy.py").write_text('Z = "mint(address,uint256)"\n')
    found, dynamic = signatures.scan(tmp_path)
    assert found == [signatures.Found("hasOrder(address)", "strategies/perp_v2/views.py:1")]
    assert dynamic == [signatures.Dynamic("f'{z}(uint256)'", "keeper/gas.py:3")]


def test_stand_ins_count_only_for_their_standard_interface() -> None:
    known = signatures.defined()
    for name, (_, standard) in signatures.STANDARD_STAND_INS.items():
        missing = set(standard) - signatures.signatures_of(artifacts.load(name).abi)
        assert not missing, f"{name} does not define {sorted(missing)}"
    assert known["getL1FeeUpperBound(uint256)"] == ("GasPriceOracleStandIn",)
    assert known["aggregate3((address,bool,bytes)[])"] == ("Multicall3",)
    assert "mint(address,uint256)" not in known  # TestToken's, not EIP-20
    assert "setRate(bytes32,uint256)" not in known  # ExchangeRatesStandIn: not the deployed contract
    assert "rateAndInvalid(bytes32)" not in known
    assert known["Error(string)"] == ("solidity",)


def test_canonical_signatures_expand_tuples() -> None:
    entry = {
        "type": "function",
        "name": "f",
        "inputs": [
            {"type": "address"},
            {
                "type": "tuple[2][]",
                "components": [
                    {"type": "uint256"},
                    {"type": "tuple", "components": [{"type": "bool"}, {"type": "bytes32[]"}]},
                ],
            },
        ],
    }
    assert signatures.canonical(entry) == "f(address,(uint256,(bool,bytes32[]))[2][])"
    assert signatures.canonical({"type": "function", "name": "g"}) == "g()"
