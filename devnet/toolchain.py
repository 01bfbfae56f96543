"""Fetch the third-party pieces the devnet and tests need, into an ignored cache.

Everything comes from the npm registry with `npm pack` at pinned versions and is checked against
pinned integrity hashes, so a set-up is reproducible and nothing third-party is committed. Once the
cache holds a package, set-up never touches the network again.

Run as `python -m devnet.toolchain` (the Makefile's `setup` does).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOLC_VERSION = "0.8.24"
ANVIL_VERSION = "1.7.1"


@dataclass(frozen=True)
class NpmPackage:
    name: str
    version: str
    integrity: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def folder(self) -> str:
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}"


PERP_CONTRACTS = NpmPackage(
    "@perp/curie-contract",
    "2.8.4",
    "sha512-fTHxpzzuHlSyCEvI6T8Ya10Oz3Y4T06YTiCciR/4uvR9rx/9Afmm8nDLJ85ZwXiA0edce9bPUkE/ZcKY4xkJEw==",
)
PERP_DEPLOYMENTS = NpmPackage(
    "@perp/curie-deployments",
    "2023.4.12-1681295833590",
    "sha512-NJbTy3frix5AQS5Bk/littykkmQ/m1rFD5HUQG8b0SDVGsqvIsSr5NSlhwb+UGJS7EHtgxevh4P4dTPc4dN6lQ==",
)
UNISWAP_CORE = NpmPackage(
    "@uniswap/v3-core",
    "1.0.1",
    "sha512-7pVk4hEm00j9tc71Y9+ssYpO6ytkeI0y7WE9P6UcmNzhxPePwyAxImuhVsTqWK9YFvzgtvzJHi64pBl4jUzKMQ==",
)
UNISWAP_PERIPHERY = NpmPackage(
    "@uniswap/v3-periphery",
    "1.4.4",
    "sha512-S4+m+wh8HbWSO3DKk4LwUCPZJTpCugIsHrWR86m/OrUyvSqGDTXKFfc2sMuGXCZrD1ZqO3rhQsKgdWg3Hbb2Kw==",
)
SOLC_JS = NpmPackage(
    "solc",
    SOLC_VERSION,
    "sha512-G5yUqjTUPc8Np74sCFwfsevhBPlUifUOfhYrgyu6CmYlC6feSw0YS6eZW47XDT23k3JYdKx5nJ+Q7whCEmNcoA==",
)
# Synthetix Perps V2: bytecode from the package's deployment files (see devnet/synthetix.py).
SYNTHETIX = NpmPackage(
    "synthetix",
    "2.102.1",
    "sha512-SJsFT5VRqkQjqDO2K3s2h9LqnPjIIqAPEP6wV9MKnC5rcCBzkKYsHbba0Q+pRHxrM18ODic4HC51AYtaQcRu/Q==",
)
# The @foundry-rs/anvil wrapper only picks one of these platform packages; we call its binary directly.
ANVIL_PLATFORMS = {
    ("Linux", "x86_64"): NpmPackage(
        "@foundry-rs/anvil-linux-amd64",
        ANVIL_VERSION,
        "sha512-+XmShybEaxfCrr0OUUZwYEy2OnYZt5pHH9TzBtLv3+VrK0O/ANuNSVEahqNhKHlgX7GRJ59383ofNhxkRWIYTg==",
    ),
}

PACKAGES = (PERP_CONTRACTS, PERP_DEPLOYMENTS, UNISWAP_CORE, UNISWAP_PERIPHERY, SOLC_JS, SYNTHETIX)

STAND_INS_SOURCE = Path(__file__).with_name("contracts") / "StandIns.sol"


class ToolchainError(RuntimeError):
    """A set-up step failed; the message says which and what to do."""


def cache_root() -> Path:
    """`PERP_KEEPER_CACHE`, else `.cache/` of the source checkout, else the user cache."""
    if env := os.environ.get("PERP_KEEPER_CACHE"):
        return Path(env).resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").exists():
        return checkout / ".cache"
    return Path.home() / ".cache" / "perp-keeper"


def package_dir(pkg: NpmPackage) -> Path:
    """Where the extracted package lives (its `package/` folder)."""
    return cache_root() / "npm" / pkg.folder / "package"


def anvil_package() -> NpmPackage:
    key = (platform.system(), platform.machine())
    try:
        return ANVIL_PLATFORMS[key]
    except KeyError:
        raise ToolchainError(
            f"no pinned anvil build for {key[0]}/{key[1]}; supported: "
            + ", ".join(f"{s}/{m}" for s, m in ANVIL_PLATFORMS)
        ) from None


def anvil_path() -> Path:
    """The anvil binary, installed by `ensure()`. `PERP_KEEPER_ANVIL` overrides it."""
    if env := os.environ.get("PERP_KEEPER_ANVIL"):
        return Path(env)
    return package_dir(anvil_package()) / "bin" / "anvil"


def _integrity(tarball: Path) -> str:
    digest = hashlib.sha512(tarball.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def _npm_pack(pkg: NpmPackage, dest: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise ToolchainError("npm is not installed: install Node.js and npm (e.g. `apt-get install -y npm`)")
    proc = subprocess.run(
        [npm, "pack", pkg.spec, "--pack-destination", str(dest), "--json", "--silent"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        detail = " ".join(line.strip() for line in proc.stderr.splitlines() if "ERR" in line)[-400:]
        raise ToolchainError(
            f"`npm pack {pkg.spec}` failed (is the npm registry reachable?): {detail or proc.stderr[-400:]}"
        )
    filename = str(json.loads(proc.stdout)[0]["filename"])
    return dest / filename


def _install(pkg: NpmPackage) -> bool:
    """Download, verify and extract one package unless it is cached. True when it was fetched."""
    target = package_dir(pkg)
    if (target / "package.json").exists():
        return False
    with tempfile.TemporaryDirectory(prefix="perp-keeper-npm-") as tmp:
        tarball = _npm_pack(pkg, Path(tmp))
        actual = _integrity(tarball)
        if actual != pkg.integrity:
            raise ToolchainError(f"{pkg.spec}: integrity mismatch (expected {pkg.integrity}, got {actual})")
        staging = Path(tmp) / "x"
        with tarfile.open(tarball) as tar:
            tar.extractall(staging, filter="data")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target.parent / "package", ignore_errors=True)
        (staging / "package").rename(target)
    return True


def stand_ins_path() -> Path:
    """Our stand-in contracts, compiled with solc-js (pure JS/wasm: no native solc download)."""
    source = STAND_INS_SOURCE.read_text()
    key = hashlib.sha256(f"{SOLC_VERSION}\n{source}".encode()).hexdigest()[:16]
    out = cache_root() / "build" / f"StandIns-{key}.json"
    if out.exists():
        return out
    node = shutil.which("node")
    if node is None:
        raise ToolchainError("node is not installed: install Node.js (e.g. `apt-get install -y nodejs`)")
    standard_input = {
        "language": "Solidity",
        "sources": {"StandIns.sol": {"content": source}},
        "settings": {
            "optimizer": {"enabled": True, "runs": 200},
            "evmVersion": "paris",
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
        },
    }
    script = (
        "const soljson = require(process.argv[1]);"
        "const compile = soljson.cwrap('solidity_compile', 'string', ['string', 'number', 'number']);"
        "let input = ''; process.stdin.on('data', d => input += d);"
        "process.stdin.on('end', () => process.stdout.write(compile(input, 0, 0)));"
    )
    soljson = package_dir(SOLC_JS) / "soljson.js"
    proc = subprocess.run(
        [node, "-e", script, str(soljson)],
        input=json.dumps(standard_input),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise ToolchainError(f"solc-js failed: {proc.stderr[-400:]}")
    result = json.loads(proc.stdout)
    errors = [e["formattedMessage"] for e in result.get("errors", []) if e["severity"] == "error"]
    if errors:
        raise ToolchainError("stand-in contracts do not compile:\n" + "\n".join(errors))
    contracts = {
        name: {"abi": c["abi"], "bytecode": "0x" + c["evm"]["bytecode"]["object"]}
        for name, c in result["contracts"]["StandIns.sol"].items()
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(contracts))
    tmp.rename(out)
    return out


def ensure(verbose: bool = False) -> None:
    """Make every pinned package and the compiled stand-ins available. Idempotent."""
    for pkg in (*PACKAGES, anvil_package()):
        fetched = _install(pkg)
        if verbose:
            print(f"{'fetched' if fetched else 'cached '} {pkg.spec}", file=sys.stderr)
    binary = anvil_path()
    binary.chmod(binary.stat().st_mode | 0o111)
    stand_ins_path()
    if verbose:
        print(f"anvil: {binary}", file=sys.stderr)


def main() -> int:
    try:
        ensure(verbose=True)
    except ToolchainError as exc:
        print(f"toolchain: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
