"""Every mistake an operator can make: one line naming the setting, exit code 2, no traceback, no secret.

Each case runs the real CLI in a subprocess (so a traceback would show) against the session devnet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devnet import up
from devnet.scenario import KEEPER_KEY

SECRET_URL = "http://127.0.0.1:9/v2/sEcReTaPiKeY"
_CORE = {"address": "0x000000000000000000000000000000000000dEaD"}
SYNTHETIX_WITHOUT_MARKETS = {
    "protocol": "synthetix-perps-v2",
    "chainId": 31337,
    "contracts": {
        name: _CORE for name in ("FuturesMarketManager", "PerpsV2MarketSettings", "PerpsV2MarketData")
    },
}


@dataclass
class Case:
    name: str
    command: list[str]
    expect: str
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[Path, up.Devnet], dict[str, str]] | None = None  # extra env from files it writes


def _metadata_with(
    change: Callable[[dict[str, object]], None],
) -> Callable[[Path, up.Devnet], dict[str, str]]:
    def prepare(tmp: Path, devnet: up.Devnet) -> dict[str, str]:
        data = json.loads(devnet.metadata_path.read_text())
        change(data)
        (tmp / "changed.json").write_text(json.dumps(data))
        return {"KEEPER_METADATA": str(tmp / "changed.json")}

    return prepare


def _set_chain_id(data: dict[str, object]) -> None:
    data["chainId"] = 10


def _move_clearing_house(data: dict[str, object]) -> None:
    data["contracts"]["ClearingHouse"]["address"] = "0x000000000000000000000000000000000000dEaD"  # type: ignore[index]


def _drop_vault(data: dict[str, object]) -> None:
    del data["contracts"]["Vault"]  # type: ignore[attr-defined]


def _file(name: str, text: str, variable: str) -> Callable[[Path, up.Devnet], dict[str, str]]:
    def prepare(tmp: Path, _devnet: up.Devnet) -> dict[str, str]:
        (tmp / name).write_text(text)
        return {variable: str(tmp / name)}

    return prepare


def _keystore(tmp: Path, _devnet: up.Devnet) -> dict[str, str]:
    from eth_account import Account

    (tmp / "ks.json").write_text(
        json.dumps(Account.encrypt(bytes.fromhex(KEEPER_KEY[2:]), "right", iterations=2))
    )
    (tmp / "pw").write_text("wrong")
    return {"KEEPER_KEYSTORE": str(tmp / "ks.json"), "KEEPER_KEYSTORE_PASSWORD_FILE": str(tmp / "pw")}


def _other_chain_db(tmp: Path, _devnet: up.Devnet) -> dict[str, str]:
    import sqlite3

    db = sqlite3.connect(tmp / "other.sqlite")
    db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);")
    db.execute("INSERT INTO meta VALUES ('chain_id', '10')")
    db.commit()
    db.close()
    return {"KEEPER_STATE_DB": str(tmp / "other.sqlite")}


LIVE = {"KEEPER_PRIVATE_KEY": KEEPER_KEY}
CASES = [
    Case("check: unreachable RPC", ["check", "--rpc-url", SECRET_URL], "unreachable"),
    Case("scan: unreachable RPC", ["scan", "--rpc-url", SECRET_URL], "unreachable"),
    Case("run: unreachable RPC", ["run", "--once", "--rpc-url", SECRET_URL], "unreachable", LIVE),
    Case("check: malformed URL", ["check", "--rpc-url", "localhost:8545"], "expected an http(s):// URL"),
    Case("scan: malformed URL", ["scan", "--rpc-url", "ftp://x"], "expected an http(s):// URL"),
    Case(
        "run: malformed URL", ["run", "--once", "--rpc-url", "not a url"], "expected an http(s):// URL", LIVE
    ),
    Case("check: missing metadata", ["check", "--metadata", "/nope/metadata.json"], "does not exist"),
    Case("scan: missing metadata", ["scan", "--metadata", "/nope/metadata.json"], "does not exist"),
    Case("run: missing metadata", ["run", "--once", "--metadata", "/nope/m.json"], "does not exist", LIVE),
    Case("metadata not JSON", ["scan"], "is not JSON", prepare=_file("bad.json", "{nope", "KEEPER_METADATA")),
    Case("metadata without the Vault", ["scan"], "Vault", prepare=_metadata_with(_drop_vault)),
    Case("wrong chain id", ["scan"], "does not match the metadata", prepare=_metadata_with(_set_chain_id)),
    Case(
        "no code at ClearingHouse",
        ["scan"],
        "no contract at ClearingHouse",
        prepare=_metadata_with(_move_clearing_house),
    ),
    Case(
        "malformed key",
        ["run", "--once"],
        "KEEPER_PRIVATE_KEY: not a 32-byte hex",
        {"KEEPER_PRIVATE_KEY": "0xabc"},
    ),
    Case(
        "key file missing",
        ["run", "--once"],
        "KEEPER_PRIVATE_KEY_FILE: cannot read",
        {"KEEPER_PRIVATE_KEY_FILE": "/nope"},
    ),
    Case(
        "malformed key file",
        ["run", "--once"],
        "KEEPER_PRIVATE_KEY_FILE: not a 32-byte",
        prepare=_file("k", "hello", "KEEPER_PRIVATE_KEY_FILE"),
    ),
    Case("wrong keystore password", ["run", "--once"], "KEEPER_KEYSTORE: wrong password", prepare=_keystore),
    Case(
        "keystore without password file",
        ["run", "--once"],
        "KEEPER_KEYSTORE_PASSWORD_FILE is required",
        {"KEEPER_KEYSTORE": "/x"},
    ),
    Case("no key, live", ["run", "--once"], "no key"),
    Case(
        "--from without --dry-run",
        ["run", "--once", "--from", "0x" + "1" * 40],
        "--from: only with --dry-run",
        LIVE,
    ),
    Case(
        "--from not an address", ["run", "--once", "--dry-run", "--from", "0x123"], "--from: not an address"
    ),
    Case(
        "min profit not a number",
        ["run", "--once"],
        "KEEPER_MIN_PROFIT_USD",
        {**LIVE, "KEEPER_MIN_PROFIT_USD": "1e"},
    ),
    Case(
        "negative max keeper fee",
        ["run", "--once"],
        "KEEPER_MAX_KEEPER_FEE",
        {**LIVE, "KEEPER_MAX_KEEPER_FEE": "-1"},
    ),
    Case(
        "max fee gwei not whole",
        ["run", "--once"],
        "KEEPER_MAX_FEE_GWEI",
        {**LIVE, "KEEPER_MAX_FEE_GWEI": "1.5"},
    ),
    Case(
        "bad inherited policy",
        ["run", "--once"],
        "KEEPER_INHERITED_POSITIONS",
        {**LIVE, "KEEPER_INHERITED_POSITIONS": "x"},
    ),
    Case("bad dry-run flag", ["run", "--once"], "KEEPER_DRY_RUN", {**LIVE, "KEEPER_DRY_RUN": "maybe"}),
    Case(
        "slippage out of range",
        ["run", "--once"],
        "KEEPER_SLIPPAGE_BPS",
        {**LIVE, "KEEPER_SLIPPAGE_BPS": "99999"},
    ),
    Case("state db of another chain", ["scan"], "was made for chain_id 10", prepare=_other_chain_db),
    Case(
        "bad quoter address",
        ["run", "--once"],
        "KEEPER_QUOTER_V2: not an address",
        {**LIVE, "KEEPER_QUOTER_V2": "0xzz"},
    ),
    Case(
        "protocol the metadata does not describe",
        ["run", "--once", "--protocol", "synthetix-perps-v2"],
        "--protocol is synthetix-perps-v2 but",
        LIVE,
    ),
    Case(
        "unknown protocol",
        ["run", "--once"],
        "KEEPER_PROTOCOL: expected one of",
        {**LIVE, "KEEPER_PROTOCOL": "gmx"},
    ),
    Case("sUSD price not a number", ["run", "--once"], "KEEPER_SUSD_USD", {**LIVE, "KEEPER_SUSD_USD": "one"}),
    Case(
        "Synthetix metadata given to scan",
        ["scan"],
        "describes a synthetix-perps-v2 deployment",
        prepare=_file("snx.json", json.dumps({"protocol": "synthetix-perps-v2"}), "KEEPER_METADATA"),
    ),
    Case(
        "Synthetix metadata without markets",
        ["run", "--once"],
        "markets must be a list",
        LIVE,
        prepare=_file("snx.json", json.dumps(SYNTHETIX_WITHOUT_MARKETS), "KEEPER_METADATA"),
    ),
    Case(
        "malformed .env",
        ["scan"],
        ".env: line 1 is not NAME=VALUE",
        prepare=_file(".env", "just words\n", "UNUSED"),
    ),
]


@pytest.mark.chain
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_operator_mistake_is_one_line_and_exit_2(case: Case, devnet: up.Devnet, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")}
    env.update(
        KEEPER_RPC_URL=devnet.url,
        KEEPER_METADATA=str(devnet.metadata_path),
        KEEPER_STATE_DB=str(tmp_path / "state.sqlite"),
        **case.env,
    )
    if case.prepare:
        env.update(case.prepare(tmp_path, devnet))
    proc = subprocess.run(
        [sys.executable, "-m", "keeper.cli", *case.command],
        cwd=tmp_path,  # where a .env would be read from
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(err) == 1, proc.stderr
    assert case.expect in err[0]
    assert "sEcReTaPiKeY" not in proc.stderr
    assert KEEPER_KEY[6:-6] not in proc.stderr
