"""Benchmark: where hot and cold cuts appear, at fleet scale: memory and utility, planned vs model-wise, on servers.

Plans (without allocating any weights) a DLRM with the 26 Criteo Kaggle categorical-feature table sizes, dim 64,
one id per sample, under synthetic Zipf traffic with alpha 0.8, 1.05 and 1.2, at loads worth 1 to 1,000 whole-model
servers (16 cores, 64 GB unless told otherwise), with the fused lookup step, with separate steps, and fused with
cold rows paged from disk (`--page-cold-rows`, priced at the bytes a copy is expected to keep resident), and paged
with routers that count no accesses (`--no-access-counts`: no per-instance counters to price). Both the plan
and the model-wise baseline are placed on those servers (`planning.servers`: each server holds the rows it serves
once). Per load it prints the servers each needs, the tables cut (given more than one shard), the memory ratio
(model-wise / planned) and the utility ratio (planned / model-wise), and writes the cells as JSON, markdown and a
PNG of both ratios against load.

    python -m bench.plan_memory [--capacity capacity.json] [--samples N] [--server-cores 16]
                                [--server-memory-gb 64] [--shard-fixed-us US] [--out runs/bench/plan_memory]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.report import save_figure, write_report
from generator.model.dlrm import TableSpec
from generator.planning.capacity import Capacity
from generator.planning.plan import LookupStep
from generator.planning.planner import ModelShape, plan_model
from generator.planning.servers import ServerSize
from generator.traffic.profile import AccessProfile, TableShape, zipf_profile

#: Rows of the 26 categorical features of the Criteo Kaggle Display Advertising dataset (DLRM's day-split counts).
CRITEO_KAGGLE_ROWS = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
DIM = 64
ALPHAS = (0.8, 1.05, 1.2)
#: Loads, in whole-model servers the model-wise deployment needs.
SERVER_LOADS = (1, 3, 10, 30, 100, 300, 1000)
BATCH = 256
#: name -> (lookup step, cold rows paged from disk, routers count accesses)
VARIANTS: dict[str, tuple[LookupStep, bool, bool]] = {
    "fused": ("fused", False, True),
    "separate": ("separate", False, True),
    "paged": ("fused", True, True),
    "paged_uncounted": ("fused", True, False),
}


def criteo_shape_and_profile(
    alpha: float, *, samples: int = 1_000_000, seed: int = 0
) -> tuple[ModelShape, AccessProfile]:
    """The Criteo-sized model (13 dense features, DLRM's Kaggle MLPs) and a Zipf profile of it."""
    tables = [TableShape(f"c{i}", rows, 1) for i, rows in enumerate(CRITEO_KAGGLE_ROWS)]
    specs = tuple(TableSpec(t.name, t.num_rows, DIM, 1) for t in tables)
    shape = ModelShape(specs, 13, (512, 256, DIM), (512, 256, 1))
    return shape, zipf_profile(tables, alpha, samples=samples, seed=seed)


def run(capacity: Capacity, samples: int, size: ServerSize) -> list[dict[str, float]]:
    """Every alpha and load: the plan with each lookup step, beside the model-wise baseline on the same servers."""
    cells = []
    for alpha in ALPHAS:
        shape, profile = criteo_shape_and_profile(alpha, samples=samples)
        one_server_qps = _model_wise_qps(shape, profile, capacity) * size.cores
        for load in SERVER_LOADS:
            cell: dict[str, float] = {"alpha": alpha, "load_servers": load, "target_qps": load * one_server_qps}
            for step, (lookup_step, paged, counted) in VARIANTS.items():
                started = time.perf_counter()
                report = plan_model(
                    shape, profile, target_qps=load * one_server_qps, batch_size=BATCH, capacity=capacity,
                    max_shards_per_table=8, lookup_step=lookup_step, servers=size, page_cold_rows=paged,
                    count_accesses=counted,
                )  # fmt: skip
                assert report.fleet is not None and report.model_wise_fleet is not None
                cell.update(
                    {
                        "model_wise_servers": len(report.model_wise_fleet.servers),
                        "model_wise_gb": report.model_wise.memory_bytes / 1e9,
                        f"{step}_servers": len(report.fleet.servers),
                        f"{step}_gb": report.planned.memory_bytes / 1e9,
                        f"{step}_memory_ratio": report.memory_ratio,
                        f"{step}_utility_ratio": report.utility_ratio,
                        f"{step}_tables_cut": len({s.table for s in report.shards if s.row_start > 0}),
                        f"{step}_shards": len(report.shards),
                        f"{step}_plan_s": time.perf_counter() - started,
                    }
                )
            cells.append(cell)
            print(
                f"alpha {alpha} load {load:>5} servers: model-wise {cell['model_wise_servers']}, "
                + ", ".join(
                    f"{step} {cell[f'{step}_servers']} servers {cell[f'{step}_memory_ratio']:.2f}x memory "
                    f"{cell[f'{step}_utility_ratio']:.2f}x utility, {cell[f'{step}_tables_cut']} tables cut"
                    for step in VARIANTS
                ),
                flush=True,
            )
    return cells


def _model_wise_qps(shape: ModelShape, profile: AccessProfile, capacity: Capacity) -> float:
    """Queries/s one whole-model replica (one core) serves at the capacity model's utilisation target."""
    lookups = sum(BATCH * profile.table(t.name).mean_ids_per_sample for t in shape.tables)
    return capacity.target_utilization / capacity.whole_model_seconds(lookups, BATCH) * (1 - 1e-6)


def markdown(cells: list[dict[str, float]], size: ServerSize) -> str:
    lines = [
        f"servers of {size}",
        "",
        "| alpha | load (whole-model servers) | target q/s | model-wise servers | model-wise GB "
        + "".join(f"| {step}: servers | GB | memory ratio | utility ratio | tables cut " for step in VARIANTS)
        + "|",
        "|---|---|---|---|---|" + "---|" * 5 * len(VARIANTS),
    ]
    for c in cells:
        steps = " | ".join(
            f"{c[f'{s}_servers']} | {c[f'{s}_gb']:,.1f} | {c[f'{s}_memory_ratio']:.2f}x | "
            f"{c[f'{s}_utility_ratio']:.2f}x | {c[f'{s}_tables_cut']}"
            for s in VARIANTS
        )
        lines.append(
            f"| {c['alpha']} | {c['load_servers']} | {c['target_qps']:,.0f} | {c['model_wise_servers']} "
            f"| {c['model_wise_gb']:,.1f} | {steps} |"
        )
    return "\n".join(lines)


def plot(cells: list[dict[str, float]], path: Path) -> None:
    """Memory and utility ratios against load, per alpha and lookup step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, figure_name in zip(axes, ("memory_ratio", "utility_ratio"), strict=True):
        for alpha in dict.fromkeys(c["alpha"] for c in cells):
            mine = [c for c in cells if c["alpha"] == alpha]
            loads = [c["load_servers"] for c in mine]
            for step, style in zip(VARIANTS, ("-", "--", ":", "-."), strict=True):
                values = [c[f"{step}_{figure_name}"] for c in mine]
                axis.plot(loads, values, marker="o", linestyle=style, label=f"alpha {alpha}, {step}")
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xscale("log")
        axis.set_xlabel("load, in whole-model servers")
        axis.set_ylabel(f"{figure_name.replace('_', ' ')} (x, vs model-wise)")
        axis.legend(fontsize=6)
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=Path, default=None, help="capacity.json (default: built-in figures)")
    parser.add_argument("--samples", type=int, default=1_000_000, help="synthetic samples per table")
    parser.add_argument("--server-cores", type=int, default=16)
    parser.add_argument("--server-memory-gb", type=float, default=64.0)
    parser.add_argument(
        "--shard-fixed-us", type=float, default=None, help="override the per-request cost of a shard step"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/plan_memory"))
    args = parser.parse_args()
    capacity = Capacity.load(args.capacity) if args.capacity else Capacity()
    capacity = capacity.with_overrides(
        shard_fixed_s=None if args.shard_fixed_us is None else args.shard_fixed_us * 1e-6
    )
    size = ServerSize(cores=args.server_cores, memory_bytes=int(args.server_memory_gb * 1e9))
    started = time.perf_counter()
    cells = run(capacity, args.samples, size)
    print(f"capacity: {capacity}\n{len(cells) * len(VARIANTS)} plans in {time.perf_counter() - started:.1f} s")
    figures = {"capacity": capacity.to_dict(), "server": size.to_dict(), "cells": cells}
    write_report(args.out, "plan_memory", markdown(cells, size), figures, lambda path: plot(cells, path))


if __name__ == "__main__":
    main()
