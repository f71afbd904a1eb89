"""The distributed topology: which servers run what, how many replica servers each has, and what each holds.

One owner for the distributed layout (ElasticRec's microservices): front servers (router, dense model, one remote
step per shard group, the ensembles) and one deployment per shard group the router does not pool. It follows the
plan's servers (`Placement.instances_per_server`, set by the planner from its fleet): a group runs on
`placement.servers` replica servers of `instances_per_server` Triton instances each, sharing one mapped copy of the
group's rows per server; the front on as many servers as its router or dense model take, each running its share of
the router, dense and remote-step instances (a remote step keeps one group instance busy at a time). With the fused
lookup step the front's routers pool the shards the plan leaves to them, holding their rows once per front server.
The distributed build writes it as topology.json (versioned), `recgen serve --distributed` starts it, and the
Kubernetes manifests are rendered from it, so all three agree on names, replicas, CPU and memory (the front's rank
maps, pooled rows and front cache included, counted by the same `planning.memory` as the planner's totals).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generator import __version__, naming
from generator.errors import UserInputError
from generator.planning import memory
from generator.planning.capacity import Capacity
from generator.planning.plan import Device, GroupBy, Placement, Plan
from generator.repository import wiring
from generator.repository.params import RemoteCallPolicy
from generator.repository.wiring import GroupWire

TOPOLOGY_FORMAT_VERSION = 3


def _share(count: int, servers: int) -> int:
    """Instances each of `servers` servers runs so that together they run at least `count`."""
    return -(-count // servers)


@dataclass(frozen=True)
class GroupDeployment:
    """One shard group served by `replica_servers` Triton servers of `instances_per_server` instances each."""

    model: str
    service: str
    repository: str  # relative to the distributed build
    replica_servers: int
    device: Device
    rows_bytes: int
    endpoints_env: str
    instances_per_server: int = 1
    #: Cores one replica server keeps busy at the planned load (None: a plan not made by the planner).
    cores_per_server: float | None = None

    def memory_bytes(self, capacity: Capacity) -> int:
        """Expected resident bytes of one replica server: its rows once, the server and each instance's overhead."""
        return (
            self.rows_bytes
            + capacity.server_overhead_bytes
            + self.instances_per_server * capacity.lookup_overhead_bytes
        )


@dataclass(frozen=True)
class FrontDeployment:
    """A front server: router, dense model, a remote step per shard group and the ensembles."""

    service: str
    repository: str
    replica_servers: int
    device: Device
    #: What each router instance holds alone: its access counters (and, Python routers, rank maps and front cache).
    router_bytes: int
    #: Router instances on each front server.
    router_instances: int
    #: Stubs and instances it runs: routers, dense and the remote steps' instances.
    instances: int
    models: tuple[str, ...]
    #: Most bytes its routers' access counters take in /dev/shm (flattened and ranking routers, every instance).
    counter_bytes: int = 0
    #: Rows of the shards its routers pool (fused lookup step), mapped once per front server.
    rows_bytes: int = 0
    #: Dense-model instances on each front server.
    dense_instances: int = 1
    #: What its native routers map once, shared by their instances: rank maps and front cache.
    router_data_bytes: int = 0
    #: Cores one front keeps busy at the planned load: its share of the routers' and CPU dense replicas' work.
    cores_per_server: float | None = None

    def memory_bytes(self, capacity: Capacity) -> int:
        """Expected resident bytes of one front server."""
        return (
            self.router_instances * (self.router_bytes + capacity.lookup_overhead_bytes)
            + self.rows_bytes
            + self.router_data_bytes
            + capacity.server_overhead_bytes
            + (self.instances - self.router_instances) * capacity.replica_overhead_bytes
        )


def front_servers(plan: Plan) -> int:
    """Servers the front takes: as many as its router's or its dense model's instances are spread over."""
    return max(plan.router.servers, plan.dense.servers)


def front_plan(plan: Plan) -> Plan:
    """`plan` as one front server runs it: its share of the router's and the dense model's instances."""
    servers = front_servers(plan)

    def share(placement: Placement) -> Placement:
        count = _share(placement.instance_count, servers)
        return Placement(count, placement.device, count)

    return dataclasses.replace(plan, router=share(plan.router), dense=share(plan.dense))


def distributed_plan(plan: Plan, group_by: GroupBy) -> Plan:
    """The plan as the distributed layout serves it: its shards grouped by `group_by`, its lookup step kept."""
    return dataclasses.replace(plan, group_by=group_by)


def remote_instances(group: GroupDeployment, servers: int) -> int:
    """A front server's instances of a group's remote step: its share of the group's instances."""
    return _share(group.replica_servers * group.instances_per_server, servers)


@dataclass(frozen=True)
class Topology:
    """A plan laid out as separately served shard groups behind a front server."""

    model_name: str
    ensemble: str
    group_by: GroupBy
    front: FrontDeployment
    groups: tuple[GroupDeployment, ...]
    remote_call: RemoteCallPolicy
    #: The generation of models it serves (`naming.leaf_stem`): its shard groups' names carry it.
    generation: int = naming.FIRST_GENERATION

    @classmethod
    def from_plan(
        cls,
        plan: Plan,
        *,
        group_by: GroupBy = "shard",
        policy: RemoteCallPolicy | None = None,
    ) -> Topology:
        """The topology of `plan` with its shards grouped by `group_by` (one service per shard by default)."""
        plan = distributed_plan(plan, group_by)
        wire = wiring.wire_layout(plan)
        groups = tuple(_group_deployment(plan, wired) for wired in wire.steps)
        servers = front_servers(plan)
        per_front = front_plan(plan)
        front_models = [naming.router_model(plan.leaf_stem), naming.dense_model(plan.leaf_stem)]
        front_models += [group.model for group in groups]
        tables = {table.spec.name: table for table in plan.tables}
        shared_bytes, instance_bytes = memory.router_memory(
            [t.spec for t in plan.tables],
            [t.cached_rows for t in plan.tables],
            [t.row_order is not None for t in plan.tables],
            counted=plan.count_accesses,
            shares_files=plan.lookup_engine == "native",
        )
        front = FrontDeployment(
            service=naming.front_service_name(plan.model_name),
            repository=naming.FRONT_DIR,
            replica_servers=servers,
            device=plan.dense.device,
            router_bytes=instance_bytes,
            router_instances=per_front.router.instance_count,
            instances=per_front.router.instance_count
            + per_front.dense.instance_count
            + sum(remote_instances(group, servers) for group in groups),
            models=(naming.ensemble_model(plan.model_name), *front_models),
            counter_bytes=_counter_bytes(per_front),
            rows_bytes=sum(
                tables[shard.table].shard_bytes(shard) for wired in wire.pooled for shard in wired.group.shards
            ),
            dense_instances=per_front.dense.instance_count,
            router_data_bytes=shared_bytes,
            cores_per_server=_cores(
                [plan.router, plan.dense] if plan.dense.device == "cpu" else [plan.router], servers
            ),
        )
        return cls(
            plan.model_name,
            naming.ensemble_model(plan.model_name),
            group_by,
            front,
            groups,
            policy or RemoteCallPolicy(),
            plan.generation,
        )

    def group_models(self) -> list[str]:
        """The shard-group models, in plan order."""
        return [group.model for group in self.groups]

    def check_same_groups(self, other: Topology, what: str) -> None:
        """Raise UserInputError unless `other` serves the same shard groups (a build and its manifests, say)."""
        if self.group_models() != other.group_models():
            raise UserInputError(
                f"{what} holds groups {other.group_models()}, this topology has {self.group_models()}; "
                "build and k8s must use the same plan and --group-by"
            )

    def to_dict(self) -> dict[str, Any]:
        """topology.json's content."""
        return {
            "format_version": TOPOLOGY_FORMAT_VERSION,
            "recgen_version": __version__,
            **dataclasses.asdict(self),
        }

    def save(self, root: Path) -> Path:
        """Write ROOT/topology.json."""
        path = Path(root) / naming.TOPOLOGY_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, root: Path) -> Topology:
        """Read ROOT/topology.json; a missing, malformed or other-version file is a UserInputError naming it."""
        path = Path(root) / naming.TOPOLOGY_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise UserInputError(f"{path} does not exist; build with `recgen build --layout distributed`") from error
        except ValueError as error:
            raise UserInputError(f"{path} is not a recgen topology ({error})") from error
        version = data.get("format_version") if isinstance(data, dict) else None
        if version == 2:
            data = _migrate_v2(data)
        elif version != TOPOLOGY_FORMAT_VERSION:
            raise UserInputError(
                f"{path} has format version {version!r}; this recgen reads version {TOPOLOGY_FORMAT_VERSION} "
                "(rebuild it with this recgen)"
            )
        try:
            return cls(
                data["model_name"],
                data["ensemble"],
                data["group_by"],
                FrontDeployment(**{**data["front"], "models": tuple(data["front"]["models"])}),
                tuple(GroupDeployment(**group) for group in data["groups"]),
                RemoteCallPolicy(**data["remote_call"]),
                int(data.get("generation", naming.FIRST_GENERATION)),
            )
        except (KeyError, TypeError) as error:
            raise UserInputError(f"{path} is not a recgen topology ({type(error).__name__}: {error})") from error


def _migrate_v2(data: dict[str, Any]) -> dict[str, Any]:
    """A version 2 topology.json as version 3: what version 2 served (an instance per group server, no pooled rows)."""
    try:
        front, groups = data["front"], data["groups"]
        replicas = sum(group["replica_servers"] for group in groups)
        dense = front["instances"] - front["router_instances"] - replicas
        front = {"rows_bytes": 0, "dense_instances": dense, **front}
        groups = [{"instances_per_server": 1, **group} for group in groups]
    except (KeyError, TypeError):
        return data  # the reader names what is missing
    return {**data, "front": front, "groups": groups}


def _counter_bytes(plan: Plan) -> int:
    """The most bytes the front's access counters take: every table's rows per set (see `recgen_access`)."""
    if not plan.count_accesses:
        return 0
    # Both routers' instances, plus the set that keeps the counts of instances an update or a restore replaced.
    return (2 * plan.router.instance_count + 1) * memory.counter_bytes([t.spec for t in plan.tables])


def _group_deployment(plan: Plan, wired: GroupWire) -> GroupDeployment:
    tables = {table.spec.name: table for table in plan.tables}
    group, model = wired.group, wired.model_name
    return GroupDeployment(
        model=model,
        service=naming.service_name(model),
        repository=f"{naming.GROUPS_DIR}/{model}",
        replica_servers=group.placement.servers,
        device=group.placement.device,
        rows_bytes=sum(tables[shard.table].shard_bytes(shard) for shard in group.shards),
        endpoints_env=naming.endpoints_env_var(model),
        instances_per_server=group.placement.instances_per_server,
        cores_per_server=_cores([group.placement], group.placement.servers),
    )


def _cores(placements: list[Placement], servers: int) -> float | None:
    """Each of `servers` servers' even share of the cores these placements' instances keep busy (None: unknown)."""
    if any(p.cores_per_instance is None for p in placements):
        return None
    return round(sum(p.instance_count * (p.cores_per_instance or 0.0) for p in placements) / servers, 4)
