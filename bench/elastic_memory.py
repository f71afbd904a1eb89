"""Benchmark: model-wise whole-model servers vs the planned distributed topology (ElasticRec's comparison).

Part 1, measured on this machine at small scale. A model whose tables dominate its bytes, a Zipf profile, and a
plan sized (capacity model) for the load at which the model-wise deployment needs R whole-model replicas. Serve
  (a) model-wise: R monolithic servers of one instance each, requests spread round-robin over them, and
  (b) planned: the distributed layout, one server per shard-group replica plus the front (`LocalTopology`),
offer both the same open-loop load (requests at fixed times; latency counted from the scheduled send time, so
queueing shows), and report achieved requests/s, p50/p99 and the summed proportional set size (PSS) of every server
process and its Python-backend stubs, next to the memory the capacity model predicts for each deployment.

Part 2, the plan's scaling rule over a day: a diurnal curve (minimum 30% of the planned peak at 04:00, peak at
16:00), hour by hour `planner.scale_to_load` gives every shard, the router and the dense model the replicas the
load needs, and the model-wise deployment its whole-model replicas. Replica-hours (single-threaded instances) and
memory-hours, model-wise vs planned (one server per shard replica). ElasticRec reports 1.6x lower deployment cost.

    python -m bench.elastic_memory [--replicas 3] [--alpha 1.05] [--offered-qps 20] [--seconds 15]
                                   [--out runs/bench/elastic_memory]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from generator.check import calibrate, client, loadtest
from generator.deploy import k8s
from generator.deploy import server as serve
from generator.deploy.distributed import build_distributed
from generator.deploy.local import LocalTopology
from generator.deploy.topology import Topology
from generator.model import dlrm as models
from generator.planning import memory, planner
from generator.planning.capacity import Capacity
from generator.planning.memory import ModelShape
from generator.planning.planner import PlanReport
from generator.repository import build
from generator.traffic.profile import AccessProfile, TableShape, zipf_profile
from generator.traffic.requests import RankingRequest

BATCH = 256
TABLES = (  # 1.85M rows x 32 dims: 237 MB of fp32 rows, most of the model's bytes; one long multi-hot table
    models.TableSpec("item_id", 1_000_000, 32, 1),
    models.TableSpec("user_id", 300_000, 32, 1),
    models.TableSpec("history", 500_000, 32, 20),
    models.TableSpec("category", 50_000, 32, 3),
)


def bench_model() -> models.DLRM:
    return models.DLRM(num_dense_features=13, tables=list(TABLES), bottom_mlp=[64, 32], top_mlp=[64, 1]).eval()


def qps_for_model_wise_replicas(shape: ModelShape, profile: AccessProfile, replicas: int, capacity: Capacity) -> float:
    """The highest load (queries/s) that the model-wise deployment serves with `replicas` whole-model replicas."""
    low, high = 1.0, 1.0
    while planner.plan_model(shape, profile, target_qps=high, capacity=capacity).model_wise.replicas <= replicas:
        low, high = high, high * 2
    for _ in range(40):
        middle = (low + high) / 2
        fits = planner.plan_model(shape, profile, target_qps=middle, capacity=capacity).model_wise.replicas <= replicas
        low, high = (middle, high) if fits else (low, middle)
    return low


def open_loop(send: Callable[[int, int], None], qps: float, seconds: float, threads: int = 8) -> dict[str, Any]:
    """Send request i at start + i/qps from a pool of threads; latency from the scheduled time."""
    start = time.perf_counter() + 0.5
    total = int(qps * seconds)
    counter = iter(range(total))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def worker(thread: int) -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            scheduled = start + index / qps
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                send(thread, index)
            except Exception as error:  # counted, reported
                failures.append(str(error)[:200])
                continue
            latencies.append(time.perf_counter() - scheduled)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    values = np.array(latencies) * 1000
    return {
        "offered_qps": qps,
        "achieved_qps": len(latencies) / elapsed,
        "failures": len(failures),
        "p50_ms": float(np.percentile(values, 50)) if values.size else float("nan"),
        "p99_ms": float(np.percentile(values, 99)) if values.size else float("nan"),
        "first_failure": failures[0] if failures else "",
    }


def servers_pss_bytes(servers: list[serve.TritonServer]) -> int:
    """Summed PSS of every server process and its stub processes."""
    total = 0
    for server in servers:
        pid = server.pid
        if pid is None:
            continue
        total += calibrate.proportional_set_size_bytes(pid)
        total += sum(calibrate.proportional_set_size_bytes(stub) for stub in calibrate.stub_processes(pid).values())
    return total


def measure(
    servers: list[serve.TritonServer],
    urls: list[str],
    requests: Sequence[RankingRequest],
    qps: float,
    seconds: float,
    name: str,
) -> dict[str, Any]:
    clients = [[client.RankingClient(url, "grpc", model_name=name) for url in urls] for _ in range(8)]
    try:

        def send(thread: int, index: int) -> None:
            per_thread = clients[thread]
            per_thread[index % len(per_thread)].score(requests[index % len(requests)])

        open_loop(send, qps, min(seconds, 5.0))  # warm-up: every client connected, every stub's pages touched
        result = open_loop(send, qps, seconds)
        result["pss_bytes"] = servers_pss_bytes(servers)
        result["servers"] = len(servers)
        return result
    finally:
        for per_thread in clients:
            for each in per_thread:
                each.close()


def diurnal_qps(peak_qps: float) -> list[float]:
    return [peak_qps * (0.3 + 0.7 * (1 - math.cos(2 * math.pi * (hour - 4) / 24)) / 2) for hour in range(24)]


def replay_day(report: PlanReport, shape: ModelShape, profile: AccessProfile, capacity: Capacity) -> dict:
    model_bytes = sum(spec.num_rows * spec.bytes_per_row for spec in shape.tables)
    whole_bytes = model_bytes + shape.dense_bytes + capacity.replica_overhead_bytes + capacity.server_overhead_bytes
    router_bytes = memory.router_bytes(shape.tables, [0] * len(shape.tables), [True] * len(shape.tables))
    hours = []
    for qps in diurnal_qps(report.target_qps):
        scaled = planner.scale_to_load(report, shape, profile, qps)
        shard_bytes = sum(
            replicas * (s.bytes_per_replica + capacity.replica_overhead_bytes + capacity.server_overhead_bytes)
            for replicas, s in zip(scaled.shards, report.shards, strict=True)
        )
        front_bytes = (
            capacity.server_overhead_bytes
            + scaled.router * (router_bytes + capacity.replica_overhead_bytes)
            + scaled.dense * (shape.dense_bytes + capacity.replica_overhead_bytes)
        )
        hours.append(
            {
                "qps": qps,
                "model_wise_replicas": scaled.model_wise,
                "planned_replicas": sum(scaled.shards) + scaled.router + scaled.dense,
                "model_wise_bytes": scaled.model_wise * whole_bytes,
                "planned_bytes": shard_bytes + front_bytes,
            }
        )
    totals = {key: sum(hour[key] for hour in hours) for key in hours[0] if key != "qps"}
    return {
        "hours": hours,
        "replica_hours": {"model_wise": totals["model_wise_replicas"], "planned": totals["planned_replicas"]},
        "memory_gb_hours": {"model_wise": totals["model_wise_bytes"] / 1e9, "planned": totals["planned_bytes"] / 1e9},
        "replica_hours_ratio": totals["model_wise_replicas"] / totals["planned_replicas"],
        "memory_hours_ratio": totals["model_wise_bytes"] / totals["planned_bytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=6, help="model-wise whole-model replicas at the planned load")
    parser.add_argument("--alpha", type=float, default=1.05)
    parser.add_argument("--offered-qps", type=float, default=20.0, help="open-loop load offered to both deployments")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--max-shards-per-table", type=int, default=4)
    parser.add_argument(
        "--day-peak-replicas", type=int, default=32, help="model-wise replicas at the peak of the replayed day"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/elastic_memory"))
    args = parser.parse_args()

    capacity = Capacity()
    model = bench_model()
    shape = memory.ModelShape.of(model)
    shapes = [TableShape(t.name, t.num_rows, t.max_ids_per_sample) for t in TABLES]
    profile = zipf_profile(shapes, args.alpha, samples=200_000, seed=0)
    peak_qps = qps_for_model_wise_replicas(shape, profile, args.replicas, capacity)
    report = planner.plan_model(
        shape, profile, target_qps=peak_qps, capacity=capacity, max_shards_per_table=args.max_shards_per_table
    )
    plan = replace(planner.plan_from_report(report, shape, profile), group_by="placement")
    print(report)

    components = k8s.components(Topology.from_plan(plan, group_by="placement"), k8s.K8sOptions(capacity=capacity))
    predicted_planned = sum(c.replicas * c.memory_bytes for c in components)
    whole = sum(s.num_rows * s.bytes_per_row for s in TABLES) + shape.dense_bytes
    predicted_model_wise = report.model_wise.replicas * (
        whole + capacity.replica_overhead_bytes + capacity.server_overhead_bytes
    )

    results: dict = {"planned_qps": peak_qps, "alpha": args.alpha, "batch": BATCH, "plan": report.to_dict()}
    with tempfile.TemporaryDirectory(prefix="recgen-elastic-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        monolithic = build.build_monolithic(model, replace(plan, dense=replace(plan.dense, instance_count=1)),
                                            root / "mono")  # fmt: skip
        distributed = build_distributed(model, plan, root / "dist", group_by="placement")
        print(f"built both in {time.perf_counter() - started:.0f} s")
        print(distributed)
        rng = np.random.default_rng(0)
        with contextlib.ExitStack() as stack:
            logs = args.out / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            local = stack.enter_context(LocalTopology(distributed.root, log_dir=logs))
            local.start()
            with client.RankingClient(local.front.grpc_url, "grpc") as front:
                sampler = loadtest.sampler_from_server(front, profile)
            requests = [sampler.sample(BATCH, rng) for _ in range(32)]
            planned = measure(
                local.servers(), [local.front.grpc_url], requests, args.offered_qps, args.seconds, plan.model_name
            )
            stack.close()  # one deployment at a time on 2 cores
            mono_servers = [
                stack.enter_context(serve.running_server(monolithic.repositories, log_path=logs / f"whole-{i}.log"))
                for i in range(report.model_wise.replicas)
            ]
            model_wise = measure(
                mono_servers, [s.grpc_url for s in mono_servers], requests, args.offered_qps, args.seconds,
                plan.model_name,
            )  # fmt: skip
    day_peak_qps = qps_for_model_wise_replicas(shape, profile, args.day_peak_replicas, capacity)
    day_report = planner.plan_model(
        shape, profile, target_qps=day_peak_qps, capacity=capacity, max_shards_per_table=args.max_shards_per_table
    )
    day = replay_day(day_report, shape, profile, capacity)
    results.update(
        {
            "model_wise": {**model_wise, "predicted_bytes": predicted_model_wise},
            "planned": {**planned, "predicted_bytes": predicted_planned},
            "measured_memory_ratio": model_wise["pss_bytes"] / planned["pss_bytes"],
            "predicted_memory_ratio": predicted_model_wise / predicted_planned,
            "planner_memory_ratio_single_server": report.memory_ratio,
            "day": day,
        }
    )
    lines = [
        f"## Model-wise vs planned distributed (batch {BATCH}, Zipf alpha {args.alpha}, "
        f"{args.offered_qps:g} requests/s offered, {args.seconds:g} s)",
        "",
        "| deployment | servers | achieved req/s | failures | p50 ms | p99 ms | PSS MB | predicted MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in (("model-wise", results["model_wise"]), ("planned", results["planned"])):
        lines.append(
            f"| {name} | {row['servers']} | {row['achieved_qps']:.1f} | {row['failures']} | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} | {row['pss_bytes'] / 1e6:,.0f} | {row['predicted_bytes'] / 1e6:,.0f} |"
        )
    lines += [
        "",
        f"memory ratio model-wise / planned: measured {results['measured_memory_ratio']:.2f}x, predicted "
        f"{results['predicted_memory_ratio']:.2f}x (planner, one-server layout: {report.memory_ratio:.2f}x)",
        "",
        f"## A day of diurnal traffic through the scaling rule (peak {day_peak_qps:,.0f} queries/s, "
        f"{args.day_peak_replicas} model-wise replicas)",
        "",
        "| | model-wise | planned | model-wise / planned |",
        "|---|---|---|---|",
        f"| replica-hours (single-threaded instances) | {day['replica_hours']['model_wise']:,} | "
        f"{day['replica_hours']['planned']:,} | {day['replica_hours_ratio']:.2f}x |",
        f"| memory GB-hours | {day['memory_gb_hours']['model_wise']:,.1f} | {day['memory_gb_hours']['planned']:,.1f} | "
        f"{day['memory_hours_ratio']:.2f}x |",
        "",
        "ElasticRec reports 1.6x lower deployment cost on average.",
    ]
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "elastic_memory.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "elastic_memory.md").write_text(table + "\n")
    print(f"wrote {args.out}/elastic_memory.json, elastic_memory.md")


if __name__ == "__main__":
    main()
