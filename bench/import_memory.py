"""Benchmark: build time and peak memory of importing and building a model with 2 GiB of tables.

Writes a facebookresearch/dlrm-style checkpoint (DLRM_Net parameter names; 4 tables of 8,388,608 rows x 16, fp32:
2 GiB) and then, each in a fresh process whose peak RSS is read from `getrusage`, runs the two steps a user runs:
`recgen import-dlrm` (checkpoint -> .pt2) and `recgen build --model model.pt2` (.pt2 -> repository). Prints a
markdown table (seconds, peak RSS, peak / table bytes; the issue's goal is 1.5x), writes the rows as JSON and a
PNG.

    python -m bench.import_memory [--rows 8388608] [--tables 4] [--out runs/bench/import_memory]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

#: Peak RSS (bytes) of one command in a fresh process: the child's ru_maxrss, measured by a wrapper.
_PEAK_WRAPPER = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)"
)
DIM = 16


def write_checkpoint(path: Path, rows: int, tables: int) -> int:
    """A DLRM_Net checkpoint (dot interaction, bottom 13-32-16, top 32-1); returns the table bytes."""
    generator = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for k in range(tables):
        state[f"emb_l.{k}.weight"] = torch.rand(rows, DIM, generator=generator) - 0.5
    for prefix, widths in (("bot_l", [13, 32, DIM]), ("top_l", [DIM + (tables + 1) * tables // 2, 32, 1])):
        for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
            state[f"{prefix}.{2 * index}.weight"] = torch.randn(fan_out, fan_in, generator=generator) * 0.1
            state[f"{prefix}.{2 * index}.bias"] = torch.zeros(fan_out)
    torch.save({"epoch": np.int64(1), "state_dict": state}, path)
    return rows * DIM * 4 * tables


def measured(command: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of a command in a fresh process."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, *command], check=True, capture_output=True, text=True)
    return time.perf_counter() - started, int(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8_388_608)
    parser.add_argument("--tables", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/import_memory"))
    options = parser.parse_args()
    work = options.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    table_bytes = write_checkpoint(work / "checkpoint.pt", options.rows, options.tables)
    recgen = str(Path(sys.executable).with_name("recgen"))
    sizes = "-".join([str(options.rows)] * options.tables)
    steps = {
        "import-dlrm (checkpoint -> .pt2)": [
            recgen, "import-dlrm", str(work / "checkpoint.pt"), "--arch-sparse-feature-size", str(DIM),
            "--arch-embedding-size", sizes, "--arch-mlp-bot", f"13-32-{DIM}", "--arch-mlp-top", "32-1",
            "--max-ids", "4", "-o", str(work / "model.pt2"),
        ],
        "build (.pt2 -> repository)": [
            recgen, "build", "--model", str(work / "model.pt2"), "--max-ids", "4", "--out", str(work / "repo"),
            "--ensembles", str(work / "ens"),
        ],
    }  # fmt: skip
    results: list[dict[str, float | str]] = []
    for name, command in steps.items():
        seconds, peak = measured(command)
        results.append(
            {"step": name, "seconds": seconds, "peak_rss_bytes": peak, "peak_over_tables": peak / table_bytes}
        )
    print(f"tables: {options.tables} x {options.rows:,} rows x {DIM} fp32 = {table_bytes / 2**30:.2f} GiB\n")
    print("| step | seconds | peak RSS (GiB) | peak / table bytes |")
    print("|---|---|---|---|")
    for row in results:
        peak_gib = float(row["peak_rss_bytes"]) / 2**30
        print(f"| {row['step']} | {row['seconds']:.1f} | {peak_gib:.2f} | {row['peak_over_tables']:.2f} |")
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "import_memory.json").write_text(
        json.dumps(
            {"table_bytes": table_bytes, "rows": options.rows, "tables": options.tables, "steps": results}, indent=2
        )
    )
    _plot(results, table_bytes, options.out / "import_memory.png")
    shutil.rmtree(work, ignore_errors=True)


def _plot(results: list[dict[str, float | str]], table_bytes: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3))
    names = [str(row["step"]) for row in results]
    axis.barh(names, [float(row["peak_rss_bytes"]) / 2**30 for row in results])
    axis.axvline(table_bytes / 2**30, color="black", linestyle=":", label="table bytes")
    axis.axvline(1.5 * table_bytes / 2**30, color="red", linestyle="--", label="1.5x goal")
    axis.set_xlabel("peak RSS (GiB)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    main()
