"""Admission control at the router: shed the requests that would queue past the latency budget.

Triton 2.51 sheds overload only through a step's `default_queue_policy`, and any such policy turns the dynamic
batcher's payload prefetching off, which makes it stall for its 500 ms default wait now and then at any load
(docs/faults.md). So no step has a queue policy; the router, the first step of every ensemble, sheds instead:

- One router instance per server and model (whichever holds the lock file) reads the server's own Prometheus
  metrics every few milliseconds: for each step of its ensemble the requests waiting (the
  `nv_inference_pending_request_count` gauge) and, from the counters' growth, how long an instance takes per
  request (compute time per request x executions per request, which undoes the batching). The wait a request
  arriving now would see is, at the step where it is longest, pending x time per request / instances. It writes
  that figure into a small shared file beside the server's other runtime files (`recgen_runtime`).
- Every instance reads the figure when it executes: above the budget (a share of the latency target) it answers
  the whole batch UNAVAILABLE with a message that names the estimate and the budget, at once and without reading
  the tensors, so the queue drains fast and the requests behind it are admitted again.

Without metrics (a server started with `--allow-metrics=false`, or on another port than RECGEN_METRICS_URL says)
nothing is shed, and the router logs that once. Copied next to every model.py; the standard library only.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import recgen_params as params
from . import recgen_runtime as runtime

#: Where a router reads its server's metrics (`recgen serve` sets it; Triton's default port otherwise).
METRICS_URL_ENV = "RECGEN_METRICS_URL"
DEFAULT_METRICS_URL = "http://127.0.0.1:8002/metrics"
#: The start of every message of a request the router sheds (clients and the load tests match on it).
SHED_MESSAGE = "overloaded: shed by the router"
#: The folder kind of the shared estimate (`recgen_runtime.server_folder`).
FOLDER_KIND = "load"
ESTIMATE_SUFFIX = ".estimate"
LOCK_SUFFIX = ".lock"
#: Seconds between reads of the metrics while requests wait, and while nothing does.
BUSY_POLL_S = 0.01
IDLE_POLL_S = 0.1
#: Seconds the metrics may be unreadable before the router says that it sheds nothing (they come up after the models).
METRICS_GRACE_S = 30.0
#: An estimate older than this is not trusted (its writer is gone): the router admits everything meanwhile.
STALE_AFTER_S = 1.0
#: Seconds an instance takes per request before the counters have said anything (the Python-backend floor).
DEFAULT_SECONDS_PER_REQUEST = 750e-6
#: Weight of the newest window in the running time per request.
SMOOTHING = 0.2
_ESTIMATE = struct.Struct("<dd")  # estimated wait (s), time.monotonic() when written (the clock is system-wide)
_METRIC_LINE = re.compile(r'^(nv_inference_[a-z_]+)\{model="([^"]+)",version="[^"]*"\} (\S+)$')
_COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_exec_count",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)
PENDING = "nv_inference_pending_request_count"


def parse_metrics(text: str, models: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per model of `models`, the nv_inference_* values summed over its versions."""
    wanted = set(models)
    values: dict[str, dict[str, float]] = {model: {} for model in models}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match and match.group(2) in wanted:
            metric, model, value = match.groups()
            per_model = values[model]
            per_model[metric] = per_model.get(metric, 0.0) + float(value)
    return values


@dataclass
class StepLoad:
    """What one step's counters said last, and the running time an instance takes per request."""

    instances: int
    seconds_per_request: float = DEFAULT_SECONDS_PER_REQUEST
    counters: dict[str, float] = field(default_factory=dict)

    def update(self, now: Mapping[str, float]) -> None:
        """Fold in one window's growth: compute per request x executions per request, smoothed."""
        before, self.counters = self.counters, {name: now.get(name, 0.0) for name in _COUNTERS}
        if not before:
            return
        growth = {name: self.counters[name] - before[name] for name in _COUNTERS}
        served = growth["nv_inference_request_success"]
        if served <= 0:
            return
        compute_us = sum(growth[name] for name in _COUNTERS[2:])
        # Every request of a batch is charged the batch's time: x executions/requests is the instance's share.
        window = compute_us / served * (growth["nv_inference_exec_count"] / served) / 1e6
        self.seconds_per_request += SMOOTHING * (window - self.seconds_per_request)


def estimated_wait_s(loads: Mapping[str, StepLoad], metrics: Mapping[str, Mapping[str, float]]) -> float:
    """Seconds a request arriving now waits in the longest queue of the steps: pending x time per request / instances.

    The longest, not the sum: under overload one step's queue fills while the others stay short, and a step that is
    slow for a moment (a new generation's first calls) with a few requests waiting is not overload.
    """
    return max(
        (
            metrics.get(model, {}).get(PENDING, 0.0) * load.seconds_per_request / max(1, load.instances)
            for model, load in loads.items()
        ),
        default=0.0,
    )


class SharedEstimate:
    """The server-wide estimate in a 16-byte memory-mapped file: one writer (the lock holder), many readers."""

    def __init__(self, path: Path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _ESTIMATE.size:
                os.ftruncate(fd, _ESTIMATE.size)
            self._map = mmap.mmap(fd, _ESTIMATE.size)
        finally:
            os.close(fd)

    def write(self, wait_s: float) -> None:
        """Publish `wait_s` as of now."""
        _ESTIMATE.pack_into(self._map, 0, wait_s, time.monotonic())

    def read(self) -> float:
        """The published wait; 0 (admit) when it is older than STALE_AFTER_S."""
        wait_s, written = _ESTIMATE.unpack_from(self._map, 0)
        return wait_s if time.monotonic() - written <= STALE_AFTER_S else 0.0


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=1.0) as response:
        return str(response.read().decode())


class Admission:
    """One router instance's view: admit or shed a batch; a daemon thread polls when this instance holds the lock."""

    def __init__(
        self,
        spec: params.AdmissionParams,
        model_name: str,
        *,
        log: Callable[[str], None] = print,
        fetch: Callable[[str], str] = _fetch,
        folder: Path | None = None,
    ):
        self.budget_s = spec.budget_us / 1e6
        self._loads = {step.model: StepLoad(step.instances) for step in spec.steps}
        self._url = os.environ.get(METRICS_URL_ENV, DEFAULT_METRICS_URL)
        self._log, self._fetch = log, fetch
        folder = folder or runtime.server_folder(spec.directory, FOLDER_KIND, (ESTIMATE_SUFFIX, LOCK_SUFFIX))
        self._estimate = SharedEstimate(folder / f"{model_name}{ESTIMATE_SUFFIX}")
        self._lock_path = folder / f"{model_name}{LOCK_SUFFIX}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recgen-admission", daemon=True)
        self._thread.start()

    def shed_message(self) -> str | None:
        """Why to shed the batch now (None: admit it)."""
        wait_s = self._estimate.read()
        if wait_s <= self.budget_s:
            return None
        return (
            f"{SHED_MESSAGE}: requests would queue about {wait_s * 1e3:.0f} ms on this server, over the "
            f"{self.budget_s * 1e3:g} ms the latency target allows; retry later or elsewhere"
        )

    def close(self) -> None:
        """Stop the polling thread (the model is being unloaded)."""
        self._stop.set()
        self._thread.join(timeout=2.0)

    def poll_once(self) -> float:
        """Read the metrics once and publish the estimate (what the lock holder does every few ms)."""
        metrics = parse_metrics(self._fetch(self._url), list(self._loads))
        for model, load in self._loads.items():
            load.update(metrics.get(model, {}))
        wait_s = estimated_wait_s(self._loads, metrics)
        self._estimate.write(wait_s)
        return wait_s

    def _run(self) -> None:
        with open(self._lock_path, "a") as lock:
            while not self._stop.is_set():
                try:  # one poller per server and model; another instance takes over when it goes
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    self._stop.wait(IDLE_POLL_S)
                    continue
                self._poll_while_holding()

    def _poll_while_holding(self) -> None:
        failing_since: float | None = None  # the metrics service starts after the models have loaded
        warned = False
        while not self._stop.is_set():
            try:
                wait_s = self.poll_once()
            except (OSError, ValueError) as error:
                failing_since = time.monotonic() if failing_since is None else failing_since
                if not warned and time.monotonic() - failing_since > METRICS_GRACE_S:
                    self._log(
                        f"admission control is off: the server's metrics at {self._url} cannot be read ({error}); "
                        f"set {METRICS_URL_ENV} to the metrics URL of this server"
                    )
                    warned = True
                self._stop.wait(IDLE_POLL_S)
                continue
            if warned:
                self._log(f"admission control is on again: metrics read from {self._url}")
            failing_since, warned = None, False
            self._stop.wait(BUSY_POLL_S if wait_s > 0 else IDLE_POLL_S)


def open_admission(
    spec: params.AdmissionParams | None, model_name: str, log: Callable[[str], None]
) -> Admission | None:
    """The admission of a router instance (None when its build sheds nothing).

    A runtime folder that is not private raises `recgen_runtime.UnsafeFolderError`: the model does not load.
    """
    return None if spec is None else Admission(spec, model_name, log=log)
