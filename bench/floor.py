"""Benchmark: the Python-backend floor (identity steps with recgen's tensors) beside recgen's own steps.

What a step costs that is not recgen's work: each system below keeps the configs recgen writes for the example
model (tensors, batching, instances, queue policy) and replaces every Python model by `bench/floor_model.py`,
which reads every input and answers zeros:

- `floor-1`: the monolithic model's config (one step with the ensemble's request contract);
- `floor-2`: the ensemble recgen writes by default (the fused lookup step: router and pooling in one step, then
  dense);
- `floor-3`: the ensemble with separate lookup steps (router, shard group, dense);
- `recgen-1`, `recgen-2` and `recgen-3`: recgen's monolithic model and both ensembles themselves;
- `native-1`, `native-2` and `native-3`: the floor systems with every Python model served instead by the native
  backend's identity-cost step (`recgen_native_step: floor`, generator/native): tritonserver's own cost per step,
  without the Python backend.

Closed-loop gRPC clients at `--batch` for each `--concurrency`, systems interleaved, `--rounds` (odd) rounds; per
system the server CPU per request of tritonserver and of every stub (from /proc), and samples/s. The difference
between recgen-N and floor-N is recgen's own work per request; floor-3 minus floor-2 is one step's floor, and
floor-2 minus floor-1 what the ensemble pays over the monolithic model before any work.

    python -m bench.floor [--batch 256] [--concurrency 4 8] [--seconds 3] [--rounds 3] [--out runs/bench/floor]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from bench.loadgen import cpu_seconds, server_processes
from bench.rounds import median_round, odd_rounds
from bench.threads import closed_loop
from generator import naming, native
from generator.check import client
from generator.deploy import server as serve
from generator.model import dlrm as models
from generator.model import examples
from generator.planning import plan
from generator.repository import build, native_models, validation
from generator.traffic.requests import random_request

SYSTEMS = ("floor-1", "floor-2", "floor-3", "native-1", "native-2", "native-3", "recgen-1", "recgen-2", "recgen-3")
#: The latency target of every build here (ms): generous, so that a stall of this shared VM sheds nothing.
LATENCY_SLO_MS = 60_000.0
FLOOR_MODEL = Path(__file__).with_name("floor_model.py")


def _floor(repository: Path) -> None:
    """Every Python model of `repository` becomes the identity-cost model (configs untouched)."""
    for model_py in repository.glob(f"*/1/{naming.PYTHON_MODEL_FILE}"):
        shutil.copy(FLOOR_MODEL, model_py)


def build_system(system: str, model: models.DLRM, workdir: Path) -> list[Path]:
    """The repositories of one system."""
    kind, steps = system.split("-")
    if steps == "1":
        the_plan = plan.uniform_plan(model, shards_per_table=1, instance_count=1, latency_slo_ms=LATENCY_SLO_MS)
        result = build.build_monolithic(model, the_plan, workdir / system)
        repositories = result.repositories
    else:
        lookup_step: plan.LookupStep = "fused" if steps == "2" else "separate"
        the_plan = plan.uniform_plan(model, latency_slo_ms=LATENCY_SLO_MS, lookup_step=lookup_step)
        result = build.build(model, the_plan, workdir / system / "r", workdir / system / "e")
        repositories = result.repositories
    if kind == "floor":
        for repository in repositories:
            _floor(repository)
    if kind == "native":
        library = native.build()
        for repository in repositories:
            for config_path in repository.glob(f"*/{naming.CONFIG_FILE}"):
                if validation.parse_strict(config_path.read_text()).backend == "python":
                    native_models.use_native_step(config_path.parent, "floor", library)
    return repositories


def _counts(session: client.RankingClient) -> dict[str, tuple[int, int]]:
    """(inference_count, execution_count) of every model, from Triton's statistics (inferences count samples)."""
    stats = session.client.get_inference_statistics(as_json=True)
    return {
        str(entry["name"]): (int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0)))
        for entry in stats.get("model_stats", [])
    }


def measure(url: str, pid: int, model: models.DLRM, batch: int, concurrency: int, seconds: float) -> dict:
    """Closed loop; samples/s, the CPU ms per request of every server process over the measured window, and the
    requests each execute() got (Triton's inference count over its execution count, per model)."""
    processes = server_processes(pid)
    snapshots: list[dict[str, float]] = []

    def sample() -> float:
        snapshots.append({name: cpu_seconds([each]) for name, each in processes.items()})
        return sum(snapshots[-1].values())

    clients = [client.RankingClient(url, "grpc") for _ in range(concurrency)]
    requests = [random_request(model, batch, np.random.default_rng(i)).tensors() for i in range(concurrency)]
    counts_before = _counts(clients[0])
    try:
        cell = closed_loop(lambda i: clients[i].infer(requests[i]), concurrency, seconds, 1.0, cpu_s=sample)
        counts_after = _counts(clients[0])
    finally:
        for each in clients:
            each.close()
    per_execution = {}
    for name, (inferences, executions) in counts_after.items():
        done = executions - counts_before.get(name, (0, 0))[1]
        if done > 0:
            per_execution[name] = (inferences - counts_before.get(name, (0, 0))[0]) / done / batch
    before, after = snapshots
    per_process = {name: (after[name] - before[name]) * 1000 / max(cell["requests"], 1) for name in processes}
    return {
        **cell,
        "samples_per_s": cell["requests_per_s"] * batch,
        "cpu_ms_per_request_by_process": per_process,
        "requests_per_execution": per_execution,
    }


def markdown(cells: list[dict]) -> str:
    lines = [
        "| system | concurrency | samples/s | server CPU ms/request | tritonserver | stubs (each) "
        "| requests per execute() |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        stubs = ", ".join(
            f"{name.removeprefix('dlrm_') or name} {ms:.2f}"
            for name, ms in c["cpu_ms_per_request_by_process"].items()
            if name != "tritonserver" and ms >= 0.005
        )
        batching = ", ".join(
            f"{name.removeprefix('dlrm_') or name} {count:.2f}"
            for name, count in c.get("requests_per_execution", {}).items()
        )
        lines.append(
            f"| {c['system']} | {c['concurrency']} | {c['samples_per_s']:,.0f} | {c['cpu_ms_per_request']:.2f} "
            f"| {c['cpu_ms_per_request_by_process']['tritonserver']:.2f} | {stubs} | {batching} |"
        )
    return "\n".join(lines)


def plot(cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    concurrencies = sorted({c["concurrency"] for c in cells})
    width = 0.8 / len(concurrencies)
    for index, concurrency in enumerate(concurrencies):
        here = [c for c in cells if c["concurrency"] == concurrency]
        positions = [k + index * width for k in range(len(here))]
        axis.bar(positions, [c["cpu_ms_per_request"] for c in here], width, label=f"{concurrency} clients")
        axis.set_xticks([k + width * (len(concurrencies) - 1) / 2 for k in range(len(here))])
        axis.set_xticklabels([c["system"] for c in here])
    axis.set_ylabel("server CPU ms per request")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=odd_rounds, default=3)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/floor"))
    args = parser.parse_args()
    model = examples.example_model()
    measured: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="recgen-floor-") as workdir, contextlib.ExitStack() as stack:
        servers = {}
        for system in args.systems:
            repositories = build_system(system, model, Path(workdir))
            server = stack.enter_context(serve.running_server(repositories, timeout_s=300))
            servers[system] = (server.grpc_url, server.pid or 0)
            measure(server.grpc_url, server.pid or 0, model, args.batch, 2, 1.0)  # warm up
        for round_index in range(args.rounds):
            for concurrency in args.concurrency:
                for system, (url, pid) in servers.items():
                    cell = {**measure(url, pid, model, args.batch, concurrency, args.seconds), "system": system}
                    cell.update(concurrency=concurrency, round=round_index)
                    measured.setdefault((system, concurrency), []).append(cell)
                    print(
                        f"round {round_index} {system} x{concurrency}: {cell['samples_per_s']:,.0f} samples/s, "
                        f"{cell['cpu_ms_per_request']:.2f} CPU ms/request",
                        flush=True,
                    )
    cells = [
        median_round(runs, key=lambda c: c["cpu_ms_per_request"])
        for _, runs in sorted(measured.items(), key=lambda item: (item[0][1], SYSTEMS.index(item[0][0])))
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(cells)
    print(table)
    (args.out / "floor.md").write_text(f"batch {args.batch}; medians of {args.rounds} rounds by CPU\n\n{table}\n")
    (args.out / "floor.json").write_text(json.dumps({"batch": args.batch, "cells": cells}, indent=2) + "\n")
    plot(cells, args.out / "floor.png")
    print(f"wrote {args.out}/floor.md, floor.json and floor.png")


if __name__ == "__main__":
    main()
