"""One topology for the distributed build, the local servers and the manifests: names, replicas, memory agree."""

import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from generator import naming, triton_runtime
from generator.deploy import k8s, k8s_objects
from generator.deploy.distributed import build_distributed
from generator.deploy.server import ServerConfig, TritonServer
from generator.deploy.topology import TOPOLOGY_FORMAT_VERSION, Topology
from generator.errors import UserInputError
from generator.planning import memory
from generator.planning.capacity import Capacity
from generator.planning.memory import ModelShape
from generator.planning.planner import plan_from_report, plan_model
from generator.traffic.profile import table_shapes, zipf_profile
from tests.conftest import tiny_model
from tests.deploy.test_distributed import two_group_plan


def test_a_groups_planned_instances_become_its_replica_servers() -> None:
    plan = two_group_plan()
    per_shard = Topology.from_plan(plan)
    assert [g.replica_servers for g in per_shard.groups] == [s.placement.instance_count for s in plan.shards]
    grouped = Topology.from_plan(plan, group_by="placement")
    assert len(grouped.groups) == 2 and grouped.group_by == "placement"
    assert grouped.front.instances == plan.router.instance_count + plan.dense.instance_count + sum(
        g.replica_servers for g in grouped.groups
    )
    assert [g.endpoints_env for g in grouped.groups] == [naming.endpoints_env_var(g.model) for g in grouped.groups]


def test_save_and_load_round_trip_and_refuse_other_versions(tmp_path: Path) -> None:
    topology = Topology.from_plan(two_group_plan(), group_by="placement")
    topology.save(tmp_path)
    assert Topology.load(tmp_path) == topology
    data = json.loads((tmp_path / naming.TOPOLOGY_FILE).read_text())
    (tmp_path / naming.TOPOLOGY_FILE).write_text(json.dumps({**data, "format_version": 1}))
    with pytest.raises(UserInputError, match=rf"format version 1; this recgen reads version {TOPOLOGY_FORMAT_VERSION}"):
        Topology.load(tmp_path)
    (tmp_path / naming.TOPOLOGY_FILE).write_text(json.dumps({**data, "groups": [{"model": "x"}]}))
    with pytest.raises(UserInputError, match="is not a recgen topology"):
        Topology.load(tmp_path)
    with pytest.raises(UserInputError, match="build with `recgen build --layout distributed`"):
        Topology.load(tmp_path / "absent")


def test_the_distributed_build_writes_the_topology_it_was_built_from(tmp_path: Path) -> None:
    plan = two_group_plan()
    result = build_distributed(tiny_model(), plan, tmp_path / "dist", group_by="placement")
    assert Topology.load(result.root) == result.topology == Topology.from_plan(plan, group_by="placement")
    for group in result.groups:
        assert (result.group_repository(group) / group.model / naming.CONFIG_FILE).is_file()


def test_the_front_memory_counts_the_front_cache_the_planner_counts() -> None:
    model = tiny_model()
    shape = ModelShape.of(model)
    profile = zipf_profile(table_shapes(model.tables), 1.2, samples=5_000, seed=1)
    report = plan_model(shape, profile, target_qps=2_000, front_cache_bytes=64 * 32)
    assert report.front_cache_bytes > 0
    plan = plan_from_report(report, shape, profile)
    topology = Topology.from_plan(plan)
    rank_maps = sum(spec.num_rows * memory.RANK_BYTES for spec in shape.tables)
    counters = sum(spec.num_rows * memory.COUNT_BYTES for spec in shape.tables)
    # The native router maps its rank maps and front cache once; each instance has its own counters.
    assert plan.lookup_engine == "native"
    assert topology.front.router_data_bytes == rank_maps + report.front_cache_bytes
    assert topology.front.router_bytes == counters
    uncounted = Topology.from_plan(dataclasses.replace(plan, count_accesses=False))
    assert uncounted.front.router_bytes == 0
    python = Topology.from_plan(dataclasses.replace(plan, lookup_engine="python"))  # every stub loads them
    assert python.front.router_bytes == rank_maps + report.front_cache_bytes + counters
    assert python.front.router_data_bytes == 0
    capacity = Capacity()
    without_cache = Topology.from_plan(dataclasses.replace(plan, tables=tuple(
        dataclasses.replace(t, cached_rows=0) for t in plan.tables)))  # fmt: skip
    extra = topology.front.memory_bytes(capacity) - without_cache.front.memory_bytes(capacity)
    assert extra == report.front_cache_bytes
    (front,) = [c for c in k8s.components(topology, k8s.K8sOptions(capacity=capacity)) if c.role == "front"]
    assert front.memory_bytes == topology.front.memory_bytes(capacity)


def test_every_server_gets_the_same_runtime_flags() -> None:
    topology = Topology.from_plan(two_group_plan())
    manifests = k8s.render_manifests(topology)
    shared = triton_runtime.server_flags(gpu=False)
    for document in manifests.objects:
        if document["kind"] == "Deployment":
            (start,) = document["spec"]["template"]["spec"]["containers"][0]["args"]
            assert set(shared) <= set(shlex.split(start))  # `sh -c "exec tritonserver ..."`
    embedded = TritonServer(ServerConfig((Path("r"),))).command()
    assert set(shared) <= set(embedded)
    docker = triton_runtime.docker_run_command([("r", "/models")], gpu=False)
    assert all(flag in docker for flag in shared)
    assert all(f"-e {name}={value}" in docker for name, value in triton_runtime.SERVING_ENV.items())


def test_k8s_deploys_the_build_and_refuses_a_plan_or_grouping_that_does_not_match_it(tmp_path: Path) -> None:
    from generator.planning.plan_file import save_plan

    plan = two_group_plan()
    result = build_distributed(tiny_model(), plan, tmp_path / "dist", group_by="placement")
    assert k8s.topology_for(None, result.root, None) == result.topology
    with pytest.raises(UserInputError, match="built with --group-by placement, not shard"):
        k8s.topology_for(None, result.root, "shard")
    save_plan(plan, tmp_path / "plan.json")
    assert k8s.topology_for(tmp_path / "plan.json", result.root, None).group_models() == result.topology.group_models()
    other = dataclasses.replace(plan, tables=plan.tables[:2])
    save_plan(other, tmp_path / "other.json")
    with pytest.raises(UserInputError, match="same plan and --group-by"):
        k8s.topology_for(tmp_path / "other.json", result.root, None)
    with pytest.raises(UserInputError, match="give --plan"):
        k8s.topology_for(None, None, None)


@pytest.mark.parametrize("lookup_step", ["fused", "separate"])
def test_the_topology_follows_the_planned_servers_and_holds_what_the_plan_prices(lookup_step: str) -> None:
    """A plan spread over small servers: each group on the servers the fleet gave it, the fronts as placed."""
    from generator.planning.pricing import FRONT, shard_name
    from generator.planning.servers import ServerSize
    from generator.traffic.profile import TableShape

    tables = [TableShape("history", 1_000_000, 20), TableShape("country", 200, 1)]
    specs = tuple(memory.TableSpec(t.name, t.num_rows, 64, t.max_ids_per_sample) for t in tables)
    shape = ModelShape(specs, 4, (64,), (8, 1))
    profile = zipf_profile(tables, 1.2, samples=100_000, seed=2)
    capacity = Capacity()
    report = plan_model(
        shape, profile, target_qps=30_000, servers=ServerSize(cores=2), lookup_step=lookup_step, capacity=capacity
    )
    assert report.fleet is not None and len(report.fleet.servers) > 2
    plan = plan_from_report(report, shape, profile)
    topology = Topology.from_plan(plan)
    stats = {(s.table, s.index): s for s in report.shards}
    for group, wired_shard in zip(topology.groups, [s for s in plan.shards if not _pooled(plan, s)], strict=True):
        servers = len(report.fleet.placements(shard_name(stats[(wired_shard.table, wired_shard.index)])))
        assert group.replica_servers == servers
        assert group.instances_per_server == -(-wired_shard.placement.instance_count // servers)
    assert topology.front.replica_servers == len(report.fleet.placements(FRONT))
    components = k8s.components(topology, k8s.K8sOptions(capacity=capacity))
    laid_out = sum(c.replicas * c.memory_bytes for c in components)
    assert laid_out == pytest.approx(report.planned.memory_bytes, rel=0.05)
    options = k8s.K8sOptions(capacity=capacity)
    cpu = {c.name: int(k8s_objects.cpu_request(options, c).removesuffix("m")) for c in components}
    # Every pod asks for the cores the plan expects it to keep busy, so the pods fit the servers as planned.
    assert all(millicores <= 2_000 * capacity.target_utilization + 1 for millicores in cpu.values()), cpu
    requested = sum(c.replicas * cpu[c.name] for c in components) / 1000
    assert requested == pytest.approx(sum(server.busy_cores for server in report.fleet.servers), abs=0.05)


def _pooled(plan, shard) -> bool:  # type: ignore[no-untyped-def]
    return plan.lookup_step == "fused" and shard.router_pooled and shard.placement.device == plan.router.device
