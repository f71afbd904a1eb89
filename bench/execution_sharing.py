"""Benchmark: what the dense step saves when requests share its executions (the case for batching ranking requests).

A ranking request reaches its dense step as one request of one execution (`max_batch_size` 0: core
`src/dynamic_batch_scheduler.cc`), so two users' requests never share the Python backend's cost of an execution.
Letting them share it needs the router to emit every dense-step tensor with one leading batch row and the dense
step to run several users at once. Before building that, this measures what sharing would buy, on a step that can
already do it: the flattened dense step batches (its `max_batch_size` is the plan's, 1024), and the same repository
with that step's and the ensemble's `max_batch_size` set to N puts one N-sample request in each execution. Both are
served side by side and loaded alternately (closed loop, `--clients` threads, odd `--rounds`, median round); the
packed ranking requests of the same samples are measured on the first server, for the CPU they cost.

The difference in server CPU per request between the two flattened systems is what sharing saves per request;
set against the packed request's CPU, it bounds what batching ranking requests could gain.

    python -m bench.execution_sharing [--candidates 64 256] [--clients 4] [--seconds 3] [--rounds 3]
        [--out runs/bench/execution_sharing]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.loadgen import cpu_seconds, server_processes
from bench.report import save_figure, write_report
from bench.rounds import median_round, odd_rounds
from bench.structured import LATENCY_SLO_MS, as_imported, heavy_user_model, light_user_model, ranking_requests
from bench.threads import closed_loop
from generator import naming
from generator.check import client
from generator.check.calibrate import step_statistics
from generator.deploy import server as serve
from generator.model.protocol import Model
from generator.planning import plan
from generator.repository import build

#: system -> (ensemble, its dense step): the flattened ensemble on both servers, the packed one on the first.
SYSTEMS = {
    "flattened, shared executions": ("dlrm", "dlrm_dense"),
    "flattened, one request per execution": ("dlrm", "dlrm_dense"),
    "packed (one request per execution)": (naming.ranking_ensemble("dlrm"), "dlrm_dense_ranking"),
}
WORKLOADS: dict[str, Callable[[], Model]] = {
    "light user (imported)": lambda: as_imported(light_user_model()),
    "heavy user (imported)": lambda: as_imported(heavy_user_model()),
}
_MAX_BATCH = re.compile(r"^max_batch_size: \d+$", re.MULTILINE)


def one_request_per_execution(repository: Path, ensembles: Path, rows: int, into: Path) -> tuple[Path, Path]:
    """A copy of the build whose flattened dense step (and ensemble) take at most `rows` samples per execution."""
    copies = (into / "repository", into / "ensembles")
    for source, copy in zip((repository, ensembles), copies, strict=True):
        shutil.copytree(source, copy)
    for config in (copies[0] / "dlrm_dense" / "config.pbtxt", copies[1] / "dlrm" / "config.pbtxt"):
        text, replaced = _MAX_BATCH.subn(f"max_batch_size: {rows}", config.read_text())
        if replaced != 1:
            raise ValueError(f"{config}: expected one max_batch_size line, found {replaced}")
        config.write_text(text)
    return copies


def _measure(
    server: serve.TritonServer, system: str, payloads: list[dict], seconds: float, clients: int
) -> dict[str, float]:
    ensemble, dense = SYSTEMS[system]
    sessions = [client.RankingClient(server.grpc_url, "grpc", ensemble) for _ in range(clients)]
    try:
        pids = list(server_processes(server.pid).values()) if server.pid else []
        busy_before, served_before, executions_before = step_statistics(sessions[0], dense)
        timed = closed_loop(
            lambda index: sessions[index].send(payloads[index], output_names=None),
            clients,
            seconds,
            warmup_s=0.5,
            cpu_s=functools.partial(cpu_seconds, pids) if pids else None,
        )
        busy_after, served_after, executions_after = step_statistics(sessions[0], dense)
    finally:
        for session in sessions:
            session.close()
    served, executions = served_after - served_before, executions_after - executions_before
    return {
        **timed,
        "requests_per_dense_execution": served / executions if executions else float("nan"),
        "dense_busy_us_per_request": (busy_after - busy_before) / 1e3 * executions / served**2 if served else 0.0,
    }


@contextlib.contextmanager
def _servers(model: Model, rows: int) -> Iterator[dict[str, serve.TritonServer]]:
    """The build as planned and its one-request-per-execution copy, both serving."""
    with tempfile.TemporaryDirectory(prefix="recgen-bench-") as workdir:
        work = Path(workdir)
        result = build.build(model, plan.uniform_plan(model, latency_slo_ms=LATENCY_SLO_MS), work / "r", work / "e")
        if result.ensembles is None:
            raise ValueError("the build wrote no ensembles repository: nothing to serve requests through")
        copy = one_request_per_execution(result.repository, result.ensembles, rows, work / "one")
        with (
            serve.running_server(result.repositories, timeout_s=300) as shared,
            serve.running_server(copy, timeout_s=300) as one,
        ):
            yield {system: one if "one request" in system else shared for system in SYSTEMS}


def run(candidates: list[int], clients: int, seconds: float, rounds: int) -> list[dict]:
    """Every workload and N: the three systems, interleaved, median round of each."""
    cells = []
    for label, make_model in WORKLOADS.items():
        model = make_model()
        for count in candidates:
            pairs = [ranking_requests(model, count, seed) for seed in range(clients)]
            payloads = {
                system: [packed if system.startswith("packed") else flattened for packed, flattened in pairs]
                for system in SYSTEMS
            }
            runs: dict[str, list[dict]] = {system: [] for system in SYSTEMS}
            with _servers(model, count) as servers:
                for _ in range(rounds):
                    for system in SYSTEMS:
                        runs[system].append(_measure(servers[system], system, payloads[system], seconds, clients))
            for system, measured in runs.items():
                cell = {**median_round(measured, key=lambda c: c["requests_per_s"])}
                cell.update(workload=label, candidates=count, system=system)
                cells.append(cell)
                print(
                    f"{label} N {count:>4} {system:<38}: {cell['requests_per_s']:7.1f} req/s, p99 "
                    f"{cell['p99_ms']:.1f} ms, {cell['cpu_ms_per_request']:.2f} CPU ms/request, "
                    f"{cell['requests_per_dense_execution']:.2f} requests per dense execution",
                    flush=True,
                )
    return cells


def markdown(cells: list[dict]) -> str:
    """Per workload and N: each system's figures, and the CPU sharing saves against the packed request's CPU."""
    lines = [
        "| workload | N | system | req/s | p99 ms | slowest ms | server CPU ms/request | requests per dense execution "
        "| dense busy us/request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        lines.append(
            f"| {cell['workload']} | {cell['candidates']} | {cell['system']} | {cell['requests_per_s']:,.1f} | "
            f"{cell['p99_ms']:.1f} | {cell['max_ms']:.1f} | {cell['cpu_ms_per_request']:.2f} | "
            f"{cell['requests_per_dense_execution']:.2f} | {cell['dense_busy_us_per_request']:.0f} |"
        )
    lines += [
        "",
        "| workload | N | CPU ms/request saved by sharing | packed CPU ms/request | saved ÷ packed |",
        "|---|---|---|---|---|",
    ]
    for label, count, saved, packed in savings(cells):
        lines.append(f"| {label} | {count} | {saved:.2f} | {packed:.2f} | {saved / packed:.0%} |")
    return "\n".join(lines)


def savings(cells: list[dict]) -> list[tuple[str, int, float, float]]:
    """(workload, N, CPU ms/request one-per-execution minus shared, packed CPU ms/request)."""
    by_key = {(c["workload"], c["candidates"], c["system"]): c for c in cells}
    rows = []
    for label, count in dict.fromkeys((c["workload"], c["candidates"]) for c in cells):
        shared, one, packed = (by_key[(label, count, system)]["cpu_ms_per_request"] for system in SYSTEMS)
        rows.append((label, count, one - shared, packed))
    return rows


def plot(cells: list[dict], path: Path) -> None:
    """Server CPU per request of each system, per workload and N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((c["workload"], c["candidates"]) for c in cells))
    by_key = {(c["workload"], c["candidates"], c["system"]): c for c in cells}
    figure, axis = plt.subplots(figsize=(max(5, 2.2 * len(groups)), 4))
    width = 0.8 / len(SYSTEMS)
    for offset, system in enumerate(SYSTEMS):
        values = [by_key[(*group, system)]["cpu_ms_per_request"] for group in groups]
        axis.bar([i + offset * width for i in range(len(groups))], values, width, label=system)
    axis.set_xticks([i + width for i in range(len(groups))], [f"{label}\nN={count}" for label, count in groups])
    axis.set_ylabel("server CPU ms per request")
    axis.legend(fontsize=8)
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=odd_rounds, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/execution_sharing"))
    args = parser.parse_args()
    cells = run(args.candidates, args.clients, args.seconds, args.rounds)
    write_report(args.out, "execution_sharing", markdown(cells), {"cells": cells}, lambda path: plot(cells, path))


if __name__ == "__main__":
    main()
