"""Benchmark: how the latency target's queue budget is spread over the steps, measured under overload.

recgen gives every batching step (router, shard groups, dense) a queue timeout of half the target. A request passes
three such queues, so an accepted request may in principle queue for 1.5x the target. This benchmark serves the same
build with other splits side by side (each on its own embedded server, every server on one core with `--pin`) and
offers the same open-loop loads to each, interleaved, `--rounds` rounds:

- `half each` (what recgen writes): every step 0.5 of the target;
- `split`: the steps share 0.6 of the target equally (0.2 each), so the queues sum to less than the target;
- `entry heavy`: router 0.4, shard groups and dense 0.1 each;
- `entry only`: the router 0.5, no timeout downstream (what passes the router is never shed).

    python -m bench.queue_budget [--latency-slo-ms 100] [--loads 0.5 1 2 4] [--seconds 10] [--rounds 3]
                                 [--pin] [--out runs/bench/queue_budget]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from bench.overload import capacity, measure, pin_apart
from bench.rounds import median_round, odd_rounds
from generator import naming
from generator.deploy.server import running_server
from generator.model import examples
from generator.planning import plan, queueing
from generator.repository import build, validation, wiring
from generator.traffic.requests import random_request

#: Share of the target each kind of step may queue (0 = no timeout), per variant.
VARIANTS: dict[str, dict[str, float]] = {
    "half each": {"router": 0.5, "shards": 0.5, "dense": 0.5},
    "split": {"router": 0.2, "shards": 0.2, "dense": 0.2},
    "entry heavy": {"router": 0.4, "shards": 0.1, "dense": 0.1},
    "entry only": {"router": 0.5, "shards": 0.0, "dense": 0.0},
}


def step_kinds(the_plan: plan.Plan) -> dict[str, str]:
    """Model name -> kind of step, for the steps of the plan's sharded ensemble."""
    kinds = {naming.router_model(the_plan.model_name): "router", naming.dense_model(the_plan.model_name): "dense"}
    kinds.update({wired.model_name: "shards" for wired in wiring.wire_layout(the_plan).groups})
    return kinds


def with_timeouts(repository: Path, copy: Path, kinds: dict[str, str], shares: dict[str, float], slo_ms: float) -> Path:
    """A copy of `repository` whose steps' queue timeouts are `shares` of the target (parsed back strictly)."""
    shutil.copytree(repository, copy)
    for name, kind in kinds.items():
        directory = copy / name
        if not directory.is_dir():
            continue
        config = validation.parse_strict((directory / "config.pbtxt").read_text(), str(directory))
        config.dynamic_batching.default_queue_policy.default_timeout_microseconds = round(shares[kind] * slo_ms * 1e3)
        validation.write_config(config, directory)
    return copy


def markdown(slo_ms: float, capacity_per_s: float, cells: dict[str, list[dict]], loads: list[float]) -> str:
    lines = [
        f"latency target {slo_ms:g} ms; capacity of `half each` {capacity_per_s:,.1f} requests/s (16 closed-loop "
        "clients); medians over rounds (by goodput)",
        "",
        "| variant | load | goodput/s | rejected/s | p50 ms | p99 ms | p99 ms from send | server cores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, runs in cells.items():
        for load in loads:
            c = median_round([c for c in runs if c["load"] == load], key=lambda c: c["goodput_per_s"])
            lines.append(
                f"| {variant} | {load:g}x | {c['goodput_per_s']:,.0f} | {c['rejected_per_s']:,.0f} | {c['p50_ms']:.1f} "
                f"| {c['p99_ms']:.1f} | {c['p99_from_send_ms']:.1f} | {c['server_cores']:.2f} |"
            )
    return "\n".join(lines)


def plot(cells: dict[str, list[dict]], loads: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for variant, runs in cells.items():
        goodput = [float(np.median([c["goodput_per_s"] for c in runs if c["load"] == load])) for load in loads]
        p99 = [float(np.median([c["p99_ms"] for c in runs if c["load"] == load])) for load in loads]
        left.plot(loads, goodput, marker="o", label=variant)
        right.plot(loads, p99, marker="o", label=variant)
    left.set_xlabel("offered load (x capacity)")
    left.set_ylabel("goodput, requests/s")
    right.set_xlabel("offered load (x capacity)")
    right.set_ylabel("p99 of accepted, ms")
    right.set_yscale("log")
    left.legend()
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-slo-ms", type=float, default=100.0)
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=odd_rounds, default=3)
    parser.add_argument("--pin", action="store_true", help="every server on the last core, this client on the others")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/queue_budget"))
    args = parser.parse_args()
    queueing.check_latency_slo_ms(args.latency_slo_ms)
    model = examples.example_model()
    requests = [random_request(model, 64, np.random.default_rng(i)).tensors() for i in range(32)]
    # The splits are of Triton's queue-policy timeouts, so the build sheds that way (`--shedding queue-policy`).
    uniform = plan.uniform_plan(model, latency_slo_ms=args.latency_slo_ms)
    the_plan = dataclasses.replace(uniform, shedding="queue-policy")
    cells: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="recgen-queue-budget-") as workdir, contextlib.ExitStack() as servers:
        result = build.build(model, the_plan, Path(workdir) / "r", Path(workdir) / "e")
        urls = {}
        kinds = step_kinds(the_plan)
        for index, (variant, shares) in enumerate(VARIANTS.items()):
            copy = with_timeouts(result.repository, Path(workdir) / f"v{index}", kinds, shares, args.latency_slo_ms)
            server = servers.enter_context(running_server([copy, *result.repositories[1:]], timeout_s=300))
            if args.pin:
                pin_apart(server.pid or 0)
            urls[variant] = (server.grpc_url, server.pid or 0)
        first_url = urls["half each"][0]
        capacity(first_url, requests, 16, 3.0)  # warm up
        capacity_per_s = capacity(first_url, requests, 16, args.seconds)
        print(f"capacity of `half each`: {capacity_per_s:.1f} requests/s", flush=True)
        for round_index in range(args.rounds):
            for load in args.loads:
                for variant, (url, pid) in urls.items():
                    cell = {**measure(url, requests, load * capacity_per_s, args.seconds, pid), "load": load}
                    print(f"round {round_index} {load:g}x {variant}: {cell}", flush=True)
                    cells[variant].append(cell)
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(args.latency_slo_ms, capacity_per_s, cells, args.loads)
    print(table)
    (args.out / "queue_budget.md").write_text(table + "\n")
    document = {"latency_slo_ms": args.latency_slo_ms, "capacity_per_s": capacity_per_s, "variants": VARIANTS}
    (args.out / "queue_budget.json").write_text(json.dumps({**document, "cells": cells}, indent=2) + "\n")
    plot(cells, args.loads, args.out / "queue_budget.png")
    print(f"wrote {args.out}/queue_budget.md, queue_budget.json and queue_budget.png")


if __name__ == "__main__":
    main()
