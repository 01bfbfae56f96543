"""Every Solidity signature string in the keeper's source, and where the real contracts define them.

`extract` walks a module's AST for string literals shaped like a signature (`name(type,...)`, tuples
included: `openPosition((address,bool,bool,uint256,uint256,uint256,uint160,bytes32))`). A signature
built at run time (an f-string, `+`, `%` or `.format`) is resolved only in the one pattern that is
still literal: every placeholder is a bare name bound by a `for`/comprehension over a literal tuple
of strings (inline, or a tuple assigned once in the same function or module), e.g.

    names = ("minKeeperFee", "maxKeeperFee")
    [Call(settings, f"{n}()", ...) for n in names]

Anything else is reported as dynamic: write it as a literal so it can be checked.

A 4-byte selector written as `bytes.fromhex("82ad56cb")` is extracted too, as "0x82ad56cb", and
`resolve` names the signature it is the selector of.

`defined` maps each canonical signature (tuple types expanded) of the accepted artifacts to the
contracts that define it; tests/test_signatures.py checks every extracted signature against it.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_utils.crypto import keccak

from devnet import artifacts
from devnet.published import PUBLISHED

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("keeper", "strategies")

# The real contracts, as built and deployed by their projects.
REAL = (
    *artifacts.PERP_CONTRACTS,
    "IERC20Metadata",  # Perp's own ERC20 interface artifact (the package's contracts/interface/)
    "QuoterV2",
    "SwapRouter",
    "UniswapV3Factory",
    "UniswapV3Pool",
    *artifacts.SYNTHETIX_CONTRACTS,
)
# Our stand-ins (devnet/contracts/StandIns.sol) count only for interfaces that are standard, i.e.
# fixed outside this project, and only for those interfaces' signatures: TestToken's `mint` or any
# Synthetix stand-in (ExchangeRatesStandIn, ...) define nothing the keeper may rely on, since the
# deployed contracts are not ours. tests/test_signatures.py checks each stand-in really defines its list.
_EIP20 = (
    "name()",
    "symbol()",
    "decimals()",
    "totalSupply()",
    "balanceOf(address)",
    "transfer(address,uint256)",
    "transferFrom(address,address,uint256)",
    "approve(address,uint256)",
    "allowance(address,address)",
    "Transfer(address,address,uint256)",
    "Approval(address,address,uint256)",
)
STANDARD_STAND_INS: dict[str, tuple[str, tuple[str, ...]]] = {
    # EIP-20 (with the optional name/symbol/decimals): every token the keeper touches is one.
    "TestToken": ("EIP-20 token", _EIP20),
    # WETH9 as deployed at 0x4200000000000000000000000000000000000006 on OP: EIP-20 plus wrapping.
    "WETH9": (
        "WETH9",
        (
            *_EIP20,
            "deposit()",
            "withdraw(uint256)",
            "Deposit(address,uint256)",
            "Withdrawal(address,uint256)",
        ),
    ),
    # Multicall3 (github.com/mds1/multicall), at 0xcA11bde05977b3631167028862bE2a173976CA11 on every
    # chain; the stand-in implements a subset of it with the same signatures.
    "Multicall3": (
        "Multicall3",
        (
            "aggregate3((address,bool,bytes)[])",
            "getBlockNumber()",
            "getCurrentBlockTimestamp()",
            "getEthBalance(address)",
            "getBasefee()",
            "getChainId()",
        ),
    ),
    # The OP Stack GasPriceOracle predeploy (0x420000000000000000000000000000000000000F), Ecotone and
    # Fjord functions; anvil has no OP predeploys, so the devnet etches this stand-in there.
    "GasPriceOracleStandIn": (
        "OP Stack GasPriceOracle",
        (
            "l1BaseFee()",
            "blobBaseFee()",
            "baseFeeScalar()",
            "blobBaseFeeScalar()",
            "isFjord()",
            "getL1FeeUpperBound(uint256)",
        ),
    ),
}

# A whole string that looks like a signature. Deliberately loose inside the parentheses (spaces,
# unknown type names) so a typo is extracted and then reported as unknown, not silently skipped.
_SHAPE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*\([A-Za-z0-9_$,()\[\] ]*\)")
_HOLE = "\x00"  # a placeholder for a run-time value when matching built strings
_BUILT_SHAPE = re.compile(r"[A-Za-z0-9_$\x00]+\([A-Za-z0-9_$,()\[\] \x00]*\)")


@dataclass(frozen=True)
class Found:
    signature: str
    where: str  # path:line

    def __str__(self) -> str:
        return f"{self.signature} ({self.where})"


@dataclass(frozen=True)
class Dynamic:
    source: str  # the expression, as written
    where: str

    def __str__(self) -> str:
        return f"{self.source} ({self.where})"


# --- the keeper's side -------------------------------------------------------------------------------


def extract(source: str, path: str) -> tuple[list[Found], list[Dynamic]]:
    """The signature literals of one module, and the built signatures it could not resolve."""
    tree = ast.parse(source, path)
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    hits: list[tuple[int, int, Found | Dynamic]] = []  # in source order (ast.walk is breadth-first)
    inside_built: set[ast.AST] = set()
    for node in ast.walk(tree):
        if node in inside_built or not isinstance(node, ast.expr):
            continue
        where = f"{path}:{node.lineno}"
        items: list[Found | Dynamic] = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _SHAPE.fullmatch(node.value):
                items.append(Found(node.value, where))
        elif (hexed := _selector_literal(node)) is not None:
            items.append(Found(hexed, where))
        elif (parts := _built_parts(node)) is not None and _BUILT_SHAPE.fullmatch(
            "".join(p if isinstance(p, str) else _HOLE for p in parts)
        ):
            inside_built.update(ast.walk(node))
            resolved = _resolve(parts, parents, tree)
            if resolved is None:
                items.append(Dynamic(ast.unparse(node), where))
            else:
                items.extend(Found(s, where) for s in resolved)
        hits.extend((node.lineno, node.col_offset, item) for item in items)
    hits.sort(key=lambda hit: hit[:2])
    found = [item for *_, item in hits if isinstance(item, Found)]
    dynamic = [item for *_, item in hits if isinstance(item, Dynamic)]
    return found, dynamic


def _selector_literal(node: ast.AST) -> str | None:
    """`bytes.fromhex("82ad56cb")` -> "0x82ad56cb": a hard-coded 4-byte selector."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "fromhex"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "bytes"
        and len(node.args) == 1
        and _is_str(node.args[0])
    ):
        digits = _str(node.args[0]).lower().removeprefix("0x")
        if re.fullmatch(r"[0-9a-f]{8}", digits):
            return "0x" + digits
    return None


def _built_parts(node: ast.AST) -> list[str | ast.expr] | None:
    """A string built at run time as literal parts and expressions; None for anything else."""
    if isinstance(node, ast.JoinedStr):
        parts: list[str | ast.expr] = []
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                parts.append(value.value)
            elif isinstance(value, ast.FormattedValue):
                plain = value.conversion == -1 and value.format_spec is None
                parts.append(value.value if plain else value)
        return parts
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _built_parts(node.left), _built_parts(node.right)
        if left is None and right is None:
            return None
        return [*(left if left is not None else [node.left]), *(right if right is not None else [node.right])]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and _is_str(node.left):
        return [re.sub(r"%[sdr]", _HOLE, _str(node.left))]  # never resolved: holes, no names
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and _is_str(node.func.value)
    ):
        return [re.sub(r"\{[^{}]*\}", _HOLE, _str(node.func.value))]
    return None


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _str(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    raise TypeError(f"not a string literal: {ast.unparse(node)}")


def _resolve(parts: list[str | ast.expr], parents: dict[ast.AST, ast.AST], tree: ast.AST) -> list[str] | None:
    """Every string the parts can take, when each expression is a name looping over literal strings."""
    if any(isinstance(p, str) and _HOLE in p for p in parts):
        return None
    choices: list[tuple[str, ...]] = []
    for part in parts:
        if isinstance(part, str):
            choices.append((part,))
            continue
        if not isinstance(part, ast.Name):
            return None
        values = _loop_values(part, parents, tree)
        if values is None:
            return None
        choices.append(values)
    return ["".join(c) for c in itertools.product(*choices)]


def _loop_values(name: ast.Name, parents: dict[ast.AST, ast.AST], tree: ast.AST) -> tuple[str, ...] | None:
    node: ast.AST = name
    while node in parents:
        node = parents[node]
        loops: list[tuple[ast.expr, ast.expr]] = []
        if isinstance(node, ast.For):
            loops = [(node.target, node.iter)]
        elif isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
            loops = [(g.target, g.iter) for g in node.generators]
        for target, iterable in loops:
            if isinstance(target, ast.Name) and target.id == name.id:
                return _literal_strings(iterable, _scope(node, parents, tree))
    return None


def _scope(node: ast.AST, parents: dict[ast.AST, ast.AST], tree: ast.AST) -> list[ast.AST]:
    """The enclosing function (if any) and the module, innermost first."""
    scopes: list[ast.AST] = []
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            scopes.append(node)
            break
    return [*scopes, tree]


def _literal_strings(node: ast.expr, scopes: list[ast.AST]) -> tuple[str, ...] | None:
    """The strings of a literal tuple, list or set; or of a tuple assigned once to this name (innermost
    scope first; a function parameter or a name bound more than once is not literal)."""
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        if all(_is_str(e) for e in node.elts):
            return tuple(_str(e) for e in node.elts)
        return None
    if isinstance(node, ast.Name):
        for scope in scopes:
            if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef) and node.id in _parameters(scope):
                return None
            assigned = [value for a in _own_nodes(scope) if (value := _assigned_to(a, node.id)) is not None]
            if len(assigned) == 1 and isinstance(assigned[0], ast.Tuple):  # a list could be appended to
                return _literal_strings(assigned[0], [])
            if assigned:
                return None
    return None


def _parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    a = function.args
    every = [*a.posonlyargs, *a.args, *a.kwonlyargs, *(x for x in (a.vararg, a.kwarg) if x is not None)]
    return {p.arg for p in every}


def _assigned_to(node: ast.AST, name: str) -> ast.expr | None:
    """What `node` assigns to `name` (an augmented assignment counts as another assignment)."""
    if isinstance(node, ast.Assign) and any(_is_name(t, name) for t in node.targets):
        return node.value
    if isinstance(node, ast.AnnAssign | ast.AugAssign) and _is_name(node.target, name):
        return node.value
    return None


def _is_name(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _own_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a scope, not descending into nested functions or classes."""
    for child in ast.iter_child_nodes(scope):
        yield child
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            yield from _own_nodes(child)


def scan(root: Path = ROOT, dirs: Iterable[str] = SOURCE_DIRS) -> tuple[list[Found], list[Dynamic]]:
    """The signatures of every .py file under `dirs`, wherever they live."""
    found: list[Found] = []
    dynamic: list[Dynamic] = []
    for folder in dirs:
        for path in sorted((root / folder).rglob("*.py")):
            f, d = extract(path.read_text(), str(path.relative_to(root)))
            found += f
            dynamic += d
    return found, dynamic


@cache
def keeper() -> tuple[tuple[Found, ...], tuple[Dynamic, ...]]:
    """`scan()` of this checkout's keeper/ and strategies/, once per process."""
    found, dynamic = scan()
    return tuple(found), tuple(dynamic)


# --- the contracts' side -----------------------------------------------------------------------------


def canonical_type(param: dict[str, Any]) -> str:
    """`tuple[]` with components (address,bool) -> `(address,bool)[]`."""
    kind: str = param["type"]
    if kind.startswith("tuple"):
        return "(" + ",".join(canonical_type(c) for c in param["components"]) + ")" + kind[len("tuple") :]
    return kind


def canonical(entry: dict[str, Any]) -> str:
    return f"{entry['name']}({','.join(canonical_type(p) for p in entry.get('inputs', []))})"


def signatures_of(abi: list[dict[str, Any]]) -> set[str]:
    return {canonical(e) for e in abi if e.get("type") in ("function", "event")}


# Signatures the compiler itself defines, so no artifact lists them.
BUILTIN = {
    "Error(string)": "Solidity's revert(reason) / require(cond, reason) payload",
    "Panic(uint256)": "Solidity's assert / arithmetic failure payload",
}


@cache
def defined() -> dict[str, tuple[str, ...]]:
    """Canonical signature -> the accepted contracts (real ones, standard stand-ins) that define it."""
    where: dict[str, list[str]] = {}
    for name in REAL:
        for signature in signatures_of(artifacts.load(name).abi):
            where.setdefault(signature, []).append(name)
    for name, (_, standard) in STANDARD_STAND_INS.items():
        for signature in signatures_of(artifacts.load(name).abi) & set(standard):
            where.setdefault(signature, []).append(name)
    for signature in BUILTIN:
        where.setdefault(signature, []).append("solidity")
    for signature, (contract, published) in PUBLISHED.items():
        if keccak(text=signature)[:4].hex() == published:
            where.setdefault(signature, []).append(contract)
    return {s: tuple(names) for s, names in where.items()}


def resolve(
    found: Iterable[Found], known: dict[str, tuple[str, ...]] | None = None
) -> tuple[list[Found], list[Found]]:
    """(signatures an accepted contract defines, hard-coded selectors named by theirs; the unknown ones)."""
    known = defined() if known is None else known
    by_selector: dict[str, set[str]] = {}
    for signature in known:
        by_selector.setdefault("0x" + keccak(text=signature)[:4].hex(), set()).add(signature)
    ok: list[Found] = []
    bad: list[Found] = []
    for f in found:
        if f.signature in known:
            ok.append(f)
        elif len(named := by_selector.get(f.signature, set())) == 1:
            ok.append(Found(named.pop(), f.where))
        else:
            bad.append(f)
    return ok, bad
