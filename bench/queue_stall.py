"""Benchmark: the ~0.5 s stalls a queue policy brings to Triton 2.51's dynamic batcher, against recgen's shedding.

recgen used to give every step `dynamic_batching { default_queue_policy { ... } }`, so that a request queued past
its share of the latency target was rejected. On the embedded server that policy comes with stalls: now and then
every request in flight waits about 500 ms (sometimes 1 s) at once (docs/faults.md). Builds now carry no policy and
their routers shed instead (`recgen_admission`). This serves the same model twice, built as by default and built
with `--shedding queue-policy` (Triton's queue policy on every step, no admission in the routers), sends
closed-loop flattened and packed (ranking) requests alternately, and counts the requests slower than `--slow-ms`,
with p50, p99, p99.9 and the slowest.

    python -m bench.queue_stall [--seconds 3] [--rounds 3] [--clients 4] [--slow-ms 100] [--out runs/bench/queue_stall]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.report import write_report
from bench.structured import shared_model
from generator import naming, triton_runtime
from generator.check import client
from generator.deploy import server as serve
from generator.planning import plan, queueing
from generator.repository import build
from generator.traffic.requests import random_structured_request

SYSTEMS = ("as-built", "triton-queue-policy")
MODES = {"flattened": "dlrm", "packed": naming.ranking_ensemble("dlrm")}


def _loop(clients: list[client.RankingClient], payloads: list[dict], seconds: float) -> tuple[list[float], int]:
    """Closed loop, one thread per client, for `seconds`: every request's latency in seconds, and how many were shed."""
    latencies: list[list[float]] = [[] for _ in clients]
    rejected = [0] * len(clients)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        stop_at = time.perf_counter() + seconds
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    clients[index].infer(payloads[index])
                except Exception as error:  # a shed request counts (its latency too); anything else is raised
                    if not any(message in str(error) for message in triton_runtime.REJECTION_MESSAGES):
                        raise
                    rejected[index] += 1
                latencies[index].append(time.perf_counter() - started)
        except BaseException as error:  # reported after the join
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [value for per_thread in latencies for value in per_thread], sum(rejected)


def run(seconds: float, rounds: int, clients_per_mode: int, slow_s: float) -> list[dict]:
    """Both systems up at once, interleaved: per system and mode, the latencies of all rounds together."""
    model = shared_model(0.25)
    samples = [random_structured_request(model, 16, np.random.default_rng(i)) for i in range(clients_per_mode)]
    payloads = {"packed": [s.tensors() for s in samples], "flattened": [s.flattened(model).tensors() for s in samples]}
    measured: dict[tuple[str, str], list[float]] = {}
    shed: dict[tuple[str, str], int] = {}
    with tempfile.TemporaryDirectory(prefix="recgen-stall-") as workdir, contextlib.ExitStack() as stack:
        clients: dict[tuple[str, str], list[client.RankingClient]] = {}
        for system in SYSTEMS:
            out = Path(workdir) / system
            shedding: queueing.Shedding = "queue-policy" if system == "triton-queue-policy" else "router"
            the_plan = dataclasses.replace(plan.uniform_plan(model), shedding=shedding)
            result = build.build(model, the_plan, out / "r", out / "e")
            server = stack.enter_context(serve.running_server(result.repositories, timeout_s=300))
            for mode, name in MODES.items():
                clients[(system, mode)] = [
                    stack.enter_context(client.RankingClient(server.grpc_url, "grpc", name))
                    for _ in range(clients_per_mode)
                ]
        for _ in range(rounds):
            for system in SYSTEMS:
                for mode in MODES:
                    latencies, rejected = _loop(clients[(system, mode)], payloads[mode], seconds)
                    measured.setdefault((system, mode), []).extend(latencies)
                    shed[(system, mode)] = shed.get((system, mode), 0) + rejected
    cells = []
    for (system, mode), latencies in measured.items():
        values = np.array(latencies)
        cells.append(
            {
                "system": system,
                "mode": mode,
                "requests": int(values.size),
                "slow_requests": int((values > slow_s).sum()),
                "rejected": shed[(system, mode)],
                "p999_ms": float(np.percentile(values, 99.9) * 1e3),
                "p50_ms": float(np.percentile(values, 50) * 1e3),
                "p99_ms": float(np.percentile(values, 99) * 1e3),
                "max_ms": float(values.max() * 1e3),
            }
        )
    return cells


def markdown(cells: list[dict], slow_ms: float) -> str:
    lines = [
        f"| system | request | requests | over {slow_ms:g} ms | shed | p50 ms | p99 ms | p99.9 ms | slowest ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c['system']} | {c['mode']} | {c['requests']:,} | {c['slow_requests']} | {c['rejected']} "
            f"| {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {c['p999_ms']:.1f} | {c['max_ms']:.0f} |"
        )
    return "\n".join(lines)


def plot(cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    labels = [f"{c['system']}\n{c['mode']}" for c in cells]
    axis.bar(labels, [c["p99_ms"] for c in cells])
    axis.set_ylabel("p99 latency (ms)")
    axis.set_yscale("log")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--slow-ms", type=float, default=100.0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/queue_stall"))
    args = parser.parse_args()
    cells = run(args.seconds, args.rounds, args.clients, args.slow_ms / 1e3)
    table = markdown(cells, args.slow_ms)
    write_report(args.out, "queue_stall", table, {"cells": cells}, lambda path: plot(cells, path))


if __name__ == "__main__":
    main()
