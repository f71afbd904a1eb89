"""A plan and the model-wise baseline priced on servers: their replicas placed (`servers.place`), memory and utility.

Each model becomes a `servers.Component`: its replicas, the cores each keeps busy at the target load, the data a
server hosting it holds once (a shard step's rows; with the fused lookup step, the router's: every CPU shard's
rows), and each replica's own bytes. A plan whose models fit one server is served by one tritonserver there (the
embedded build). A larger one is priced as the distributed layout serves it (`deploy.topology`): every shard step
a pod of its own on each server it uses, and front servers, each a pod with its share of the routers and dense
replicas and a remote-step stub per shard-step instance (at least one per step on every front). Memory allocated
is the sum over the placed servers. Memory utility counts, per server and per copy of a shard's rows, the distinct
rows that copy reads in a window of the traffic its replicas serve, and divides their bytes by the bytes of rows
held.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from generator.errors import PlanError
from generator.model.dlrm import TableSpec
from generator.planning.capacity import Capacity
from generator.planning.cuts import ShardStats
from generator.planning.memory import ModelShape
from generator.planning.plan import Device, LookupStep, Placement
from generator.planning.report import Totals
from generator.planning.servers import Component, Fleet, ServerSize, place, servers_needed
from generator.traffic.profile import TableAccess
from generator.triton_models.recgen_rows import bytes_per_row

#: The names of the non-shard models in a fleet (a shard step is named `<table>/<shard>`).
ROUTER, DENSE, WHOLE_MODEL = "router", "dense", "whole model"
#: A distributed layout's front server: its share of the routers, the dense replicas and the remote steps.
FRONT = "front"
#: The pods a fleet's components run in: one tritonserver for a one-server plan, the front's for a larger one.
ONE_SERVER_POD, FRONT_POD = "server", "front"


def _expected_unique(probabilities: np.ndarray, draws: float) -> float:
    """Expected distinct items in `draws` independent draws with these probabilities."""
    if draws <= 0 or probabilities.size == 0:
        return 0.0
    return float(-np.expm1(draws * np.log1p(-np.minimum(probabilities, 1.0 - 1e-12))).sum())


def copy_bytes_read(
    access: TableAccess, spec: TableSpec, shard: ShardStats, table_lookups: float, cached_rows: int = 0
) -> float:
    """Bytes of distinct rows of `shard` one copy of its rows reads in a window.

    `table_lookups`: the lookups of its table that go to the replicas sharing that copy; the hottest `cached_rows`
    ranks never reach a shard.
    """
    if not access.lookups or shard.access_share <= 0:
        return 0.0
    probabilities = access.ranked_counts() / access.lookups
    if cached_rows:
        probabilities = probabilities.copy()
        probabilities[:cached_rows] = 0.0
    within = probabilities[shard.row_start : min(shard.row_end, access.touched_rows)]
    if within.size == 0 or not within.any():
        return 0.0
    draws = table_lookups * shard.access_share
    return _expected_unique(within / shard.access_share, draws) * bytes_per_row(spec.dim, shard.row_dtype)


def shard_name(shard: ShardStats) -> str:
    """The name a shard step has in a fleet."""
    return f"{shard.table}/{shard.index}"


def planned_components(
    shards: Sequence[ShardStats],
    busy_s: Mapping[str, float],
    replicas: tuple[int, int],
    router_bytes: tuple[int, int],
    dense_bytes: int,
    capacity: Capacity,
    lookup_step: LookupStep,
    dense_device: Device = "cpu",
    *,
    fronts: int | None = None,
) -> tuple[list[Component], dict[str, list[ShardStats]]]:
    """The plan's models as fleet components, and the shards whose rows each holds.

    `busy_s`: seconds of work per second at the target load, by model name (router, dense, each shard step).
    `router_bytes`: what a server's routers map once (rank maps, front cache) and what each instance holds alone
    (its access counters). A dense model on GPU holds its weights there (once per server) and keeps no core busy.
    `fronts`: priced as the distributed layout with that many front servers (see the module); None: one
    tritonserver per server.
    """
    pooled = [s for s in shards if lookup_step == "fused" and s.device == "cpu" and s.router_pooled]
    pooled_keys = {(s.table, s.index) for s in pooled}
    steps = [s.replicas for s in shards if (s.table, s.index) not in pooled_keys]
    router_data, router_replica = router_bytes
    front = _FrontCosts(
        replicas, busy_s, sum(s.held_bytes for s in pooled) + router_data, router_replica, dense_bytes, capacity
    )
    components = front.components(dense_device, fronts, steps)
    held = {components[0].name: pooled}
    for shard in shards:
        if (shard.table, shard.index) in pooled_keys:
            continue
        name = shard_name(shard)
        components.append(
            Component(
                name,
                shard.replicas,
                0.0 if shard.device == "gpu" else busy_s[name] / shard.replicas,
                shard.held_bytes,
                capacity.lookup_overhead_bytes,
                shard.device,
                ONE_SERVER_POD if fronts is None else "",
            )
        )
        held[name] = [shard]
    return components, held


@dataclass(frozen=True)
class _FrontCosts:
    """What the router and the dense model cost a fleet, as one server's models or as the distributed fronts."""

    replicas: tuple[int, int]  # router, dense
    busy_s: Mapping[str, float]
    data_bytes: int  # held once per server: the rows the router pools, its rank maps and front cache
    router_bytes: int
    dense_bytes: int
    capacity: Capacity

    def components(self, dense_device: Device, fronts: int | None, steps: Sequence[int]) -> list[Component]:
        """With `fronts`, each front server runs its share of the routers, dense replicas and remote-step stubs.

        `steps`: the instances of every shard step; a front runs at least one remote-step stub for each.

        A front is one component then, so its replicas are exactly the fronts `deploy.topology` lays out (a dense
        model on GPU stays a component of its own in the front's pod).
        """
        routers, denses = self.replicas
        capacity, busy_s = self.capacity, self.busy_s
        router_replica = self.router_bytes + capacity.lookup_overhead_bytes
        if fronts is None:
            return [
                Component(
                    ROUTER, routers, busy_s[ROUTER] / routers, self.data_bytes, router_replica, pod=ONE_SERVER_POD
                ),
                _dense_component(denses, busy_s[DENSE], self.dense_bytes, capacity, dense_device, ONE_SERVER_POD),
            ]
        stubs = sum(-(-instances // fronts) for instances in steps) * capacity.replica_overhead_bytes
        front_bytes = -(-routers // fronts) * router_replica + stubs
        busy = busy_s[ROUTER]
        dense = []
        if dense_device == "cpu":
            front_bytes += -(-denses // fronts) * (self.dense_bytes + capacity.replica_overhead_bytes)
            busy += busy_s[DENSE]
        else:
            dense = [_dense_component(denses, busy_s[DENSE], self.dense_bytes, capacity, "gpu", FRONT_POD)]
        return [Component(FRONT, fronts, busy / fronts, self.data_bytes, front_bytes, pod=FRONT_POD), *dense]


def front_servers(busy_s: Mapping[str, float], dense_device: Device, size: ServerSize, capacity: Capacity) -> int:
    """Front servers the distributed layout needs: the cores its routers (and CPU dense replicas) keep busy."""
    busy = busy_s[ROUTER] + (busy_s[DENSE] if dense_device == "cpu" else 0.0)
    return servers_needed(busy, size.cores, capacity.target_utilization)


def _dense_component(
    replicas: int, busy_s: float, dense_bytes: int, capacity: Capacity, device: Device, pod: str
) -> Component:
    """The dense model: its weights in each replica on CPU, once per server on GPU (where it keeps no core busy)."""
    if device == "cpu":
        return Component(DENSE, replicas, busy_s / replicas, 0, dense_bytes + capacity.replica_overhead_bytes, pod=pod)
    return Component(DENSE, replicas, 0.0, dense_bytes, capacity.replica_overhead_bytes, "gpu", pod)


def model_wise_component(shape: ModelShape, replicas: int, busy_s: float, capacity: Capacity) -> Component:
    """Whole-model replicas: each server holds every row once; each replica is a process with the dense weights."""
    return Component(
        WHOLE_MODEL,
        replicas,
        busy_s / replicas,
        shape.embedding_bytes,
        shape.dense_bytes + capacity.replica_overhead_bytes,
    )


def model_wise_on_servers(
    shape: ModelShape, traffic: Traffic, capacity: Capacity, size: ServerSize, qps: float, whole_model_s: float
) -> tuple[Totals, Fleet]:
    """The model-wise baseline on servers of `size`: the replicas `qps` needs, the whole model once per server.

    It has no front cache: every lookup reaches the rows.
    """
    replicas = capacity.replicas(qps, whole_model_s)
    component = model_wise_component(shape, replicas, qps * whole_model_s, capacity)
    held = {component.name: whole_tables(shape, traffic.accesses, replicas)}
    no_cache = Traffic(traffic.accesses, traffic.window_lookups, (0,) * len(shape.tables))
    try:
        return priced([component], held, size, capacity, shape, no_cache)
    except PlanError as error:
        raise PlanError(
            f"the model-wise baseline holds every row on each of its servers, and {error}; plans are priced against "
            "it on servers of the same size, so give servers that hold the whole model"
        ) from error


def whole_tables(shape: ModelShape, accesses: Sequence[TableAccess], replicas: int) -> list[ShardStats]:
    """Every table as one shard: the rows a whole-model server holds."""
    return [
        ShardStats(
            spec.name,
            0,
            0,
            spec.num_rows,
            1.0 if access.lookups else 0.0,
            replicas,
            spec.num_rows * spec.bytes_per_row,
            "cpu",
        )
        for spec, access in zip(shape.tables, accesses, strict=True)
    ]


@dataclass(frozen=True)
class Traffic:
    """What the tables see, in model order: their accesses, lookups in a window, ranks the front cache serves."""

    accesses: tuple[TableAccess, ...]
    window_lookups: tuple[float, ...]
    cached_rows: tuple[int, ...]


def priced(
    components: Sequence[Component],
    held: Mapping[str, Sequence[ShardStats]],
    size: ServerSize,
    capacity: Capacity,
    shape: ModelShape,
    traffic: Traffic,
) -> tuple[Totals, Fleet]:
    """Place the components on servers of `size`; the totals of that fleet."""
    fleet = place(components, size, capacity.target_utilization, capacity.server_overhead_bytes)
    tables = {
        spec.name: (spec, access, lookups, cached)
        for spec, access, lookups, cached in zip(
            shape.tables, traffic.accesses, traffic.window_lookups, traffic.cached_rows, strict=True
        )
    }
    replicas = {component.name: component.replicas for component in components}
    held_bytes, read_bytes = 0, 0.0
    for server in fleet.servers:
        for name, count in server.hosts:
            for shard in held.get(name, ()):
                spec, access, lookups, cached = tables[shard.table]
                held_bytes += shard.held_bytes
                read_bytes += copy_bytes_read(access, spec, shard, lookups * count / replicas[name], cached)
    return Totals(sum(replicas.values()), fleet.memory_bytes, held_bytes, read_bytes), fleet


def busy_cores(
    stats: Sequence[ShardStats], load: tuple[float, int, Mapping[str, float]], router_s: float, capacity: Capacity
) -> dict[str, float]:
    """Cores each model keeps busy at the load (seconds of work per second), by fleet name.

    `load`: (queries/s, candidates per query, lookups per query by table); `router_s`: a router's seconds per query.
    """
    target_qps, batch_size, lookups = load
    return {
        ROUTER: target_qps * router_s,
        DENSE: target_qps * capacity.dense_seconds(batch_size),
        **{shard_name(s): target_qps * capacity.shard_seconds(lookups[s.table] * s.access_share) for s in stats},
    }


def plan_on_servers(
    shape: ModelShape,
    traffic: Traffic,
    capacity: Capacity,
    size: ServerSize,
    stats: Sequence[ShardStats],
    load: tuple[float, int, Mapping[str, float]],
    routers_and_dense: tuple[float, int, int],
    router_bytes: tuple[int, int],
    lookup_step: LookupStep,
    dense_device: Device,
) -> tuple[Totals, Fleet]:
    """The plan's models placed on servers of `size`.

    `load`: (queries/s, candidates per query, lookups per query by table); `routers_and_dense`: (router seconds
    per query, router replicas, dense replicas).
    """
    router_s, router_replicas, dense_replicas = routers_and_dense
    busy_s = busy_cores(stats, load, router_s, capacity)

    def fleet(fronts: int | None) -> tuple[Totals, Fleet]:
        components, held = planned_components(
            stats, busy_s, (router_replicas, dense_replicas), router_bytes, shape.dense_bytes, capacity, lookup_step,
            dense_device, fronts=fronts,
        )  # fmt: skip
        return priced(components, held, size, capacity, shape, traffic)

    # Routers and dense replicas alone past one server's cores: more than one server, surely.
    if busy_s[ROUTER] + busy_s[DENSE] * (dense_device == "cpu") <= size.cores * capacity.target_utilization:
        with contextlib.suppress(PlanError):  # a model that fits no server alone may fit once the layout spreads it
            one_server = fleet(None)
            if len(one_server[1].servers) == 1:
                return one_server
    return fleet(front_servers(busy_s, dense_device, size, capacity))


def placed_on(fleet: Fleet | None, name: str, instances: int, device: Device, busy: Mapping[str, float]) -> Placement:
    """A model's placement, its instances spread over as many servers as the planned fleet hosts it on.

    A shard the router pools has no servers of its own (the fronts pool it). In a distributed fleet the router and
    a CPU dense model run on every front server, each front its share of their instances. Each instance keeps its
    share of the model's busy cores (none on GPU).
    """
    servers = len(fleet.placements(name)) if fleet is not None else 0
    fronts = sum(count for _, count in fleet.placements(FRONT)) if fleet is not None else 0
    if fronts and name in (ROUTER, DENSE) and not (name == DENSE and servers):
        per_server = -(-instances // fronts)
        instances = per_server * fronts
    else:
        per_server = -(-instances // max(servers, 1))
    cores = 0.0 if device == "gpu" else min(1.0, round(busy.get(name, 0.0) / instances, 4))
    return Placement(instances, device, per_server, cores)
