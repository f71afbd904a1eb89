"""The tensors of a generated repository's contracts: the requests (flattened and ranking), the router's reads.

One owner for the request contracts and the tensor specs every signature is made of; what travels between the
router, the shard groups and the dense models is `wire` (built once per plan from these). Dtypes are Triton's names
(`FP32`, `INT64`, `INT32`); mapping them to the config schema is `configs`' job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from generator import naming
from generator.model.protocol import DenseSignature
from generator.planning.plan import Model, Plan

DataType = Literal["FP32", "INT64", "INT32"]


@dataclass(frozen=True)
class TensorSpec:
    """A tensor of a model's signature; `dims` exclude the batch dimension of batching models."""

    name: str
    data_type: DataType
    dims: tuple[int, ...]

    def unbatched(self) -> TensorSpec:
        """The same tensor with a leading variable dimension (for models with max_batch_size 0)."""
        return TensorSpec(self.name, self.data_type, (-1, *self.dims))


def fp32(name: str, *dims: int) -> TensorSpec:
    """An FP32 tensor."""
    return TensorSpec(name, "FP32", dims)


def int64(name: str, *dims: int) -> TensorSpec:
    """An INT64 tensor."""
    return TensorSpec(name, "INT64", dims)


def int32(name: str, *dims: int) -> TensorSpec:
    """An INT32 tensor (local row ids: a shard holds < 2**31 rows, half the bytes of int64 on the edge)."""
    return TensorSpec(name, "INT32", dims)


def row_dim(plan: Plan) -> int:
    """Width of every row and partial sum of recgen's DLRM (its protocol: every table's dim equals bottom_mlp[-1])."""
    return plan.tables[0].spec.dim


def table_dims(plan: Plan) -> dict[str, int]:
    """Row width per table (an imported model's tables keep their own widths)."""
    return {table.spec.name: table.spec.dim for table in plan.tables}


# -- request contracts -------------------------------------------------------------------------------------------


def sparse_inputs(plan: Plan) -> list[TensorSpec]:
    """One multi-hot id tensor per feature (the flattened request and the router's inputs)."""
    return [int64(naming.sparse_input(f.name), f.max_ids_per_sample) for f in plan.sparse_features]


def weight_inputs(plan: Plan) -> list[TensorSpec]:
    """One per-id weight tensor per weighted feature, laid out as its ids ([] for unweighted models)."""
    return [fp32(naming.weights_input(f.name), f.max_ids_per_sample) for f in plan.sparse_features if f.weighted]


def router_inputs(plan: Plan) -> list[TensorSpec]:
    """What the router reads from a flattened request: every feature's ids, then the weighted features' weights."""
    return [*sparse_inputs(plan), *weight_inputs(plan)]


#: A model's outputs, (name, per-sample dims) each; None for `score` [B, 1] (the monolithic baseline's).
OutputSignature = Sequence[tuple[str, tuple[int, ...]]] | None


def model_signature(model: Model) -> tuple[DenseSignature, OutputSignature]:
    """The dense side and the outputs of a model's request contract."""
    return model.dense_signature, model.outputs


def dense_tensors(dense: DenseSignature) -> list[TensorSpec]:
    """The request's dense tensors."""
    if isinstance(dense, int):
        return [fp32(naming.DENSE_FEATURES, dense)]
    return [fp32(name, width) for name, width in dense]


def ensemble_inputs(plan: Plan, dense: DenseSignature) -> list[TensorSpec]:
    """The flattened request contract: the dense tensors, one multi-hot id tensor per feature, then the weights."""
    return [*dense_tensors(dense), *router_inputs(plan)]


def ensemble_outputs(outputs: OutputSignature = None) -> list[TensorSpec]:
    """The flattened request contract's outputs: `score` [B, 1], or an imported model's own outputs."""
    if outputs is None:
        return [fp32(naming.SCORE, 1)]
    return [fp32(name, *dims) for name, dims in outputs]


def ranking_sparse_inputs(plan: Plan) -> list[TensorSpec]:
    """The ranking request's ids (full shapes): [1, L] for a user-side feature, [N, L] for an item-side one."""
    return [
        int64(naming.side_sparse_input(f.name, f.side), _rows_of(f.side), f.max_ids_per_sample)
        for f in plan.sparse_features
    ]


def ranking_weight_inputs(plan: Plan) -> list[TensorSpec]:
    """The ranking request's per-id weights of the weighted features, shaped as their ids."""
    return [
        fp32(naming.side_input(naming.weights_input(f.name), f.side), _rows_of(f.side), f.max_ids_per_sample)
        for f in plan.sparse_features
        if f.weighted
    ]


def ranking_router_inputs(plan: Plan) -> list[TensorSpec]:
    """What the ranking router reads: every feature's ids on its side, then the weighted features' weights."""
    return [*ranking_sparse_inputs(plan), *ranking_weight_inputs(plan)]


def ranking_dense_inputs(model: Model) -> list[TensorSpec]:
    """A ranking request's dense tensors: [1, width] on the user side, [N, width] on the candidates'."""
    return [fp32(name, _rows_of(side), width) for name, side, width in model.ranking_dense_tensors()]


def ranking_signature(plan: Plan, model: Model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The `<model>_ranking` request contract (full shapes): inputs, then outputs ([N, ...] each)."""
    outputs = [fp32(name, -1, *dims) for name, dims in model.outputs]
    return [*ranking_dense_inputs(model), *ranking_router_inputs(plan)], outputs


def finite_inputs(plan: Plan, dense: DenseSignature) -> list[TensorSpec]:
    """The flattened request's FP32 tensors the router checks for finite values (none if the plan allows them)."""
    return [*dense_tensors(dense), *weight_inputs(plan)] if plan.check_finite else []


def ranking_finite_inputs(plan: Plan, model: Model) -> list[TensorSpec]:
    """The ranking request's FP32 tensors the ranking router checks for finite values."""
    if not plan.check_finite:
        return []
    return [*ranking_dense_inputs(model), *ranking_weight_inputs(plan)]


def with_checked(reads: Sequence[TensorSpec], checked: Sequence[TensorSpec]) -> list[TensorSpec]:
    """A router's inputs: what it routes, then the tensors it only checks (each tensor once)."""
    names = {spec.name for spec in reads}
    return [*reads, *(spec for spec in checked if spec.name not in names)]


def _rows_of(side: str) -> int:
    return 1 if side == "user" else -1


def profile_signature(plan: Plan) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The profile model's inputs (an optional [1] reset flag) and outputs (touched rows and counts per table)."""
    outputs = [
        spec
        for table in plan.tables
        for spec in (
            int64(naming.profile_rows_output(table.spec.name), -1),
            int64(naming.profile_counts_output(table.spec.name), -1),
        )
    ]
    outputs += [
        int64(naming.PROFILE_SAMPLES, len(plan.tables)),
        int64(naming.PROFILE_SINCE, 1),
        int64(naming.PROFILE_INSTANCES, 1),
    ]
    return [int32(naming.PROFILE_RESET, 1)], outputs
