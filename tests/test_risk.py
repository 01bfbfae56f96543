"""Pure risk math: which opportunities an exact snapshot allows, their order, and the re-read tiers."""

from __future__ import annotations

from dataclasses import replace

from strategies.perp_v2 import risk
from strategies.perp_v2.risk import X18, Account, CollateralConfig, Params, Position, Snapshot

ETH, BTC, WETH = "0x" + "e" * 40, "0x" + "b" * 40, "0x" + "4" * 40
PARAMS = Params(
    mm_ratio=62_500,
    im_ratio=100_000,
    liquidation_penalty_ratio=25_000,
    mm_ratio_buffer=2_000,
    debt_non_settlement_ratio=750_000,
    liquidation_ratio=500_000,
    collaterals={WETH: CollateralConfig(WETH, 18, 8, 800_000, 100_000)},
)
MARKS = {ETH: 2_000 * X18, BTC: 30_000 * X18}


def account(address: str, value: int, requirement: int, *positions: Position, **more: object) -> Account:
    fields: dict[str, object] = {
        "address": address,
        "block": 1,
        "account_value": value,
        "margin_requirement": requirement,
        "has_order": False,
        "positions": positions,
        "vault_liquidatable": False,
        "collateral_tokens": (),
    }
    fields.update(more)
    return Account(**fields)  # type: ignore[arg-type]


def snapshot(*accounts: Account) -> Snapshot:
    return Snapshot(1, 0, MARKS, {WETH: 2_000 * 10**8}, {a.address: a for a in accounts})


def test_liquidatable_is_strictly_below_the_requirement() -> None:
    assert not account("0xa", 625 * X18, 625 * X18).liquidatable
    assert account("0xa", 625 * X18 - 1, 625 * X18).liquidatable


def test_takers_makers_and_collateral_in_execution_order() -> None:
    big_taker = account("0x1", 0, 1_250 * X18, Position(ETH, 10 * X18, 10 * X18))
    small_taker = account("0x2", -5 * X18, 100 * X18, Position(BTC, -(X18 // 2), -(X18 // 2)))
    maker = account(
        "0x3",
        10 * X18,
        500 * X18,
        Position(ETH, 0, 3 * X18),
        Position(BTC, X18 // 10, X18 // 5),
        has_order=True,
        order_markets=(ETH, BTC),
    )
    cancel_only = account(
        "0x4", 900 * X18, 800 * X18, Position(ETH, 0, 99 * X18), has_order=True, free_collateral_by_mm=-1
    )
    healthy_maker = replace(cancel_only, address="0x5", free_collateral_by_mm=0)
    collateral = account(
        "0x6",
        50 * X18,
        0,
        vault_liquidatable=True,
        collateral_tokens=(WETH,),
        collateral_balances=((WETH, X18),),
    )
    found = risk.opportunities(
        snapshot(big_taker, small_taker, maker, cancel_only, healthy_maker, collateral), PARAMS
    )
    assert [(o.account, o.kind, o.base_token or o.collateral_token) for o in found] == [
        ("0x1", "taker", ETH),  # 20,000
        ("0x2", "taker", BTC),  # 15,000
        ("0x3", "maker", BTC),  # 6,000: cancel every market, then liquidate
        ("0x3", "maker", ETH),  # 6,000: tie broken by base token
        ("0x6", "collateral", WETH),  # positions first, then collateral
        ("0x4", "maker", ETH),  # cancellable, not yet liquidatable: last
    ]
    assert found[0].notional == 20_000 * X18
    assert found[2].cancel_markets == (ETH, BTC)
    assert found[4].notional == 2_000 * X18
    assert [o.liquidatable for o in found] == [True] * 5 + [False]


def test_a_taker_is_reread_only_when_its_cushion_can_nearly_be_lost() -> None:
    # 10 ETH long at 2,000: exposure 20,000; cushion 1,500 - 1,250 = 250; drift 1 + 20 = 21
    taker = account("0x1", 1_500 * X18, 1_250 * X18, Position(ETH, 10 * X18, 10 * X18))
    tol = risk.tolerance(taker, snapshot(taker), PARAMS)
    # room 229 over 5/4 x 20,000 x 1.0625 = 26,562.5 per unit of move
    assert tol.relative_move == 229 * X18 * X18 * 4 // (5 * 21_250 * X18)
    assert not tol.always
    just_inside = 2_000 * X18 - 2_000 * tol.relative_move + 2_000
    assert not risk.moved(tol, {ETH: just_inside}, {})
    assert risk.moved(tol, {ETH: 2_000 * X18 - 2_000 * tol.relative_move}, {})
    assert risk.moved(tol, {ETH: 2_000 * X18 + 2_000 * tol.relative_move}, {})  # either direction
    assert not risk.moved(tol, {ETH: 2_000 * X18, BTC: 1}, {})  # markets it is not in do not matter


def test_makers_liquidatable_accounts_and_thin_cushions_are_always_read() -> None:
    maker = account("0x1", 10_000 * X18, 100 * X18, Position(ETH, 0, X18), has_order=True)
    liquidatable = account("0x2", 0, 100 * X18, Position(ETH, X18, X18))
    thin = account("0x3", 130 * X18, 125 * X18, Position(ETH, X18, X18))  # 5 over, drift 3
    shot = snapshot(maker, liquidatable, thin)
    assert risk.tolerance(maker, shot, PARAMS).always
    assert risk.tolerance(liquidatable, shot, PARAMS).always
    assert risk.tolerance(replace(thin, account_value=127 * X18), shot, PARAMS).always
    assert not risk.tolerance(thin, shot, PARAMS).always


def test_collateral_debt_threshold_bounds_the_tolerance() -> None:
    # no positions' requirement problem, but 9,900 USDC of debt against a 10,000 threshold
    holder = account(
        "0x1",
        50_000 * X18,
        625 * X18,
        Position(ETH, 5 * X18, 5 * X18),
        collateral_tokens=(WETH,),
        collateral_balances=((WETH, 30 * X18),),
        settlement_value=-9_900 * 10**6,
        debt_threshold=10_000 * 10**6,
    )
    tol = risk.tolerance(holder, snapshot(holder), PARAMS)
    # (c): room 100 - drift (1 + 10 bps of 70,000 = 71) = 29 over 5/4 x 10,000 of ETH exposure
    assert tol.relative_move == 29 * X18 * X18 * 4 // (5 * 10_000 * X18)
    assert (WETH, 2_000 * 10**8) in tol.prices


def test_health_is_503_worthy_without_a_recent_tick_or_with_a_stale_head() -> None:
    from keeper.metrics import Metrics

    metrics = Metrics(block_interval=2.0, stale_head_seconds=120)
    assert metrics.health(now=1_000.0)[0] is False  # never ticked
    metrics.last_tick_at, metrics.last_head_timestamp = 1_000.0, 999
    assert metrics.health(now=1_005.0)[0] is True
    assert metrics.health(now=1_007.0)[1]["problems"] == ["no recent tick"]  # > 3 block intervals
    metrics.last_head_timestamp = 800
    assert metrics.health(now=1_001.0)[1]["problems"] == ["head is stale"]
