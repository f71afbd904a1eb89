"""Benchmark: the distributed layout with its shard groups on the Python backend or on recgen's native backend.

The example model, built with `--layout distributed` (every shard its own group, one server per replica) once per
`--lookup-engine`, both local topologies up at once. Per engine: the PSS of every group server with its stubs
(the memory a group replica costs beyond nothing), the server CPU per request of the group servers and of the front
under closed-loop gRPC load, samples/s, the p99 latency, and the time the topology takes to start (every group
server, then the front, to ready). Engines interleaved, `--rounds` (odd) rounds, median by group CPU.

    python -m bench.native_groups [--clients 4] [--batch 256] [--seconds 5] [--rounds 3]
                                  [--out runs/bench/native_groups]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.loadgen import RequestLog, closed_loop, cpu_seconds, pss_bytes, server_processes
from bench.rounds import median_round, odd_rounds
from generator.deploy.distributed import build_distributed
from generator.deploy.local import LocalTopology
from generator.model import examples
from generator.planning import plan
from generator.planning.choices import LookupEngine
from generator.traffic.requests import random_request

ENGINES: tuple[LookupEngine, ...] = ("python", "native")


def _group_pids(local: LocalTopology) -> list[int]:
    return [server.pid for servers in local.replicas.values() for server in servers if server.pid is not None]


def memory(local: LocalTopology) -> dict[str, float]:
    """PSS (MB) of the group servers with their stubs: in all and per server."""
    pids = _group_pids(local)
    total = sum(sum(pss_bytes(server_processes(pid)).values()) for pid in pids) / 2**20
    return {"group_servers": len(pids), "group_pss_mb": total, "group_pss_mb_each": total / max(len(pids), 1)}


def measure(local: LocalTopology, requests: list, clients: int, seconds: float, batch: int) -> dict[str, float]:
    """Closed-loop load on the front; CPU per request of the group servers (with stubs) and of the front."""
    groups = [p for pid in _group_pids(local) for p in server_processes(pid).values()]
    front = list(server_processes(local.front.pid or 0).values())
    log = RequestLog()
    before = (cpu_seconds(groups), cpu_seconds(front), time.monotonic())
    closed_loop(local.front.grpc_url, "dlrm", requests, clients, seconds, log)
    wall = time.monotonic() - before[2]
    answered = [o for o in log.outcomes if o.ok]
    count = max(len(answered), 1)
    return {
        "requests": len(answered),
        "errors": len(log.outcomes) - len(answered),
        "samples_per_s": len(answered) * batch / wall,
        "group_cpu_ms_per_request": (cpu_seconds(groups) - before[0]) * 1000 / count,
        "front_cpu_ms_per_request": (cpu_seconds(front) - before[1]) * 1000 / count,
        "p99_ms": float(np.percentile([o.latency_s for o in answered], 99)) * 1000 if answered else float("nan"),
    }


def markdown(cells: dict[str, dict]) -> str:
    lines = [
        "| engine | group servers | PSS per group server (MB) | topology start s | samples/s | group CPU ms/request "
        "| front CPU ms/request | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for engine, c in cells.items():
        lines.append(
            f"| {engine} | {c['group_servers']} | {c['group_pss_mb_each']:.1f} | {c['group_start_s']:.1f} "
            f"| {c['samples_per_s']:,.0f} | {c['group_cpu_ms_per_request']:.2f} | {c['front_cpu_ms_per_request']:.2f} "
            f"| {c['p99_ms']:.1f} | {c['errors']} |"
        )
    return "\n".join(lines)


def plot(cells: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    engines = list(cells)
    axes[0].bar(engines, [cells[e]["group_pss_mb_each"] for e in engines])
    axes[0].set_ylabel("PSS per group server (MB)")
    axes[1].bar(engines, [cells[e]["group_cpu_ms_per_request"] for e in engines], label="groups")
    axes[1].bar(engines, [cells[e]["front_cpu_ms_per_request"] for e in engines],
                bottom=[cells[e]["group_cpu_ms_per_request"] for e in engines], label="front")  # fmt: skip
    axes[1].set_ylabel("server CPU ms per request")
    axes[1].legend()
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=odd_rounds, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/native_groups"))
    args = parser.parse_args()
    model = examples.example_model()
    requests = [random_request(model, args.batch, np.random.default_rng(i)).tensors() for i in range(16)]
    rounds: dict[str, list[dict]] = {engine: [] for engine in ENGINES}
    fixed: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="recgen-native-groups-") as workdir, contextlib.ExitStack() as stack:
        topologies = {}
        for engine in ENGINES:
            the_plan = dataclasses.replace(plan.uniform_plan(model, shards_per_table=1), lookup_engine=engine)
            built = build_distributed(model, the_plan, Path(workdir) / engine)
            local = stack.enter_context(LocalTopology(built.root, log_dir=Path(workdir) / f"{engine}-logs"))
            started = time.monotonic()
            local.start(timeout_s=300)
            topologies[engine] = local
            fixed[engine] = {**memory(local), "group_start_s": time.monotonic() - started}
            measure(local, requests, 2, 1.0, args.batch)  # warm up
        for round_index in range(args.rounds):
            for engine, local in topologies.items():
                cell = measure(local, requests, args.clients, args.seconds, args.batch)
                print(f"round {round_index} {engine}: {cell}", flush=True)
                rounds[engine].append(cell)
    cells = {
        engine: {**fixed[engine], **median_round(runs, key=lambda c: c["group_cpu_ms_per_request"])}
        for engine, runs in rounds.items()
    }
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(cells)
    header = (
        f"example model, distributed layout, batch {args.batch}, {args.clients} gRPC clients, medians of {args.rounds}"
    )
    print(table)
    (args.out / "native_groups.md").write_text(f"{header}\n\n{table}\n")
    (args.out / "native_groups.json").write_text(json.dumps({"cells": cells, "rounds": rounds}, indent=2) + "\n")
    plot(cells, args.out / "native_groups.png")
    print(f"wrote {args.out}/native_groups.md, native_groups.json and native_groups.png")


if __name__ == "__main__":
    main()
