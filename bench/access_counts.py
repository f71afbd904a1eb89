"""Benchmark: what the routers' access counters cost, in the router's CPU per request (goal: at most 5%).

Builds the example model twice, with and without access counters (`--no-access-counts`), serves both from one
embedded server and sends the same profile-shaped requests (batch 256, gRPC) to each in interleaved rounds. Per
round it reads the CPU seconds of each build's router stubs (the flattened router, from /proc) over the measured
window and divides by the requests answered. Prints a markdown table (median round), writes JSON and a PNG.

    python -m bench.access_counts [--seconds 4] [--rounds 5] [--concurrency 2] [--out runs/bench/access_counts]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen import cpu_seconds, server_processes
from bench.precision import profile_of
from bench.rounds import median_round, odd_rounds
from bench.structured import LATENCY_SLO_MS
from bench.threads import closed_loop
from generator import naming
from generator.check import client
from generator.deploy import server as serve
from generator.model.examples import example_model
from generator.planning.plan import uniform_plan
from generator.repository import build
from generator.traffic.sampler import RequestSampler, table_traffic

VARIANTS = {"counted": True, "uncounted": False}


def _send_one(clients: Sequence[client.RankingClient], requests: Sequence[Mapping[str, np.ndarray]], i: int) -> object:
    return clients[i].send(requests[i])


def run(options: argparse.Namespace) -> dict[str, Any]:
    """Median round per variant: requests/s, router CPU ms and server CPU ms per request."""
    model = example_model()
    profile = profile_of(model)
    sampler = RequestSampler(
        model.num_dense_features,
        tuple(table_traffic(t.name, t.num_rows, t.max_ids_per_sample, profile) for t in model.tables),
    )
    requests = [sampler.sample_tensors(256, np.random.default_rng(i)) for i in range(options.concurrency)]
    with tempfile.TemporaryDirectory(prefix="recgen-bench-") as workdir:
        repositories = []
        for variant, counted in VARIANTS.items():
            plan = dataclasses.replace(
                uniform_plan(model, name=variant, latency_slo_ms=LATENCY_SLO_MS), count_accesses=counted
            )
            result = build.build(model, plan, Path(workdir) / f"{variant}_r", Path(workdir) / f"{variant}_e")
            repositories += list(result.repositories)
        with serve.running_server(repositories, timeout_s=600) as server:
            processes = server_processes(server.pid) if server.pid else {}
            routers = {
                v: [pid for n, pid in processes.items() if n.split("#")[0] == naming.router_model(v)] for v in VARIANTS
            }
            clients = {v: [client.RankingClient(server.grpc_url, "grpc", v) for _ in requests] for v in VARIANTS}
            runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
            for _ in range(options.rounds):
                for variant in VARIANTS:  # CPU of this build's router stubs over the measured window only
                    cell = closed_loop(
                        functools.partial(_send_one, clients[variant], requests),
                        options.concurrency, options.seconds, warmup_s=0.5,
                        cpu_s=functools.partial(cpu_seconds, routers[variant]),
                    )  # fmt: skip
                    runs[variant].append({**cell, "router_cpu_ms_per_request": cell["cpu_ms_per_request"]})
            for each in (c for per in clients.values() for c in per):
                each.close()
    return {v: median_round(r, key=lambda c: c["router_cpu_ms_per_request"]) for v, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=odd_rounds, default=5)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/access_counts"))
    options = parser.parse_args()
    cells = run(options)
    ratio = cells["counted"]["router_cpu_ms_per_request"] / cells["uncounted"]["router_cpu_ms_per_request"]
    lines = [
        "| routers | requests/s | router CPU ms/request | p99 ms |",
        "|---|---|---|---|",
        *(
            f"| {v} | {c['requests_per_s']:.1f} | {c['router_cpu_ms_per_request']:.3f} | {c['p99_ms']:.1f} |"
            for v, c in cells.items()
        ),
        "",
        f"router CPU per request, counted / uncounted: {ratio:.3f} (goal <= 1.05)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "access_counts.json").write_text(json.dumps({"cells": cells, "ratio": ratio}, indent=2) + "\n")
    (options.out / "access_counts.md").write_text(text)
    _plot(cells, options.out / "access_counts.png")
    print(f"wrote {options.out}/access_counts.json, access_counts.md, access_counts.png")


def _plot(cells: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3))
    axis.bar(list(cells), [c["router_cpu_ms_per_request"] for c in cells.values()])
    axis.set_ylabel("router CPU ms per request")
    axis.set_title("access counters' cost (batch 256)")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    main()
