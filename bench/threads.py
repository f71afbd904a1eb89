"""A closed loop of client threads, timed: what bench/serving.py, bench/structured.py and bench/floor.py measure with.

Each thread sends its next request when the previous answer arrives; latencies are kept for the measured window
only, and the CPU seconds of whatever serves can be sampled at its start and end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np


def closed_loop(
    send: Callable[[int], object],
    concurrency: int,
    seconds: float,
    warmup_s: float,
    cpu_s: Callable[[], float] | None = None,
) -> dict[str, float]:
    """Run `concurrency` threads calling send(thread) back to back; latency percentiles and request rate.

    `cpu_s` (CPU seconds used so far by whatever serves) is read at the start and end of the measured window, for
    the CPU milliseconds per request."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []
    start_at = time.perf_counter() + 0.2
    measure_from = start_at + warmup_s
    stop_at = measure_from + seconds

    def worker(index: int) -> None:
        while time.perf_counter() < start_at:
            time.sleep(0.001)
        try:
            while (now := time.perf_counter()) < stop_at:
                send(index)
                if now >= measure_from:
                    latencies[index].append(time.perf_counter() - now)
        except BaseException as error:  # reported after the join
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    cpu_window = []
    if cpu_s is not None:
        for moment in (measure_from, stop_at):
            time.sleep(max(0.0, moment - time.perf_counter()))
            cpu_window.append(cpu_s())
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    merged = np.array([value for per_thread in latencies for value in per_thread])
    cpu_ms = (cpu_window[1] - cpu_window[0]) * 1000 / max(merged.size, 1) if cpu_window else float("nan")
    return {
        "requests": int(merged.size),
        "requests_per_s": merged.size / seconds,
        "cpu_ms_per_request": cpu_ms,
        "p50_ms": float(np.percentile(merged, 50) * 1000),
        "p99_ms": float(np.percentile(merged, 99) * 1000),
        "p999_ms": float(np.percentile(merged, 99.9) * 1000),
        "max_ms": float(merged.max() * 1000),
    }
