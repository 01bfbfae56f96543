"""Perp v2 funds that look after themselves (`keeper/funds.py`): ETH for gas bought with wallet USDC,
and a target of USDC kept in the Vault for takeovers. Ranked after every liquidation strategy.

Gas: under the floor, USDC worth (target - balance) of ETH is sold for WETH through the safe swap path
of collateral sales (vetted quotes, the sale simulated with its balance checks, an exact approval),
then `WETH9.withdraw(minOut)` unwraps what the swap is bound to return. The slippage margin stays as
WETH: dust, or sold back by the inventory strategy with the other collateral.

Vault: outside target ± band, deposit from the wallet (an exact approval, `deposit`) or withdraw to
it (`withdraw`, never more than the free collateral). Both count as capital, so a liquidation planned
at the same head is never starved by a funds move.
"""

from __future__ import annotations

from dataclasses import dataclass

from keeper import funds
from keeper.codec import encode_call
from keeper.funds import FundsPlan, FundsSettings, Ledger, Need
from keeper.multicall import Call, Reader
from keeper.quotes import QuoteSource
from keeper.rpc import BlockHeader, Rpc
from keeper.strategy import Step
from keeper.swaps import best_quote
from strategies.perp_v2.collateral import WALLET_USDC
from strategies.perp_v2.metadata import Deployment
from strategies.perp_v2.positions import FREE_COLLATERAL
from strategies.perp_v2.reverts import explain
from strategies.perp_v2.views import Views

USDC_TO_X18 = 10**12
GAS_UNWRAP, GAS_DEPOSIT, GAS_WITHDRAW = 45_000, 250_000, 350_000


@dataclass(frozen=True)
class Holdings:
    """The keeper's balances at one head."""

    block: int
    day: int
    eth: int  # wei
    usdc: int  # wallet, 6 dp
    vault: int  # USDC in the Vault, 6 dp (signed: realised losses can make it negative)
    free: int  # Vault free collateral in USDC, 6 dp


class PerpV2Funds:
    name = "perp-v2-funds"

    def __init__(
        self,
        deployment: Deployment,
        rpc: Rpc,
        read: Reader,
        sources: list[QuoteSource],
        settings: FundsSettings,
        keeper: str,
        ledger: Ledger,
        slippage_bps: int = 100,
    ) -> None:
        self.d, self.rpc, self.read, self.sources = deployment, rpc, read, sources
        self.settings, self.keeper, self.ledger, self.slippage_bps = settings, keeper, ledger, slippage_bps
        self.held: Holdings | None = None
        self.needs: list[Need] = []

    def explain(self, reason: str) -> str:
        return explain(reason)

    async def refresh(self, head: BlockHeader | None = None) -> None:
        head = head or await self.rpc.header("latest")
        d, keeper = self.d, self.keeper
        calls = [
            Call(d.multicall3, "getEthBalance(address)", (keeper,), ("uint256",)),
            Views.erc20_balance(d.usdc, keeper),
            Call(d.vault, "getBalanceByToken(address,address)", (keeper, d.usdc), ("int256",)),
            Call(d.vault, "getFreeCollateralByToken(address,address)", (keeper, d.usdc), ("uint256",)),
        ]
        eth, usdc, vault, free = (int(r.one()) for r in await self.read(calls, head.number))
        self.held = held = Holdings(head.number, funds.day_of(head.timestamp), eth, usdc, vault, free)
        self.needs = []
        gas, target = self.settings.gas, self.settings.vault
        short = funds.gas_shortfall(held.eth, gas.floor_wei, gas.target_wei) if gas is not None else 0
        if short and self.d.weth9 is not None:
            self.needs.append(Need(keeper, funds.GAS_TOPUP, short, 0))
        if target is not None and (move := funds.vault_move(held.vault, target.target, target.band)):
            kind = funds.VAULT_DEPOSIT if move > 0 else funds.VAULT_WITHDRAW
            self.needs.append(Need(keeper, kind, abs(move), abs(move) * USDC_TO_X18))

    def opportunities(self) -> list[Need]:
        return self.needs

    async def plan(self, need: Need, liquidator: str) -> FundsPlan:
        assert self.held is not None
        if need.kind == funds.GAS_TOPUP:
            return await self._topup(need, liquidator, self.held)
        return await self._vault(need, liquidator, self.held)

    async def _topup(self, need: Need, keeper: str, held: Holdings) -> FundsPlan:
        """USDC worth the ETH short of the target (priced by selling that ETH), capped, for WETH,
        then unwrapped."""
        gas, weth = self.settings.gas, self.d.weth9
        assert gas is not None
        assert weth is not None
        plan = funds.new_plan(need, held.day, eth_wei=held.eth, floor_wei=gas.floor_wei)
        plan.detail.update(target_wei=gas.target_wei, wallet_usdc=held.usdc)
        price = await best_quote(self.sources, weth, self.d.usdc, need.amount, keeper, self.slippage_bps, 0)
        if price.best is None:
            return plan.skip(f"gas-topup: ETH cannot be priced ({'; '.join(price.errors)})")
        if held.usdc <= 0:
            return plan.skip("gas-topup: the wallet holds no USDC")
        want = min(price.best.buy_amount, held.usdc)
        plan.detail["usdc_value_of_shortfall"] = price.best.buy_amount
        sold = funds.capped(plan, want, gas.caps, self.ledger.spent([funds.GAS_TOPUP], held.day))
        if not sold:
            return plan
        label = funds.spend_label(funds.GAS_TOPUP, sold, held.day)
        sale = (self.d.usdc, sold)
        min_out = await funds.swap(plan, self.rpc, self.sources, sale, weth, keeper, self.slippage_bps, label)
        if not min_out:
            return plan
        plan.steps.append(Step("unwrap WETH", weth, encode_call("withdraw(uint256)", min_out), GAS_UNWRAP))
        plan.capital = (WALLET_USDC, sold, held.usdc)
        plan.execute = True
        plan.reason = f"gas-topup: sell {sold / 10**6:,.2f} USDC for >= {min_out / 10**18:.6f} ETH"
        return plan

    async def _vault(self, need: Need, keeper: str, held: Holdings) -> FundsPlan:
        target = self.settings.vault
        assert target is not None
        plan = funds.new_plan(need, held.day, vault_usdc=held.vault, wallet_usdc=held.usdc)
        plan.detail.update(free_collateral_usdc=held.free, target=target.target, band=target.band)
        deposit = need.kind == funds.VAULT_DEPOSIT
        within = held.usdc if deposit else held.free  # what the wallet, or the free collateral, allows
        if within <= 0:
            return plan.skip(
                f"{need.kind}: {'the wallet holds no USDC' if deposit else 'no free collateral'}"
            )
        spent = self.ledger.spent(funds.VAULT, held.day)
        if not (moved := funds.capped(plan, min(need.amount, within), target.caps, spent)):
            return plan
        label = funds.spend_label(need.kind, moved, held.day)
        usdc, vault = self.d.usdc, self.d.vault
        if deposit:
            plan.steps = await funds.approve_step(self.rpc, usdc, keeper, vault, moved)
            data = encode_call("deposit(address,uint256)", usdc, moved)
            plan.steps.append(Step(label, vault, data, GAS_DEPOSIT))
            plan.capital = (WALLET_USDC, moved, held.usdc)
        else:
            data = encode_call("withdraw(address,uint256)", usdc, moved)
            plan.steps = [Step(label, vault, data, GAS_WITHDRAW)]
            plan.capital = (FREE_COLLATERAL, moved * USDC_TO_X18, held.free * USDC_TO_X18)
        plan.execute = True
        vault_text, goal_text = f"{held.vault / 10**6:,.2f}", f"{target.target / 10**6:,.2f}"
        plan.reason = f"{need.kind}: {moved / 10**6:,.2f} USDC (Vault {vault_text}, target {goal_text})"
        return plan
