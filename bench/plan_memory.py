"""Benchmark: memory allocated and memory utility, planned vs model-wise, for a DLRM with Criteo Kaggle tables.

Plans (without allocating any weights) a DLRM with the 26 Criteo Kaggle categorical-feature table sizes, dim 64,
one id per sample, under synthetic Zipf traffic with alpha 0.8, 1.05 and 1.2, at target QPS worth 1, 2, 4, 8, 16
and 32 model-wise replicas, with the fused lookup step (the single-server default) and with separate steps, and
prints a markdown table (memory allocated ratio = model-wise / planned; memory utility ratio = planned / model-wise;
tables cut = tables given more than one shard) and writes the cells as JSON, markdown and a PNG.

    python -m bench.plan_memory [--capacity capacity.json] [--samples N] [--shard-fixed-us US]
                                [--out runs/bench/plan_memory.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from generator.model.dlrm import TableSpec
from generator.planning.capacity import Capacity
from generator.planning.planner import ModelShape, plan_model
from generator.traffic.profile import AccessProfile, TableShape, zipf_profile

#: Rows of the 26 categorical features of the Criteo Kaggle Display Advertising dataset (DLRM's day-split counts).
CRITEO_KAGGLE_ROWS = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
DIM = 64
ALPHAS = (0.8, 1.05, 1.2)
REPLICA_MULTIPLES = (1, 2, 4, 8, 16, 32)
BATCH = 256


def criteo_shape_and_profile(
    alpha: float, *, samples: int = 1_000_000, seed: int = 0
) -> tuple[ModelShape, AccessProfile]:
    """The Criteo-sized model (13 dense features, DLRM's Kaggle MLPs) and a Zipf profile of it."""
    tables = [TableShape(f"c{i}", rows, 1) for i, rows in enumerate(CRITEO_KAGGLE_ROWS)]
    specs = tuple(TableSpec(t.name, t.num_rows, DIM, 1) for t in tables)
    shape = ModelShape(specs, 13, (512, 256, DIM), (512, 256, 1))
    return shape, zipf_profile(tables, alpha, samples=samples, seed=seed)


def run(capacity: Capacity, samples: int) -> list[dict[str, float]]:
    cells = []
    for alpha in ALPHAS:
        shape, profile = criteo_shape_and_profile(alpha, samples=samples)
        one_replica_qps = _model_wise_qps(shape, profile, capacity)
        for multiple in REPLICA_MULTIPLES:
            started = time.perf_counter()
            report, separate = (
                plan_model(
                    shape, profile, target_qps=multiple * one_replica_qps, batch_size=BATCH, capacity=capacity,
                    max_shards_per_table=8, lookup_step=step,
                )
                for step in ("fused", "separate")
            )  # fmt: skip
            cells.append(
                {
                    "alpha": alpha,
                    "model_wise_replicas": report.model_wise.replicas,
                    "target_qps": report.target_qps,
                    "memory_ratio": report.memory_ratio,
                    "utility_ratio": report.utility_ratio,
                    "model_wise_gb": report.model_wise.memory_bytes / 1e9,
                    "planned_gb": report.planned.memory_bytes / 1e9,
                    "separate_memory_ratio": separate.memory_ratio,
                    "separate_utility_ratio": separate.utility_ratio,
                    "shards": len(report.shards),
                    "tables_cut": len({s.table for s in report.shards if s.row_start > 0}),
                    "plan_seconds": (time.perf_counter() - started) / 2,
                }
            )
    return cells


def _model_wise_qps(shape: ModelShape, profile: AccessProfile, capacity: Capacity) -> float:
    """Queries/s one whole-model replica serves at the capacity model's utilisation target."""
    lookups = sum(BATCH * profile.table(t.name).mean_ids_per_sample for t in shape.tables)
    seconds = capacity.shard_fixed_s + capacity.shard_per_row_s * lookups + capacity.dense_seconds(BATCH)
    return capacity.target_utilization / seconds * (1 - 1e-6)


def markdown(cells: list[dict[str, float]]) -> str:
    lines = [
        "| alpha | model-wise replicas | target q/s | model-wise GB | planned GB | memory ratio | utility ratio "
        "| separate steps: memory ratio | utility ratio | shards | tables cut | plan s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c['alpha']} | {c['model_wise_replicas']} | {c['target_qps']:,.0f} | {c['model_wise_gb']:.1f} "
            f"| {c['planned_gb']:.1f} | {c['memory_ratio']:.2f}x | {c['utility_ratio']:.2f}x "
            f"| {c['separate_memory_ratio']:.2f}x | {c['separate_utility_ratio']:.2f}x | {c['shards']} "
            f"| {c['tables_cut']} | {c['plan_seconds']:.2f} |"
        )
    mean_memory = sum(c["memory_ratio"] for c in cells) / len(cells)
    mean_utility = sum(c["utility_ratio"] for c in cells) / len(cells)
    lines.append(
        f"\nmean memory ratio {mean_memory:.2f}x (ElasticRec: 3.3x), mean utility ratio "
        f"{mean_utility:.2f}x (ElasticRec: 8.1x)"
    )
    return "\n".join(lines)


def plot(cells: list[dict[str, float]], path: Path) -> None:
    """Memory ratio against model-wise replicas, per alpha, fused and separate lookup steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for alpha in dict.fromkeys(c["alpha"] for c in cells):
        mine = [c for c in cells if c["alpha"] == alpha]
        replicas = [c["model_wise_replicas"] for c in mine]
        axis.plot(replicas, [c["memory_ratio"] for c in mine], marker="o", label=f"alpha {alpha}, fused")
        axis.plot(replicas, [c["separate_memory_ratio"] for c in mine], marker="x", linestyle="--",
                  label=f"alpha {alpha}, separate")  # fmt: skip
    axis.set_xscale("log", base=2)
    axis.set_xlabel("model-wise replicas")
    axis.set_ylabel("memory ratio (model-wise ÷ planned)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=Path, default=None, help="capacity.json (default: built-in figures)")
    parser.add_argument("--samples", type=int, default=1_000_000, help="synthetic samples per table")
    parser.add_argument(
        "--shard-fixed-us",
        type=float,
        default=None,
        help="override the per-request cost of a shard step (sensitivity: a native backend)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/plan_memory.json"))
    args = parser.parse_args()
    capacity = Capacity.load(args.capacity) if args.capacity else Capacity()
    capacity = capacity.with_overrides(
        shard_fixed_s=None if args.shard_fixed_us is None else args.shard_fixed_us * 1e-6
    )
    started = time.perf_counter()
    cells = run(capacity, args.samples)
    print(f"capacity: {capacity}")
    print(markdown(cells))
    print(f"\n{len(cells)} plans in {time.perf_counter() - started:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"capacity": capacity.to_dict(), "cells": cells}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(cells) + "\n")
    plot(cells, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and its .md and .png")


if __name__ == "__main__":
    main()
