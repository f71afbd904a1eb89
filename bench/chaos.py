"""Benchmark: faults under steady load, on the embedded server and on the local distributed topology.

Steady closed-loop gRPC load on the example model while, every `--every-s` seconds, one fault in turn: on the
embedded server a random Python-backend stub is killed (SIGKILL) or paused for `--pause-s` (SIGSTOP, then SIGCONT),
the public ensemble is unloaded through the admin API (what a holder of the key can do), or tritonserver itself
crashes (SIGSEGV, what a fault in a native step does: `recgen serve` starts it again); on the distributed
topology a random shard-group replica server is killed or paused, or the front's tritonserver is killed. The
supervisor `recgen serve` runs restores what breaks. Per fault it reports the requests that failed, their errors,
and the time to recovery (from the fault to the first success after its last failure), counts failures outside the
fault windows, and checks that the scores still equal PyTorch at the end.

    python -m bench.chaos [--seconds 180] [--every-s 20] [--pause-s 5] [--clients 4] [--batch 64]
                          [--layouts embedded distributed] [--out runs/bench/chaos]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.loadgen import Outcome, RequestLog, closed_loop
from generator.check import client
from generator.deploy import stub_health, supervisor, switch
from generator.deploy.distributed import build_distributed
from generator.deploy.local import LocalTopology
from generator.deploy.server import running_server
from generator.deploy.supervisor import Supervisor, Watched
from generator.model import dlrm as models
from generator.model import examples
from generator.planning import plan
from generator.repository import build
from generator.traffic.requests import random_request

#: Recovery goal per fault (seconds).
RECOVERY_GOAL_S = 10.0


@dataclass(frozen=True)
class Fault:
    """One injected fault and what it cost."""

    layout: str
    at_s: float  # seconds into the run
    kind: str  # "kill", "pause", "unload" (the ensemble, through the admin API) or "kill-server" (the front)
    target: str
    requests: int
    failed: int
    recovery_s: float
    errors: tuple[str, ...] = ()  # the distinct errors of the failed requests (with their latency)


@dataclass
class Target:
    """What a fault hits: a label and the pid to signal (looked up at fault time)."""

    label: str
    pid: int
    #: How to unload it through the admin API (None: a process, signalled instead).
    unload: Callable[[], None] | None = None


@contextmanager
def _supervised(watched: list[Watched]) -> Iterator[list[str]]:
    """The supervisor's loop in a thread (the CLI runs the same loop in its main thread); its events."""
    events: list[str] = []
    supervisor = Supervisor(watched, lambda line: events.append(f"{time.monotonic():.2f} {line}"))
    stopped = threading.Event()

    def loop() -> None:
        while not stopped.is_set():
            supervisor.check_once()
            stopped.wait(0.25)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield events
    finally:
        stopped.set()
        thread.join(timeout=30)


def _still_same(pid: int, cmdline: bytes) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() == cmdline
    except OSError:
        return False


def _inject(target: Target, kind: str, pause_s: float) -> None:
    """Unload, SIGKILL, or SIGSTOP now and SIGCONT after `pause_s` (if the process is still the same one)."""
    if kind == "unload" and target.unload is not None:
        target.unload()
        return
    if kind in ("kill", "kill-server"):
        os.kill(target.pid, signal.SIGKILL)
        return
    if kind == "crash-server":
        os.kill(target.pid, signal.SIGSEGV)
        return
    cmdline = Path(f"/proc/{target.pid}/cmdline").read_bytes()
    os.kill(target.pid, signal.SIGSTOP)

    def resume() -> None:
        if _still_same(target.pid, cmdline):
            os.kill(target.pid, signal.SIGCONT)

    threading.Timer(pause_s, resume).start()


#: A fault's window ends once requests have succeeded without a failure for this long.
QUIET_S = 2.0


def _recovery(outcomes: list[Outcome], fault_s: float) -> tuple[int, float]:
    """Failed requests of a fault's window and seconds from the fault until service was whole again.

    The window holds the failed requests sent within `QUIET_S` of the fault or of the previous one; recovery is
    when the last of them was answered, or the first success after it if that came later.
    """
    failures = sorted((o for o in outcomes if not o.ok), key=lambda o: o.sent_s)
    window: list[Outcome] = []
    previous_s = fault_s  # requests in flight at the fault (sent before it) belong to it too
    for outcome in failures:
        if outcome.sent_s - previous_s > QUIET_S:
            break
        window.append(outcome)
        previous_s = outcome.sent_s
    if not window:
        return 0, 0.0
    last_answer = max(o.answered_s for o in window)
    last_sent = window[-1].sent_s
    later = [o.answered_s for o in outcomes if o.ok and o.sent_s > last_sent]
    return len(window), max(last_answer, min(later, default=last_answer)) - fault_s


def run_layout(
    layout: str,
    url: str,
    targets: Callable[[str], list[Target]],
    args: argparse.Namespace,
    model: models.DLRM,
    kinds: tuple[str, ...],
) -> tuple[list[Fault], dict]:
    """Steady load for `args.seconds` with a fault every `args.every_s`; the faults and the totals."""
    rng = random.Random(0)
    requests = [random_request(model, args.batch, np.random.default_rng(i)).tensors() for i in range(16)]
    log = RequestLog()
    started = time.monotonic()
    load = threading.Thread(
        target=closed_loop, args=(url, "dlrm", requests, args.clients, args.seconds, log), daemon=True
    )
    load.start()
    fault_times: list[tuple[float, str, str]] = []
    next_fault = started + args.every_s
    while next_fault < started + args.seconds - args.every_s / 2:
        time.sleep(max(0.0, next_fault - time.monotonic()))
        kind = kinds[len(fault_times) % len(kinds)]
        choices = targets(kind)
        if not choices:  # nothing of that kind is up right now (a server still restarting)
            next_fault += args.every_s
            continue
        target = rng.choice(choices)
        _inject(target, kind, args.pause_s)
        fault_times.append((time.monotonic(), kind, target.label))
        print(f"{layout}: {kind} {target.label} at {fault_times[-1][0] - started:.1f} s", flush=True)
        next_fault += args.every_s
    load.join()
    faults = []
    windows = []
    ends = [t for t, _, _ in fault_times[1:]] + [started + args.seconds]
    for (at, kind, label), end in zip(fault_times, ends, strict=True):
        # requests in flight at the fault count too; those still in flight at the next one are the next one's
        outcomes = [o for o in log.outcomes if o.answered_s >= at and o.sent_s < end]
        failed, recovery = _recovery(outcomes, at)
        windows.append((at, at + recovery + 0.5))
        errors = tuple(sorted({f"{o.error} ({o.latency_s:.1f} s)" for o in outcomes if not o.ok}))[:6]
        faults.append(
            Fault(layout, round(at - started, 1), kind, label, len(outcomes), failed, round(recovery, 2), errors)
        )
    outside = [o for o in log.outcomes if not o.ok and not any(start <= o.answered_s <= end for start, end in windows)]
    fault_starts = [at for at, _, _ in fault_times]
    since_fault = sorted(
        round(o.answered_s - max((at for at in fault_starts if at <= o.answered_s), default=started), 1)
        for o in outside
    )
    totals = {
        "layout": layout,
        "outside_seconds_after_last_fault": since_fault,
        "requests": len(log.outcomes),
        "failed": sum(1 for o in log.outcomes if not o.ok),
        "failed_outside_fault_windows": len(outside),
        "errors_outside": sorted({o.error for o in outside})[:5],
    }
    return faults, totals


def _embedded(model: models.DLRM, workdir: Path, args: argparse.Namespace) -> tuple[list[Fault], dict]:
    result = build.build(model, plan.uniform_plan(model), workdir / "r", workdir / "e")
    assert result.ensembles is not None
    with running_server(result.repositories, timeout_s=300) as first:
        # As `recgen serve` does: the current server (a crash replaces it), restarted on the same ports.
        deployment = switch.SingleServer(first, result.repository, result.ensembles)
        restart = lambda: supervisor.restart_single_server(deployment, 300, lambda _: None)  # noqa: E731
        with _supervised([Watched("tritonserver", lambda: deployment.server, restart)]) as events:
            grpc_url = first.grpc_url

            def stubs(kind: str) -> list[Target]:
                server = deployment.server
                if kind == "unload":
                    return [Target("dlrm (ensemble)", 0, lambda: server.admin("unload", "dlrm"))]
                if kind == "crash-server":
                    return [Target("tritonserver", server.pid)] if server.pid is not None else []
                return [Target(s.model, s.pid) for s in stub_health.stub_processes(server.pid) if not s.broken]

            kinds = ("kill", "pause", "unload", "crash-server")
            faults, totals = run_layout("embedded", grpc_url, stubs, args, model, kinds)
            totals["check"] = _check(model, grpc_url)
        if deployment.server is not first:
            deployment.server.stop()
    totals["supervisor"] = events
    return faults, totals


def _distributed(model: models.DLRM, workdir: Path, args: argparse.Namespace) -> tuple[list[Fault], dict]:
    # One shard group on two replica servers: a killed or paused replica is failed over, then restarted. (Every
    # shard its own group would be 17 servers on this machine's 2 cores: overloaded before any fault.)
    the_plan = plan.uniform_plan(model, shards_per_table=2, instance_count=2)
    built = build_distributed(model, the_plan, workdir / "dist", group_by="placement")
    with LocalTopology(built.root, log_dir=workdir / "logs") as local:
        local.start(timeout_s=300)
        with _supervised(local.watched()) as events:

            def replicas(kind: str) -> list[Target]:
                if kind == "kill-server":
                    return [Target("front", local.front.pid)] if local.front.pid is not None else []
                live = [
                    (f"{name}[{index}]", server)
                    for name, servers in local.replicas.items()
                    for index, server in enumerate(servers)
                ]
                return [Target(label, server.pid) for label, server in live if server.pid is not None]

            kinds = ("kill", "pause", "kill-server")
            faults, totals = run_layout("distributed", local.front.grpc_url, replicas, args, model, kinds)
            time.sleep(2)
            totals["check"] = _check(model, local.front.grpc_url)
        totals["supervisor"] = events
    return faults, totals


def _check(model: models.DLRM, url: str) -> str:
    report = client.check(model, url, protocol="grpc", requests=10, batch_size=64)
    return str(report)


def markdown(faults: list[Fault], totals: list[dict]) -> str:
    lines = ["| layout | at s | fault | target | requests | failed | recovery s |", "|---|---|---|---|---|---|---|"]
    for f in faults:
        lines.append(
            f"| {f.layout} | {f.at_s:.1f} | {f.kind} | {f.target} | {f.requests} | {f.failed} | {f.recovery_s:.2f} |"
        )
    lines.append("")
    lines.append("| layout | requests | failed | failed outside fault windows | scores after |")
    lines.append("|---|---|---|---|---|")
    for t in totals:
        verdict = "equal to PyTorch" if t["check"].startswith("OK") else t["check"]
        lines.append(
            f"| {t['layout']} | {t['requests']} | {t['failed']} | {t['failed_outside_fault_windows']} | {verdict} |"
        )
    worst = max((f.recovery_s for f in faults), default=0.0)
    lines.append(f"\nslowest recovery {worst:.2f} s (goal: within {RECOVERY_GOAL_S:g} s of every fault)")
    return "\n".join(lines)


def plot(faults: list[Fault], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layouts = sorted({f.layout for f in faults})
    figure, axes = plt.subplots(1, max(1, len(layouts)), figsize=(6 * max(1, len(layouts)), 4), squeeze=False)
    for axis, layout in zip(axes[0], layouts, strict=False):
        mine = [f for f in faults if f.layout == layout]
        for kind, color in (("kill", "tab:red"), ("pause", "tab:blue"), ("unload", "tab:green"), ("kill-server", "k")):
            points = [(f.at_s, f.recovery_s) for f in mine if f.kind == kind]
            if points:
                axis.bar(*zip(*points, strict=True), width=3, color=color, label=kind)
        axis.axhline(RECOVERY_GOAL_S, color="gray", linestyle="--", label="goal")
        axis.set_title(layout)
        axis.set_xlabel("fault at (s)")
        axis.set_ylabel("recovery (s)")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--every-s", type=float, default=20.0)
    parser.add_argument("--pause-s", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layouts", nargs="+", default=["embedded", "distributed"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/chaos"))
    args = parser.parse_args()
    model = examples.example_model()
    faults: list[Fault] = []
    totals: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="recgen-chaos-") as workdir:
        for layout in args.layouts:
            run = _embedded if layout == "embedded" else _distributed
            layout_faults, layout_totals = run(model, Path(workdir) / layout, args)
            faults += layout_faults
            totals.append(layout_totals)
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(faults, totals)
    print(table)
    (args.out / "chaos.md").write_text(table + "\n")
    document = {"args": {k: str(v) for k, v in vars(args).items()}, "faults": [asdict(f) for f in faults]}
    (args.out / "chaos.json").write_text(json.dumps({**document, "totals": totals}, indent=2) + "\n")
    plot(faults, args.out / "chaos.png")
    print(f"wrote {args.out}/chaos.md, chaos.json and chaos.png")


if __name__ == "__main__":
    main()
