import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from devnet import toolchain, up
from keeper.errors import MetadataError
from keeper.metadata import DEFAULT_MULTICALL3
from strategies.perp_v2.metadata import CORE_CONTRACTS, load_metadata, parse_metadata
from strategies.synthetix_perps_v2.metadata import parse_synthetix_metadata

PUBLISHED = toolchain.package_dir(toolchain.PERP_DEPLOYMENTS) / "optimism/core/metadata.json"


def test_reads_perps_published_optimism_metadata() -> None:
    deployment = load_metadata(PUBLISHED)
    assert deployment.chain_id == 10
    assert deployment.network == "optimism"
    assert deployment.clearing_house == "0x82ac2CE43e33683c58BE4cDc40975E73aA50f459"
    assert deployment.usdc == "0x7F5c764cBc14f9669B88837ca1490cCa17c31607"
    assert deployment.weth9 == "0x4200000000000000000000000000000000000006"
    assert deployment.multicall3 == DEFAULT_MULTICALL3  # not in Perp's file: the canonical address
    assert deployment.swap_router is None
    symbols = {m.base_symbol for m in deployment.markets}
    assert {"vETH", "vBTC"} <= symbols
    assert len(deployment.markets) == 20
    assert [c.symbol for c in deployment.collaterals] == ["WETH", "FRAX", "OP", "USDT"]
    assert deployment.start_block == min(
        json.loads(PUBLISHED.read_text())["contracts"][n]["createdBlockNumber"] for n in CORE_CONTRACTS
    )


def test_reads_the_devnets_metadata(devnet: up.Devnet) -> None:
    deployment = load_metadata(devnet.metadata_path)
    assert deployment.chain_id == devnet.chain.w3.eth.chain_id
    assert deployment.clearing_house == devnet.deployment["ClearingHouse"].address
    assert deployment.swap_router == devnet.deployment["SwapRouter"].address
    assert deployment.quoter_v2 == devnet.deployment["QuoterV2"].address
    assert deployment.multicall3 == DEFAULT_MULTICALL3
    assert [m.base_symbol for m in deployment.markets] == ["vETH", "vBTC"]
    assert deployment.collaterals[0].address == devnet.deployment["WETH9"].address
    for name in CORE_CONTRACTS:
        ref = deployment.contracts[name]
        assert devnet.chain.w3.eth.get_code(ref.address), f"no code at {name}"
        assert 0 < ref.created_block <= devnet.chain.w3.eth.block_number


def _published() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PUBLISHED.read_text())
    return data


def test_unknown_sections_are_ignored() -> None:
    data = _published()
    data["somethingNew"] = {"x": [1, 2]}
    data["contracts"]["NotAContractWeUse"] = "garbage"
    assert parse_metadata(data).chain_id == 10


def _without(path: tuple[str, ...]) -> dict[str, Any]:
    data = copy.deepcopy(_published())
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return data


def _with(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(_published())
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_without(("contracts", "Vault")), "contracts.Vault is missing"),
        (
            _with(("contracts", "Vault", "address"), "0x1234"),
            "contracts.Vault.address is not an address: '0x1234'",
        ),
        (_with(("contracts", "ClearingHouse"), "0xabc"), "contracts.ClearingHouse must be an object"),
        (
            _with(("contracts", "Vault", "createdBlockNumber"), -1),
            "createdBlockNumber must be a non-negative",
        ),
        (_with(("chainId",), "ten"), "chainId must be a non-negative integer, got 'ten'"),
        (_without(("chainId",)), "chainId must be a non-negative integer, got nothing"),
        (_without(("externalContracts", "USDC")), "externalContracts.USDC is missing"),
        (_with(("externalContracts", "WETH9"), 42), "externalContracts.WETH9 is not an address: 42"),
        (_with(("pools",), {}), "pools must be a list"),
        (_with(("pools", 0, "baseAddress"), "vETH"), "pools[0].baseAddress is not an address"),
        (
            _with(("collaterals", 1, "decimals"), "18"),
            "collaterals[1].decimals must be a non-negative integer",
        ),
        ([], "the top level must be an object"),
    ],
)
def test_malformed_metadata_names_the_field(data: Any, message: str) -> None:
    with pytest.raises(MetadataError) as info:
        parse_metadata(data, "meta.json")
    assert str(info.value).startswith("meta.json: ")
    assert message in str(info.value)


def test_missing_and_non_json_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match=r"metadata file .*nope.json does not exist"):
        load_metadata(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(MetadataError, match=r"bad.json is not JSON: .* at line 1"):
        load_metadata(bad)


def synthetix_metadata() -> dict[str, Any]:
    ref = {"address": "0x000000000000000000000000000000000000dEaD", "createdBlockNumber": 7}
    return {
        "protocol": "synthetix-perps-v2",
        "chainId": 10,
        "contracts": {n: ref for n in ("FuturesMarketManager", "PerpsV2MarketSettings", "PerpsV2MarketData")},
        "markets": [
            {
                "marketKey": "sETHPERP",
                "asset": "sETH",
                "proxy": "0x2B3bb4c683BFc5239B029131EEf3B1d214478d93",
                "state": "0x000000000000000000000000000000000000bEEF",
                "createdBlockNumber": 9,
            }
        ],
        "externalContracts": {"sUSD": "0x8c6f28f2F1A3C87F0f938b96d27520d9751ec8d9"},
    }


def test_synthetix_metadata_reads_markets_and_defaults() -> None:
    d = parse_synthetix_metadata(synthetix_metadata(), "snx.json")
    assert d.chain_id == 10
    assert d.markets[0].key == "sETHPERP"
    assert d.start_block == 9
    assert d.multicall3 == DEFAULT_MULTICALL3
    assert d.quoter_v2 is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("protocol"), 'protocol must be "synthetix-perps-v2"'),
        (lambda m: m.update(markets=[]), "markets is empty"),
        (lambda m: m["markets"][0].update(proxy="0x12"), "markets[0].proxy is not an address"),
        (lambda m: m["externalContracts"].pop("sUSD"), "externalContracts.sUSD is missing"),
    ],
)
def test_synthetix_metadata_errors_name_the_field(change: Any, message: str) -> None:
    data = synthetix_metadata()
    change(data)
    with pytest.raises(MetadataError, match=re.escape(message)):
        parse_synthetix_metadata(data, "snx.json")
