"""The distributed build: one repository per shard group and a front repository whose steps call them over gRPC.

Layout of `out/` (see `naming`): `front/` (router, dense, one remote step per group, the ensembles), `groups/<group
model>/` (one repository per shard group, its instances per replica server), `topology.json` (the `Topology`),
`plan.json` (the plan, what `recgen k8s --layout-dir` deploys) and README.md. Written through `staging` like a
single-server build: a failed build leaves the old output untouched.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from generator import naming, triton_runtime
from generator.deploy.topology import GroupDeployment, Topology, distributed_plan, front_plan, remote_instances
from generator.planning.plan import GroupBy, Model, Placement, Plan
from generator.planning.plan_file import save_plan
from generator.repository import contents, readme, staging
from generator.repository.build import BuildResult, BuiltModel, ModelWriter, check_options
from generator.repository.configs import Backend, LeafOptions, Target
from generator.repository.generation import (
    STAGED_ENSEMBLES,
    PendingGeneration,
    check_ensembles,
    move_leaves,
    new_staging_dir,
    next_plan,
    read_running,
    save_pending,
)
from generator.repository.manifest import write_manifest
from generator.repository.params import RemoteCallPolicy
from generator.repository.perf_input import write_perf_inputs


@dataclass(frozen=True)
class DistributedBuild:
    """A distributed layout: the front repository and one repository per shard group (see topology.json)."""

    plan: Plan
    root: Path
    topology: Topology
    models: tuple[BuiltModel, ...]

    @property
    def front(self) -> Path:
        """The front server's repository."""
        return self.root / self.topology.front.repository

    @property
    def groups(self) -> tuple[GroupDeployment, ...]:
        """Every shard group's deployment."""
        return self.topology.groups

    def group_repository(self, group: GroupDeployment) -> Path:
        """Where a group's repository was written."""
        return self.root / group.repository

    @property
    def ensemble_name(self) -> str:
        """The endpoint clients call, on the front server."""
        return self.topology.ensemble

    def __str__(self) -> str:
        policy = self.topology.remote_call
        lines = [f"wrote a distributed layout of {self.plan.model_name!r} in {self.root}:"]
        front = self.topology.front
        pooled = f", pools {front.rows_bytes:,} bytes of rows" if front.rows_bytes else ""
        lines.append(
            f"  front    {self.front}  {front.replica_servers} server(s): router{pooled}, dense, "
            f"{len(self.groups)} remote steps, ensemble"
        )
        for group in self.groups:
            lines.append(
                f"  group    {self.group_repository(group)}  {group.replica_servers} replica server(s) of "
                f"{group.instances_per_server} instance(s) on {group.device}, {group.rows_bytes:,} bytes of rows, "
                f"service {group.service}:{triton_runtime.GRPC_PORT}"
            )
        lines += [f"  {model.name}: {note}" for model in self.models for note in model.notes]
        lines += [
            f"remote calls: deadline {policy.deadline_s:g} s, {policy.max_attempts} attempts, "
            f"backoff from {policy.backoff_s:g} s",
            f"serve here:   recgen serve --distributed {self.root}",
            f"Kubernetes:   recgen k8s --layout-dir {self.root} -o deploy/",
        ]
        return "\n".join(lines)


def build_distributed(
    model: Model,
    plan: Plan,
    out: Path,
    *,
    backend: Backend = "python",
    target: Target = "embedded",
    policy: RemoteCallPolicy | None = None,
    group_by: GroupBy | None = None,
    force: bool = False,
    inputs: Sequence[Path] = (),
) -> DistributedBuild:
    """The plan as separately served shard groups behind a front server.

    One repository per shard group the router does not pool (its replica servers run the plan's instances per
    server) and a front repository whose ensemble keeps the request contract, its shard-group steps calling the
    groups over gRPC. With the fused lookup step the front's routers pool the shards the plan leaves to them. By
    default (`group_by` None) every shard is its own group, so each is scaled on its own (ElasticRec);
    `group_by="placement"` serves shards with the same placement together (fewer services and hops).
    `inputs`: the files the build was made from (model, plan), never allowed inside the output.
    """
    leaves = check_options(backend, target, plan.lookup_engine)
    plan.check_matches(model)
    plan = distributed_plan(plan, group_by or "shard")
    topology = Topology.from_plan(plan, group_by=plan.group_by, policy=policy)
    out = Path(out)
    staging.check_output(out, "--out", force, inputs)
    with staging.staged([out]) as (staged,):
        writer = ModelWriter(model, front_plan(plan), leaves)
        front = staged / topology.front.repository
        front.mkdir()
        writer.profile(front)
        write_front_and_groups(writer, topology, front, front, staged)
        write_manifest(plan, writer.wire, leaves, front)
        write_perf_inputs(front, front)
        topology.save(staged)
        save_plan(plan, staged / naming.DISTRIBUTED_PLAN_FILE)
        result = DistributedBuild(plan, out, topology, tuple(writer.built))
        front_result = BuildResult(plan, backend, target, out / topology.front.repository, None, result.models)
        (staged / readme.README_FILE).write_text(readme.render(model, front_result, topology=topology, root=out))
        for repository in (front, *(staged / group.repository for group in topology.groups)):
            contents.record(repository)
    return result


_STAGED_LEAVES = "leaves"


def write_front_and_groups(writer: ModelWriter, topology: Topology, leaves: Path, ensembles: Path, root: Path) -> None:
    """A distributed build's models: the front's leaves, its ensembles, every group's repository under `root`."""
    writer.router(leaves)
    servers = topology.front.replica_servers
    for wired, deployment in zip(writer.wire.steps, topology.groups, strict=True):
        per_server = deployment.instances_per_server
        writer.shard_group(root / deployment.repository, wired, Placement(per_server, deployment.device, per_server))
        writer.remote_group(leaves, wired, topology.remote_call, remote_instances(deployment, servers))
    writer.dense(leaves)
    writer.ensemble(ensembles)
    writer.ranking(leaves, ensembles)


def write_distributed_generation(model: Model, plan: Plan, root: Path, leaves: LeafOptions) -> PendingGeneration:
    """The generation after the running one of a distributed build, written beside it (see `generation`).

    New shard groups get repositories of their own under `groups/` (their names carry the generation), the
    front's new leaves and remote steps land in `front/`; the ensembles' configs, topology.json, plan.json, the
    manifest and README wait in the staging directory until the switch. Grouping and remote-call policy stay the
    running build's.
    """
    root = Path(root).resolve()
    running_topology = Topology.load(root)
    front = root / running_topology.front.repository
    running = read_running(front, front)
    plan = distributed_plan(next_plan(plan, running), running_topology.group_by)
    plan.check_matches(model)
    topology = Topology.from_plan(plan, group_by=plan.group_by, policy=running_topology.remote_call)
    staging = new_staging_dir(front, plan.generation)
    try:
        writer = ModelWriter(model, front_plan(plan), leaves)
        write_front_and_groups(writer, topology, staging / _STAGED_LEAVES, staging / STAGED_ENSEMBLES, staging)
        for group in topology.groups:  # complete now; the front is listed again once its switch is done
            contents.record(staging / group.repository)
        check_ensembles(running, front, staging / STAGED_ENSEMBLES)
        write_manifest(plan, writer.wire, leaves, staging)
        topology.save(staging)
        save_plan(plan, staging / naming.DISTRIBUTED_PLAN_FILE)
        result = DistributedBuild(plan, root, topology, tuple(writer.built))
        front_result = BuildResult(plan, leaves.backend, leaves.target, front, None, result.models)
        (staging / readme.README_FILE).write_text(readme.render(model, front_result, topology=topology, root=root))
        installs = [(staging / naming.MANIFEST_FILE, front / naming.MANIFEST_FILE)]
        installs += [(staging / name, root / name) for name in (naming.TOPOLOGY_FILE, readme.README_FILE)]
        installs += [(path, root / path.name) for path in staging.glob(Path(naming.DISTRIBUTED_PLAN_FILE).stem + ".*")]
        new_leaves = tuple(m.name for m in writer.built if m.role in ("router", "remote", "dense"))
        staged_leaves = staging / _STAGED_LEAVES
        move_leaves(staged_leaves, front, new_leaves)
        try:
            move_leaves(staging / naming.GROUPS_DIR, root / naming.GROUPS_DIR, topology.group_models())
        except BaseException:
            for name in new_leaves:
                shutil.rmtree(front / name, ignore_errors=True)
            raise
        pending = save_pending(
            plan, running, (front, front), staging, new_leaves, installs,
            new_groups=tuple(topology.group_models()),
            old_groups=tuple(running_topology.group_models()),
            topology=str(staging / naming.TOPOLOGY_FILE),
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return pending
