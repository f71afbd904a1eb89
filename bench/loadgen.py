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

import numpy as np

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
    senders: int = 32,
) -> None:
    """Poisson arrivals at `rate_per_s` for `seconds`, whatever the server answers (up to `senders` in flight).

    A request whose arrival finds every sender busy waits for one; that wait counts in its latency, as a real
    client's would.
    """
    rng = np.random.default_rng(int(rate_per_s * 1000) % 2**32)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_per_s, size=int(rate_per_s * seconds * 1.2) + 10))
    arrivals = arrivals[arrivals < seconds]
    start = time.monotonic()
    cursor = iter(range(len(arrivals)))
    cursor_lock = threading.Lock()

    def worker() -> None:
        with RankingClient(url, "grpc", model, timeout_s=REQUEST_TIMEOUT_S) as ranking:
            while True:
                with cursor_lock:
                    index = next(cursor, None)
                if index is None:
                    return
                delay = start + arrivals[index] - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                sent = start + float(arrivals[index])  # the arrival, even if no sender was free then
                try:
                    ranking.send(requests[index % len(requests)], output_names=None)
                except Exception as error:  # every failure is data here
                    log.add(Outcome(sent, time.monotonic(), str(error).splitlines()[0][:300]))
                else:
                    log.add(Outcome(sent, time.monotonic()))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 2 * REQUEST_TIMEOUT_S)


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
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
