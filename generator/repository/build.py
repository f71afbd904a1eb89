"""Build a Triton repository (leaf models) and an ensemble repository from a model and a plan, atomically.

Everything is written into staged directories beside the outputs (`staging`), every config is parsed back with
Triton's schema and the ensemble's data flow is checked, and only then are the directories renamed into place; a
failed build leaves the previous outputs (if any) untouched. Every repository gets a README.md that says what is
in it and how to serve and call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tritonclient.grpc import model_config_pb2 as mc

from generator import naming, native, triton_runtime
from generator.errors import UserInputError
from generator.model.dlrm import DLRM
from generator.planning.choices import serves_natively
from generator.planning.plan import (
    Model,
    Placement,
    Plan,
)
from generator.repository import (
    configs,
    contents,
    dense_graphs,
    export,
    layout,
    manifest,
    perf_input,
    readme,
    runtime_files,
    staging,
    validation,
    wiring,
)
from generator.repository.configs import BACKENDS, TARGETS, Backend, LeafOptions, Target
from generator.repository.params import RemoteCallPolicy
from generator.repository.wiring import GroupWire

#: What a generated model does in its ensemble.
Role = Literal["router", "shards", "remote", "dense", "ensemble", "whole", "profile"]
#: One server for everything, or every shard group served on its own behind a front (`deploy.distributed`).
Layout = Literal["single", "distributed"]
LAYOUTS: tuple[Layout, ...] = ("single", "distributed")


@dataclass(frozen=True)
class BuiltModel:
    """One generated Triton model."""

    name: str
    role: Role
    backend: str
    instance_count: int
    device: str
    num_bytes: int
    detail: str = ""
    #: Lines the build prints under the table (what a step computes, what stopped it doing more).
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote, and how to serve it."""

    plan: Plan
    backend: Backend
    target: Target
    repository: Path
    ensembles: Path | None
    models: tuple[BuiltModel, ...]
    #: What the build wants its user to know (printed last, as `note:` lines).
    notes: tuple[str, ...] = ()

    @property
    def repositories(self) -> list[Path]:
        """Every repository the server must load."""
        return [self.repository] if self.ensembles is None else [self.repository, self.ensembles]

    @property
    def ensemble_name(self) -> str:
        """The endpoint clients call."""
        return naming.ensemble_model(self.plan.model_name)

    @property
    def uses_gpu(self) -> bool:
        """Whether any model has KIND_GPU instances."""
        return any(model.device == "gpu" for model in self.models)

    def container_command(self) -> str:
        """The command that serves this build in the NGC Triton container."""
        volumes = [(self.repository.resolve(), "/models")]
        if self.ensembles is not None:
            volumes.append((self.ensembles.resolve(), "/ensembles"))
        return triton_runtime.docker_run_command(volumes, gpu=self.uses_gpu)

    def __str__(self) -> str:
        lines = [
            f"wrote {len(self.models)} models for {self.plan.model_name!r} "
            f"(backend {self.backend}, lookup engine {self.plan.lookup_engine}, target {self.target}):",
            f"  {'model':<40} {'role':<8} {'backend':<11} {'instances':>9} {'device':>6} {'bytes':>12}  detail",
        ]
        for model in self.models:
            lines.append(
                f"  {model.name:<40} {model.role:<8} {model.backend:<11} {model.instance_count:>9} "
                f"{model.device:>6} {model.num_bytes:>12,}  {model.detail}"
            )
        for model in self.models:
            lines += [f"  {model.name}: {note}" for note in model.notes]
        total = sum(model.num_bytes for model in self.models)
        lines += [
            f"  total {total:,} bytes; {len(self.plan.shards)} shards over {len(self.plan.tables)} tables",
            f"leaf models: {self.repository}",
            f"ensemble:    {self.ensembles}/{self.ensemble_name}"
            if self.ensembles
            else "ensemble:    none (monolithic)",
            f"serve here:  recgen serve --repo {self.repository}"
            + (f" --ensembles {self.ensembles}" if self.ensembles else ""),
            f"NGC container ({triton_runtime.NGC_IMAGE}):",
            f"  {self.container_command()}",
        ]
        lines += [f"note: {note}" for note in self.notes]
        if self.backend == "python" and self.uses_gpu:
            lines.append(
                "note: the numpy models refuse KIND_GPU instances (they would compute on the host): "
                "serve GPU steps with --backend onnx."
            )
        return "\n".join(lines)


def check_options(backend: str, target: str, lookup_engine: str = "python") -> LeafOptions:
    """The leaf options, or a UserInputError naming the allowed values.

    The native lookup engine needs the native backend built here (NativeUnavailableError says why not and what to
    install), and serves the embedded target only: the NGC image of the container target does not carry it yet.
    """
    if backend not in BACKENDS:
        raise UserInputError(f"`backend` must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if target not in TARGETS:
        raise UserInputError(f"`target` must be one of {', '.join(TARGETS)}, got {target!r}")
    if lookup_engine == "native":
        if target == "container":
            raise UserInputError(
                "`--lookup-engine native` builds for the embedded server only (the NGC image does not carry "
                "libtriton_recgen.so yet): use `--target embedded` or `--lookup-engine python`"
            )
        native.library()
    return LeafOptions(backend, target)


def _check_outputs(repository: Path, ensembles: Path, force: bool, inputs: Sequence[Path]) -> None:
    repository, ensembles = repository.resolve(), ensembles.resolve()
    if repository == ensembles or repository in ensembles.parents or ensembles in repository.parents:
        raise UserInputError(
            f"`--out` ({repository}) and `--ensembles` ({ensembles}) must be separate, non-nested directories"
        )
    staging.check_output(repository, "--out", force, inputs)
    staging.check_output(ensembles, "--ensembles", force, inputs)


def write_ensemble_version(ensemble_dir: Path, generation: int) -> Path:
    """The ensemble's version directory of a generation (its version number is the generation's).

    Triton loads no ensemble without a version directory, and git keeps no empty directory: a clone of a committed
    repository must serve, so the directory holds a note saying why it is there.
    """
    version_dir = ensemble_dir / str(generation)
    version_dir.mkdir(parents=True)
    (version_dir / naming.ENSEMBLE_VERSION_NOTE).write_text(
        "Triton needs a numeric version directory for every model, ensembles included; an ensemble keeps no "
        "files in it. Its number is the generation of models it runs (`recgen update` writes the next one).\n"
    )
    return version_dir


def _new_model_dir(root: Path, name: str) -> Path:
    version_dir = root / name / naming.MODEL_VERSION
    version_dir.mkdir(parents=True)
    return version_dir


class ModelWriter:
    """Writes models into repositories and records what it wrote (configs for the ensemble check, built models)."""

    def __init__(self, model: Model, plan: Plan, leaves: LeafOptions):
        self.model, self.plan, self.leaves = model, plan, leaves
        self.wire = wiring.wire_layout(plan)  # the one wire layout every model of this build is written from
        self.configs: dict[str, mc.ModelConfig] = {}
        self.built: list[BuiltModel] = []

    def _finish(
        self, config: mc.ModelConfig, version_dir: Path, role: Role, detail: str, notes: Sequence[str] = ()
    ) -> None:
        config = configs.with_shedding(self.plan, config)
        validation.write_config(config, version_dir.parent)
        self.configs[config.name] = config
        group = config.instance_group[0]
        onnx = (version_dir / naming.ONNX_MODEL_FILE).exists()  # an ONNX graph, whichever backend runs it
        self.built.append(
            BuiltModel(
                name=config.name,
                role=role,
                backend=(config.backend or config.platform) + (" (onnx)" if onnx else ""),
                instance_count=group.count,
                device="gpu" if group.kind == mc.ModelInstanceGroup.KIND_GPU else "cpu",
                num_bytes=export.directory_bytes(version_dir.parent),
                detail=detail,
                notes=tuple(notes),
            )
        )

    def backend_note(self) -> str | None:
        """Say so when `backend` changed nothing: a dense graph without numpy kernels is ONNX with either backend."""
        if self.model.numpy_dense:
            return None
        engine = self.plan.lookup_engine
        if any(not serves_natively(engine, wired.group.placement.device) for wired in self.wire.steps):
            return None
        where = "the router pools every shard group" if not self.wire.steps else "every shard group is served natively"
        return (
            f"--backend {self.leaves.backend} changes nothing here: this model's dense steps are ONNX "
            f"(ONNX Runtime) with either backend, and {where} (lookup engine {engine})"
        )

    def router(self, repository: Path) -> None:
        """The router, with the rank maps and front cache it needs."""
        config = configs.router_config(self.plan, self.wire, layout.model_signature(self.model)[0])
        version_dir = _new_model_dir(repository, config.name)
        export.export_router(self.model, self.plan, self.wire, version_dir)
        pooled = self.wire.pooled
        detail = f"{len(self.plan.tables)} tables -> {len(self.plan.shards)} shards"
        if pooled:
            detail += f", pools {sum(len(wired.group.shards) for wired in pooled)} of them (fused lookup step)"
        self._finish(config, version_dir, "router", detail)

    def profile(self, repository: Path) -> None:
        """The model that sums the routers' access counters (unless the build turned counting off)."""
        config = configs.profile_config(self.plan)
        if config is None:
            return
        version_dir = _new_model_dir(repository, config.name)
        runtime_files.install_python_model(runtime_files.PROFILE_MODULE, version_dir)
        self._finish(config, version_dir, "profile", "sums the routers' access counts (recgen profile --from-server)")

    def shard_group(self, repository: Path, wired: GroupWire, placement: Placement | None = None) -> None:
        """A shard group model with its members' rows (`placement` replaces the group's own)."""
        config = configs.shard_group_config(self.plan, wired, self.leaves, placement)
        version_dir = _new_model_dir(repository, config.name)
        export.export_shard_group(self.model, self.plan, wired, self.leaves, version_dir)
        group = wired.group
        members = ", ".join(f"{s.table}[{s.row_start}:{s.row_end}]" for s in group.shards)
        self._finish(config, version_dir, "shards", members if len(members) < 60 else f"{len(group.shards)} shards")

    def remote_group(self, repository: Path, wired: GroupWire, policy: RemoteCallPolicy, instances: int) -> None:
        """The front's remote step for a shard group (replaces the group's config in the ensemble check).

        `instances`: this front server's share of the group's instances (one call in flight each).
        """
        config = configs.remote_group_config(self.plan, wired, policy, instances)
        version_dir = _new_model_dir(repository, config.name)
        runtime_files.install_python_model(runtime_files.REMOTE_GROUP_MODULE, version_dir)
        self._finish(config, version_dir, "remote", f"gRPC to {wired.group.placement.instance_count} instance(s)")

    def dense(self, repository: Path) -> None:
        """The dense model: recgen's numpy tower (`--backend python`) or the model's dense graph (ONNX)."""
        config = configs.dense_config(self.plan, self.wire, self.model, self.leaves)
        version_dir = _new_model_dir(repository, config.name)
        detail = dense_graphs.export_dense(self.model, self.plan, self.wire, self.leaves, version_dir)
        self._finish(config, version_dir, "dense", detail)

    def ranking(self, leaf_repository: Path, ensemble_repository: Path) -> None:
        """`<model>_ranking`, its router and dense model, for models with user-side features (groups are shared)."""
        model, plan, wire = self.model, self.plan, self.wire
        if not model.supports_ranking_requests:
            return
        router = configs.ranking_router_config(plan, wire, model)
        version_dir = _new_model_dir(leaf_repository, router.name)
        export.export_router(model, plan, wire, version_dir, pooled_rows=False)
        self._finish(router, version_dir, "router", "ranking: user row + candidate rows")
        dense = configs.ranking_dense_config(plan, wire, model, self.leaves)
        version_dir = _new_model_dir(leaf_repository, dense.name)
        tower, split = model.numpy_tower(), model.user_split()
        if tower is not None:
            export.export_dense_weights(tower, runtime_files.RANKING_DENSE_MODULE, version_dir)
            self._finish(dense, version_dir, "dense", "ranking: user-side work once per request")
        elif split is not None:
            dense_graphs.export_ranking_dense_graph(model, split, plan, wire, self.leaves, version_dir)
            detail = "ranking: the model's dense graph split, its user side once (ONNX)"
            self._finish(dense, version_dir, "dense", detail, str(split).splitlines())
        self._ensemble(configs.ranking_ensemble_config(plan, wire, model), ensemble_repository)

    def ensemble(self, repository: Path) -> None:
        """The flattened ensemble, checked against the models written so far."""
        self._ensemble(configs.ensemble_config(self.plan, self.wire, *layout.model_signature(self.model)), repository)

    def _ensemble(self, ensemble: mc.ModelConfig, repository: Path) -> None:
        validation.check_ensemble(ensemble, self.configs)
        ensemble_dir = repository / ensemble.name
        write_ensemble_version(ensemble_dir, self.plan.generation)
        validation.write_config(ensemble, ensemble_dir)
        steps = len(ensemble.ensemble_scheduling.step)
        self.built.append(
            BuiltModel(
                ensemble.name, "ensemble", "ensemble", 0, "-", export.directory_bytes(ensemble_dir), f"{steps} steps"
            )
        )


def build(
    model: Model,
    plan: Plan,
    repository: Path,
    ensembles: Path,
    *,
    backend: Backend = "python",
    target: Target = "embedded",
    force: bool = False,
    inputs: Sequence[Path] = (),
) -> BuildResult:
    """Write the router, shard, dense and ensemble models for `plan`; see the module docstring.

    `inputs`: the files the build was made from (model, plan), never allowed inside an output.
    """
    leaves = check_options(backend, target, plan.lookup_engine)
    plan.check_matches(model)
    repository, ensembles = Path(repository), Path(ensembles)
    _check_outputs(repository, ensembles, force, inputs)
    with staging.staged([repository, ensembles]) as (staged_repository, staged_ensembles):
        writer = ModelWriter(model, plan, leaves)
        writer.router(staged_repository)
        writer.profile(staged_repository)
        for wired in writer.wire.steps:
            writer.shard_group(staged_repository, wired)
        writer.dense(staged_repository)
        writer.ensemble(staged_ensembles)
        writer.ranking(staged_repository, staged_ensembles)
        notes = tuple(note for note in [writer.backend_note()] if note)
        result = BuildResult(plan, backend, target, repository, ensembles, tuple(writer.built), notes)
        manifest.write_manifest(plan, writer.wire, leaves, staged_repository)
        perf_input.write_perf_inputs(staged_repository, staged_ensembles)
        for staged_path in (staged_repository, staged_ensembles):
            readme.write_single(staged_path, result, model)
            contents.record(staged_path)
    return result


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
    leaves = check_options(backend, target)
    plan.check_matches(model)
    repository = Path(repository)
    staging.check_output(repository, "--out", force)
    with staging.staged([repository]) as (staged_repository,):
        config = configs.monolithic_config(plan, model.num_dense_features, leaves)
        version_dir = _new_model_dir(staged_repository, config.name)
        export.export_monolithic(model, plan, leaves, version_dir)
        validation.write_config(config, version_dir.parent)
        built = BuiltModel(
            config.name,
            "whole",
            config.backend,
            plan.dense.instance_count,
            plan.dense.device,
            export.directory_bytes(version_dir.parent),
            "monolithic",
        )
        result = BuildResult(plan, backend, target, repository, None, (built,))
        readme.write_single(staged_repository, result, model)
        contents.record(staged_repository)
    return result
