"""The planner's picture: memory by part against model-wise, what each server holds, and the tables it cuts.

Three kinds of panel: memory allocated by part (rows held, what each server runs once, what each replica adds)
for the model-wise baseline and the plan on the same servers; one bar per planned server split the same way; and
for every table the plan cuts, its access CDF over hotness-ordered rows with the cuts and each shard's replicas. A
table that is not cut gets no panel (a line says which are not). Ratios are worded as the report words them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from generator.planning.report import PlanReport
from generator.traffic.profile import AccessProfile

#: Servers drawn one bar each; a larger fleet is drawn as its first servers and a count of the rest.
MAX_SERVER_BARS = 40
#: Cut tables drawn (those with the most shards first).
MAX_TABLE_PANELS = 4
PART_COLOURS = {"rows": "tab:green", "per replica": "tab:orange", "per server": "tab:gray"}


def cut_tables(report: PlanReport) -> list[str]:
    """Tables the plan gives more than one shard, most shards first."""
    counts: dict[str, int] = {}
    for shard in report.shards:
        counts[shard.table] = counts.get(shard.table, 0) + 1
    return sorted((name for name, count in counts.items() if count > 1), key=lambda name: -counts[name])


def plot_plan(report: PlanReport, profile: AccessProfile, path: str | Path) -> Path:
    """Write the plan's PNG (see the module)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = cut_tables(report)[:MAX_TABLE_PANELS]
    columns = max(2, len(tables))
    figure = plt.figure(figsize=(4.4 * columns, 7.2))
    grid = figure.add_gridspec(2, columns)
    _memory_panel(figure.add_subplot(grid[0, 0]), report)
    _servers_panel(figure.add_subplot(grid[0, 1:]), report)
    if tables:
        for column, name in enumerate(tables):
            _table_panel(figure.add_subplot(grid[1, column]), report, profile, name)
    else:
        axis = figure.add_subplot(grid[1, :])
        axis.axis("off")
        axis.text(0.5, 0.5, _not_cut_line(report), ha="center", va="center", fontsize=9, wrap=True)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _memory_panel(axis: Any, report: PlanReport) -> None:
    """Stacked bars: memory by part, model-wise against planned."""
    parts = {
        "model-wise": report.memory_parts(report.model_wise, report.model_wise_fleet),
        "planned": report.memory_parts(report.planned, report.fleet),
    }
    bottoms = [0.0, 0.0]
    for part, colour in PART_COLOURS.items():
        values = [parts[name][part] / 1e9 for name in parts]
        axis.bar(list(parts), values, bottom=bottoms, color=colour, label=part)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    for x, total in enumerate(bottoms):
        axis.text(x, total, f"{total:.2f} GB", ha="center", va="bottom", fontsize=7)
    servers = [len(f.servers) if f is not None else 1 for f in (report.model_wise_fleet, report.fleet)]
    axis.set_title(
        f"memory at {report.target_qps:,.0f} q/s: planned {report.memory_words}\n"
        f"({servers[0]} vs {servers[1]} servers; utility {report.utility_words})",
        fontsize=8,
    )
    axis.set_ylabel("GB", fontsize=7)
    axis.legend(fontsize=6)
    axis.tick_params(labelsize=7)


def _servers_panel(axis: Any, report: PlanReport) -> None:
    """One horizontal bar per planned server: its rows, its replicas' bytes, its own overhead."""
    fleet = report.fleet
    if fleet is None:
        axis.axis("off")
        return
    shown = fleet.servers[:MAX_SERVER_BARS]
    overhead = report.capacity.server_overhead_bytes
    rows = np.array([s.data_bytes for s in shown], dtype=float) / 1e9
    total = np.array([s.memory_bytes + s.gpu_memory_bytes for s in shown], dtype=float) / 1e9
    replicas = total - rows - overhead / 1e9
    positions = np.arange(len(shown))
    left = np.zeros(len(shown))
    for part, values in (
        ("rows", rows),
        ("per replica", replicas),
        ("per server", np.full(len(shown), overhead / 1e9)),
    ):
        axis.barh(positions, values, left=left, color=PART_COLOURS[part], label=part)
        left = left + values
    if len(shown) <= 12:
        for position, server in zip(positions, shown, strict=True):
            hosts = ", ".join(f"{name} x{count}" for name, count in server.hosts)
            axis.text(left[position], position, f" {hosts}", va="center", fontsize=6)
    axis.set_yticks(positions, [f"server {s.index}" for s in shown], fontsize=6)
    axis.invert_yaxis()
    more = len(fleet.servers) - len(shown)
    axis.set_title(
        f"what each server holds ({fleet.size}){f'; {more} more servers not drawn' if more else ''}", fontsize=8
    )
    axis.set_xlabel("GB", fontsize=7)
    axis.tick_params(labelsize=6)


def _table_panel(axis: Any, report: PlanReport, profile: AccessProfile, name: str) -> None:
    """A cut table: its access CDF over hotness-ordered rows, the cuts, each shard's replicas."""
    access = profile.table(name)
    shards = [shard for shard in report.shards if shard.table == name]
    if access.lookups:
        cdf = np.cumsum(access.ranked_counts()) / access.lookups
        ranks = np.arange(1, cdf.size + 1)
        axis.plot(np.concatenate([[0], ranks, [access.num_rows]]), np.concatenate([[0], cdf, [1.0]]), lw=1.5)
    for shard in shards:
        if shard.row_start:
            axis.axvline(shard.row_start, color="tab:red", lw=0.8, ls="--")
        middle = max(1.0, (shard.row_start * max(shard.row_end, 1)) ** 0.5)
        axis.text(middle, 0.05, f"x{shard.replicas}", ha="center", fontsize=7, color="tab:red")
    axis.set_xscale("symlog", linthresh=1)
    axis.set_xlim(0, max(access.num_rows, 2))
    axis.set_ylim(0, 1.02)
    axis.set_title(f"{name}: {access.num_rows:,} rows in {len(shards)} shards (replicas in red)", fontsize=8)
    axis.set_xlabel("rows, hottest first", fontsize=7)
    axis.set_ylabel("share of accesses", fontsize=7)
    axis.tick_params(labelsize=6)


def _not_cut_line(report: PlanReport) -> str:
    """What the figure says where no table is cut."""
    replicas = ", ".join(f"{s.table} x{s.replicas}" for s in report.shards[:12])
    more = f", and {len(report.shards) - 12} more" if len(report.shards) > 12 else ""
    return (
        f"No table is cut at {report.target_qps:,.0f} queries/s: each is one shard ({replicas}{more}).\n"
        "A cut pays only where a table's load spans servers (docs/usage.md, Servers)."
    )
