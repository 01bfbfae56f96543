"""The contracts an aggregator's transaction may name, per chain: where it is sent (`to`) and what the
keeper approves (the allowance target). Anything else in an aggregator's answer is refused
(`keeper/swaps.py`): an API that is hostile or compromised must not choose where the keeper's tokens
or allowances go.

Shipped for the chains the keeper knows; an operator adds contracts (another chain, a new router, a
devnet's stand-in) with KEEPER_AGGREGATOR_CONTRACTS="0x:0xADDR,1inch:0xADDR" (`keeper/config.py`).

Beside the addresses, what the routers' calls mean: `decode_swap` reads a swap transaction's calldata
with the router's ABI (Uniswap v3 exactInputSingle, 1inch v6 swap and unoswap, 0x AllowanceHolder exec
of Settler.execute) into what it sells, how much, for what, to whom and at what minimum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode
from eth_utils.address import to_checksum_address

from keeper.codec import selector, split_types
from keeper.config import aggregator_contracts
from keeper.errors import QuoteError


class QuoteRejectedError(QuoteError):
    """A quote whose transaction is not safe to sign: dropped, with this reason, for the next one."""


ZEROX, ONEINCH = "0x", "1inch"
ETHEREUM, OPTIMISM, BASE, ARBITRUM = 1, 10, 8453, 42161

# 0x AllowanceHolder, on chains with the Cancun hardfork (Ethereum, Optimism, Base, Arbitrum, ...): the
# `transaction.to` and `issues.allowance.spender` of /swap/allowance-holder quotes. Source:
# github.com/0xProject/0x-settler README, "AllowanceHolder addresses" ("You can hardcode this address");
# 0x.org/docs/developer-resources/core-concepts/contracts (allowance target vs entry point).
ALLOWANCE_HOLDER = "0x0000000000001fF3684f28c67538d4D072C22734"
# 0x Settler changes with every deployment and must not be hard-coded: its deployer/registry, at this
# address on every chain, names the current (`ownerOf(2)`, taker-submitted) and the previous one
# (`prev(2)`, during 0x API's dwell time). Source: the same README, "How do I find the most recent
# deployment?".
SETTLER_REGISTRY = "0x00000000000004533Fe15556B1E086BB1A72cEae"
SETTLER_TAKER_SUBMITTED = 2
# 1inch AggregationRouterV6, the same address on every chain but zkSync: `tx.to` of /swap/v6.0 quotes
# and the spender to approve. Source: github.com/1inch-community/interface
# libs/sdk/src/lib/chain/contracts.ts (getOneInchRouterV6ContractAddress) and github.com/1inch/limit-
# order-sdk src/constants.ts (the same contract hosts the limit order protocol v4).
ONEINCH_ROUTER_V6 = "0x111111125421cA6dc452d289314280a0f8842A65"

PUBLISHED: dict[str, dict[int, tuple[str, ...]]] = {
    ZEROX: {chain: (ALLOWANCE_HOLDER,) for chain in (ETHEREUM, OPTIMISM, BASE, ARBITRUM)},
    ONEINCH: {chain: (ONEINCH_ROUTER_V6,) for chain in (ETHEREUM, OPTIMISM, BASE, ARBITRUM)},
}


def listed(aggregator: str, chain_id: int, env: Mapping[str, str]) -> frozenset[str]:
    """The aggregator's published contracts on this chain plus the operator's (checksummed)."""
    published = frozenset(PUBLISHED.get(aggregator, {}).get(chain_id, ()))
    return published | aggregator_contracts(env).get(aggregator, frozenset())


# --- what a router's transaction says it does --------------------------------------------------------------

# Uniswap v3 SwapRouter (the keeper's own fallback, and the devnet's fake aggregator)
EXACT_INPUT_SINGLE = "exactInputSingle((address,address,uint24,address,uint256,uint256,uint256,uint160))"
# 1inch AggregationRouterV6: GenericRouter.swap and UnoswapRouter (`Address` is a uint256 whose low
# 160 bits are the address). Selectors as published beside the interface (07ed2379, 83800a8e, ...).
ONEINCH_SWAP = "swap(address,(address,address,address,address,uint256,uint256,uint256),bytes)"
ONEINCH_PARTIAL_FILL = 1  # SwapDescription.flags bit 0: the router may sell less than `amount`
UNOSWAPS = (  # (signature, whether the first argument is the recipient)
    ("unoswap(uint256,uint256,uint256,uint256)", False),
    ("unoswap2(uint256,uint256,uint256,uint256,uint256)", False),
    ("unoswap3(uint256,uint256,uint256,uint256,uint256,uint256)", False),
    ("unoswapTo(uint256,uint256,uint256,uint256,uint256)", True),
    ("unoswapTo2(uint256,uint256,uint256,uint256,uint256,uint256)", True),
    ("unoswapTo3(uint256,uint256,uint256,uint256,uint256,uint256,uint256)", True),
)
# 0x: AllowanceHolder.exec(operator, token, amount, target, data) lends `operator` an allowance of
# `amount` of `token` for this call, then calls `target` with `data`: Settler.execute(slippage,
# actions, zid), whose `slippage` (recipient, buyToken, minAmountOut) the Settler enforces at the end.
ALLOWANCE_HOLDER_EXEC = "exec(address,address,uint256,address,bytes)"
SETTLER_EXECUTE = "execute((address,address,uint256),bytes[],bytes32)"
SETTLER_CURRENT, SETTLER_PREVIOUS = "ownerOf(uint256)", "prev(uint128)"
LOW_160_BITS = (1 << 160) - 1


@dataclass(frozen=True)
class SwapCall:
    """What a swap transaction's calldata says it does, decoded with the router's ABI."""

    function: str
    sell_token: str
    amount: int  # exactly this much is sold
    buy_token: str | None  # None: the route decides (1inch unoswap): the simulation sees what arrives
    recipient: str | None  # None: the sender, i.e. the keeper
    min_out: int  # the router reverts below this
    settler: str | None = None  # 0x: who AllowanceHolder lets spend the allowance, and runs the sale


def decode_swap(data: bytes) -> SwapCall:
    """The swap `data` describes; QuoteRejectedError when no known router function does."""
    decoder = _DECODERS.get(data[:4])
    if decoder is None:
        raise QuoteRejectedError(f"calldata calls {data[:4].hex() or 'nothing'}, not a known swap function")
    try:
        return decoder(data[4:])
    except QuoteRejectedError:
        raise
    except Exception:
        raise QuoteRejectedError(f"calldata {data[:4].hex()} does not decode as its function") from None


def _exact_input_single(body: bytes) -> SwapCall:
    ((sell, buy, _fee, recipient, _deadline, amount, min_out, price_limit),) = _arguments(
        EXACT_INPUT_SINGLE, body
    )
    if price_limit != 0:
        raise QuoteRejectedError("exactInputSingle with a price limit may sell less than the amount")
    return SwapCall(
        "exactInputSingle", _checksum(sell), amount, _checksum(buy), _checksum(recipient), min_out
    )


def _oneinch_swap(body: bytes) -> SwapCall:
    _executor, desc, _data = _arguments(ONEINCH_SWAP, body)
    sell, buy, _src_receiver, dst_receiver, amount, min_out, flags = desc
    if flags & ONEINCH_PARTIAL_FILL:
        raise QuoteRejectedError("1inch swap with the partial-fill flag may sell less than the amount")
    recipient = None if int(dst_receiver, 16) == 0 else _checksum(dst_receiver)
    return SwapCall("swap", _checksum(sell), amount, _checksum(buy), recipient, min_out)


def _unoswap(signature: str, with_recipient: bool) -> Callable[[bytes], SwapCall]:
    name = signature[: signature.index("(")]

    def decoder(body: bytes) -> SwapCall:
        words = list(_arguments(signature, body))
        recipient = _checksum(_low_address(words.pop(0))) if with_recipient else None
        token, amount, min_out = words[:3]
        return SwapCall(name, _checksum(_low_address(token)), amount, None, recipient, min_out)

    return decoder


def _allowance_holder_exec(body: bytes) -> SwapCall:
    operator, token, amount, target, inner = _arguments(ALLOWANCE_HOLDER_EXEC, body)
    if operator.lower() != target.lower():
        raise QuoteRejectedError("0x exec lends the allowance to another contract than the one it calls")
    if inner[:4] != selector(SETTLER_EXECUTE):
        raise QuoteRejectedError(f"0x exec calls {inner[:4].hex()} on its target, not Settler.execute")
    ((recipient, buy, min_out), _actions, _zid) = _arguments(SETTLER_EXECUTE, inner[4:])
    return SwapCall(
        "exec", _checksum(token), amount, _checksum(buy), _checksum(recipient), min_out, _checksum(target)
    )


def _arguments(signature: str, body: bytes) -> tuple[Any, ...]:
    """A call's arguments, decoded with the types of its signature (as the contract's ABI decoder reads
    them: through the offsets, ignoring trailing bytes)."""
    return tuple(decode(list(split_types(signature[signature.index("(") + 1 : -1])), body))


def _low_address(word: int) -> str:
    return "0x" + (word & LOW_160_BITS).to_bytes(20, "big").hex()


def _checksum(text: str) -> str:
    return str(to_checksum_address(text))


_DECODERS: dict[bytes, Callable[[bytes], SwapCall]] = {
    selector(EXACT_INPUT_SINGLE): _exact_input_single,
    selector(ONEINCH_SWAP): _oneinch_swap,
    selector(ALLOWANCE_HOLDER_EXEC): _allowance_holder_exec,
    **{selector(signature): _unoswap(signature, to) for signature, to in UNOSWAPS},
}
