"""Benchmark: cold rows paged from disk, measured on the embedded server against what the plan predicts.

Plans a DLRM whose large table dominates its bytes with `--page-cold-rows` (one server, fused lookup step), builds
it, drops the rows files from the page cache (as on a machine that did not write them), serves it, and sends one
planning window of profile-shaped requests (`--qps` x `--window-s` requests of `--batch` candidates). Then reports:

- per paged shard, the bytes of its rows mapping that are resident (/proc/PID/smaps of the server and its stubs)
  against the bytes the plan expects a copy to keep resident;
- the server's PSS (tritonserver and every stub) against the memory the plan allocates for its one server;
- the latency of the window's first `--probe` requests (cold: every first read of a page goes to disk) against
  the same requests sent again after the window (warm), p50, p99 and the slowest (tail latencies).

The same is done with the plan's shards all resident, for the PSS and latency it is compared with; rounds are
interleaved and the median round is reported.

Plans use this machine's capacity model (`--capacity FILE` from `recgen calibrate`, or a calibration run first),
fault bytes included.

    python -m bench.paged_rows [--capacity capacity.json] [--qps 200] [--window-s 1] [--batch 64] [--probe 100]
        [--rounds 3] [--out runs/bench/paged_rows]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.loadgen import pss_bytes, server_processes
from bench.report import save_figure, write_report
from bench.rounds import median_round, odd_rounds
from generator import naming
from generator.check import calibrate, client
from generator.deploy import server as serve
from generator.deploy import stub_health
from generator.model import dlrm as models
from generator.model.examples import example_model
from generator.planning.capacity import Capacity
from generator.planning.memory import ModelShape
from generator.planning.plan import Plan
from generator.planning.planner import plan_from_report, plan_model
from generator.planning.report import PlanReport
from generator.repository.build import build
from generator.traffic.profile import AccessProfile, TableShape, zipf_profile
from generator.traffic.sampler import RequestSampler, table_traffic

#: A 1 M-row table of 64 floats (256 MB) and two small ones: the large table's cold rows are what paging leaves.
MODEL_TABLES = (("big", 1_000_000, 64, 4), ("mid", 50_000, 64, 2), ("small", 1_000, 64, 1))
SYSTEMS = ("paged", "resident")


def model_and_profile(alpha: float) -> tuple[models.DLRM, AccessProfile]:
    """The benchmark's DLRM (random weights) and a Zipf profile of its tables."""
    tables = [models.TableSpec(name, rows, dim, ids) for name, rows, dim, ids in MODEL_TABLES]
    model = models.DLRM(num_dense_features=4, tables=tables, bottom_mlp=[64], top_mlp=[16, 1], seed=5).eval()
    shapes = [TableShape(name, rows, ids) for name, rows, _, ids in MODEL_TABLES]
    return model, zipf_profile(shapes, alpha, samples=1_000_000, seed=7)


def drop_from_page_cache(path: Path) -> None:
    """Write the file out and drop its pages from the page cache (the kernel then reads what is faulted in), as on
    a machine that did not write it."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def mapped_rows(pid: int, directory: Path) -> dict[str, tuple[int, int]]:
    """file name -> (resident bytes, mapped bytes) of every rows file under `directory` that the server `pid` or
    its stubs map (/proc/PID/smaps; the Python router maps its rows in its stub)."""
    totals: dict[str, tuple[int, int]] = {}
    for process in [pid, *(stub.pid for stub in stub_health.stub_processes(pid))]:
        current = ""
        for line in Path(f"/proc/{process}/smaps").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6 and "-" in fields[0]:
                current = Path(fields[-1]).name if fields[-1].startswith(str(directory)) else ""
                if current:
                    start, end = (int(part, 16) for part in fields[0].split("-"))
                    rss, size = totals.get(current, (0, 0))
                    totals[current] = (rss, max(size, end - start))
            elif current and fields and fields[0] == "Rss:":
                rss, size = totals[current]
                totals[current] = (rss + int(fields[1]) * 1024, size)
    return {name: figures for name, figures in totals.items() if "rows" in name}


def paged_files(plan: Plan) -> dict[str, list[str]]:
    """Every paged shard ("table/index") -> the rows files holding it: its router group's stacks, or its own file."""
    pooled = {group.index for group in plan.router_pooled_groups()}
    files: dict[str, list[str]] = {}
    for group in plan.shard_groups():
        for shard in (s for s in group.shards if not s.resident):
            name = f"{shard.table}/{shard.index}"
            if group.index in pooled:  # the router's stacks of the group, one per row width
                files[name] = [naming.router_rows_file(group.index, stack) for stack in range(len(group.shards))]
            else:
                files[name] = [naming.shard_rows_file(shard.table, shard.index)]
    return files


def _latencies_ms(session: client.RankingClient, requests: list) -> np.ndarray:
    times = []
    for request in requests:
        started = time.perf_counter()
        session.score(request)
        times.append((time.perf_counter() - started) * 1e3)
    return np.array(times)


def _one_round(
    system: str, report: PlanReport, model: models.DLRM, profile: AccessProfile, args: argparse.Namespace, work: Path
) -> dict:
    shape = ModelShape.of(model)
    plan = plan_from_report(report, shape, profile)
    if system == "resident":
        plan = dataclasses.replace(
            plan,
            tables=tuple(
                dataclasses.replace(t, shards=tuple(dataclasses.replace(s, resident=True) for s in t.shards))
                for t in plan.tables
            ),
        )
    result = build(model, plan, work / system / "repo", work / system / "ens", force=True)
    for rows_file in (work / system / "repo").rglob("*rows*.npy"):
        drop_from_page_cache(rows_file)
    sampler = RequestSampler(
        4, tuple(table_traffic(t.name, t.num_rows, t.max_ids_per_sample, profile) for t in model.tables)
    )
    rng = np.random.default_rng(11)
    window = [sampler.sample(args.batch, rng) for _ in range(int(args.qps * args.window_s))]
    with serve.running_server(result.repositories, timeout_s=300) as server:
        assert server.pid is not None
        processes = server_processes(server.pid)
        repo = (work / system / "repo").resolve()
        loaded_pss = sum(pss_bytes(processes).values())
        with client.RankingClient(server.grpc_url, "grpc") as session:
            cold = _latencies_ms(session, window[: args.probe])  # the window's first requests, pages cold
            _latencies_ms(session, window[args.probe :])
            served_pss = sum(pss_bytes(processes).values())  # after exactly one planning window of lookups
            mapped = {name: rss for name, (rss, _) in mapped_rows(server.pid, repo).items()}
            paged = {name: sum(mapped.get(f, 0) for f in files) for name, files in paged_files(plan).items()}
            warm = _latencies_ms(session, window[: args.probe])  # the same requests again, pages read
    return {
        "system": system,
        "loaded_pss_bytes": loaded_pss,
        "served_pss_bytes": served_pss,
        "mapped_rss_bytes": mapped,
        "paged_rss_bytes": paged,
        **{f"cold_{k}": v for k, v in _percentiles(cold).items()},
        **{f"warm_{k}": v for k, v in _percentiles(warm).items()},
    }


def _percentiles(latencies: np.ndarray) -> dict[str, float]:
    return {
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "max_ms": float(latencies.max()),
    }


def run(args: argparse.Namespace) -> tuple[PlanReport, list[dict]]:
    """The plan, then every system's median round (by served PSS)."""
    model, profile = model_and_profile(args.alpha)
    capacity = Capacity.load(args.capacity) if args.capacity else calibrate.calibrate(example_model())
    report = plan_model(
        ModelShape.of(model), profile, target_qps=args.qps, batch_size=args.batch, window_s=args.window_s,
        page_cold_rows=True, capacity=capacity,
    )  # fmt: skip
    print(report, flush=True)
    runs: dict[str, list[dict]] = {system: [] for system in SYSTEMS}
    with tempfile.TemporaryDirectory(prefix="recgen-bench-paged-") as workdir:
        for _ in range(args.rounds):
            for system in SYSTEMS:
                runs[system].append(_one_round(system, report, model, profile, args, Path(workdir)))
                print(f"{system}: served PSS {runs[system][-1]['served_pss_bytes'] / 1e6:.1f} MB", flush=True)
    return report, [median_round(measured, key=lambda c: c["served_pss_bytes"]) for measured in runs.values()]


def markdown(report: PlanReport, cells: list[dict]) -> str:
    paged = [s for s in report.shards if not s.resident]
    by_system = {cell["system"]: cell for cell in cells}
    lines = [
        "| paged shard | rows | bytes | expected resident | measured resident | measured ÷ expected |",
        "|---|---|---|---|---|---|",
    ]
    for shard in paged:
        measured = by_system["paged"]["paged_rss_bytes"][f"{shard.table}/{shard.index}"]
        lines.append(
            f"| {shard.table}/{shard.index} | [{shard.row_start:,}, {shard.row_end:,}) | "
            f"{shard.bytes_per_replica / 1e6:.1f} MB | {shard.held_bytes / 1e6:.1f} MB | {measured / 1e6:.1f} MB | "
            f"{measured / shard.held_bytes:.2f} |"
        )
    lines += [
        "",
        f"plan: {report.planned.memory_bytes / 1e6:.1f} MB allocated on {_servers(report)} server(s)",
        "",
        "| system | PSS after load | PSS after the window | ÷ plan | cold p50 / p99 / slowest ms "
        "| warm p50 / p99 / slowest ms |",
        "|---|---|---|---|---|---|",
    ]
    for cell in cells:
        lines.append(
            f"| {cell['system']} | {cell['loaded_pss_bytes'] / 1e6:.1f} MB | {cell['served_pss_bytes'] / 1e6:.1f} MB | "
            f"{cell['served_pss_bytes'] / report.planned.memory_bytes:.2f} | "
            f"{cell['cold_p50_ms']:.2f} / {cell['cold_p99_ms']:.2f} / {cell['cold_max_ms']:.2f} | "
            f"{cell['warm_p50_ms']:.2f} / {cell['warm_p99_ms']:.2f} / {cell['warm_max_ms']:.2f} |"
        )
    return "\n".join(lines)


def _servers(report: PlanReport) -> int:
    return len(report.fleet.servers) if report.fleet is not None else 1


def plot(cells: list[dict], path: Path) -> None:
    """PSS after load and after the window, paged against resident."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 4))
    positions = np.arange(len(cells))
    axis.bar(positions - 0.2, [c["loaded_pss_bytes"] / 1e6 for c in cells], 0.4, label="after load")
    axis.bar(positions + 0.2, [c["served_pss_bytes"] / 1e6 for c in cells], 0.4, label="after the window")
    axis.set_xticks(positions, [c["system"] for c in cells])
    axis.set_ylabel("server PSS (MB)")
    axis.legend(fontsize=8)
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=Path, help="capacity.json from `recgen calibrate` (default: calibrate)")
    parser.add_argument("--qps", type=float, default=200.0)
    parser.add_argument("--window-s", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--probe", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=1.05)
    parser.add_argument("--rounds", type=odd_rounds, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/paged_rows"))
    args = parser.parse_args()
    report, cells = run(args)
    figures = {
        "plan_memory_bytes": report.planned.memory_bytes,
        "capacity": report.capacity.to_dict(),
        "cells": cells,
    }
    write_report(args.out, "paged_rows", markdown(report, cells), figures, lambda path: plot(cells, path))


if __name__ == "__main__":
    main()
