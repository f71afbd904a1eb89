"""The ONNX graphs of a model's dense steps: the flattened one and the ranking ensemble's.

Both run the model's dense graph (an imported model's remainder after its lookups, recgen's DLRM tower) behind a
prologue that adds each feature's partial sums from the shard groups (and divides the mean-pooled ones by their id
counts); the ranking one runs it split between the user side, computed once per request, and the candidates
(`generator.model.user_split`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from generator import naming
from generator.model.user_split import UserSplit
from generator.planning.plan import Model, Plan
from generator.repository import layout, wiring
from generator.repository.configs import LeafOptions
from generator.repository.export import EXPORT_EXAMPLE_BATCH, export_dense_weights, export_onnx
from generator.repository.runtime_files import DENSE_MODULE, ONNX_RUNNER_MODULE, install_python_model
from generator.repository.wiring import WireLayout


class Pooling:
    """Each feature's pool from the packed partial sums.

    The sum of its column ranges; a mean-pooled one divided by its id count (at least 1, as `nn.EmbeddingBag`
    gives 0 for an empty bag).
    """

    def __init__(self, parts: Sequence[Sequence[tuple[int, int, int]]], counted: Sequence[int | None]):
        self.parts = [list(per_feature) for per_feature in parts]  # per feature: (packed input index, first, last)
        self.counted = list(counted)  # per feature: its column in the counts input, or None (sum pooling)

    def pool(self, packed: Sequence[torch.Tensor], feature: int, rows: slice) -> torch.Tensor:
        """One feature's pool over these rows of the packed inputs (the counts input last, if any)."""
        per_feature, count = self.parts[feature], self.counted[feature]
        total = packed[per_feature[0][0]][rows, per_feature[0][1] : per_feature[0][2]]
        for index, first, last in per_feature[1:]:
            total = total + packed[index][rows, first:last]
        if count is not None:
            total = total / packed[-1][rows, count : count + 1].clamp(min=1.0)
        return total


class DenseStepGraph(nn.Module):
    """The ONNX graph of a dense step: pool every feature from its parts, then the model's dense graph."""

    def __init__(self, remainder: nn.Module, num_dense: int, pooling: Pooling):
        super().__init__()
        self.remainder = remainder
        self.num_dense = num_dense
        self.pooling = pooling

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Dense inputs, each group's packed partial sums, then (if any feature is mean-pooled) the counts."""
        dense, packed = inputs[: self.num_dense], inputs[self.num_dense :]
        every_row = slice(None)
        pooled = [self.pooling.pool(packed, feature, every_row) for feature in range(len(self.pooling.parts))]
        return tuple(self.remainder(*dense, *pooled))


def _dense_step_graph(model: Model, plan: Plan, wire: WireLayout) -> tuple[DenseStepGraph, list[layout.TensorSpec]]:
    """The flattened dense step of a model and its inputs (dense tensors, partial sums, counts)."""
    num_dense = len(layout.dense_tensors(model.dense_signature))
    inputs = wiring.dense_inputs(wire, model.dense_signature)
    position = {spec.name: index - num_dense for index, spec in enumerate(inputs)}
    parts = [[(position[name], first, last) for name, first, last in per] for per in wire.part_columns]
    means = wiring.mean_features(plan)
    counted = [means.index(f.name) if f.name in means else None for f in plan.sparse_features]
    return DenseStepGraph(model.dense_graph, num_dense, Pooling(parts, counted)).eval(), inputs


def _examples(specs: Sequence[layout.TensorSpec], rows: Sequence[int], counted: bool) -> list[torch.Tensor]:
    """Random example inputs with these leading sizes; the last one holds id counts when `counted`."""
    generator = torch.Generator().manual_seed(0)
    example = [torch.randn(count, *spec.dims, generator=generator) for spec, count in zip(specs, rows, strict=True)]
    if counted:
        example[-1] = torch.randint(0, 4, example[-1].shape, generator=generator).to(torch.float32)
    return example


def export_dense(model: Model, plan: Plan, wire: WireLayout, leaves: LeafOptions, version_dir: Path) -> str:
    """The dense step, and what it wrote in a few words.

    recgen's numpy tower where the model has one and `--backend python` asks for it; else its dense graph as ONNX.
    """
    tower = model.numpy_tower() if leaves.backend == "python" else None
    if tower is not None:
        export_dense_weights(tower, DENSE_MODULE, version_dir)
        return model.dense_description
    export_dense_graph(model, plan, wire, leaves, version_dir)
    return f"{model.dense_description} (ONNX)"


def export_dense_graph(model: Model, plan: Plan, wire: WireLayout, leaves: LeafOptions, version_dir: Path) -> None:
    """A model's dense step as model.onnx (ORT inside a Python model on the embedded server)."""
    graph, inputs = _dense_step_graph(model, plan, wire)
    example = _examples(inputs, [EXPORT_EXAMPLE_BATCH] * len(inputs), bool(wire.counts))
    names = [spec.name for spec in inputs]
    outputs = [name for name, _ in model.outputs]
    export_onnx(graph, tuple(example), names, outputs, version_dir / naming.ONNX_MODEL_FILE, varargs_after=0)
    if leaves.target == "embedded":
        install_python_model(ONNX_RUNNER_MODULE, version_dir)


class RankingDenseGraph(nn.Module):
    """A model's dense step for a ranking request, one user and N candidates (a model without numpy kernels).

    The partial sums (and counts) arrive as [1 + N, ...]: row 0 holds the pools of the user-side features, rows
    1..N those of the candidates' (each is zero where the other side's features sit). The user's pools come from
    row 0, the candidates' from rows 1..N, and the model's dense graph runs split in two (`UserSplit`): what
    depends only on the user once, at batch 1, the rest per candidate with the user's values broadcast.
    """

    def __init__(self, split: UserSplit, pooling: Pooling, user_dense: Sequence[bool], user_features: Sequence[bool]):
        super().__init__()
        self.user_graph, self.candidate_graph = split.user_graph, split.candidate_graph
        self.user_inputs, self.candidate_inputs = list(split.user_inputs), list(split.candidate_inputs)
        self.pooling = pooling
        self.num_dense = len(user_dense)
        self.rows = [slice(0, 1) if user else slice(1, None) for user in user_features]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The request's dense inputs (model order), then the [1 + N, ...] partial sums and counts."""
        dense, packed = inputs[: self.num_dense], inputs[self.num_dense :]
        values = [*dense, *(self.pooling.pool(packed, feature, rows) for feature, rows in enumerate(self.rows))]
        crossing = self.user_graph(*[values[i] for i in self.user_inputs])
        return tuple(self.candidate_graph(*[values[i] for i in self.candidate_inputs], *crossing))


def export_ranking_dense_graph(
    model: Model, split: UserSplit, plan: Plan, wire: WireLayout, leaves: LeafOptions, version_dir: Path
) -> None:
    """The ranking ensemble's dense step as model.onnx: the model's dense graph split (see `RankingDenseGraph`)."""
    flattened, _ = _dense_step_graph(model, plan, wire)
    inputs = wiring.ranking_dense_step_inputs(wire, model)
    user_dense = [side == "user" for _, side, _ in model.ranking_dense_tensors()]
    user_features = [feature.side == "user" for feature in model.features]
    candidates = torch.export.Dim("candidates", min=1, max=1 << 20)
    rows = torch.export.Dim("rows", min=2, max=(1 << 20) + 1) if not any(not user for user in user_dense) else None
    dense_shapes = [None if user else {0: candidates} for user in user_dense]
    row_shapes = [{0: candidates + 1 if rows is None else rows} for _ in inputs[len(user_dense) :]]
    sizes = [1 if user else EXPORT_EXAMPLE_BATCH for user in user_dense]
    sizes += [EXPORT_EXAMPLE_BATCH + 1] * (len(inputs) - len(user_dense))
    per_row = [dataclasses.replace(spec, dims=spec.dims[1:]) for spec in inputs]  # without the leading 1 or N
    example = _examples(per_row, sizes, bool(wire.counts))
    export_onnx(
        RankingDenseGraph(split, flattened.pooling, user_dense, user_features).eval(),
        tuple(example),
        [spec.name for spec in inputs],
        [name for name, _ in model.outputs],
        version_dir / naming.ONNX_MODEL_FILE,
        dynamic_shapes=((*dense_shapes, *row_shapes),),
    )
    if leaves.target == "embedded":
        install_python_model(ONNX_RUNNER_MODULE, version_dir)
