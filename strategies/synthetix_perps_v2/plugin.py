"""Synthetix Perps V2 as a protocol plugin (registered in pyproject.toml): one strategy, flag then
liquidate, its sUSD rewards valued on Uniswap v3 (QuoterV2 of the metadata, or the operator's)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from keeper import funds
from keeper.config import RunSettings
from keeper.errors import SettingError
from keeper.gas import warn_low_gas
from keeper.indexer import AccountSource
from keeper.protocol import Check, History, Session, Wiring
from keeper.quotes import UniswapV3
from keeper.rpc import Rpc
from keeper.session import open_session as open_protocol_session
from strategies.synthetix_perps_v2 import checks
from strategies.synthetix_perps_v2.funds import SynthetixFunds
from strategies.synthetix_perps_v2.history import SynthetixHistory
from strategies.synthetix_perps_v2.metadata import (
    SYNTHETIX_PERPS_V2,
    SynthetixDeployment,
    load_synthetix_metadata,
)
from strategies.synthetix_perps_v2.strategy import SynthetixPerpsV2, SynthetixSettings, account_sources

STRATEGY = "synthetix-perps-v2:strategy"  # in `Session.shared`


class SynthetixPerpsV2Plugin:
    name = SYNTHETIX_PERPS_V2
    title = "Synthetix Perps V2"

    def recognises(self, metadata: Any) -> bool:
        return isinstance(metadata, Mapping) and metadata.get("protocol") == SYNTHETIX_PERPS_V2

    def load_metadata(self, path: Path) -> SynthetixDeployment:
        return load_synthetix_metadata(path)

    def account_sources(self, deployment: SynthetixDeployment) -> list[AccountSource]:
        return account_sources(deployment)

    def watched(self, deployment: SynthetixDeployment) -> list[str]:
        return [deployment.settings]

    def wire(
        self, session: Session, settings: RunSettings, env: Mapping[str, str], liquidator: str
    ) -> Wiring:
        d: SynthetixDeployment = session.deployment
        uniswap = UniswapV3.configured(session.rpc, d.quoter_v2, d.swap_router, env)
        strategy = session.shared.get(STRATEGY)
        if strategy is None:  # shards: every shard's wiring reads through the one strategy
            strategy = session.shared[STRATEGY] = SynthetixPerpsV2(
                d,
                session.indexer,
                session.rpc,
                session.read,
                SynthetixSettings(
                    min_profit=settings.min_profit,
                    max_keeper_fee=settings.max_keeper_fee,
                    max_fee_gwei=settings.max_fee_gwei,
                    susd_usd=settings.susd_usd,
                ),
                uniswap,
            )
        strategies: list[Any] = [strategy, *_funds(session, env, liquidator, uniswap, settings, strategy)]

        async def nothing_to_close() -> None:
            return None

        return Wiring(
            strategies,
            {m.proxy.lower(): m.key for m in d.markets},
            lambda: len(session.indexer.known),
            lambda keeper: warn_low_gas(session.rpc, keeper),
            nothing_to_close,
        )

    async def checks(
        self, rpc: Rpc, deployment: SynthetixDeployment, keeper: str | None, env: Mapping[str, str]
    ) -> list[Check]:
        return await checks.run_checks(rpc, deployment, keeper, env)

    def can_scan(self) -> bool:
        return False

    async def report(self, session: Session, as_json: bool, out: TextIO) -> int:
        raise SettingError(f"scan does not read {self.title} yet")

    def history(self, session: Session) -> History:
        return SynthetixHistory(session)


PLUGIN = SynthetixPerpsV2Plugin()


def _funds(
    session: Session,
    env: Mapping[str, str],
    keeper: str,
    uniswap: UniswapV3,
    settings: RunSettings,
    strategy: SynthetixPerpsV2,
) -> list[SynthetixFunds]:
    """The sUSD conversion, last in rank, when KEEPER_SUSD_CONVERT_ABOVE is set."""
    chosen = funds.funds_settings(env)
    if chosen.gas is not None or chosen.vault is not None:
        name = "KEEPER_GAS_TOPUP_FLOOR_ETH" if chosen.gas is not None else "KEEPER_VAULT_TARGET_USDC"
        raise SettingError(f"{name}: Perp v2 only (Synthetix Perps V2 has no Vault, its metadata no WETH9)")
    d: SynthetixDeployment = session.deployment
    if chosen.susd is None:
        return []
    if d.usdc is None:
        raise SettingError("KEEPER_SUSD_CONVERT_ABOVE: the metadata names no USDC to convert sUSD to")
    ledger = funds.Ledger(lambda: session.store.journal_rows(sender=keeper.lower()))
    rpc, read, bps = session.rpc, session.read, settings.slippage_bps
    return [
        SynthetixFunds(
            d.susd, d.usdc, rpc, read, [uniswap], chosen.susd, keeper, ledger, bps, strategy.explain
        )
    ]


async def open_session(
    rpc_url: str, metadata_path: Path, state_db: Path | str, *, progress: bool = False
) -> Session:
    """Synthetix Perps V2: the same checks as every protocol, one log indexer over the market proxies."""
    return await open_protocol_session(PLUGIN, rpc_url, Path(metadata_path), state_db, progress=progress)
