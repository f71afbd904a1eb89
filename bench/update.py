"""Benchmark: `recgen update` under load, on the embedded server and on the local topology (goal: 0 failed requests).

Builds the example model, serves it with `recgen serve` (one server) and `recgen serve --distributed` (front plus
shard-group servers), and keeps 4 closed-loop gRPC clients sending profile-shaped requests (batch 256) to each
while `recgen update` switches it to another plan (other cuts, another lookup step) with new weights, and back, in
interleaved rounds. Per update it reports requests/s and p99 before, during (from the update's start to its end)
and after, the failed requests, the load, switch and drain times the server measured, and the memory (PSS of every
tritonserver and stub of the deployment) before, at its peak during the overlap, and after. Prints a markdown
table, writes JSON and a PNG (throughput over time around each switch).

    python -m bench.update [--rounds 3] [--before-s 8] [--after-s 8] [--clients 4] [--out runs/bench/update]
                           [--systems embedded "local topology"] [--engines native python]

Each system is served once per lookup engine (`native`, the default build, and `python`), so the load time of a
new generation and the tail latency during it compare the two on one machine, interleaved.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen import Outcome, RequestLog
from bench.precision import profile_of
from bench.rounds import median_round, odd_rounds
from generator.check import update as updates
from generator.check.calibrate import proportional_set_size_bytes
from generator.check.client import RankingClient, check
from generator.deploy.distributed import build_distributed
from generator.deploy.stub_health import stat_fields
from generator.model.dlrm import DLRM
from generator.model.examples import example_model
from generator.planning.choices import LookupEngine
from generator.planning.plan import Plan, uniform_plan
from generator.repository import build
from generator.traffic.sampler import RequestSampler, table_traffic

SYSTEMS = ("embedded", "local topology")
ENGINES = ("native", "python")
#: Hard bounds of one update's load: it never runs longer than this, whatever the update does.
MAX_LOAD_S = 300.0
REQUEST_TIMEOUT_S = 30.0
MEMORY_POLL_S = 0.25


def plans(model: DLRM, system: str) -> tuple[Plan, Plan]:
    """The two plans an update alternates between: other cuts and, on one server, another lookup step.

    `system` is "<layout> (<engine>)": the engine serves the routers and shard groups of both plans.
    """
    layout, named = system.rsplit(" (", 1)
    engine: LookupEngine = "native" if named.rstrip(")") == "native" else "python"
    if layout == "embedded":
        first, second = (
            uniform_plan(model, shards_per_table=2, lookup_step="fused"),
            uniform_plan(model, shards_per_table=4, lookup_step="separate"),
        )
    else:
        first, second = uniform_plan(model, shards_per_table=1), uniform_plan(model, shards_per_table=3)
    return dataclasses.replace(first, lookup_engine=engine), dataclasses.replace(second, lookup_engine=engine)


@contextlib.contextmanager
def recgen_serve(arguments: list[str], log_path: Path, ready: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`python -m generator serve ARGS` (SIGTERM at the end); yields the process and what it printed when ready."""
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "generator", "serve", *arguments], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 600
        while not ((text := log_path.read_text()) and "Ctrl-C to stop" in text and re.search(ready, text)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"recgen serve did not come up:\n{text}")
            time.sleep(0.2)
        yield process, text
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(stat_fields((entry / "stat").read_text())[1]) == pid:
                    kids.append(int(entry.name))
    return kids


def deployment_pss_bytes(serve_pid: int) -> int:
    """PSS of every tritonserver `recgen serve` started and of every stub they started."""
    total = 0
    for server in _children(serve_pid):
        for pid in (server, *_children(server)):
            with contextlib.suppress(Exception):  # gone meanwhile
                total += proportional_set_size_bytes(pid)
    return total


class Load:
    """Closed-loop clients and a memory sampler, both bounded by MAX_LOAD_S, until `stop`."""

    def __init__(self, grpc_url: str, requests: list[dict[str, np.ndarray]], clients: int, serve_pid: int):
        self.log = RequestLog()
        self.memory: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + MAX_LOAD_S
        self._threads = [
            threading.Thread(target=self._client, args=(grpc_url, requests, i), daemon=True) for i in range(clients)
        ]
        self._threads.append(threading.Thread(target=self._sample, args=(serve_pid,), daemon=True))
        for thread in self._threads:
            thread.start()

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _client(self, url: str, requests: list[dict[str, np.ndarray]], index: int) -> None:
        with RankingClient(url, "grpc", timeout_s=REQUEST_TIMEOUT_S) as ranking:
            sent = 0
            while self._running():
                started = time.monotonic()
                try:
                    ranking.send(requests[(index + sent) % len(requests)], output_names=None)
                    self.log.add(Outcome(started, time.monotonic()))
                except Exception as error:  # every failure is data here
                    self.log.add(Outcome(started, time.monotonic(), str(error).splitlines()[0][:300]))
                sent += 1

    def _sample(self, serve_pid: int) -> None:
        while self._running():
            self.memory.append((time.monotonic(), deployment_pss_bytes(serve_pid)))
            time.sleep(MEMORY_POLL_S)

    def stop(self) -> None:
        """Stop every client and the sampler."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=REQUEST_TIMEOUT_S + 5)


def phase(log: RequestLog, start_s: float, end_s: float) -> dict[str, float]:
    """Requests/s, p99 and failures of the requests sent in [start_s, end_s)."""
    outcomes = log.between(start_s, end_s)
    latencies = np.array([o.latency_s for o in outcomes if o.ok]) * 1000
    return {
        "seconds": end_s - start_s,
        "requests_per_s": sum(o.ok for o in outcomes) / max(end_s - start_s, 1e-9),
        "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
        "failed": float(sum(not o.ok for o in outcomes)),
    }


def _memory(samples: list[tuple[float, int]], start_s: float, end_s: float) -> float:
    values = [size for moment, size in samples if start_s <= moment < end_s]
    return max(values) / 2**20 if values else float("nan")


def one_update(
    load_factory: Callable[[], Load], model: DLRM, plan: Plan, http_port: int, grpc_url: str, options: Any
) -> dict[str, Any]:
    """Before, during and after one `recgen update` under load."""
    load = load_factory()
    try:
        time.sleep(options.before_s)
        started = time.monotonic()
        report = updates.update(model, plan, http_port=http_port, echo=lambda _: None)
        ended = time.monotonic()
        time.sleep(options.after_s)
        finished = time.monotonic()
    finally:
        load.stop()
    first = min((o.sent_s for o in load.log.outcomes), default=started)
    failures = sorted({o.error for o in load.log.outcomes if not o.ok})
    return {
        "before": phase(load.log, first + 1.0, started),  # the first second warms the clients up
        "during": phase(load.log, started, ended),
        "after": phase(load.log, ended, finished),
        "failed": sum(not o.ok for o in load.log.outcomes),
        "errors": failures[:5],
        "times": report.times,
        "memory_mb": {
            "before": _memory(load.memory, first, started),
            "peak_during": _memory(load.memory, started, ended),
            "after": _memory(load.memory, ended + 2.0, finished),
        },
        "max_abs_diff_after": check(model, grpc_url, protocol="grpc", requests=4).max_abs_diff,
        "timeline": [(o.sent_s - started, o.ok) for o in load.log.outcomes],
        "update_s": ended - started,
    }


def _requests(model: DLRM, count: int) -> list[dict[str, np.ndarray]]:
    profile = profile_of(model)
    sampler = RequestSampler(
        model.num_dense_features,
        tuple(table_traffic(t.name, t.num_rows, t.max_ids_per_sample, profile) for t in model.tables),
    )
    return [sampler.sample_tensors(256, np.random.default_rng(index)) for index in range(count)]


def _serve_arguments(system: str, model: DLRM, plan: Plan, workdir: Path) -> tuple[list[str], str]:
    """`recgen serve` arguments of a first build of `system`, and what its output says the HTTP port is."""
    if system.startswith("embedded"):
        built = build.build(model, plan, workdir / "repo", workdir / "ens")
        ports = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
        return ["--repo", str(built.repository), "--ensembles", str(built.ensembles), *ports], r"HTTP +[\d.]+:(\d+)"
    layout = build_distributed(model, plan, workdir / "distributed", group_by="placement")
    return ["--distributed", str(layout.root)], r"front +'\w+': http [\d.]+:(\d+)"


def run(options: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Every update of every round, per system (the systems interleaved round by round)."""
    systems = [f"{layout} ({engine})" for layout in options.systems for engine in options.engines]
    results: dict[str, list[dict[str, Any]]] = {system: [] for system in systems}
    requests = _requests(example_model(), 8)
    with tempfile.TemporaryDirectory(prefix="recgen-bench-update-") as workdir, contextlib.ExitStack() as stack:
        served = {}
        for system in systems:
            root = Path(workdir) / "".join(c if c.isalnum() else "_" for c in system)
            root.mkdir()
            arguments, port_pattern = _serve_arguments(system, example_model(), plans(example_model(), system)[0], root)
            process, text = stack.enter_context(recgen_serve(arguments, root / "serve.log", port_pattern))
            http_port = int(re.search(port_pattern, text).group(1))  # type: ignore[union-attr]
            grpc_url = re.findall(r"grpc:? +(?:grpc )?([\d.]+:\d+)", text.replace("gRPC", "grpc"))[0]
            served[system] = (process.pid, http_port, grpc_url)
        for round_index in range(options.rounds):
            for system in systems:
                pid, http_port, grpc_url = served[system]
                model = example_model(seed=round_index + 1)  # new weights every time
                plan = plans(model, system)[(round_index + 1) % 2]  # other cuts every time

                def load(url: str = grpc_url, serve_pid: int = pid) -> Load:
                    return Load(url, requests, options.clients, serve_pid)

                cell = one_update(load, model, plan, http_port, grpc_url, options)
                print(
                    f"{system}, round {round_index + 1}: {cell['failed']} failed, switch "
                    f"{cell['times']['switch_s'] * 1000:.0f} ms, {cell['during']['requests_per_s']:.1f} req/s during",
                    flush=True,
                )
                results[system].append(cell)
    return results


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: the median round (by throughput during the update) per system, and the failures of every round."""
    lines = [
        "| system | req/s before | during | after | p99 ms before | during | after | failed (all rounds) | "
        "load s | switch ms | drain s | PSS MB before | peak | after | max abs diff after |",
        "|---" * 15 + "|",
    ]
    for system, cells in results.items():
        cell = median_round(cells, key=lambda c: c["during"]["requests_per_s"])
        rates = [cell[p]["requests_per_s"] for p in ("before", "during", "after")]
        p99 = [cell[p]["p99_ms"] for p in ("before", "during", "after")]
        memory = cell["memory_mb"]
        lines.append(
            f"| {system} | {rates[0]:.1f} | {rates[1]:.1f} | {rates[2]:.1f} | {p99[0]:.0f} | {p99[1]:.0f} | "
            f"{p99[2]:.0f} | {sum(c['failed'] for c in cells)} | {cell['times']['load_s']:.1f} | "
            f"{cell['times']['switch_s'] * 1000:.0f} | {cell['times']['drain_s']:.2f} | {memory['before']:.0f} | "
            f"{memory['peak_during']:.0f} | {memory['after']:.0f} | {cell['max_abs_diff_after']:.1e} |"
        )
    rounds = max(len(cells) for cells in results.values())
    lines += ["", f"{rounds} rounds per system, interleaved; each row is the median round by requests/s during."]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Answered requests per second around each update (0 = the update starts), one panel per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 3.2), squeeze=False)
    for axis, (system, cells) in zip(axes[0], results.items(), strict=True):
        for index, cell in enumerate(cells):
            moments = np.array([moment for moment, ok in cell["timeline"] if ok])
            edges = np.arange(np.floor(moments.min()), np.ceil(moments.max()) + 1, 1.0)
            counts, _ = np.histogram(moments, bins=edges)
            axis.plot(edges[:-1], counts, label=f"round {index + 1} ({cell['failed']} failed)")
            axis.axvspan(0, cell["update_s"], alpha=0.08, color="C0")
        axis.set_title(f"{system}: recgen update under load")
        axis.set_xlabel("seconds from the update's start (shaded: the update)")
        axis.set_ylabel("answered requests per second")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=odd_rounds, default=3)
    parser.add_argument("--before-s", type=float, default=8.0)
    parser.add_argument("--after-s", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/update"))
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    options = parser.parse_args()
    results = run(options)
    text = table(results)
    print(text)
    options.out.mkdir(parents=True, exist_ok=True)
    kept = {
        system: [{k: v for k, v in c.items() if k != "timeline"} for c in cells] for system, cells in results.items()
    }
    (options.out / "update.json").write_text(json.dumps(kept, indent=2) + "\n")
    (options.out / "update.md").write_text(text)
    plot(results, options.out / "update.png")
    print(f"wrote {options.out}/update.json, update.md, update.png")


if __name__ == "__main__":
    main()
