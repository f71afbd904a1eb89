"""How long a request may queue at each step, and how many may queue, from the user's latency target.

Without a queue policy Triton queues without bound: overload shows only as latency (32 clients on the example:
p99 366 ms against 27 ms at 4). Every batching step therefore gets a bounded queue whose requests are rejected
when they wait past their timeout or find it full, so that clients get fast, named rejections and the accepted
requests keep to the target. A request passes several queues (router, the shard groups in parallel, dense), but
under overload it is the slowest step's queue that fills while the others stay short: each step's queue may take
`QUEUE_SHARE` of the target, the rest is for compute, transfer and the other steps' queues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from generator.errors import UserInputError

#: Latency target of a request through the ensemble when the user gives none (milliseconds). Generous on purpose,
#: so that only real overload is shed: on a small shared machine a step stalls now and then for a few hundred ms
#: (measured: a 250 ms queue timeout rejected 2 of 2,900 requests from 2 load-test users, and a step that serves
#: one request per execution, like the ranking router, queues a burst of 8 requests for tens of ms).
DEFAULT_LATENCY_SLO_MS = 2000.0
#: Range of targets accepted (milliseconds): below 1 ms nothing fits in Python-backend steps.
LATENCY_SLO_RANGE_MS = (1.0, 60_000.0)
#: Share of the target that one step's queue may take.
QUEUE_SHARE = 0.5
#: Server CPU one Python-backend step spends per request at the least (measured floor, bench notes in
#: DESIGN.md).
STEP_FLOOR_S = 750e-6
#: The timeout sheds load; the queue bound only caps memory, at this many times what the instances drain within
#: the timeout at STEP_FLOOR_S. Measured (bench/overload.py --pin, 4x load): with the queue bounded at 1x,
#: "queue full" rejections left the server idle half the time and goodput fell to 94 requests/s; at 8x the
#: timeouts did the shedding and goodput held at 777 requests/s.
QUEUE_BOUND_FACTOR = 8


@dataclass(frozen=True)
class QueuePolicy:
    """A step's `dynamic_batching.default_queue_policy`: REJECT after `timeout_us` or beyond `max_queue_size`."""

    timeout_us: int
    max_queue_size: int

    def __str__(self) -> str:
        return f"queue <= {self.max_queue_size} requests, rejected after {self.timeout_us / 1000:g} ms"


def check_latency_slo_ms(latency_slo_ms: float) -> float:
    """The target itself, or a UserInputError naming the allowed range."""
    low, high = LATENCY_SLO_RANGE_MS
    if not (isinstance(latency_slo_ms, (int, float)) and low <= latency_slo_ms <= high):
        raise UserInputError(f"`latency_slo_ms` must be in [{low:g}, {high:g}] ms, got {latency_slo_ms!r}")
    return float(latency_slo_ms)


def queue_policy(latency_slo_ms: float, instances: int) -> QueuePolicy:
    """The policy of a step with `instances` instances under a latency target of `latency_slo_ms`."""
    timeout_s = check_latency_slo_ms(latency_slo_ms) / 1000 * QUEUE_SHARE
    drained = math.ceil(QUEUE_BOUND_FACTOR * instances * timeout_s / STEP_FLOOR_S)
    return QueuePolicy(timeout_us=max(1, round(timeout_s * 1e6)), max_queue_size=max(instances, drained))
