"""The README.md of every generated repository, rendered from a jinja2 template shipped in the package.

It says what the repository holds (models, roles, instances, devices), how the ensembles chain them, the request
contract with shapes and dtypes, the exact commands that serve it (embedded server, `tritonserver`, `docker run`)
and the plan it was built from. Paths in the commands are relative to the directory holding the outputs when they
share one, so a committed example reads the same on every machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from generator import naming, triton_runtime
from generator.planning import precision
from generator.planning.plan import Model
from generator.repository import layout
from generator.repository.layout import TensorSpec

if TYPE_CHECKING:  # build imports this module
    from generator.repository.build import BuildResult, BuiltModel

README_FILE = naming.README_FILE
_TEMPLATE = "repository_readme.md.j2"


@dataclass(frozen=True)
class TensorRow:
    """One tensor of a request contract, as the README shows it."""

    name: str
    dtype: str
    shape: str
    meaning: str


def _shape(spec: TensorSpec, batch: str | None) -> str:
    """`[B, 13]` for a batching model's tensor; `[1, 6]` or `[N, 8]` for a full shape (-1 is N)."""
    if batch:
        return "[" + ", ".join([batch, *map(str, spec.dims)]) + "]"
    first, *rest = spec.dims
    return "[" + ", ".join(["N" if first == -1 else str(first), *map(str, rest)]) + "]"


def _meaning(spec: TensorSpec, outputs: bool, weighs: Mapping[str, str]) -> str:
    name = spec.name
    if name == naming.SCORE and outputs:
        return "click probability (sigmoid)"
    if outputs:
        return "the model's own output, with its own meaning"
    if name in weighs:
        return f"one weight per id of `{weighs[name]}` (ignored where an id is -1)"
    if spec.data_type == "FP32":
        return "continuous features" + (" of the user" if name.startswith("user") else "")
    return "multi-hot ids, right-padded with -1"


def _rows(
    specs: Sequence[TensorSpec], batch: str | None, *, outputs: bool = False, weighs: Mapping[str, str] | None = None
) -> list[TensorRow]:
    """`weighs`: weights input -> the ids input it weighs."""
    return [TensorRow(s.name, s.data_type, _shape(s, batch), _meaning(s, outputs, weighs or {})) for s in specs]


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("generator.repository", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # markdown, not HTML
    )


def _relative(paths: Sequence[Path]) -> tuple[list[str], str]:
    """Paths as the commands name them, and the directory to run them from."""
    resolved = [path.resolve() for path in paths]
    parents = {path.parent for path in resolved}
    if len(parents) == 1:
        return [path.name for path in resolved], "the directory that holds " + ", ".join(
            f"`{path.name}/`" for path in resolved
        )
    return [str(path) for path in resolved], "any directory"


def _contracts(model: Model, result: BuildResult) -> list[dict[str, Any]]:
    plan = result.plan
    dense, outputs = layout.model_signature(model)
    weighs = {naming.weights_input(f.name): naming.sparse_input(f.name) for f in plan.sparse_features if f.weighted}
    contracts = [
        {
            "name": naming.ensemble_model(plan.model_name),
            "inputs": _rows(layout.ensemble_inputs(plan, dense), "B", weighs=weighs),
            "outputs": _rows(layout.ensemble_outputs(outputs), "B", outputs=True),
        }
    ]
    ranking = naming.ranking_ensemble(plan.model_name)
    if any(built.name == ranking and built.role == "ensemble" for built in result.models):
        inputs, ranking_outputs = layout.ranking_signature(plan, model)
        weighs = {
            naming.side_input(weights, f.side): naming.side_input(ids, f.side)
            for f in plan.sparse_features
            for weights, ids in ((naming.weights_input(f.name), naming.sparse_input(f.name)),)
            if f.weighted
        }
        contracts.append(
            {
                "name": ranking,
                "inputs": _rows(inputs, None, weighs=weighs),
                "outputs": _rows(ranking_outputs, None, outputs=True),
            }
        )
    return contracts


def render(model: Model, result: BuildResult, *, topology: Any = None, root: Path | None = None) -> str:
    """The README text of a build; with `topology` and `root`, of the distributed build in `root`."""
    outputs = result.repositories if root is None else [root]
    names, run_from = _relative(outputs)
    inside = ["/models", "/ensembles"][: len(names)]
    models: Sequence[BuiltModel] = result.models
    return (
        _environment()
        .get_template(_TEMPLATE)
        .render(
            model_name=result.plan.model_name,
            layout="single" if topology is None else "distributed",
            topology=topology,
            backend=result.backend,
            lookup_engine=result.plan.lookup_engine,
            target=result.target,
            models=models,
            contracts=_contracts(model, result),
            max_batch_size=result.plan.max_batch_size,
            run_from=run_from,
            repositories=names,
            tritonserver=" ".join(
                [
                    "tritonserver",
                    *(f"--model-repository={name}" for name in names),
                    *triton_runtime.server_flags(gpu=result.uses_gpu),
                ]
            ),
            serve=f"recgen serve --repo {names[0]}" + (f" --ensembles {names[1]}" if len(names) > 1 else ""),
            docker=triton_runtime.docker_run_command(
                [
                    (f'"$PWD/{name}"' if not os.path.isabs(name) else name, path)
                    for name, path in zip(names, inside, strict=True)
                ],
                gpu=result.uses_gpu,
            ),
            plan=str(result.plan),
            fused=bool(result.plan.router_pooled_groups()) and topology is None,
            reduced_rows=precision.has_reduced_rows(result.plan),
            row_dtypes=precision.dtype_summary(result.plan),
            image=triton_runtime.NGC_IMAGE,
            perf_dir=names[-1] if topology is None else f"{names[0]}/{naming.FRONT_DIR}",
        )
    )


def write_single(repository: Path, result: BuildResult, model: Model) -> Path:
    """Write README.md into one (staged) repository of a single-server build."""
    path = repository / README_FILE
    path.write_text(render(model, result))
    return path
