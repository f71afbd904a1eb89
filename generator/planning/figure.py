"""The planner's picture: per-table access CDFs over hotness-ordered rows with the cuts; memory compared."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from generator.planning.report import PlanReport
from generator.traffic.profile import AccessProfile


def plot_plan(report: PlanReport, profile: AccessProfile, path: str | Path) -> Path:
    """Write a PNG: one CDF panel per table (cuts as vertical lines), then a memory bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = sorted({shard.table for shard in report.shards}, key=[t.name for t in profile.tables].index)
    panels = len(tables) + 1
    columns = min(4, panels)
    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    flat_axes = axes.reshape(-1)
    for axis, name in zip(flat_axes, tables, strict=False):
        access = profile.table(name)
        shards = [shard for shard in report.shards if shard.table == name]
        if access.lookups:
            cdf = np.cumsum(access.ranked_counts()) / access.lookups
            ranks = np.arange(1, cdf.size + 1)
            axis.plot(np.concatenate([[0], ranks, [access.num_rows]]), np.concatenate([[0], cdf, [1.0]]), lw=1.5)
        for shard in shards[:-1]:
            axis.axvline(max(shard.row_end, 1), color="tab:red", lw=0.8, ls="--")
        axis.set_xscale("symlog", linthresh=1)
        axis.set_xlim(0, max(access.num_rows, 2))
        axis.set_ylim(0, 1.02)
        replicas = "/".join(str(shard.replicas) for shard in shards)
        axis.set_title(f"{name}: {access.num_rows:,} rows, replicas {replicas}", fontsize=8)
        axis.set_xlabel("rows, hottest first", fontsize=7)
        axis.set_ylabel("share of accesses", fontsize=7)
        axis.tick_params(labelsize=6)
    memory_axis = flat_axes[len(tables)]
    values = [report.model_wise.memory_bytes / 1e9, report.planned.memory_bytes / 1e9]
    bars = memory_axis.bar(["model-wise", "planned"], values, color=["tab:gray", "tab:green"])
    memory_axis.bar_label(bars, labels=[f"{v:.2f} GB" for v in values], fontsize=7)
    memory_axis.set_title(
        f"memory allocated at {report.target_qps:,.0f} q/s: {report.memory_ratio:.2f}x less; "
        f"utility {report.utility_ratio:.2f}x",
        fontsize=8,
    )
    memory_axis.tick_params(labelsize=7)
    for axis in flat_axes[len(tables) + 1 :]:
        axis.axis("off")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
