"""Benchmark: in-process PyTorch vs a monolithic Triton model vs the sharded ensemble, on one machine, in one run.

For batch 1, 64 and 256 candidates and client concurrency 1, 4 and 8 (closed loop: each client thread sends its
next request when the previous answer arrives, over gRPC, one client per thread):
(a) in-process PyTorch forward of the same model (the limit; `concurrency` threads call forward),
(b) one monolithic Triton model holding the whole DLRM (Python backend numpy, and ONNX Runtime), 2 instances,
(c) the generated sharded ensemble: routing and pooling in one step (the fused lookup step) on the native backend
(`ensemble-native`, the default build) or on the Python models (`ensemble-python`), then the dense step on numpy
kernels; the Python lookup step with an ONNX Runtime dense step (`ensemble-onnx`); every shard group its own step
(`ensemble-native-separate`, `ensemble-python-separate`); and as it was before the compiled kernels and the fused step
(`ensemble-python-numpy`: separate steps, numpy kernels); and the native lookup step with the dense step on numpy
without numba (`ensemble-native-numpy`: does numba still pay once the lookup side is native?).
Prints a markdown table with samples/s, requests/s, p50, p99, p99.9 and the slowest request's latency (tail
latencies: a stall hides in a mean), the server CPU per request of all its processes, the router step's busy time
per request (Triton's statistics: compute input + infer + output, stub IPC included), and the ratios (c)/(a),
(c)/(best PyTorch: its most samples/s at that batch over every concurrency) and (c)/(b); then every process's PSS.
Writes JSON and a PNG.

    python -m bench.serving [--seconds 3] [--rounds 3] [--batches 1 64 256] [--concurrency 1 4 8]
                            [--systems ...] [--out runs/bench/serving]
    python -m bench.serving --structured [--shares 0.25 0.5 0.75] [--candidates 16 64 256] [--concurrency 4]
    python -m bench.serving --structured --heavy-user --candidates 64 256
    python -m bench.serving --structured --imported [--candidates 16 64 256]

The structured mode (RecServe) serves, per user-side share of the features, the flattened ensemble and
`<model>_ranking`, and sends the same samples both ways: N rows of everything, or the user's features once and
N candidates' item features. It reports requests/s and request bytes of each. `--heavy-user` replaces the shares
with a model whose user side is heavy (`heavy_user_model`), where packing should pay most. `--imported` serves a
light and the heavy user side each twice: as recgen's DLRM, and as the same model imported (`bench.structured`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tritonclient.utils import InferenceServerException

from bench.loadgen import cpu_seconds, pss_bytes, server_processes
from bench.report import write_report
from bench.rounds import median_round, odd_rounds
from bench.structured import markdown_structured, plot_structured, run_structured, structured_workloads
from bench.threads import closed_loop
from generator.check import client
from generator.check.calibrate import step_statistics
from generator.deploy import server as serve
from generator.model import dlrm as models
from generator.model import examples
from generator.planning import plan
from generator.repository import build
from generator.traffic.requests import random_request

#: Instances of each ensemble step (router, shard group, dense); overridable with --ensemble-instances.
ENSEMBLE_INSTANCES = 1
SYSTEMS = (
    "pytorch",
    "monolithic-python",
    "monolithic-onnx",
    "ensemble-native",
    "ensemble-python",
    "ensemble-onnx",
    "ensemble-native-separate",
    "ensemble-python-separate",
    "ensemble-python-numpy",
    "ensemble-native-numpy",
)
#: Systems whose routers and shard groups run on the native backend (the rest on the Python models).
NATIVE_LOOKUP = ("ensemble-native", "ensemble-native-separate", "ensemble-native-numpy")
#: Systems served with the numpy reference kernels instead of the compiled ones (recgen_compiled).
NUMPY_KERNELS = {
    "ensemble-python-numpy": {"RECGEN_KERNELS": "numpy"},
    "ensemble-native-numpy": {"RECGEN_KERNELS": "numpy"},
}
#: Ensembles built with every shard group its own step (the default fuses them into the router's step);
#: `ensemble-python-numpy` is the ensemble as it was before the compiled kernels and the fused step.
SEPARATE_STEPS = ("ensemble-native-separate", "ensemble-python-separate", "ensemble-python-numpy")


def bench_pytorch(model: models.DLRM, batch: int, concurrency: int, seconds: float) -> dict[str, float]:
    request = random_request(model, batch, np.random.default_rng(batch))
    dense = torch.from_numpy(request.dense_features)
    sparse = {name: torch.from_numpy(ids) for name, ids in request.sparse.items()}

    def send(_: int) -> None:
        with torch.no_grad():
            model(dense, sparse)

    return closed_loop(send, concurrency, seconds, warmup_s=0.5, cpu_s=time.process_time)


def router_busy_us(session: client.RankingClient) -> tuple[float, int, int]:
    """(busy microseconds, requests, executions) of the router step so far (0s for a system without a router)."""
    try:
        busy_ns, requests, executions = step_statistics(session, ROUTER)
    except InferenceServerException:  # the monolithic model
        return 0.0, 0, 0
    return busy_ns / 1e3, requests, executions


#: The router model of the ensembles (the step whose busy time is reported).
ROUTER = "dlrm_router"


def bench_triton(
    url: str, model: models.DLRM, batch: int, concurrency: int, seconds: float, server_pid: int | None = None
) -> dict[str, float]:
    """Closed-loop gRPC clients; with `server_pid`, the CPU of tritonserver and every stub per request."""
    clients = [client.RankingClient(url, "grpc") for _ in range(concurrency)]
    requests = [random_request(model, batch, np.random.default_rng(i)).tensors() for i in range(concurrency)]
    pids = list(server_processes(server_pid).values()) if server_pid else []
    try:
        router_before = router_busy_us(clients[0]) if server_pid else (0.0, 0, 0)
        timed = closed_loop(
            lambda i: clients[i].infer(requests[i]),
            concurrency,
            seconds,
            warmup_s=1.0,
            cpu_s=(lambda: cpu_seconds(pids)) if pids else None,
        )
        router_after = router_busy_us(clients[0]) if server_pid else (0.0, 0, 0)
        busy, served, executions = (after - before for after, before in zip(router_after, router_before, strict=True))
        # Triton charges every request of a batched execution the whole execution: x executions / requests undoes it.
        timed["router_us_per_request"] = busy / served * executions / served if served else float("nan")
        return timed
    finally:
        for each in clients:
            each.close()


def build_system(system: str, model: models.DLRM, workdir: Path) -> build.BuildResult:
    kind, backend = system.split("-")[:2]
    backend = "python" if backend == "native" else backend
    if kind == "monolithic":
        the_plan = plan.uniform_plan(model, shards_per_table=1, instance_count=2)
        return build.build_monolithic(model, the_plan, workdir / system, backend=backend)  # type: ignore[arg-type]
    lookup_step: plan.LookupStep = "separate" if system in SEPARATE_STEPS else "fused"
    the_plan = plan.uniform_plan(model, instance_count=ENSEMBLE_INSTANCES, lookup_step=lookup_step)
    the_plan = dataclasses.replace(the_plan, lookup_engine="native" if system in NATIVE_LOOKUP else "python")
    return build.build(model, the_plan, workdir / system / "r", workdir / system / "e", backend=backend)  # type: ignore[arg-type]


def run(
    systems: list[str],
    batches: list[int],
    concurrencies: list[int],
    seconds: float,
    rounds: int,
) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """Every cell `rounds` times, systems interleaved (all servers up at once, idle while others run), median kept.

    These machines are shared VMs whose speed drifts from minute to minute (steal time); interleaving keeps the
    ratios between systems honest.
    """
    model = examples.example_model()
    torch.set_num_threads(2)
    measured: dict[tuple[str, int, int], list[dict]] = {}
    memory: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="recgen-bench-") as workdir, contextlib.ExitStack() as stack:
        urls: dict[str, tuple[str, int | None]] = {}
        for system in systems:
            if system != "pytorch":
                result = build_system(system, model, Path(workdir))
                environment = NUMPY_KERNELS.get(system, {})
                server = stack.enter_context(
                    serve.running_server(result.repositories, timeout_s=300, environment=environment)
                )
                urls[system] = (server.grpc_url, server.pid)
                bench_triton(server.grpc_url, model, 64, 2, 1.0)  # warm every instance up
        for round_index in range(rounds):
            for batch in batches:
                for concurrency in concurrencies:
                    for system in systems:
                        if system == "pytorch":
                            timed = bench_pytorch(model, batch, concurrency, seconds)
                        else:
                            url, pid = urls[system]
                            timed = bench_triton(url, model, batch, concurrency, seconds, pid)
                        cell: dict[str, float | str] = {
                            **timed,
                            "system": system,
                            "batch": batch,
                            "concurrency": concurrency,
                            "round": round_index,
                        }
                        measured.setdefault((system, batch, concurrency), []).append(cell)
                        print(_row(cell), flush=True)
        for system, (_, pid) in urls.items():  # after every round: what each process holds once warm
            memory[system] = pss_bytes(server_processes(pid)) if pid else {}
    cells = []
    for (_, batch, _), runs in measured.items():
        median = median_round(runs, key=lambda c: c["requests_per_s"])
        cells.append(
            {
                **median,
                "samples_per_s": median["requests_per_s"] * batch,
                "rounds_samples_per_s": [c["requests_per_s"] * batch for c in runs],
            }
        )
    order = {name: index for index, name in enumerate(systems)}
    return sorted(cells, key=lambda c: (c["batch"], c["concurrency"], order[c["system"]])), memory


def _row(cell: dict) -> str:
    return (
        f"{cell['system']:<18} batch {cell['batch']:>4} x{cell['concurrency']}: "
        f"{cell['requests_per_s'] * cell['batch']:>10,.0f} samples/s, p50 {cell['p50_ms']:.2f} ms, "
        f"p99 {cell['p99_ms']:.2f} ms, slowest {cell['max_ms']:.1f} ms, "
        f"{cell.get('cpu_ms_per_request', float('nan')):.2f} CPU ms/request, "
        f"router {cell.get('router_us_per_request', float('nan')):.0f} us/request"
    )


def markdown(cells: list[dict], memory: dict[str, dict[str, int]] | None = None) -> str:
    by_key = {(c["system"], c["batch"], c["concurrency"]): c for c in cells}
    best_torch: dict[int, float] = {}
    for c in cells:
        if c["system"] == "pytorch":
            best_torch[c["batch"]] = max(best_torch.get(c["batch"], 0.0), c["samples_per_s"])
    lines = [
        "| system | batch | concurrency | samples/s | requests/s | p50 ms | p99 ms | p99.9 ms | slowest ms "
        "| CPU ms/request | router us/request | ÷ PyTorch | ÷ best PyTorch | ÷ monolithic |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        reference = by_key.get(("pytorch", c["batch"], c["concurrency"]))
        monolithic = by_key.get(("monolithic-python", c["batch"], c["concurrency"]))
        vs_torch = f"{c['samples_per_s'] / reference['samples_per_s']:.2f}" if reference else "-"
        best = best_torch.get(c["batch"])
        vs_best = f"{c['samples_per_s'] / best:.2f}" if best else "-"
        vs_mono = (
            f"{c['samples_per_s'] / monolithic['samples_per_s']:.2f}"
            if monolithic and c["system"].startswith("ensemble")
            else "-"
        )
        router = c.get("router_us_per_request", float("nan"))
        lines.append(
            f"| {c['system']} | {c['batch']} | {c['concurrency']} | {c['samples_per_s']:,.0f} | "
            f"{c['requests_per_s']:,.1f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} "
            f"| {c.get('p999_ms', float('nan')):.2f} "
            f"| {c.get('max_ms', float('nan')):.1f} | {c.get('cpu_ms_per_request', float('nan')):.2f} "
            f"| {'-' if router != router else f'{router:.0f}'} | {vs_torch} | {vs_best} | {vs_mono} |"
        )
    if memory:
        lines += ["", "| system | process | PSS MB |", "|---|---|---|"]
        for system, sizes in memory.items():
            for process, size in sizes.items():
                lines.append(f"| {system} | {process} | {size / 1e6:.1f} |")
    return "\n".join(lines)


def plot(cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({c["batch"] for c in cells})
    figure, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for axis, batch in zip(axes[0], batches, strict=True):
        for system in dict.fromkeys(c["system"] for c in cells):
            points = sorted(
                (c["concurrency"], c["samples_per_s"]) for c in cells if c["system"] == system and c["batch"] == batch
            )
            axis.plot(*zip(*points, strict=True), marker="o", label=system)
        axis.set_title(f"batch {batch}")
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel("samples/s")
        axis.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument(
        "--rounds", type=odd_rounds, default=3, help="measure every cell this (odd) number of times, keep the median"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/serving"))
    parser.add_argument("--ensemble-instances", type=int, default=ENSEMBLE_INSTANCES)
    parser.add_argument(
        "--structured",
        action="store_true",
        help="instead: packed ranking requests (one user, N candidates) vs flattened ones, per user-side share",
    )
    parser.add_argument("--shares", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument(
        "--heavy-user",
        action="store_true",
        help="structured: the heavy-user model (200-id history, wide user bottom MLP) instead of the shares",
    )
    parser.add_argument(
        "--imported",
        action="store_true",
        help="structured: a light and the heavy user side, as recgen's DLRM and as the same model imported",
    )
    parser.add_argument("--candidates", type=int, nargs="+", default=[16, 64, 256])
    args = parser.parse_args()
    globals()["ENSEMBLE_INSTANCES"] = args.ensemble_instances
    if args.structured:
        concurrency = args.concurrency[0] if len(args.concurrency) == 1 else 4
        workloads = structured_workloads(args.shares, args.heavy_user, args.imported)
        found = run_structured(workloads, args.candidates, concurrency, args.seconds, args.rounds)
        table = markdown_structured(found)
        write_report(args.out, "structured", table, {"cells": found}, partial(plot_structured, found))
        return
    cells, memory = run(args.systems, args.batches, args.concurrency, args.seconds, args.rounds)
    figures = {"cells": cells, "pss_bytes": memory}
    write_report(args.out, "serving", markdown(cells, memory), figures, lambda path: plot(cells, path))


if __name__ == "__main__":
    main()
