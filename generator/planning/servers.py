"""Servers in the plan: every replica placed on a server of a stated size, each server holding the rows it serves once.

A replica is one instance (a thread of the native backend, or a Python-backend stub) and keeps at most the
capacity model's `target_utilization` of a core busy. A replica runs in a pod: one tritonserver process, shared by
the components of the same `pod` name on that server (the front's router and dense model; everything, when one
server runs the whole plan). A server takes replicas while the cores they keep busy stay within its cores times
that target, and while its memory holds them: each pod's server overhead, one copy of the data of every model it
hosts (a shard's rows are mapped once and shared by its instances), and each replica's own bytes (its overhead, a
router's rank maps and counters, a dense tower's weights). A replica on GPU needs a server with
GPUs and counts its data against their memory (the capacity model has no GPU throughput, so GPU memory is the only
limit there).

Models are placed largest data first, each onto the servers already holding its data, then onto the first server
with room, then onto a new one (first fit decreasing): a model's replicas share as few copies of its data as their
load allows. The model-wise baseline is placed by the same rule, one model holding the whole model's rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from generator.errors import PlanError, UserInputError
from generator.planning.choices import Device

#: The server a plan assumes unless told otherwise (`--server-cores`, `--server-memory-gb`).
DEFAULT_SERVER_CORES = 16
DEFAULT_SERVER_MEMORY_BYTES = 64 * 10**9
_BUSY_SLACK = 1e-9  # 12.8000000001 busy cores is 12.8
#: A server with fewer spare cores than this takes no more replicas (keeps placing a large fleet linear).
_FULL_CORES = 1e-3


@dataclass(frozen=True)
class ServerSize:
    """What one server of the fleet offers: cores, memory, and GPUs with the memory of each."""

    cores: int = DEFAULT_SERVER_CORES
    memory_bytes: int = DEFAULT_SERVER_MEMORY_BYTES
    gpus: int = 0
    gpu_memory_bytes: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.cores, int) or not 1 <= self.cores <= 4096:
            raise UserInputError(f"`server_cores` must be an integer in 1..4096, got {self.cores!r}")
        if not 10**7 <= self.memory_bytes <= 10**14:
            raise UserInputError(f"`server_memory_gb` must be in 0.01..100000, got {self.memory_bytes / 1e9:g}")
        if not isinstance(self.gpus, int) or not 0 <= self.gpus <= 64:
            raise UserInputError(f"`server_gpus` must be an integer in 0..64, got {self.gpus!r}")
        if self.gpus and not 10**6 <= self.gpu_memory_bytes <= 10**13:
            raise UserInputError(
                "`server_gpu_memory_gb` must be in 0.001..10000 when servers have GPUs, got "
                f"{self.gpu_memory_bytes / 1e9:g}"
            )

    @property
    def is_default(self) -> bool:
        """Whether nobody stated the size (the report says so)."""
        return self == ServerSize()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able size for plan.json."""
        return {
            "cores": self.cores,
            "memory_bytes": self.memory_bytes,
            "gpus": self.gpus,
            "gpu_memory_bytes": self.gpu_memory_bytes,
        }

    def __str__(self) -> str:
        gpus = f", {self.gpus} GPU(s) of {self.gpu_memory_bytes / 1e9:g} GB" if self.gpus else ""
        return f"{self.cores} cores, {self.memory_bytes / 1e9:g} GB{gpus}"


def servers_needed(busy_cores: float, server_cores: int, target_utilization: float) -> int:
    """Servers that keep `busy_cores` of work within their cores times the target utilization (at least one)."""
    return max(1, math.ceil(busy_cores / (server_cores * target_utilization) - _BUSY_SLACK))


def server_size(
    cores: int | None, memory_gb: float | None, gpus: int | None, gpu_memory_gb: float | None
) -> ServerSize | None:
    """The server size the CLI's flags state (their units), or None when none is given (the default applies)."""
    if cores is None and memory_gb is None and gpus is None and gpu_memory_gb is None:
        return None
    return ServerSize(
        DEFAULT_SERVER_CORES if cores is None else cores,
        DEFAULT_SERVER_MEMORY_BYTES if memory_gb is None else int(memory_gb * 1e9),
        (1 if gpu_memory_gb else 0) if gpus is None else gpus,
        0 if gpu_memory_gb is None else int(gpu_memory_gb * 1e9),
    )


@dataclass(frozen=True)
class Component:
    """One model's replicas as the fleet places them: what each replica and each copy of its data cost a server."""

    name: str
    replicas: int
    #: Cores one replica keeps busy at the planned load (at most the target utilization).
    busy_cores: float
    #: Held once by every server that hosts a replica (rows, mapped once).
    data_bytes: int
    #: Added by every replica (its overhead and whatever it holds alone).
    replica_bytes: int
    device: Device = "cpu"
    #: The tritonserver process its replicas run in on a server ("": one of its own).
    pod: str = ""

    @property
    def pod_name(self) -> str:
        """The pod its replicas share a server's tritonserver with."""
        return self.pod or self.name


@dataclass
class _Filling:
    index: int
    busy_cores: float
    memory_bytes: int
    gpu_memory_bytes: int
    hosts: dict[str, int] = field(default_factory=dict)
    data_bytes: int = 0
    pods: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Server:
    """One server of a placed fleet: the replicas of each model it hosts, the cores they keep busy, its memory."""

    index: int
    hosts: tuple[tuple[str, int], ...]
    busy_cores: float
    memory_bytes: int
    gpu_memory_bytes: int
    #: Of its memory (host and GPU), the data held once for the models it hosts (rows, GPU weights).
    data_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able server for plan.json."""
        return {
            "index": self.index,
            "replicas": dict(self.hosts),
            "busy_cores": self.busy_cores,
            "memory_bytes": self.memory_bytes,
            "gpu_memory_bytes": self.gpu_memory_bytes,
            "data_bytes": self.data_bytes,
        }


@dataclass(frozen=True)
class Fleet:
    """Servers of one size and what each hosts."""

    size: ServerSize
    servers: tuple[Server, ...]

    @property
    def memory_bytes(self) -> int:
        """Memory allocated over every server (host and GPU)."""
        return sum(server.memory_bytes + server.gpu_memory_bytes for server in self.servers)

    def placements(self, name: str) -> list[tuple[int, int]]:
        """(server index, replicas there) of one model."""
        return [(server.index, count) for server in self.servers for host, count in server.hosts if host == name]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fleet for plan.json."""
        return {
            "server": self.size.to_dict(),
            "memory_bytes": self.memory_bytes,
            "servers": [server.to_dict() for server in self.servers],
        }

    def describe(self, limit: int = 12) -> list[str]:
        """One line per run of servers hosting the same replicas (at most `limit` lines)."""
        runs: list[list[Server]] = []
        for server in self.servers:
            if runs and runs[-1][0].hosts == server.hosts:
                runs[-1].append(server)
            else:
                runs.append([server])
        lines = []
        for run in runs[:limit]:
            first, last = run[0], run[-1]
            label = f"{first.index}" if first is last else f"{first.index}-{last.index}"
            hosts = ", ".join(f"{name} x{count}" for name, count in first.hosts)
            gpu = f" + {first.gpu_memory_bytes / 1e9:.3f} GPU" if first.gpu_memory_bytes else ""
            busy = f"{first.busy_cores:.1f}/{self.size.cores}"
            lines.append(f"  {label:>9} {busy:>11} {first.memory_bytes / 1e9:>9.3f}{gpu}  {hosts}")
        if len(runs) > limit:
            lines.append(f"  ... {sum(len(run) for run in runs[limit:])} more servers")
        return lines


def place(components: Sequence[Component], size: ServerSize, target_utilization: float, server_bytes: int) -> Fleet:
    """Every replica of every component on a server of `size` (first fit decreasing by data; see the module).

    `server_bytes`: what each pod's tritonserver takes before any model.
    """
    usable_cores = size.cores * target_utilization
    filling: list[_Filling] = []
    roomy: list[_Filling] = []  # servers with cores to spare (a full one is never looked at again)
    for component in sorted(components, key=lambda c: -c.data_bytes):  # stable: ties keep the given order
        left = component.replicas
        holding: list[_Filling] = []
        while left:
            chosen = next(
                (
                    (f, n)
                    for f in holding + roomy
                    if (n := _fits(f, component, left, size, usable_cores, server_bytes)) > 0
                ),
                None,
            )
            if chosen is None:
                fresh = _Filling(len(filling), 0.0, 0, 0)
                count = _fits(fresh, component, left, size, usable_cores, server_bytes)
                if count == 0:
                    raise PlanError(_too_big(component, size, server_bytes))
                filling.append(fresh)
                roomy.append(fresh)
                chosen = (fresh, count)
            server, count = chosen
            if component.name not in server.hosts:
                holding.append(server)
            _add(server, component, count, server_bytes)
            left -= count
            if usable_cores - server.busy_cores < _FULL_CORES and server in roomy:
                roomy.remove(server)
    return Fleet(
        size,
        tuple(
            Server(f.index, tuple(f.hosts.items()), f.busy_cores, f.memory_bytes, f.gpu_memory_bytes, f.data_bytes)
            for f in filling
        ),
    )


def _fits(
    server: _Filling, component: Component, wanted: int, size: ServerSize, usable_cores: float, server_bytes: int
) -> int:
    """How many of `wanted` replicas `server` can take."""
    new_data = 0 if component.name in server.hosts else component.data_bytes
    new_pod = 0 if component.pod_name in server.pods else server_bytes
    counts = [wanted]
    if component.busy_cores > 0:
        allowed = (usable_cores - server.busy_cores + _BUSY_SLACK) / component.busy_cores
        counts.append(wanted if allowed >= wanted else math.floor(allowed))
    host_data = new_data if component.device == "cpu" else 0
    free_memory = size.memory_bytes - server.memory_bytes - host_data - new_pod
    counts.append(-1 if free_memory < 0 else free_memory // max(component.replica_bytes, 1))
    if component.device == "gpu":
        free_gpu = size.gpus * size.gpu_memory_bytes - server.gpu_memory_bytes - new_data
        counts.append(-1 if free_gpu < 0 or not size.gpus else wanted)
    return max(0, min(counts))


def _add(server: _Filling, component: Component, count: int, server_bytes: int) -> None:
    if component.pod_name not in server.pods:
        server.pods.add(component.pod_name)
        server.memory_bytes += server_bytes
    if component.name not in server.hosts:
        server.data_bytes += component.data_bytes
        if component.device == "cpu":
            server.memory_bytes += component.data_bytes
        else:
            server.gpu_memory_bytes += component.data_bytes
        server.hosts[component.name] = 0
    server.hosts[component.name] += count
    server.busy_cores += count * component.busy_cores
    server.memory_bytes += count * component.replica_bytes


def _too_big(component: Component, size: ServerSize, server_bytes: int) -> str:
    """Why not even one replica of `component` fits an empty server, naming the flag that would make it fit."""
    if component.device == "gpu" and not size.gpus:
        return f"{component.name} is placed on GPU, but the servers have no GPUs: give them some (--server-gpus)"
    if component.device == "gpu":
        return (
            f"{component.name}: its data needs {component.data_bytes / 1e9:.3f} GB of GPU memory, more than a "
            f"server's {size.gpus} x {size.gpu_memory_bytes / 1e9:g} GB (--server-gpu-memory-gb, --server-gpus)"
        )
    needed = server_bytes + component.data_bytes + component.replica_bytes
    return (
        f"{component.name}: one replica with its data needs {needed / 1e9:.3f} GB on a server (its "
        f"{server_bytes / 1e9:.3f} GB of overhead included), more than the {size.memory_bytes / 1e9:g} GB of a "
        "server (--server-memory-gb)"
    )
