"""Build a Triton repository (leaf models) and an ensemble repository from a model and a plan, atomically.

Everything is written into temporary directories beside the outputs, every config is parsed back with Triton's
schema and the ensemble's data flow is checked, and only then are the directories renamed into place; a failed
build leaves the previous outputs (if any) untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from generator import __version__, export, naming, render
from generator.errors import OutputExistsError, UserInputError
from generator.models import DLRM
from generator.plan import GroupBy, Plan, ShardGroup, save_plan
from generator.render import BACKENDS, TARGETS, Backend, Target
from generator.serve import SERVING_ENV

#: Image the `container` target is written for (Triton 2.51 = NGC 24.10).
NGC_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
MANIFEST_FORMAT_VERSION = 1
TOPOLOGY_FORMAT_VERSION = 1


@dataclass(frozen=True)
class BuiltModel:
    """One generated Triton model."""

    name: str
    role: str
    backend: str
    instance_count: int
    device: str
    num_bytes: int
    detail: str = ""


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote, and how to serve it."""

    plan: Plan
    backend: Backend
    target: Target
    repository: Path
    ensembles: Path | None
    models: tuple[BuiltModel, ...]

    @property
    def repositories(self) -> list[Path]:
        """Every repository the server must load."""
        return [self.repository] if self.ensembles is None else [self.repository, self.ensembles]

    @property
    def ensemble_name(self) -> str:
        """The endpoint clients call."""
        return naming.ensemble_model(self.plan.model_name)

    def container_command(self) -> str:
        """The command that serves this build in the NGC Triton container."""
        gpus = "--gpus=all " if any(model.device == "gpu" for model in self.models) else ""
        volumes = f"-v {self.repository.resolve()}:/models"
        repositories = "--model-repository=/models"
        if self.ensembles is not None:
            volumes += f" -v {self.ensembles.resolve()}:/ensembles"
            repositories += " --model-repository=/ensembles"
        environment = " ".join(f"-e {name}={value}" for name, value in SERVING_ENV.items())
        return (
            f"docker run --rm {gpus}--shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 {environment} {volumes} "
            f"{NGC_IMAGE} tritonserver {repositories}"
        )

    def __str__(self) -> str:
        lines = [
            f"wrote {len(self.models)} models for {self.plan.model_name!r} "
            f"(backend {self.backend}, target {self.target}):",
            f"  {'model':<40} {'role':<8} {'backend':<11} {'instances':>9} {'device':>6} {'bytes':>12}  detail",
        ]
        for model in self.models:
            lines.append(
                f"  {model.name:<40} {model.role:<8} {model.backend:<11} {model.instance_count:>9} "
                f"{model.device:>6} {model.num_bytes:>12,}  {model.detail}"
            )
        total = sum(model.num_bytes for model in self.models)
        lines += [
            f"  total {total:,} bytes; {len(self.plan.shards)} shards over {len(self.plan.tables)} tables",
            f"leaf models: {self.repository}",
            f"ensemble:    {self.ensembles}/{self.ensemble_name}"
            if self.ensembles
            else "ensemble:    none (monolithic)",
            f"serve here:  recgen serve --repo {self.repository}"
            + (f" --ensembles {self.ensembles}" if self.ensembles else ""),
            f"NGC container ({NGC_IMAGE}):",
            f"  {self.container_command()}",
        ]
        return "\n".join(lines)


def _check_options(backend: str, target: str) -> None:
    if backend not in BACKENDS:
        raise UserInputError(f"`backend` must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if target not in TARGETS:
        raise UserInputError(f"`target` must be one of {', '.join(TARGETS)}, got {target!r}")


def _check_outputs(repository: Path, ensembles: Path, force: bool) -> None:
    repository, ensembles = repository.resolve(), ensembles.resolve()
    if repository == ensembles or repository in ensembles.parents or ensembles in repository.parents:
        raise UserInputError(
            f"`--out` ({repository}) and `--ensembles` ({ensembles}) must be separate, non-nested directories"
        )
    for path, flag in ((repository, "--out"), (ensembles, "--ensembles")):
        if path.exists() and not force:
            raise OutputExistsError(f"`{flag}` {path} already exists; pass --force to replace it")
        if path.exists() and not path.is_dir():
            raise UserInputError(f"`{flag}` {path} exists and is not a directory")


def _new_model_dir(root: Path, name: str) -> Path:
    version_dir = root / name / naming.MODEL_VERSION
    version_dir.mkdir(parents=True)
    return version_dir


def _backend_label(config: mc.ModelConfig) -> str:
    return config.backend or config.platform


def build(
    model: DLRM,
    plan: Plan,
    repository: Path,
    ensembles: Path,
    *,
    backend: Backend = "python",
    target: Target = "embedded",
    force: bool = False,
) -> BuildResult:
    """Write the router, shard, dense and ensemble models for `plan`; see the module docstring."""
    _check_options(backend, target)
    plan.check_matches(model)
    repository, ensembles = Path(repository), Path(ensembles)
    _check_outputs(repository, ensembles, force)
    staging = [
        Path(tempfile.mkdtemp(prefix=f".{path.name}.recgen-", dir=_parent(path))) for path in (repository, ensembles)
    ]
    try:
        models = _write_all(model, plan, staging[0], staging[1], backend, target)
        _write_manifest(plan, backend, target, staging[0])
        _publish([(staging[0], repository), (staging[1], ensembles)])
    finally:
        for path in staging:
            export.remove_tree(path)
    return BuildResult(plan, backend, target, repository, ensembles, tuple(models))


def _parent(path: Path) -> Path:
    parent = path.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


class _Writer:
    """Writes models into repositories and records what it wrote (configs for the ensemble check, built models)."""

    def __init__(self, model: DLRM, plan: Plan, backend: Backend, target: Target):
        self.model, self.plan, self.backend, self.target = model, plan, backend, target
        self.configs: dict[str, mc.ModelConfig] = {}
        self.built: list[BuiltModel] = []

    def _finish(self, config: mc.ModelConfig, version_dir: Path, role: str, detail: str) -> None:
        render.write_config(config, version_dir.parent)
        self.configs[config.name] = config
        group = config.instance_group[0]
        onnx = role in ("shards", "dense") and self.backend == "onnx"
        self.built.append(
            BuiltModel(
                name=config.name,
                role=role,
                backend=_backend_label(config) + (" (onnx)" if onnx else ""),
                instance_count=group.count,
                device="gpu" if group.kind == mc.ModelInstanceGroup.KIND_GPU else "cpu",
                num_bytes=export.directory_bytes(version_dir.parent),
                detail=detail,
            )
        )

    def router(self, repository: Path) -> None:
        config = render.router_config(self.plan)
        version_dir = _new_model_dir(repository, config.name)
        export.export_router(self.model, self.plan, version_dir)
        self._finish(config, version_dir, "router", f"{len(self.plan.tables)} tables -> {len(self.plan.shards)} shards")

    def shard_group(self, repository: Path, group: ShardGroup, *, one_instance: bool = False) -> None:
        config = render.shard_group_config(self.plan, group, self.backend, self.target, one_instance=one_instance)
        version_dir = _new_model_dir(repository, config.name)
        export.export_shard_group(self.model, self.plan, group, self.backend, self.target, version_dir)
        members = ", ".join(f"{s.table}[{s.row_start}:{s.row_end}]" for s in group.shards)
        self._finish(config, version_dir, "shards", members if len(members) < 60 else f"{len(group.shards)} shards")

    def remote_group(self, repository: Path, group: ShardGroup, policy: render.RemoteCallPolicy) -> None:
        config = render.remote_group_config(self.plan, group, policy)
        version_dir = _new_model_dir(repository, config.name)
        export.install_python_model(export.REMOTE_GROUP_MODULE, version_dir)
        self._finish(config, version_dir, "remote", f"gRPC to {group.placement.instance_count} replica(s)")

    def dense(self, repository: Path) -> None:
        config = render.dense_config(self.plan, self.model.num_dense_features, self.backend, self.target)
        version_dir = _new_model_dir(repository, config.name)
        export.export_dense(self.model, self.plan, self.backend, self.target, version_dir)
        self._finish(config, version_dir, "dense", f"MLPs {self.model.bottom_mlp} / {self.model.top_mlp}")

    def ranking(self, leaf_repository: Path, ensemble_repository: Path) -> None:
        """The `<model>_ranking` ensemble, its router and its dense model (shard groups shared with the flattened one).

        Only for models with features on both sides; an all-item model has nothing to compute once per request.
        """
        model, plan = self.model, self.plan
        if not model.supports_ranking_requests:
            return
        router = render.ranking_router_config(plan)
        version_dir = _new_model_dir(leaf_repository, router.name)
        export.export_router(model, plan, version_dir)
        self._finish(router, version_dir, "router", "ranking: user row + candidate rows")
        dense = render.ranking_dense_config(plan, model.dense_sides)
        version_dir = _new_model_dir(leaf_repository, dense.name)
        export.export_dense_weights(model, export.RANKING_DENSE_MODULE, version_dir)
        self._finish(dense, version_dir, "dense", "ranking: user-only terms once")
        self._ensemble(render.ranking_ensemble_config(plan, model.dense_sides), ensemble_repository)

    def ensemble(self, repository: Path) -> None:
        self._ensemble(render.ensemble_config(self.plan, self.model.num_dense_features), repository)

    def _ensemble(self, ensemble: mc.ModelConfig, repository: Path) -> None:
        render.check_ensemble(ensemble, self.configs)
        ensemble_dir = repository / ensemble.name
        (ensemble_dir / naming.MODEL_VERSION).mkdir(parents=True)  # Triton needs a version dir, even an empty one
        render.write_config(ensemble, ensemble_dir)
        steps = len(ensemble.ensemble_scheduling.step)
        self.built.append(
            BuiltModel(
                ensemble.name, "ensemble", "ensemble", 0, "-", export.directory_bytes(ensemble_dir), f"{steps} steps"
            )
        )


def _write_all(
    model: DLRM, plan: Plan, repository: Path, ensembles: Path, backend: Backend, target: Target
) -> list[BuiltModel]:
    writer = _Writer(model, plan, backend, target)
    writer.router(repository)
    for group in plan.shard_groups():
        writer.shard_group(repository, group)
    writer.dense(repository)
    writer.ensemble(ensembles)
    writer.ranking(repository, ensembles)
    return writer.built


@dataclass(frozen=True)
class GroupService:
    """One shard group served by its own Triton deployment: `replicas` servers each loading `repository`."""

    model: str
    repository: Path
    replicas: int
    device: str
    service: str
    rows_bytes: int


@dataclass(frozen=True)
class DistributedBuild:
    """A distributed layout: the front repository and one repository per shard group (see topology.json)."""

    plan: Plan
    root: Path
    front: Path
    groups: tuple[GroupService, ...]
    models: tuple[BuiltModel, ...]
    policy: render.RemoteCallPolicy

    @property
    def ensemble_name(self) -> str:
        """The endpoint clients call, on the front server."""
        return naming.ensemble_model(self.plan.model_name)

    def __str__(self) -> str:
        lines = [f"wrote a distributed layout of {self.plan.model_name!r} in {self.root}:"]
        lines.append(f"  front    {self.front}  (router, dense, {len(self.groups)} remote steps, ensemble)")
        for group in self.groups:
            lines.append(
                f"  group    {group.repository}  {group.replicas} replica(s) on {group.device}, "
                f"{group.rows_bytes:,} bytes of rows, service {group.service}:{naming.GRPC_PORT}"
            )
        lines += [
            f"remote calls: deadline {self.policy.deadline_s:g} s, {self.policy.max_attempts} attempts, "
            f"backoff from {self.policy.backoff_s:g} s",
            f"serve here:   recgen serve --distributed {self.root}",
            f"Kubernetes:   recgen k8s --layout-dir {self.root} -o deploy/",
        ]
        return "\n".join(lines)


def build_distributed(
    model: DLRM,
    plan: Plan,
    out: Path,
    *,
    backend: Backend = "python",
    target: Target = "embedded",
    policy: render.RemoteCallPolicy | None = None,
    group_by: GroupBy = "shard",
    force: bool = False,
) -> DistributedBuild:
    """The plan as separately served shard groups behind a front server.

    One repository per shard group (one instance per server; the plan's count is the replica count) and a front
    repository whose ensemble keeps the request contract, its shard-group steps calling the groups over gRPC.
    By default every shard is its own group, so each is scaled on its own (ElasticRec); `group_by="placement"`
    serves shards with the same placement together (fewer services and hops). Written into a temporary directory
    and renamed into place, like `build`.
    """
    _check_options(backend, target)
    plan.check_matches(model)
    plan = replace(plan, group_by=group_by)
    policy = policy or render.RemoteCallPolicy()
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"`--out` {out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise UserInputError(f"`--out` {out} exists and is not a directory")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.recgen-", dir=_parent(out)))
    try:
        writer = _Writer(model, plan, backend, target)
        front = staging / naming.FRONT_DIR
        front.mkdir()
        writer.router(front)
        groups = []
        for group in plan.shard_groups():
            name = render.shard_group_model_name(plan, group)
            repository = staging / naming.GROUPS_DIR / name
            writer.shard_group(repository, group, one_instance=True)
            writer.remote_group(front, group, policy)  # replaces the group's config in the ensemble check
            groups.append(
                GroupService(
                    name,
                    Path(naming.GROUPS_DIR) / name,
                    group.placement.instance_count,
                    group.placement.device,
                    naming.service_name(name),
                    export.directory_bytes(repository),
                )
            )
        writer.dense(front)
        writer.ensemble(front)
        writer.ranking(front, front)
        _write_manifest(plan, backend, target, front)
        _write_topology(plan, policy, groups, staging)
        save_plan(plan, staging / naming.DISTRIBUTED_PLAN_FILE)  # what `recgen k8s --layout-dir` deploys
        _publish([(staging, out)])
    finally:
        export.remove_tree(staging)
    return DistributedBuild(
        plan,
        out,
        out / naming.FRONT_DIR,
        tuple(replace(g, repository=out / g.repository) for g in groups),
        tuple(writer.built),
        policy,
    )


def _write_topology(plan: Plan, policy: render.RemoteCallPolicy, groups: list[GroupService], root: Path) -> None:
    """What `recgen serve --distributed` and `recgen k8s` start: the front and every group's replicas."""
    topology = {
        "format_version": TOPOLOGY_FORMAT_VERSION,
        "recgen_version": __version__,
        "model_name": plan.model_name,
        "ensemble": naming.ensemble_model(plan.model_name),
        "front": {
            "repository": naming.FRONT_DIR,
            "service": naming.front_service_name(plan.model_name),
            "replicas": plan.dense.instance_count,
        },
        "remote_call": asdict(policy),
        "groups": [
            {
                "model": g.model,
                "repository": str(g.repository),
                "replicas": g.replicas,
                "device": g.device,
                "service": g.service,
                "rows_bytes": g.rows_bytes,
                "endpoints_env": naming.endpoints_env_var(g.model),
            }
            for g in groups
        ],
    }
    (root / naming.TOPOLOGY_FILE).write_text(json.dumps(topology, indent=2) + "\n")


def build_monolithic(
    model: DLRM,
    plan: Plan,
    repository: Path,
    *,
    backend: Backend = "python",
    target: Target = "embedded",
    force: bool = False,
) -> BuildResult:
    """The model-wise baseline: the whole model as one Triton model named after it, `plan.dense` instances.

    Same request contract as the ensemble, so the same clients, checks and load tests run against it.
    """
    _check_options(backend, target)
    plan.check_matches(model)
    repository = Path(repository)
    if repository.exists() and not force:
        raise OutputExistsError(f"`--out` {repository} already exists; pass --force to replace it")
    staging = Path(tempfile.mkdtemp(prefix=f".{repository.name}.recgen-", dir=_parent(repository)))
    try:
        config = render.monolithic_config(plan, model.num_dense_features, backend, target)
        version_dir = _new_model_dir(staging, config.name)
        export.export_monolithic(model, plan, backend, target, version_dir)
        render.write_config(config, version_dir.parent)
        built = BuiltModel(
            config.name,
            "whole",
            _backend_label(config),
            plan.dense.instance_count,
            plan.dense.device,
            export.directory_bytes(version_dir.parent),
            "monolithic",
        )
        _publish([(staging, repository)])
    finally:
        export.remove_tree(staging)
    return BuildResult(plan, backend, target, repository, None, (built,))


def _write_manifest(plan: Plan, backend: Backend, target: Target, repository: Path) -> None:
    """A versioned record of what was built (Triton ignores plain files at the repository root)."""
    group_of = {
        (shard.table, shard.index): render.shard_group_model_name(plan, group)
        for group in plan.shard_groups()
        for shard in group.shards
    }
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "recgen_version": __version__,
        "model_name": plan.model_name,
        "backend": backend,
        "target": target,
        "max_batch_size": plan.max_batch_size,
        "group_by": plan.group_by,
        "tables": [
            {
                "table": table.spec.name,
                "num_rows": table.spec.num_rows,
                "dim": table.spec.dim,
                "max_ids_per_sample": table.spec.max_ids_per_sample,
                "permuted": table.row_order is not None,
                "shards": [
                    {
                        "model": group_of[(table.spec.name, shard.index)],
                        "row_start": shard.row_start,
                        "row_end": shard.row_end,
                        "instance_count": shard.placement.instance_count,
                        "device": shard.placement.device,
                    }
                    for shard in table.shards
                ],
            }
            for table in plan.tables
        ],
    }
    (repository / naming.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


def _publish(pairs: list[tuple[Path, Path]]) -> None:
    """Rename every staged directory onto its final path, all or nothing.

    Existing outputs are moved aside first and removed only once every rename succeeded; on failure the new
    outputs are removed and the old ones restored.
    """
    moved: list[tuple[Path, Path | None]] = []
    try:
        for staged, final in pairs:
            aside = None
            if final.exists():
                aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent)) / final.name
                os.rename(final, aside)
            moved.append((final, aside))
            os.rename(staged, final)
    except BaseException:
        for final, aside in reversed(moved):
            export.remove_tree(final)
            if aside is not None:
                os.rename(aside, final)
                export.remove_tree(aside.parent)
        raise
    for _, aside in moved:
        if aside is not None:
            export.remove_tree(aside.parent)
