"""What re-planning would change: a new plan against the plan the deployment runs (`recgen plan --previous`).

Per table: the cuts before and now, and the rows and accesses that would move: the new plan stores them in a shard
that does not inherit their old shard (old and new shards are matched one to one by the rows they share; accesses
are weighted by the new profile). Then the replicas of every step, the
memory allocated before and now (each plan's own totals), and the front cache's hit rate: what the previous plan's
cache would serve of this profile's lookups against what the new plan expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from generator.errors import PlanError
from generator.planning import drift
from generator.planning.plan import Plan, TablePlan
from generator.planning.plan_file import load_planner_figures
from generator.traffic.profile import AccessProfile


@dataclass(frozen=True)
class TableChange:
    """One table's cuts before and now, and what would move between shards."""

    table: str
    boundaries_before: tuple[int, ...]
    boundaries_now: tuple[int, ...]
    num_rows: int
    rows_moved: int
    accesses_moved_share: float
    replicas_before: int
    replicas_now: int

    @property
    def cuts_changed(self) -> bool:
        """Whether the new plan cuts the table elsewhere, or orders its rows otherwise."""
        return self.boundaries_before != self.boundaries_now or self.rows_moved > 0


@dataclass(frozen=True)
class PlanChange:
    """A new plan against the previous one: tables, replicas, memory and the front cache."""

    previous_path: Path
    tables: tuple[TableChange, ...]
    router_replicas: tuple[int, int]
    dense_replicas: tuple[int, int]
    memory_bytes: tuple[int, int]
    #: (the previous plan's cache on this profile, the previous plan's own expectation, the new plan's expectation)
    hit_rates: tuple[float, float, float]
    #: The queries/s each plan was sized for (0: not made by the planner).
    target_qps: tuple[float, float] = (0.0, 0.0)
    #: Whether both plans were priced with the same capacity figures (else their memory is not comparable).
    same_capacity: bool = True
    #: Shard steps (groups the router does not pool) before and now: the ensembles' steps change with them.
    step_groups: tuple[int, int] = (0, 0)

    @property
    def rows_moved(self) -> int:
        """Rows the new plan stores in another shard, over every table."""
        return sum(table.rows_moved for table in self.tables)

    def __str__(self) -> str:
        lines = [
            f"against the previous plan ({self.previous_path}):",
            f"  {'table':<18} {'shards':>8} {'replicas':>9} {'rows moved':>20} {'accesses moved':>15}  cuts now",
        ]
        for table in self.tables:
            shards = f"{len(table.boundaries_before) - 1}->{len(table.boundaries_now) - 1}"
            replicas = f"{table.replicas_before}->{table.replicas_now}"
            moved = f"{table.rows_moved:,} ({table.rows_moved / table.num_rows:.1%})"
            cuts = "unchanged" if not table.cuts_changed else _cuts(table.boundaries_now)
            lines.append(
                f"  {table.table:<18} {shards:>8} {replicas:>9} {moved:>20} {table.accesses_moved_share:>15.1%}  {cuts}"
            )
        before, now = self.memory_bytes
        lines.append(
            f"  router replicas {self.router_replicas[0]} -> {self.router_replicas[1]}, "
            f"dense replicas {self.dense_replicas[0]} -> {self.dense_replicas[1]}"
        )
        if before:
            qps_before, qps_now = self.target_qps
            lines.append(
                f"  memory allocated {before / 1e9:.3f} GB (for {qps_before:,.0f} queries/s) -> {now / 1e9:.3f} GB "
                f"(for {qps_now:,.0f} queries/s): {(now - before) / 1e9:+.3f} GB"
            )
            if not self.same_capacity:
                lines.append("    (priced with other capacity figures: compare the replicas, not the bytes)")
        else:
            lines.append(f"  memory allocated now {now / 1e9:.3f} GB (the previous plan holds no planner totals)")
        on_profile, expected_before, expected_now = self.hit_rates
        if any(self.hit_rates):
            lines.append(
                f"  front cache hit rate: previous plan {on_profile:.1%} on this profile (it expected "
                f"{expected_before:.1%}), new plan {expected_now:.1%}"
            )
        if self.step_groups[0] != self.step_groups[1]:
            lines.append(
                f"  shard groups served as steps of their own {self.step_groups[0]} -> {self.step_groups[1]} "
                "(the ensembles' steps change with them)"
            )
        if not any(table.cuts_changed for table in self.tables):
            lines.append("  no row changes shard")
        return "\n".join(lines)


def _cuts(boundaries: tuple[int, ...]) -> str:
    inner = boundaries[1:-1]
    shown = ", ".join(f"{b:,}" for b in inner[:6]) + (", ..." if len(inner) > 6 else "")
    return f"[{shown}]" if inner else "one shard"


def shard_of_rows(table: TablePlan) -> np.ndarray:
    """The shard every original row lives in under this plan."""
    ranks = table.rank_of_row()
    at = np.arange(table.spec.num_rows, dtype=np.int64) if ranks is None else ranks.astype(np.int64)
    return np.searchsorted(np.asarray(table.boundaries[1:]), at, side="right")


def moved_rows(before: TablePlan, now: TablePlan) -> np.ndarray:
    """Whether each original row moves: its old and new shards are not a matched pair.

    A new shard inherits at most one old shard and an old shard passes to at most one new shard: pairs are matched
    greedily by the rows they share, most first (ties: lower new, then lower old index). A split keeps the larger
    part in place and moves the other; a row whose shards are matched stays.
    """
    old, new = shard_of_rows(before), shard_of_rows(now)
    overlap = np.zeros((len(now.shards), len(before.shards)), dtype=np.int64)
    np.add.at(overlap, (new, old), 1)
    pairs = np.argwhere(overlap > 0)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -overlap[pairs[:, 0], pairs[:, 1]]))
    heir = np.full(len(now.shards), -1, dtype=np.int64)
    taken = np.zeros(len(before.shards), dtype=bool)
    for new_shard, old_shard in pairs[order]:  # one entry per pair of shards that share rows, not per row
        if heir[new_shard] < 0 and not taken[old_shard]:
            heir[new_shard], taken[old_shard] = old_shard, True
    return np.asarray(heir[new] != old)


def table_change(before: TablePlan, now: TablePlan, profile: AccessProfile) -> TableChange:
    """One table's cuts before and now, rows that move and their share of the profile's accesses."""
    moved = moved_rows(before, now)
    access = profile.table(now.spec.name)
    counts = access.counts.astype(np.float64)
    total = float(counts.sum())
    return TableChange(
        table=now.spec.name,
        boundaries_before=tuple(before.boundaries),
        boundaries_now=tuple(now.boundaries),
        num_rows=now.spec.num_rows,
        rows_moved=int(moved.sum()),
        accesses_moved_share=float(counts[moved[access.rows]].sum()) / total if total else 0.0,
        replicas_before=sum(s.placement.instance_count for s in before.shards),
        replicas_now=sum(s.placement.instance_count for s in now.shards),
    )


def _planner_figures(plan_path: Path) -> tuple[int, float, object]:
    """The memory allocated, the target queries/s and the capacity figures the planner wrote into plan.json."""
    figures = load_planner_figures(plan_path)
    if figures is None:
        return 0, 0.0, None
    return figures.planned_memory_bytes, figures.target_qps, figures.capacity


def plan_change(previous: Plan, previous_path: Path, plan: Plan, plan_path: Path, profile: AccessProfile) -> PlanChange:
    """What switching from `previous` to `plan` changes, accesses weighted by `profile`.

    Both plans must hold the same tables with the same row counts (the same model, planned again).
    """
    tables_before = {table.spec.name: table for table in previous.tables}
    mismatched = [
        table.spec.name
        for table in plan.tables
        if table.spec.name not in tables_before or tables_before[table.spec.name].spec.num_rows != table.spec.num_rows
    ]
    if mismatched or len(tables_before) != len(plan.tables):
        raise PlanError(
            f"previous plan `{previous_path}` holds tables {sorted(tables_before)} with other rows than this model's "
            f"({', '.join(mismatched) or 'a table is missing'}); --previous must be a plan of the same model"
        )
    changes = tuple(table_change(tables_before[table.spec.name], table, profile) for table in plan.tables)
    expected_before = drift.expected_hit_rate(previous_path)
    on_profile = drift.drift(previous, {}, expected_before, profile).live_hit_rate
    expected_now = drift.expected_hit_rate(plan_path)
    figures_before, figures_now = _planner_figures(previous_path), _planner_figures(plan_path)
    return PlanChange(
        previous_path=Path(previous_path),
        tables=changes,
        router_replicas=(previous.router.instance_count, plan.router.instance_count),
        dense_replicas=(previous.dense.instance_count, plan.dense.instance_count),
        memory_bytes=(figures_before[0], figures_now[0]),
        hit_rates=(on_profile, expected_before, expected_now),
        target_qps=(figures_before[1], figures_now[1]),
        same_capacity=figures_before[2] == figures_now[2],
        step_groups=(len(previous.step_groups()), len(plan.step_groups())),
    )
