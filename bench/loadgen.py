"""Load for the fault and overload benchmarks: closed- and open-loop gRPC clients that log every request.

Traffic goes only to the loopback servers the benchmark started. Every loop is bounded by a deadline.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.utils import np_to_triton_dtype

from generator import triton_runtime
from generator.check.calibrate import proportional_set_size_bytes
from generator.check.client import RankingClient
from generator.deploy import stub_health
from generator.errors import ServerError

#: Client deadline of one request (seconds): a request that takes longer is a failure, not a hang.
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Outcome:
    """One request: when it was sent and answered (monotonic seconds), and its error text ("" = success)."""

    sent_s: float
    answered_s: float
    error: str = ""
    #: Open loop: seconds the request went out after `sent_s`, its scheduled arrival (the client's own delay).
    late_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the request got its scores."""
        return not self.error

    @property
    def rejected(self) -> bool:
        """Whether the queue policy shed it (a named, fast rejection, not a failure of the server)."""
        return any(message in self.error for message in triton_runtime.REJECTION_MESSAGES)

    @property
    def latency_s(self) -> float:
        """Seconds from send to answer."""
        return self.answered_s - self.sent_s


@dataclass
class RequestLog:
    """Every request of a run, appended from many threads."""

    outcomes: list[Outcome] = field(default_factory=list)
    #: Open loop: seconds each request went out after its scheduled arrival (how far the client fell behind).
    send_lags_s: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        """Record one request."""
        with self._lock:
            self.outcomes.append(outcome)

    def between(self, start_s: float, end_s: float) -> list[Outcome]:
        """The requests sent in [start_s, end_s)."""
        with self._lock:
            return [o for o in self.outcomes if start_s <= o.sent_s < end_s]


def _send(ranking: RankingClient, tensors: Mapping[str, np.ndarray], log: RequestLog) -> None:
    sent = time.monotonic()
    try:
        ranking.send(tensors, output_names=None)
    except Exception as error:  # every failure is data here
        log.add(Outcome(sent, time.monotonic(), str(error).splitlines()[0][:300] or type(error).__name__))
    else:
        log.add(Outcome(sent, time.monotonic()))


def closed_loop(
    url: str, model: str, requests: Sequence[Mapping[str, np.ndarray]], clients: int, seconds: float, log: RequestLog
) -> None:
    """`clients` threads, each sending its next request when the previous one is answered, for `seconds`."""
    stop_at = time.monotonic() + seconds

    def worker(index: int) -> None:
        with RankingClient(url, "grpc", model, timeout_s=REQUEST_TIMEOUT_S) as ranking:
            sent = 0
            while time.monotonic() < stop_at:
                _send(ranking, requests[(index + sent) % len(requests)], log)
                sent += 1

    threads = [threading.Thread(target=worker, args=(index,), daemon=True) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 2 * REQUEST_TIMEOUT_S)


def infer_request_bytes(model: str, tensors: Mapping[str, np.ndarray]) -> bytes:
    """One serialized gRPC ModelInferRequest, built once so that sending it costs the client almost nothing."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    for name, array in tensors.items():
        tensor = request.inputs.add()
        tensor.name = name
        tensor.datatype = np_to_triton_dtype(array.dtype)
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return request.SerializeToString()


@dataclass(frozen=True)
class WorkerResult:
    """What one load process sent and got back, and the CPU seconds it used doing so."""

    outcomes: list[Outcome]
    cpu_s: float
    send_lags_s: list[float]


def _load_worker(
    pipe: Any, url: str, payloads: Sequence[bytes], arrivals_s: np.ndarray | None, clients: int, seconds: float
) -> None:
    """One process: open loop (send at start + `arrivals_s`) or, with `arrivals_s` None, `clients` closed loops.

    It connects, says "ready" on `pipe`, receives the common start time (monotonic seconds, the same clock in
    every process) and sends its `WorkerResult` back when done."""
    import asyncio

    import grpc

    outcomes: list[Outcome] = []
    send_lags_s: list[float] = []

    async def one(infer: Any, payload: bytes, sent: float, late_s: float = 0.0) -> None:
        try:
            await infer(payload, timeout=REQUEST_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            outcomes.append(Outcome(sent, time.monotonic(), (error.details() or str(error.code()))[:300], late_s))
        else:
            outcomes.append(Outcome(sent, time.monotonic(), late_s=late_s))

    async def closed(infer: Any, index: int, end_s: float) -> None:
        sent = 0
        while time.monotonic() < end_s:
            await one(infer, payloads[(index + sent) % len(payloads)], time.monotonic())
            sent += 1

    async def run() -> None:
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        async with grpc.aio.insecure_channel(url, options=options) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            await channel.channel_ready()
            pipe.send("ready")
            start_s = pipe.recv()
            await asyncio.sleep(max(0.0, start_s - time.monotonic()))
            if arrivals_s is None:
                await asyncio.gather(*(closed(infer, index, start_s + seconds) for index in range(clients)))
                return
            tasks = []
            for index, arrival in enumerate(arrivals_s):
                sent = start_s + float(arrival)
                if sent > time.monotonic():
                    await asyncio.sleep(sent - time.monotonic())
                late_s = time.monotonic() - sent
                send_lags_s.append(late_s)
                tasks.append(asyncio.ensure_future(one(infer, payloads[index % len(payloads)], sent, late_s)))
            await asyncio.gather(*tasks)

    cpu_before = time.process_time()
    asyncio.run(run())
    pipe.send(WorkerResult(outcomes, time.process_time() - cpu_before, send_lags_s))


#: Seconds between the last load process saying ready and the first request being due.
START_DELAY_S = 0.2
#: Seconds a load process may take to start and connect.
READY_TIMEOUT_S = 60.0


def _run_workers(jobs: Sequence[tuple], log: RequestLog, on_start: Callable[[], object] | None = None) -> float:
    """Run each job's `_load_worker` in its own process; log every outcome and send lag; return the client CPU
    seconds. The start time is set once every process has connected, so that a slow start is not load.

    `on_start` is called when the first request is due (to sample the server's counters from then on)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no inherited gRPC state
    pipes, processes = [], []
    for job in jobs:
        here, there = context.Pipe()
        process = context.Process(target=_load_worker, args=(there, *job), daemon=True)
        process.start()
        pipes.append(here)
        processes.append(process)
    try:
        for pipe in pipes:
            if not pipe.poll(READY_TIMEOUT_S):
                raise RuntimeError(f"a load process did not connect within {READY_TIMEOUT_S:g} s")
            pipe.recv()
        start_s = time.monotonic() + START_DELAY_S
        for pipe in pipes:
            pipe.send(start_s)
        if on_start is not None:
            time.sleep(max(0.0, start_s - time.monotonic()))
            on_start()
        seconds = max(job[-1] for job in jobs)
        results = []
        for pipe in pipes:
            if not pipe.poll(seconds + 3 * REQUEST_TIMEOUT_S):
                raise RuntimeError("a load process did not finish in time")
            results.append(pipe.recv())
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    for result in results:
        for outcome in result.outcomes:
            log.add(outcome)
        log.send_lags_s.extend(result.send_lags_s)
    return sum(result.cpu_s for result in results)


def open_loop(
    url: str,
    model: str,
    requests: Sequence[Mapping[str, np.ndarray]],
    rate_per_s: float,
    seconds: float,
    log: RequestLog,
    processes: int = 2,
    on_start: Callable[[], object] | None = None,
) -> float:
    """Poisson arrivals at `rate_per_s` for `seconds`, whatever the server answers; returns the client CPU seconds.

    `processes` processes each send an independent Poisson stream at `rate_per_s / processes` (their sum is
    Poisson at `rate_per_s`) of pre-serialized requests with asynchronous gRPC calls, so that the client neither
    throttles the load the way blocking senders would nor bunches it up the way a saturated client does. A
    request's latency counts from its scheduled arrival, so a late send shows as latency, not as less load.
    """
    payloads = [infer_request_bytes(model, tensors) for tensors in requests]
    jobs = []
    for index in range(processes):
        rng = np.random.default_rng([int(rate_per_s * 1000) % 2**32, index])
        gaps = rng.exponential(processes / rate_per_s, size=int(rate_per_s / processes * seconds * 1.2) + 10)
        arrivals = np.cumsum(gaps)
        jobs.append((url, payloads[index::processes], arrivals[arrivals < seconds], 0, seconds))
    return _run_workers(jobs, log, on_start)


def closed_loop_processes(
    url: str,
    model: str,
    requests: Sequence[Mapping[str, np.ndarray]],
    clients: int,
    seconds: float,
    log: RequestLog,
    processes: int = 2,
) -> float:
    """`clients` closed-loop clients spread over `processes` processes (the same lean sender as `open_loop`)."""
    payloads = [infer_request_bytes(model, tensors) for tensors in requests]
    shares = [clients // processes + (1 if index < clients % processes else 0) for index in range(processes)]
    jobs = [(url, payloads, None, share, seconds) for share in shares if share]
    return _run_workers(jobs, log)


def server_processes(server_pid: int) -> dict[str, int]:
    """The server and each of its stubs (by model, numbered when a model has several), name -> pid."""
    processes = {"tritonserver": server_pid}
    for stub in sorted(stub_health.stub_processes(server_pid), key=lambda s: (s.model, s.pid)):
        name = stub.model
        number = 1
        while name in processes:
            number += 1
            name = f"{stub.model}#{number}"
        processes[name] = stub.pid
    return processes


def pss_bytes(processes: Mapping[str, int]) -> dict[str, int]:
    """PSS of each process still alive (bytes)."""
    sizes = {}
    for name, pid in processes.items():
        try:
            sizes[name] = proportional_set_size_bytes(pid)
        except (OSError, ServerError):  # gone meanwhile
            continue
    return sizes


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds the processes used so far (from /proc/PID/stat)."""
    ticks = 0
    for pid in pids:
        try:
            fields = stub_health.stat_fields(Path(f"/proc/{pid}/stat").read_text())
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
