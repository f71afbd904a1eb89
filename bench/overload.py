"""Benchmark: goodput, rejections and latency of accepted requests from half to four times capacity; and a soak.

The example model, built with a latency target (`--latency-slo-ms`), served by the embedded server. Capacity is
measured first with `--capacity-clients` closed-loop clients (16: with 4, the server idled between requests and
capacity read 416 requests/s where 2x of it still drew 820); then open-loop Poisson arrivals at each `--loads` multiple
of it, every load once per round, `--rounds` rounds interleaved. Per load it reports goodput (answered requests/s),
rejections (fast, named errors: the router's, or with `--shedding queue-policy` Triton's queue policy's), other
errors and the p50/p99 of accepted requests, against
the goals: p99 within the target at every load, goodput at 4x at least 90% of goodput at 1x. With
`--soak-minutes M` it then holds `--soak-load` of capacity for M minutes, sampling the PSS of every process.

    python -m bench.overload [--latency-slo-ms 100] [--shedding router|queue-policy] [--loads 0.5 1 2 4]
                             [--seconds 10] [--rounds 3] [--batch 64] [--capacity-per-s R] [--soak-minutes 0] [--pin]
                             [--lookup-engine native|python] [--out runs/bench/overload]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.loadgen import RequestLog, closed_loop_processes, cpu_seconds, open_loop, pss_bytes, server_processes
from bench.rounds import median_round, odd_rounds
from generator.deploy.server import running_server
from generator.model import examples
from generator.planning import plan, queueing
from generator.repository import build
from generator.traffic.requests import random_request

GOODPUT_GOAL = 0.9  # goodput at 4x over goodput at 1x
PSS_BAND = 0.05  # soak: every process within +-5% of its minute-2 PSS


def pin_apart(server_pid: int) -> None:
    """Every thread of the server and its stubs on the last core, this process on the others."""
    cores = sorted(os.sched_getaffinity(0))
    for pid in server_processes(server_pid).values():
        subprocess.run(["taskset", "-a", "-p", "-c", str(cores[-1]), str(pid)], capture_output=True, check=True)
    os.sched_setaffinity(0, set(cores[:-1]) or set(cores))


def capacity(url: str, requests: list, clients: int, seconds: float) -> float:
    """Requests/s the server answers to `clients` closed-loop clients."""
    log = RequestLog()
    closed_loop_processes(url, "dlrm", requests, clients, seconds, log)
    answered = [o for o in log.outcomes if o.ok]
    return len(answered) / seconds


def measure(url: str, requests: list, rate: float, seconds: float, pid: int) -> dict:
    """One open-loop run at `rate` requests/s; with the server's CPU (tritonserver and every stub, from /proc)."""
    log = RequestLog()
    pids = list(server_processes(pid).values())
    started: list[tuple[float, float]] = []
    client_cpu_s = open_loop(
        url,
        "dlrm",
        requests,
        rate,
        seconds,
        log,
        on_start=lambda: started.append((cpu_seconds(pids), time.monotonic())),
    )
    cpu_before, wall_before = started[0]
    server_cores = (cpu_seconds(pids) - cpu_before) / (time.monotonic() - wall_before)
    accepted = np.array([o.latency_s for o in log.outcomes if o.ok]) * 1000
    from_send = np.array([o.latency_s - o.late_s for o in log.outcomes if o.ok]) * 1000
    rejected = sum(1 for o in log.outcomes if o.rejected)
    errors = sorted({o.error for o in log.outcomes if not o.ok and not o.rejected})
    return {
        "offered_per_s": rate,
        "server_cores": server_cores,
        "client_cores": client_cpu_s / seconds,
        "send_lag_p99_ms": float(np.percentile(log.send_lags_s, 99)) * 1000 if log.send_lags_s else float("nan"),
        "sent": len(log.outcomes),
        "goodput_per_s": accepted.size / seconds,
        "rejected_per_s": rejected / seconds,
        "errors": sum(1 for o in log.outcomes if not o.ok and not o.rejected),
        "error_kinds": errors[:3],
        "p50_ms": float(np.percentile(accepted, 50)) if accepted.size else float("nan"),
        "p99_ms": float(np.percentile(accepted, 99)) if accepted.size else float("nan"),
        "p99_from_send_ms": float(np.percentile(from_send, 99)) if from_send.size else float("nan"),
    }


def soak(url: str, pid: int, requests: list, rate: float, minutes: float) -> dict:
    """`rate` requests/s for `minutes`, PSS of every process every 10 s."""
    log = RequestLog()
    load = threading.Thread(target=open_loop, args=(url, "dlrm", requests, rate, minutes * 60, log), daemon=True)
    started = time.monotonic()
    load.start()
    samples: list[tuple[float, dict[str, int]]] = []
    while load.is_alive() and time.monotonic() - started < minutes * 60 + 30:
        samples.append((round(time.monotonic() - started, 1), pss_bytes(server_processes(pid))))
        load.join(timeout=10)
    steady = [sizes for at_s, sizes in samples if at_s >= 120]
    drift = {}
    if steady:
        for name, first in steady[0].items():
            values = [sizes[name] for sizes in steady if name in sizes]
            drift[name] = (min(values) / first - 1, max(values) / first - 1)
    return {
        "requests": len(log.outcomes),
        "errors": sum(1 for o in log.outcomes if not o.ok and not o.rejected),
        "rejected": sum(1 for o in log.outcomes if o.rejected),
        "pss_drift_from_minute_2": drift,
        "samples": [{"t_s": at_s, "pss": sizes} for at_s, sizes in samples],
    }


def hostile(url_grpc: str, url_http: str, pid: int, requests: int = 10, rows: int = 2_000_000) -> dict[str, list[int]]:
    """tritonserver's PSS (MB) before and after each of `requests` oversized requests (rows x 13 FP32, ~100 MB)
    that the server rejects (an input the ensemble does not have), over gRPC and HTTP."""
    import tritonclient.grpc as grpc_client
    import tritonclient.http as http_client

    array = np.zeros((rows, 13), np.float32)
    series = {}
    for module, url in ((grpc_client, url_grpc), (http_client, url_http)):
        connection = module.InferenceServerClient(url)
        sizes = [pss_bytes({"server": pid})["server"] >> 20]
        for _ in range(requests):
            tensor = module.InferInput("oversized", list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            with contextlib.suppress(Exception):  # refused, as it must be
                connection.infer("dlrm", [tensor])
            sizes.append(pss_bytes({"server": pid})["server"] >> 20)
        connection.close()
        series[module.__name__.split(".")[-1]] = sizes
    return series


def markdown(slo_ms: float, capacity_per_s: float, cells: list[dict], soaked: dict | None, source: str) -> str:
    lines = [
        f"latency target {slo_ms:g} ms; capacity {capacity_per_s:,.1f} requests/s ({source})",
        "",
        "| load | offered/s | goodput/s | rejected/s | errors | p50 ms accepted | p99 ms accepted | p99 <= target "
        "| p99 ms from actual send | server cores | client cores | client send lag p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        within = "yes" if c["p99_ms"] <= slo_ms else "NO"
        lines.append(
            f"| {c['load']:g}x | {c['offered_per_s']:,.1f} | {c['goodput_per_s']:,.1f} | {c['rejected_per_s']:,.1f} "
            f"| {c['errors']} | {c['p50_ms']:.1f} | {c['p99_ms']:.1f} | {within} "
            f"| {c.get('p99_from_send_ms', float('nan')):.1f} | {c['server_cores']:.2f} "
            f"| {c.get('client_cores', float('nan')):.2f} | {c.get('send_lag_p99_ms', float('nan')):.1f} |"
        )
    by_load = {c["load"]: c for c in cells}
    if 1.0 in by_load and 4.0 in by_load:
        ratio = by_load[4.0]["goodput_per_s"] / by_load[1.0]["goodput_per_s"]
        lines.append(f"\ngoodput 4x / 1x = {ratio:.2f} (goal >= {GOODPUT_GOAL:g})")
        lines.append(shed_cost_line(by_load))
    if soaked is not None:
        lines.append(
            f"\nsoak: {soaked['requests']} requests, {soaked['errors']} errors, {soaked['rejected']} rejected; "
            "PSS change from minute 2 (min / max):"
        )
        for name, (low, high) in soaked["pss_drift_from_minute_2"].items():
            lines.append(f"- {name}: {low:+.1%} / {high:+.1%}")
    return "\n".join(lines)


def shed_cost_line(by_load: dict[float, dict]) -> str:
    """What one shed request costs the server, and what the goodput goal at 4x allows.

    At 1x nothing is shed, so its server CPU over its goodput is the cost of a served request; at a higher load the
    CPU that the served requests do not explain went to the shed ones. The goal holds only if 0.9 of 1x's goodput
    and the shedding of everything else fit in the CPU the server had at 4x.
    """
    served_s = by_load[1.0]["server_cores"] / by_load[1.0]["goodput_per_s"]
    shed_ms = []
    for load, cell in sorted(by_load.items()):
        if load > 1.0 and cell["rejected_per_s"] > 0:
            spent_on_shed = cell["server_cores"] - cell["goodput_per_s"] * served_s
            shed_ms.append(f"{spent_on_shed / cell['rejected_per_s'] * 1000:.3f} ms at {load:g}x")
    at_4x = by_load[4.0]
    goal_goodput = GOODPUT_GOAL * by_load[1.0]["goodput_per_s"]
    allowed_ms = (at_4x["server_cores"] - goal_goodput * served_s) / (at_4x["offered_per_s"] - goal_goodput) * 1000
    return (
        f"server CPU per served request {served_s * 1000:.3f} ms (1x); per shed request {', '.join(shed_ms) or '-'}; "
        f"the 4x goal allows {allowed_ms:.3f} ms per shed request with the {at_4x['server_cores']:.2f} cores "
        "the server used at 4x"
    )


def _median_cells(rounds: list[list[dict]], loads: list[float]) -> list[dict]:
    cells = []
    for index, load in enumerate(loads):
        runs = sorted((r[index] for r in rounds), key=lambda c: c["goodput_per_s"])
        middle = median_round(runs, key=lambda c: c["goodput_per_s"])
        cells.append({**middle, "load": load, "rounds_goodput_per_s": [r["goodput_per_s"] for r in runs]})
    return cells


def plot(cells: list[dict], slo_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    loads = [c["load"] for c in cells]
    left.plot(loads, [c["goodput_per_s"] for c in cells], marker="o", label="goodput")
    left.plot(loads, [c["rejected_per_s"] for c in cells], marker="x", label="rejected")
    left.set_xlabel("offered load (x capacity)")
    left.set_ylabel("requests/s")
    left.legend()
    right.plot(loads, [c["p50_ms"] for c in cells], marker="o", label="p50 accepted")
    right.plot(loads, [c["p99_ms"] for c in cells], marker="o", label="p99 accepted")
    right.axhline(slo_ms, color="gray", linestyle="--", label="target")
    right.set_xlabel("offered load (x capacity)")
    right.set_ylabel("ms")
    right.legend()
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-slo-ms", type=float, default=100.0)
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=odd_rounds, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--capacity-clients", type=int, default=16)
    parser.add_argument(
        "--capacity-per-s",
        type=float,
        default=0.0,
        help="offer multiples of this rate instead of measuring capacity (compare builds at the same rates: a "
        "queue policy's stalls hold closed-loop clients back, so its measured capacity says little)",
    )
    parser.add_argument("--shedding", choices=queueing.SHEDDING, default="router", help="as `recgen build --shedding`")
    parser.add_argument("--lookup-engine", choices=("native", "python"), default="native", help="as `recgen build`")
    parser.add_argument("--soak-minutes", type=float, default=0.0)
    parser.add_argument("--soak-load", type=float, default=0.7)
    parser.add_argument(
        "--pin", action="store_true", help="server (every thread) on the last core, this client on the others"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/overload"))
    args = parser.parse_args()
    queueing.check_latency_slo_ms(args.latency_slo_ms)
    model = examples.example_model()
    requests = [random_request(model, args.batch, np.random.default_rng(i)).tensors() for i in range(32)]
    the_plan = plan.uniform_plan(model, latency_slo_ms=args.latency_slo_ms)
    the_plan = dataclasses.replace(the_plan, shedding=args.shedding, lookup_engine=args.lookup_engine)
    with tempfile.TemporaryDirectory(prefix="recgen-overload-") as workdir:
        result = build.build(model, the_plan, Path(workdir) / "r", Path(workdir) / "e")
        with running_server(result.repositories, timeout_s=300) as server:
            if args.pin:
                pin_apart(server.pid or 0)
            capacity(server.grpc_url, requests, args.capacity_clients, 3.0)  # warm up
            capacity_per_s = args.capacity_per_s or capacity(
                server.grpc_url, requests, args.capacity_clients, args.seconds
            )
            print(f"capacity {capacity_per_s:.1f} requests/s", flush=True)
            rounds = []
            for round_index in range(args.rounds):
                row = []
                for load in args.loads:
                    cell = measure(server.grpc_url, requests, load * capacity_per_s, args.seconds, server.pid or 0)
                    print(f"round {round_index} load {load:g}x: {cell}", flush=True)
                    row.append(cell)
                rounds.append(row)
            oversized = hostile(server.grpc_url, server.http_url, server.pid or 0)
            print(f"tritonserver PSS (MB) over 10 rejected ~100 MB requests: {oversized}", flush=True)
            soaked = None
            if args.soak_minutes > 0:
                pid = server.pid or 0
                soaked = soak(server.grpc_url, pid, requests, args.soak_load * capacity_per_s, args.soak_minutes)
    cells = _median_cells(rounds, args.loads)
    args.out.mkdir(parents=True, exist_ok=True)
    source = "given" if args.capacity_per_s else "closed loop"
    table = markdown(args.latency_slo_ms, capacity_per_s, cells, soaked, f"{source}; shedding: {args.shedding}")
    table += "\n\ntritonserver PSS (MB) before and after each of 10 rejected ~100 MB requests:\n"
    table += "\n".join(f"- {protocol}: {' '.join(map(str, sizes))}" for protocol, sizes in oversized.items())
    print(table)
    (args.out / "overload.md").write_text(table + "\n")
    document = {
        "latency_slo_ms": args.latency_slo_ms,
        "shedding": args.shedding,
        "capacity_per_s": capacity_per_s,
        "cells": cells,
        "oversized_requests_server_pss_mb": oversized,
    }
    (args.out / "overload.json").write_text(json.dumps({**document, "soak": soaked}, indent=2) + "\n")
    plot(cells, args.latency_slo_ms, args.out / "overload.png")
    print(f"wrote {args.out}/overload.md, overload.json and overload.png")


if __name__ == "__main__":
    main()
