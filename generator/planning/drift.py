"""How far live traffic has drifted from the profile a plan was made from.

Per table: the share of accesses each planned shard receives now (the live counts of its rows, under the plan's
hotness order; lookups the front cache serves reach no shard) against the share the planner expected, and the
share of accesses that moved across shard boundaries (half the summed absolute differences: what would have to
move for the planned shares to hold). With a front cache: the share of all lookups its rows would serve now
against the planner's expected hit rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from generator.errors import PlanError
from generator.planning.plan import Plan
from generator.planning.plan_file import load_planner_figures
from generator.traffic.profile import AccessProfile


@dataclass(frozen=True)
class TableDrift:
    """One table's planned and live access share per shard."""

    table: str
    planned: tuple[float, ...]
    live: tuple[float, ...]

    @property
    def moved_share(self) -> float:
        """The share of the table's accesses that moved across shard boundaries."""
        return 0.5 * float(np.abs(np.subtract(self.live, self.planned)).sum())


@dataclass(frozen=True)
class Drift:
    """Every table's drift and the front cache's hit rate, planned and now."""

    tables: tuple[TableDrift, ...]
    planned_hit_rate: float
    live_hit_rate: float

    def __str__(self) -> str:
        lines = ["drift against the plan's profile:", f"  {'table':<18} {'moved':>7}  shares planned -> live"]
        for table in self.tables:
            pairs = ", ".join(f"{p:.1%}->{q:.1%}" for p, q in zip(table.planned, table.live, strict=True))
            lines.append(f"  {table.table:<18} {table.moved_share:>7.1%}  {pairs}")
        if self.planned_hit_rate or self.live_hit_rate:
            lines.append(f"  front cache hit rate: planned {self.planned_hit_rate:.1%}, now {self.live_hit_rate:.1%}")
        return "\n".join(lines)


def planned_expectations(plan_path: Path) -> tuple[dict[tuple[str, int], float], float]:
    """The planner's access share of every shard and its expected front-cache hit rate, from plan.json."""
    figures = load_planner_figures(plan_path)
    if figures is None or not figures.access_shares:
        raise PlanError(f"plan `{plan_path}` holds no access shares: it was not made by `recgen plan`")
    return figures.access_shares, figures.expected_hit_rate


def expected_hit_rate(plan_path: Path) -> float:
    """The front cache's hit rate the planner expected (0 without a cache, or for a plan not made by the planner)."""
    figures = load_planner_figures(plan_path)
    return 0.0 if figures is None else figures.expected_hit_rate


def drift(
    plan: Plan, planned_shares: dict[tuple[str, int], float], planned_hit_rate: float, live: AccessProfile
) -> Drift:
    """The live profile's shares per planned shard, against the planner's; the front cache's hit rate now."""
    tables, hits, lookups = [], 0.0, 0.0
    for table in plan.tables:
        access = live.table(table.spec.name)
        ranks = table.rank_of_row()
        counts = access.counts.astype(np.float64)
        at = access.rows if ranks is None else ranks[access.rows]
        shard_of = np.searchsorted(np.asarray(table.boundaries[1:]), at, side="right")
        cached = at < table.cached_rows  # served by the front cache: no shard's share, as the planner counts
        per_shard = np.bincount(shard_of, weights=np.where(cached, 0.0, counts), minlength=len(table.shards))
        total = float(counts.sum())
        tables.append(
            TableDrift(
                table.spec.name,
                tuple(planned_shares.get((table.spec.name, s.index), 0.0) for s in table.shards),
                tuple(float(x) / total if total else 0.0 for x in per_shard),
            )
        )
        hits += float(counts[cached].sum())
        lookups += total
    return Drift(tuple(tables), planned_hit_rate, hits / lookups if lookups else 0.0)
