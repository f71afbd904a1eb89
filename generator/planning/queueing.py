"""How long a request may queue on a server before the router sheds it, from the user's latency target.

Without shedding, overload shows only as latency (32 clients on the example: p99 366 ms against 27 ms at 4).
Triton 2.51 sheds only through a step's queue policy, and any queue policy makes its dynamic batcher stall ~0.5 s
now and then (docs/faults.md), so recgen writes none: the router, the first step of every ensemble, estimates from
the server's own metrics how long a request arriving now would queue across the ensemble's steps, and answers
UNAVAILABLE at once while that exceeds the budget, `QUEUE_SHARE` of the target (`recgen_admission`). The rest of
the target is for compute and transfer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from generator.errors import UserInputError

#: How overload is shed: by the router from the server's metrics (no stalls), or by Triton's own queue policy on
#: every step (cheap rejections under heavy overload, with its ~0.5 s stalls).
Shedding = Literal["router", "queue-policy"]
SHEDDING: tuple[Shedding, ...] = ("router", "queue-policy")
#: Latency target of a request through the ensemble when the user gives none (milliseconds). Generous on purpose,
#: so that only real overload is shed; set the target your service needs.
DEFAULT_LATENCY_SLO_MS = 2000.0
#: Range of targets accepted (milliseconds): below 1 ms nothing fits in Python-backend steps.
LATENCY_SLO_RANGE_MS = (1.0, 60_000.0)
#: Share of the target that queueing on a server may take.
QUEUE_SHARE = 0.5


def check_latency_slo_ms(latency_slo_ms: float) -> float:
    """The target itself, or a UserInputError naming the allowed range."""
    low, high = LATENCY_SLO_RANGE_MS
    if not (isinstance(latency_slo_ms, (int, float)) and low <= latency_slo_ms <= high):
        raise UserInputError(f"`latency_slo_ms` must be in [{low:g}, {high:g}] ms, got {latency_slo_ms!r}")
    return float(latency_slo_ms)


#: `--shedding queue-policy`: each step's queue holds this many times what its instances drain within the budget at
#: STEP_FLOOR_S per request (the timeout sheds; the bound caps memory). Measured (bench/overload.py --pin, 4x): with
#: the bound at 1x, "queue full" rejections left the server idle half the time; at 8x the timeouts did the shedding.
QUEUE_BOUND_FACTOR = 8
#: Server CPU one Python-backend step spends per request at the least (measured floor, DESIGN.md).
STEP_FLOOR_S = 750e-6


@dataclass(frozen=True)
class QueuePolicy:
    """A step's `default_queue_policy` (`--shedding queue-policy`): REJECT after the timeout or beyond the bound."""

    timeout_us: int
    max_queue_size: int


def queue_policy(latency_slo_ms: float, instances: int) -> QueuePolicy:
    """Triton's queue policy of a step with `instances` instances: the budget as timeout, a bound that caps memory."""
    timeout_us = queue_budget_us(latency_slo_ms)
    drained = math.ceil(QUEUE_BOUND_FACTOR * instances * timeout_us * 1e-6 / STEP_FLOOR_S)
    return QueuePolicy(timeout_us=timeout_us, max_queue_size=max(instances, drained))


def check_shedding(shedding: str) -> str:
    """`shedding` itself, or a UserInputError naming the allowed values."""
    if shedding not in SHEDDING:
        raise UserInputError(f"`shedding` must be one of {', '.join(SHEDDING)}, got {shedding!r}")
    return shedding


def queue_budget_us(latency_slo_ms: float) -> int:
    """Microseconds a request may be expected to queue on a server before the router sheds it."""
    return max(1, round(check_latency_slo_ms(latency_slo_ms) * 1e3 * QUEUE_SHARE))
