"""Build a Triton repository (leaf models) and an ensemble repository from a model and a plan, atomically.

Everything is written into temporary directories beside the outputs, every config is parsed back with Triton's
schema and the ensemble's data flow is checked, and only then are the directories renamed into place; a failed
build leaves the previous outputs (if any) untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from generator import __version__, export, naming, render
from generator.errors import OutputExistsError, UserInputError
from generator.models import DLRM
from generator.plan import Plan
from generator.render import BACKENDS, TARGETS, Backend, Target
from generator.serve import SERVING_ENV

#: Image the `container` target is written for (Triton 2.51 = NGC 24.10).
NGC_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
MANIFEST_FORMAT_VERSION = 1


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


def _write_all(
    model: DLRM, plan: Plan, repository: Path, ensembles: Path, backend: Backend, target: Target
) -> list[BuiltModel]:
    configs: dict[str, mc.ModelConfig] = {}
    built: list[BuiltModel] = []

    def finish(config: mc.ModelConfig, version_dir: Path, role: str, detail: str) -> None:
        render.write_config(config, version_dir.parent)
        configs[config.name] = config
        group = config.instance_group[0]
        built.append(
            BuiltModel(
                name=config.name,
                role=role,
                backend=_backend_label(config) + (" (onnx)" if role != "router" and backend == "onnx" else ""),
                instance_count=group.count,
                device="gpu" if group.kind == mc.ModelInstanceGroup.KIND_GPU else "cpu",
                num_bytes=export.directory_bytes(version_dir.parent),
                detail=detail,
            )
        )

    router = render.router_config(plan)
    version_dir = _new_model_dir(repository, router.name)
    export.export_router(plan, version_dir)
    finish(router, version_dir, "router", f"{len(plan.tables)} tables -> {len(plan.shards)} shards")

    for group in plan.shard_groups():
        config = render.shard_group_config(plan, group, backend, target)
        version_dir = _new_model_dir(repository, config.name)
        export.export_shard_group(model, plan, group, backend, target, version_dir)
        members = ", ".join(f"{s.table}[{s.row_start}:{s.row_end}]" for s in group.shards)
        finish(config, version_dir, "shards", members if len(members) < 60 else f"{len(group.shards)} shards")

    dense = render.dense_config(plan, model.num_dense_features, backend, target)
    version_dir = _new_model_dir(repository, dense.name)
    export.export_dense(model, plan, backend, target, version_dir)
    finish(dense, version_dir, "dense", f"MLPs {model.bottom_mlp} / {model.top_mlp}")

    ensemble = render.ensemble_config(plan, model.num_dense_features)
    render.check_ensemble(ensemble, configs)
    ensemble_dir = ensembles / ensemble.name
    (ensemble_dir / naming.MODEL_VERSION).mkdir(parents=True)  # Triton needs a version dir, even an empty one
    render.write_config(ensemble, ensemble_dir)
    built.append(
        BuiltModel(
            ensemble.name,
            "ensemble",
            "ensemble",
            0,
            "-",
            export.directory_bytes(ensemble_dir),
            f"{len(ensemble.ensemble_scheduling.step)} steps",
        )
    )
    return built


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
