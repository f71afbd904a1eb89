"""Load for the fault and overload benchmarks: closed- and open-loop gRPC clients that log every request.

Traffic goes only to the loopback servers the benchmark started. Every loop is bounded by a deadline.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
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


def open_loop(
    url: str,
    model: str,
    requests: Sequence[Mapping[str, np.ndarray]],
    rate_per_s: float,
    seconds: float,
    log: RequestLog,
    max_in_flight: int = 4096,
) -> None:
    """Poisson arrivals at `rate_per_s` for `seconds`, whatever the server answers (asynchronous gRPC calls).

    One thread sends each request at its arrival time and the answers come back on gRPC's callbacks, so the client
    does not throttle the load the way a pool of blocking senders would. An arrival that finds `max_in_flight`
    requests unanswered is logged as a client-side drop.
    """
    import tritonclient.grpc as grpc_client

    rng = np.random.default_rng(int(rate_per_s * 1000) % 2**32)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_per_s, size=int(rate_per_s * seconds * 1.2) + 10))
    arrivals = arrivals[arrivals < seconds]
    prepared = []
    for tensors in requests:
        inputs = []
        for name, array in tensors.items():
            infer_input = grpc_client.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            infer_input.set_data_from_numpy(array)
            inputs.append(infer_input)
        prepared.append(inputs)
    connection = grpc_client.InferenceServerClient(url)
    in_flight = threading.Semaphore(max_in_flight)
    done = threading.Event()
    pending = [len(arrivals)]
    lock = threading.Lock()

    def answered(sent: float) -> Any:
        def callback(result: Any, error: Any) -> None:
            log.add(Outcome(sent, time.monotonic(), "" if error is None else str(error).splitlines()[0][:300]))
            in_flight.release()
            with lock:
                pending[0] -= 1
                if pending[0] == 0:
                    done.set()

        return callback

    start = time.monotonic()
    for index, arrival in enumerate(arrivals):
        delay = start + arrival - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent = start + float(arrival)
        if not in_flight.acquire(blocking=False):
            log.add(Outcome(sent, sent, "client-side drop: too many requests in flight"))
            with lock:
                pending[0] -= 1
            continue
        connection.async_infer(model, prepared[index % len(prepared)], answered(sent), client_timeout=REQUEST_TIMEOUT_S)
    with lock:
        if pending[0] == 0:
            done.set()
    done.wait(timeout=2 * REQUEST_TIMEOUT_S)
    connection.close()


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
