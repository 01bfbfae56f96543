"""Perp v2 as a protocol plugin: what it offers the engine (registered in pyproject.toml).

Position liquidations first, then collateral liquidations, both over one scanner that reads every
account at most once per block.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from eth_abi.abi import decode

from keeper import funds
from keeper.codec import encode_call
from keeper.config import RunSettings
from keeper.errors import SettingError
from keeper.gas import warn_low_gas
from keeper.indexer import AccountSource, Indexer
from keeper.protocol import Check, History, Session, Wiring
from keeper.quotes import close_sources, configured_sources
from keeper.rpc import Rpc
from keeper.session import open_session as open_protocol_session
from keeper.store import Store
from strategies.perp_v2 import checks, report, views
from strategies.perp_v2.collateral import CollateralSettings, PerpV2Collateral
from strategies.perp_v2.funds import PerpV2Funds
from strategies.perp_v2.history import PerpHistory
from strategies.perp_v2.inventory import InventorySettings, PerpV2Inventory
from strategies.perp_v2.metadata import Deployment, load_metadata
from strategies.perp_v2.positions import PerpV2Positions, PositionSettings
from strategies.perp_v2.sale import Seller
from strategies.perp_v2.scanner import Scanner
from strategies.perp_v2.views import PARAMETER_CONTRACTS

log = logging.getLogger(__name__)
LOW_FREE_COLLATERAL_USDC = 1_000 * 10**6
SCANNER = "perp-v2:scanner"  # in `Session.shared`


class PerpV2Plugin:
    name = "perp-v2"
    title = "Perp v2"

    def recognises(self, metadata: Any) -> bool:
        """Perp's own format (`@perp/curie-deployments`) has no "protocol" field: it is the default."""
        return not (isinstance(metadata, Mapping) and "protocol" in metadata)

    def load_metadata(self, path: Path) -> Deployment:
        return load_metadata(path)

    def account_sources(self, deployment: Deployment) -> list[AccountSource]:
        return views.account_sources(deployment)

    def watched(self, deployment: Deployment) -> list[str]:
        return [deployment.address(name) for name in PARAMETER_CONTRACTS]

    def wire(
        self, session: Session, settings: RunSettings, env: Mapping[str, str], liquidator: str
    ) -> Wiring:
        d: Deployment = session.deployment
        scanner = session.shared.get(SCANNER)
        if scanner is None:  # shards: every shard's wiring reads through the one scanner
            scanner = session.shared[SCANNER] = Scanner(d, session.indexer, session.read)
        positions = PerpV2Positions(
            d,
            scanner,
            session.rpc,
            session.read,
            PositionSettings(
                min_profit=settings.min_profit,
                max_keeper_fee=settings.max_keeper_fee,
                inherited=settings.inherited,
                slippage_bps=settings.slippage_bps,
                max_fee_gwei=settings.max_fee_gwei,
            ),
        )
        sources = configured_sources(session.rpc, d.chain_id, d.quoter_v2, d.swap_router, env)
        collateral = PerpV2Collateral(
            d,
            scanner,
            session.rpc,
            session.read,
            sources,
            CollateralSettings(
                min_profit=settings.min_profit,
                max_keeper_fee=settings.max_keeper_fee,
                slippage_bps=settings.slippage_bps,
                max_fee_gwei=settings.max_fee_gwei,
            ),
        )
        inventory = PerpV2Inventory(
            d,
            scanner,
            session.rpc,
            session.read,
            Seller(d.usdc, session.rpc, session.read, sources, settings.slippage_bps),
            InventorySettings(liquidator, settings.min_profit, settings.inherited, settings.slippage_bps),
        )
        strategies: list[Any] = [positions, collateral, inventory]
        strategies += _funds(session, env, liquidator, sources, settings.slippage_bps)
        return Wiring(
            strategies,
            report.symbols(d),
            lambda: len(session.indexer.known),
            lambda keeper: _warn_low_funds(session.rpc, d.vault, keeper),
            lambda: close_sources(sources),
        )

    async def checks(
        self, rpc: Rpc, deployment: Deployment, keeper: str | None, env: Mapping[str, str]
    ) -> list[Check]:
        return await checks.run_checks(rpc, deployment, keeper)

    def can_scan(self) -> bool:
        return True

    async def report(self, session: Session, as_json: bool, out: TextIO) -> int:
        found = await report.report(Scanner(session.deployment, session.indexer, session.read), as_json, out)
        return sum(1 for op in found if op.liquidatable)

    def history(self, session: Session) -> History:
        return PerpHistory(session)


PLUGIN = PerpV2Plugin()


def _funds(
    session: Session, env: Mapping[str, str], keeper: str, sources: list[Any], slippage_bps: int
) -> list[PerpV2Funds]:
    """The funds strategy, last in rank, when gas top-up or the Vault target is on."""
    settings = funds.funds_settings(env)
    d: Deployment = session.deployment
    if settings.susd is not None:
        raise SettingError("KEEPER_SUSD_CONVERT_ABOVE: Perp v2 pays no sUSD (Synthetix Perps V2 only)")
    if settings.gas is not None and d.weth9 is None:
        raise SettingError("KEEPER_GAS_TOPUP_FLOOR_ETH: the metadata names no WETH9 to buy ETH with")
    if settings.gas is None and settings.vault is None:
        return []
    ledger = funds.Ledger(lambda: session.store.journal_rows(sender=keeper.lower()))
    return [PerpV2Funds(d, session.rpc, session.read, sources, settings, keeper, ledger, slippage_bps)]


async def _warn_low_funds(rpc: Rpc, vault: str, keeper: str) -> None:
    """ETH for gas, and Vault free collateral for takeovers."""
    await warn_low_gas(rpc, keeper)
    (free,) = decode(["uint256"], await rpc.call(vault, encode_call("getFreeCollateral(address)", keeper)))
    if free < LOW_FREE_COLLATERAL_USDC:
        log.warning("keeper %s has %.2f USDC free collateral in the Vault", keeper, free / 10**6)


@dataclass
class PerpSession:
    """A Perp v2 session with its scanner: what `scan`, the demo, benches and tests work with."""

    session: Session
    scanner: Scanner

    @property
    def rpc(self) -> Rpc:
        return self.session.rpc

    @property
    def deployment(self) -> Deployment:
        d: Deployment = self.session.deployment
        return d

    @property
    def store(self) -> Store:
        return self.session.store

    @property
    def indexer(self) -> Indexer:
        return self.session.indexer

    @property
    def read(self) -> Any:
        return self.session.read

    async def close(self) -> None:
        await self.session.close()


async def open_session(
    rpc_url: str,
    metadata_path: Path,
    state_db: Path | str,
    *,
    progress: bool = False,
    sweep_blocks: int | None = None,
) -> PerpSession:
    """Check the inputs against the chain (chain id, code at the ClearingHouse) and wire a scanner."""
    session = await open_protocol_session(PLUGIN, rpc_url, Path(metadata_path), state_db, progress=progress)
    extra = {"sweep_blocks": sweep_blocks} if sweep_blocks else {}
    return PerpSession(session, Scanner(session.deployment, session.indexer, session.read, **extra))
