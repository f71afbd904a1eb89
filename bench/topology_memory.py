"""Benchmark: the distributed layout served on this machine, its memory against the plan it was built from.

Plans a DLRM on small servers (`--server-cores`) for a load that spreads it over more than one server, builds the
distributed layout (which follows the planner's servers: `deploy.topology`), serves it with `LocalTopology` (one
tritonserver per pod: the front and every replica server of every shard group), sends `--requests` flattened
requests through the front, and measures every pod: the distinct physical pages its tritonserver and stubs map,
read from /proc/PID/pagemap and counted once per pod. A rows file that two local pods map then counts in each, as
it would on two machines, and so do the shared libraries. (Without the right to read page frames, PSS is summed
instead, which splits what local pods share; the output says which was used.)

Plans use this machine's capacity model: `--capacity FILE` (from `recgen calibrate`), or a calibration run first
on the bundled example (the built-in defaults come from another machine).

Reported per pod kind: measured bytes against the topology's prediction (what `recgen k8s` requests for it); and
in total, measured against the plan's memory allocated and the topology's prediction. `LocalTopology` runs one
front; where the plan has more, the measured front counts once per planned front (the output says so).

Variants (interleaved, `--rounds` odd, the median round by measured total is reported), each at the lowest load
of 250 x 2^k queries/s that the plan spreads over more than one server (a one-server plan is priced as the
embedded build):
- `separate`: every shard its own step;
- `fused`: the default lookup step (more than one front server, each pooling the rows).

    python -m bench.topology_memory [--capacity capacity.json] [--server-cores 2] [--requests 200] [--rounds 3]
        [--out runs/bench/topology_memory]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen import pss_bytes, server_processes
from bench.report import save_figure, write_report
from bench.rounds import median_round, odd_rounds
from generator.check import calibrate, client, loadtest
from generator.deploy import k8s
from generator.deploy.distributed import build_distributed
from generator.deploy.local import LocalTopology
from generator.model import dlrm as models
from generator.model.examples import example_model
from generator.planning.capacity import Capacity
from generator.planning.memory import ModelShape
from generator.planning.plan import LookupStep
from generator.planning.planner import plan_from_report, plan_model
from generator.planning.report import PlanReport
from generator.planning.servers import ServerSize
from generator.traffic.profile import AccessProfile, TableShape, zipf_profile

BATCH = 256
#: 1.15 M rows of 32 floats (147 MB), one long multi-hot table.
TABLES = (
    models.TableSpec("item_id", 600_000, 32, 1),
    models.TableSpec("user_id", 200_000, 32, 1),
    models.TableSpec("history", 300_000, 32, 20),
    models.TableSpec("category", 50_000, 32, 3),
)
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_PRESENT = np.uint64(1 << 63)
_FRAME = np.uint64((1 << 55) - 1)


@dataclass(frozen=True)
class Variant:
    """A lookup step and the load (queries/s) it is planned for."""

    lookup_step: LookupStep
    target_qps: float


def model_and_profile(alpha: float) -> tuple[models.DLRM, AccessProfile]:
    """The benchmark's DLRM (random weights) and a Zipf profile of its tables."""
    model = models.DLRM(num_dense_features=13, tables=list(TABLES), bottom_mlp=[64, 32], top_mlp=[64, 1]).eval()
    shapes = [TableShape(t.name, t.num_rows, t.max_ids_per_sample) for t in TABLES]
    return model, zipf_profile(shapes, alpha, samples=200_000, seed=0)


def _frames(pid: int) -> np.ndarray:
    """Page frames of every present page `pid` maps (zeros where the kernel hides frames from this user)."""
    found = []
    ranges = []
    start = end = 0
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:
            start, end = (int(part, 16) for part in fields[0].split("-"))
        elif fields and fields[0] == "Rss:" and int(fields[1]) > 0:
            ranges.append((start, end))
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for start, end in ranges:
            pagemap.seek(start // PAGE_BYTES * 8)
            entries = np.frombuffer(pagemap.read((end - start) // PAGE_BYTES * 8), dtype=np.uint64)
            found.append(entries[(entries & _PRESENT) != 0] & _FRAME)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.uint64)


def pod_bytes(server_pid: int) -> tuple[int, str]:
    """Memory of one pod (a tritonserver and its stubs), each physical page once; and how it was measured."""
    processes = server_processes(server_pid)
    try:
        frames = np.concatenate([_frames(pid) for pid in processes.values()])
    except OSError:
        frames = np.zeros(0, dtype=np.uint64)
    if frames.size and frames.any():
        return int(np.unique(frames[frames != 0]).size) * PAGE_BYTES, "distinct pages"
    return sum(pss_bytes(processes).values()), "PSS"


def _one_round(variant: Variant, root: Path, profile: AccessProfile, requests: int) -> dict[str, Any]:
    with LocalTopology(root) as local:
        local.start(timeout_s=300)
        with client.RankingClient(local.front.grpc_url, "grpc") as front:
            sampler = loadtest.sampler_from_server(front, profile)
            rng = np.random.default_rng(3)
            for _ in range(requests):
                front.score(sampler.sample(BATCH, rng))
        pods: dict[str, list[int]] = {}
        how = set()
        for name, servers in [("front", [local.front]), *local.replicas.items()]:
            for server in servers:
                assert server.pid is not None
                measured, method = pod_bytes(server.pid)
                pods.setdefault(name, []).append(measured)
                how.add(method)
    fronts = local.topology.front.replica_servers
    total = sum(sum(values) for name, values in pods.items() if name != "front") + fronts * pods["front"][0]
    return {"variant": variant.lookup_step, "pods": pods, "total_bytes": total, "method": ", ".join(sorted(how))}


def _spreading(
    lookup_step: LookupStep, model: models.DLRM, profile: AccessProfile, size: ServerSize, capacity: Capacity
) -> Variant:
    """The lowest load of 250 x 2^k queries/s (k < 12) at which the plan takes more than one server."""
    for power in range(12):
        variant = Variant(lookup_step, 250.0 * 2**power)
        report, _ = plan_variant(variant, model, profile, size, capacity)
        if report.fleet is not None and len(report.fleet.servers) > 1:
            return variant
    raise SystemExit(f"no load up to {250 * 2**11} queries/s spreads the {lookup_step} plan; use fewer --server-cores")


def plan_variant(
    variant: Variant, model: models.DLRM, profile: AccessProfile, size: ServerSize, capacity: Capacity
) -> tuple[PlanReport, Any]:
    """The variant's plan report and buildable plan."""
    shape = ModelShape.of(model)
    report = plan_model(
        shape, profile, target_qps=variant.target_qps, capacity=capacity, servers=size,
        lookup_step=variant.lookup_step, max_shards_per_table=4,
    )  # fmt: skip
    return report, plan_from_report(report, shape, profile)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every variant's median round, with what the plan and the topology predicted."""
    model, profile = model_and_profile(args.alpha)
    capacity = Capacity.load(args.capacity) if args.capacity else calibrate.calibrate(example_model())
    size = ServerSize(cores=args.server_cores)
    print(capacity, flush=True)
    variants = [_spreading(step, model, profile, size, capacity) for step in ("separate", "fused")]
    results = []
    with tempfile.TemporaryDirectory(prefix="recgen-bench-topology-") as workdir:
        built = {}
        for variant in variants:
            report, plan = plan_variant(variant, model, profile, size, capacity)
            print(report, flush=True)
            layout = build_distributed(model, plan, Path(workdir) / variant.lookup_step)
            print(layout, flush=True)
            components = k8s.components(layout.topology, k8s.K8sOptions(capacity=capacity))
            built[variant.lookup_step] = (report, layout, components)
        rounds: dict[str, list[dict[str, Any]]] = {v.lookup_step: [] for v in variants}
        for _ in range(args.rounds):
            for variant in variants:
                layout = built[variant.lookup_step][1]
                rounds[variant.lookup_step].append(_one_round(variant, layout.root, profile, args.requests))
                print(f"{variant.lookup_step}: {rounds[variant.lookup_step][-1]['total_bytes'] / 1e6:.0f} MB")
        for variant in variants:
            report, layout, components = built[variant.lookup_step]
            cell = median_round(rounds[variant.lookup_step], key=lambda r: r["total_bytes"])
            figures = _figures(variant, report, layout.topology, components, cell, rounds[variant.lookup_step])
            results.append({**figures, "capacity": capacity.to_dict()})
    return results


def _figures(
    variant: Variant, report: PlanReport, topology: Any, components: Sequence[Any], cell: dict, rounds: list
) -> dict[str, Any]:
    predicted = {c.name: (c.replicas, c.memory_bytes) for c in components}
    service = {"front": topology.front.service, **{g.model: g.service for g in topology.groups}}
    pods = []
    for name, measured in cell["pods"].items():
        replicas, each = predicted[service[name]]
        pods.append({"pod": name, "planned_replicas": replicas, "measured_bytes": measured, "predicted_bytes": each})
    return {
        "lookup_step": variant.lookup_step,
        "target_qps": variant.target_qps,
        "plan_servers": len(report.fleet.servers) if report.fleet else 1,
        "plan_memory_bytes": report.planned.memory_bytes,
        "model_wise_memory_bytes": report.model_wise.memory_bytes,
        "topology_predicted_bytes": sum(replicas * each for replicas, each in predicted.values()),
        "measured_bytes": cell["total_bytes"],
        "measured_rounds_bytes": [r["total_bytes"] for r in rounds],
        "method": cell["method"],
        "fronts": topology.front.replica_servers,
        "pods": pods,
    }


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | load q/s | plan servers | fronts | plan MB | topology predicts MB | measured MB | "
        "measured ÷ plan | model-wise MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        lines.append(
            f"| {row['lookup_step']} | {row['target_qps']:,.0f} | {row['plan_servers']} | {row['fronts']} | "
            f"{row['plan_memory_bytes'] / 1e6:,.0f} | {row['topology_predicted_bytes'] / 1e6:,.0f} | "
            f"{row['measured_bytes'] / 1e6:,.0f} | {row['measured_bytes'] / row['plan_memory_bytes']:.2f} | "
            f"{row['model_wise_memory_bytes'] / 1e6:,.0f} |"
        )
    lines += [
        "",
        "| variant | pod | planned replicas | predicted MB each | measured MB each |",
        "|---|---|---|---|---|",
    ]
    for row in results:
        for pod in row["pods"]:
            measured = ", ".join(f"{value / 1e6:,.0f}" for value in pod["measured_bytes"])
            lines.append(
                f"| {row['lookup_step']} | {pod['pod']} | {pod['planned_replicas']} | "
                f"{pod['predicted_bytes'] / 1e6:,.0f} | {measured} |"
            )
    methods = sorted({row["method"] for row in results})
    lines += [
        "",
        f"measured: {', '.join(methods)} per pod (tritonserver and its stubs); the one local front counts once per "
        "planned front; median round by measured total",
    ]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    names = [row["lookup_step"] for row in results]
    positions = np.arange(len(names))
    for offset, (key, label) in enumerate(
        (
            ("plan_memory_bytes", "plan"),
            ("topology_predicted_bytes", "topology predicts"),
            ("measured_bytes", "measured"),
        )
    ):
        axis.bar(positions + (offset - 1) * 0.27, [row[key] / 1e6 for row in results], 0.27, label=label)
    axis.set_xticks(positions, [f"{row['lookup_step']}\n{row['target_qps']:,.0f} q/s" for row in results])
    axis.set_ylabel("MB")
    axis.set_title("distributed layout on this machine: memory against the plan")
    axis.legend()
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capacity", type=Path, help="capacity.json from `recgen calibrate` (default: calibrate)")
    parser.add_argument("--server-cores", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=1.05)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=odd_rounds, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/topology_memory"))
    args = parser.parse_args()
    results = run(args)
    write_report(args.out, "topology_memory", markdown(results), results, lambda path: plot(results, path))


if __name__ == "__main__":
    main()
