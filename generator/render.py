"""The one mapping from a plan to Triton's config schema (`model_config_pb2.ModelConfig` messages).

Configs are built as protobuf messages, written with `text_format`, and parsed back strictly with the schema of
the 2.51 server (tritonclient 2.51's `model_config_pb2`) before a build succeeds. `check_ensemble` checks the
ensemble's data flow mechanically: every step's tensors exist in the composed model with the same dtype and
dims, every intermediate tensor is produced exactly once and consumed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from generator import naming
from generator.errors import ConfigValidationError
from generator.plan import Placement, Plan, ShardGroup

Backend = Literal["python", "onnx"]
Target = Literal["embedded", "container"]
BACKENDS: tuple[Backend, ...] = ("python", "onnx")
TARGETS: tuple[Target, ...] = ("embedded", "container")

#: ORT threads per instance: instances are the unit of parallelism on few cores, so one thread each avoids
#: oversubscription (ORT's default is one thread per core *per instance*).
ORT_THREADS_PER_INSTANCE = 1

#: Dynamic-batching delay of leaf models. Measured (bench/serving.py, batch 256, 8 clients, 2 cores): waiting
#: 500-2000 us or letting leaves take 8x the ensemble's batch only lowered throughput, so batch what is queued.
QUEUE_DELAY_US = 0

_KIND = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor of a model's signature; `dims` exclude the batch dimension."""

    name: str
    data_type: int
    dims: tuple[int, ...]


def _fp32(name: str, *dims: int) -> TensorSpec:
    return TensorSpec(name, mc.TYPE_FP32, dims)


def _int64(name: str, *dims: int) -> TensorSpec:
    return TensorSpec(name, mc.TYPE_INT64, dims)


def _int32(name: str, *dims: int) -> TensorSpec:
    return TensorSpec(name, mc.TYPE_INT32, dims)


def ensemble_inputs(plan: Plan, num_dense_features: int) -> list[TensorSpec]:
    """The request contract: dense features, then one multi-hot id tensor per table."""
    return [_fp32(naming.DENSE_FEATURES, num_dense_features)] + [
        _int64(naming.sparse_input(table.spec.name), table.spec.max_ids_per_sample) for table in plan.tables
    ]


def ensemble_outputs() -> list[TensorSpec]:
    """The request contract's output."""
    return [_fp32(naming.SCORE, 1)]


def _add_tensors(target: Iterable[mc.ModelInput] | Iterable[mc.ModelOutput], specs: Sequence[TensorSpec]) -> None:
    for spec in specs:
        tensor = target.add()  # type: ignore[attr-defined]
        tensor.name = spec.name
        tensor.data_type = spec.data_type
        tensor.dims.extend(spec.dims)


def _base_config(
    name: str, max_batch_size: int, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    _add_tensors(config.input, inputs)
    _add_tensors(config.output, outputs)
    return config


def _serving_config(
    name: str,
    backend: str,
    max_batch_size: int,
    placement: Placement,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    parameters: Mapping[str, str] | None = None,
) -> mc.ModelConfig:
    """A leaf model: backend, one instance group, dynamic batching across concurrent requests."""
    config = _base_config(name, max_batch_size, inputs, outputs)
    config.backend = backend
    config.instance_group.add(kind=_KIND[placement.device], count=placement.instance_count)
    if max_batch_size > 0:  # concurrent requests that queue up share one execute(); see QUEUE_DELAY_US
        config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    return config


def _compact_json(value: object) -> str:
    """A config parameter's JSON value, without spaces (it is read by the model, not by people)."""
    return json.dumps(value, separators=(",", ":"))


def _ort_parameters() -> dict[str, str]:
    threads = str(ORT_THREADS_PER_INSTANCE)
    return {"intra_op_thread_count": threads, "inter_op_thread_count": threads}


def _leaf_backend(backend: Backend, target: Target) -> tuple[str, dict[str, str]]:
    """Triton backend and parameters of a shard or dense model for this backend/target pair."""
    if backend == "onnx":
        return ("onnxruntime" if target == "container" else "python"), _ort_parameters()
    return "python", {}


def group_tables(group: ShardGroup) -> list[str]:
    """Tables with shards in the group, in order of first appearance: one partial-sum slot each."""
    return list(dict.fromkeys(shard.table for shard in group.shards))


@dataclass(frozen=True)
class GroupLayout:
    """A shard group's packed input: one block of columns per table it holds, of row ids into its stacked rows.

    The group stacks its member shards' rows in member order; `first_rows[i]` is where member i starts. A sample's
    id lives in exactly one shard of its table, so the router writes it, already shifted to the stacked rows,
    into the table's block: the group pools each block with one gather per column, whatever its shard count.
    """

    tables: list[str]  # partial-sum slot order
    columns: list[tuple[int, int]]  # [first, last) per table slot
    first_rows: list[int]  # per member shard
    total_rows: int

    @property
    def width(self) -> int:
        """Columns of the packed input."""
        return self.columns[-1][1]


def group_layout(plan: Plan, group: ShardGroup) -> GroupLayout:
    """Columns per table slot and first stacked row per member shard (the router and the group both read this)."""
    widths = {table.spec.name: table.spec.max_ids_per_sample for table in plan.tables}
    tables = group_tables(group)
    edges = list(accumulate((widths[table] for table in tables), initial=0))
    rows = list(accumulate((shard.num_rows for shard in group.shards), initial=0))
    return GroupLayout(tables, list(pairwise(edges)), rows[:-1], rows[-1])


def _row_dim(plan: Plan) -> int:
    return plan.tables[0].spec.dim  # DLRM protocol: every table's dim equals bottom_mlp[-1]


def _routing(plan: Plan, input_names: Sequence[str]) -> tuple[dict, list[TensorSpec]]:
    """The router's routing parameter (tables read from `input_names`) and its per-group outputs."""
    groups = plan.shard_groups()
    # Local ids fit int32 (a shard holds < 2**31 rows): half the bytes of int64 on the router -> shard edge.
    layouts = [group_layout(plan, g) for g in groups]
    outputs = [_int32(naming.group_local_ids(g.index), layout.width) for g, layout in zip(groups, layouts, strict=True)]
    target = {
        (shard.table, shard.index): {
            "output": position,
            "column": layout.columns[layout.tables.index(shard.table)][0],
            "first_row": first_row,
        }
        for position, (group, layout) in enumerate(zip(groups, layouts, strict=True))
        for shard, first_row in zip(group.shards, layout.first_rows, strict=True)
    }
    if plan.has_front_cache:
        cached = [t.spec.name for t in plan.tables if t.cached_rows]
        outputs.append(_fp32(naming.FRONT_CACHE_PARTIALS, len(cached) * _row_dim(plan)))
    routing = {
        "tables": [
            {
                "table": t.spec.name,
                "input": input_name,
                "side": t.spec.side,
                "cached_rows": t.cached_rows,
                "num_rows": t.spec.num_rows,
                "ids_per_sample": t.spec.max_ids_per_sample,
                "boundaries": t.boundaries,
                "shards": [target[(t.spec.name, s.index)] for s in t.shards],
                "permuted": t.row_order is not None,
            }
            for t, input_name in zip(plan.tables, input_names, strict=True)
        ],
        "outputs": [{"name": spec.name, "width": spec.dims[0]} for spec in outputs if spec.data_type == mc.TYPE_INT32],
    }
    if plan.has_front_cache:
        routing["front_cache"] = {"output": naming.FRONT_CACHE_PARTIALS, "tables": cached, "dim": _row_dim(plan)}
    return routing, outputs


def router_config(plan: Plan) -> mc.ModelConfig:
    """Router: sparse ids in, one packed local-id tensor per shard group out; routing travels as a parameter."""
    inputs = [_int64(naming.sparse_input(t.spec.name), t.spec.max_ids_per_sample) for t in plan.tables]
    routing, outputs = _routing(plan, [spec.name for spec in inputs])
    return _serving_config(
        naming.router_model(plan.model_name),
        "python",
        plan.max_batch_size,
        plan.router,
        inputs,
        outputs,
        {"routing": _compact_json(routing)},
    )


def ranking_inputs(plan: Plan, dense_sides: Sequence[str]) -> list[TensorSpec]:
    """The ranking request contract (full shapes, no batch dimension): one user row, N candidate rows."""
    specs = []
    for side, name in (("user", naming.USER_DENSE_FEATURES), ("item", naming.ITEM_DENSE_FEATURES)):
        width = sum(1 for value in dense_sides if value == side)
        if width:
            specs.append(_fp32(name, 1 if side == "user" else -1, width))
    for table in plan.tables:
        rows = 1 if table.spec.side == "user" else -1
        specs.append(
            _int64(naming.side_sparse_input(table.spec.name, table.spec.side), rows, table.spec.max_ids_per_sample)
        )
    return specs


def ranking_router_config(plan: Plan) -> mc.ModelConfig:
    """The ranking ensemble's router: the user's ids and the N candidates' ids in, per group [1 + N, width] out.

    Row 0 of every output carries the user-side tables' ids, rows 1..N the item-side ones, so the shard groups pool
    the user's rows once, in the same step (and batch) as the candidates'. Not batching (max_batch_size 0): the
    user and item tensors of one request have different first dimensions.
    """
    inputs = [
        _int64(naming.side_sparse_input(t.spec.name, t.spec.side), 1 if t.spec.side == "user" else -1,
               t.spec.max_ids_per_sample)
        for t in plan.tables
    ]  # fmt: skip
    routing, outputs = _routing(plan, [spec.name for spec in inputs])
    routing["mode"] = "ranking"
    routing["max_rows"] = plan.max_batch_size  # 1 + N rows reach the (batching) shard groups
    return _serving_config(
        naming.ranking_router_model(plan.model_name),
        "python",
        0,
        plan.router,
        inputs,
        [TensorSpec(spec.name, spec.data_type, (-1, *spec.dims)) for spec in outputs],
        {"routing": _compact_json(routing)},
    )


def ranking_dense_config(plan: Plan, dense_sides: Sequence[str]) -> mc.ModelConfig:
    """The ranking ensemble's dense model: user-only terms once, broadcast onto the N candidates (numpy)."""
    dense_inputs_ = [spec for spec in ranking_inputs(plan, dense_sides) if spec.data_type == mc.TYPE_FP32]
    # Not batching: full shapes, [1 + N, slots * dim] per partial-sum tensor.
    partials = [TensorSpec(spec.name, spec.data_type, (-1, *spec.dims)) for spec in partial_sum_inputs(plan)]
    layout = {
        "user_dense": naming.USER_DENSE_FEATURES if "user" in dense_sides else None,
        "item_dense": naming.ITEM_DENSE_FEATURES if "item" in dense_sides else None,
        "output": naming.SCORE,
        "dim": _row_dim(plan),
        "dense_sides": list(dense_sides),
        "tables": [
            {
                "table": t.spec.name,
                "side": t.spec.side,
                "parts": [{"input": name, "slot": slot} for name, slot in parts],
            }
            for t, parts in zip(plan.tables, table_parts(plan), strict=True)
        ],
    }
    return _serving_config(
        naming.ranking_dense_model(plan.model_name),
        "python",
        0,
        plan.dense,
        [*dense_inputs_, *partials],
        [_fp32(naming.SCORE, -1, 1)],
        {"ranking": _compact_json(layout)},
    )


def ranking_ensemble_config(plan: Plan, dense_sides: Sequence[str]) -> mc.ModelConfig:
    """`<model>_ranking`: ranking router, the same shard groups as the flattened ensemble, ranking dense."""
    config = _base_config(
        naming.ranking_ensemble(plan.model_name), 0, ranking_inputs(plan, dense_sides), [_fp32(naming.SCORE, -1, 1)]
    )
    config.platform = "ensemble"
    steps = config.ensemble_scheduling.step
    router = steps.add(model_name=naming.ranking_router_model(plan.model_name), model_version=-1)
    for table in plan.tables:
        name = naming.side_sparse_input(table.spec.name, table.spec.side)
        router.input_map[name] = name
    _group_steps(plan, config, router)
    dense = steps.add(model_name=naming.ranking_dense_model(plan.model_name), model_version=-1)
    for spec in ranking_dense_config(plan, dense_sides).input:
        dense.input_map[spec.name] = spec.name
    dense.output_map[naming.SCORE] = naming.SCORE
    return config


def shard_group_model_name(plan: Plan, group: ShardGroup) -> str:
    """The Triton model serving a shard group."""
    return naming.shard_group_model(plan.model_name, group.index, [(s.table, s.index) for s in group.shards])


def shard_group_config(
    plan: Plan, group: ShardGroup, backend: Backend, target: Target, *, one_instance: bool = False
) -> mc.ModelConfig:
    """Shard group: packed row ids of its tables in; per table it holds, the pool over all its shards out.

    `one_instance`: the distributed layout, where the plan's instance count is the number of replica servers.
    """
    triton_backend, parameters = _leaf_backend(backend, target)
    layout = group_layout(plan, group)
    dim = _row_dim(plan)
    if backend == "python":
        description = {
            "input": naming.group_local_ids(group.index),
            "output": naming.group_partial_sums(group.index),
            "dim": dim,
            "shards": [  # stacked in this order
                {"table": s.table, "shard": s.index, "rows_file": naming.shard_rows_file(s.table, s.index)}
                for s in group.shards
            ],
            "slots": [
                {"table": table, "columns": list(span)}
                for table, span in zip(layout.tables, layout.columns, strict=True)
            ],
        }
        parameters = {"shards": _compact_json(description)}
    return _serving_config(
        shard_group_model_name(plan, group),
        triton_backend,
        plan.max_batch_size,
        replace(group.placement, instance_count=1) if one_instance else group.placement,
        *_group_signature(plan, group),
        parameters,
    )


def _group_signature(plan: Plan, group: ShardGroup) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """A shard group's input and output, the same for the group model and its remote step in a front server."""
    layout = group_layout(plan, group)
    return (
        [_int32(naming.group_local_ids(group.index), layout.width)],
        [_fp32(naming.group_partial_sums(group.index), len(layout.tables) * _row_dim(plan))],
    )


@dataclass(frozen=True)
class RemoteCallPolicy:
    """How a front server's remote shard-group step calls the group's service."""

    deadline_s: float = 2.0
    max_attempts: int = 3
    backoff_s: float = 0.05
    resolve_interval_s: float = 30.0


def remote_group_config(plan: Plan, group: ShardGroup, policy: RemoteCallPolicy) -> mc.ModelConfig:
    """The front's step for a shard group served elsewhere: same name and tensors, calls the group over gRPC.

    One instance per planned replica of the group, so the front keeps every replica busy; the endpoints default to
    the group's Kubernetes Service and are overridden through the environment (see remote_group_model).
    """
    name = shard_group_model_name(plan, group)
    inputs, outputs = _group_signature(plan, group)
    remote = {
        "model": name,
        "input": inputs[0].name,
        "input_dtype": "INT32",
        "output": outputs[0].name,
        "endpoints": [f"{naming.service_name(name)}:{naming.GRPC_PORT}"],
        "deadline_s": policy.deadline_s,
        "max_attempts": policy.max_attempts,
        "backoff_s": policy.backoff_s,
        "resolve_interval_s": policy.resolve_interval_s,
    }
    return _serving_config(
        name,
        "python",
        plan.max_batch_size,
        Placement(device="cpu", instance_count=group.placement.instance_count),
        inputs,
        outputs,
        {"remote": _compact_json(remote)},
    )


def partial_sum_inputs(plan: Plan) -> list[TensorSpec]:
    """Every shard group's packed partial sums, then the front cache's: what the dense models add up per table."""
    dim = _row_dim(plan)
    specs = [_fp32(naming.group_partial_sums(g.index), len(group_tables(g)) * dim) for g in plan.shard_groups()]
    if plan.has_front_cache:
        specs.append(_fp32(naming.FRONT_CACHE_PARTIALS, sum(1 for t in plan.tables if t.cached_rows) * dim))
    return specs


def dense_inputs(plan: Plan, num_dense_features: int) -> list[TensorSpec]:
    """Dense features, then the partial sums (the ONNX graph's input order)."""
    return [_fp32(naming.DENSE_FEATURES, num_dense_features), *partial_sum_inputs(plan)]


def table_parts(plan: Plan) -> list[list[tuple[str, int]]]:
    """Per table (model order): the (packed partial-sum tensor, slot) of each group holding its shards."""
    slots = [(naming.group_partial_sums(group.index), group_tables(group)) for group in plan.shard_groups()]
    if plan.has_front_cache:
        slots.append((naming.FRONT_CACHE_PARTIALS, [t.spec.name for t in plan.tables if t.cached_rows]))
    return [
        [(tensor, tables.index(t.spec.name)) for tensor, tables in slots if t.spec.name in tables] for t in plan.tables
    ]


def dense_config(plan: Plan, num_dense_features: int, backend: Backend, target: Target) -> mc.ModelConfig:
    """Dense model: dense features and the packed partial sums in, score out."""
    triton_backend, parameters = _leaf_backend(backend, target)
    if backend == "python":
        layout = {
            "dense_input": naming.DENSE_FEATURES,
            "output": naming.SCORE,
            "dim": _row_dim(plan),
            "tables": [
                {"table": t.spec.name, "parts": [{"input": name, "slot": slot} for name, slot in parts]}
                for t, parts in zip(plan.tables, table_parts(plan), strict=True)
            ],
        }
        parameters = {"dense": _compact_json(layout)}
    return _serving_config(
        naming.dense_model(plan.model_name),
        triton_backend,
        plan.max_batch_size,
        plan.dense,
        dense_inputs(plan, num_dense_features),
        ensemble_outputs(),
        parameters,
    )


def monolithic_config(plan: Plan, num_dense_features: int, backend: Backend, target: Target) -> mc.ModelConfig:
    """The whole model as one Triton model with the ensemble's request contract (the model-wise baseline)."""
    triton_backend, parameters = _leaf_backend(backend, target)
    if backend == "python":
        layout = {
            "dense_input": naming.DENSE_FEATURES,
            "output": naming.SCORE,
            "tables": [
                {
                    "table": t.spec.name,
                    "input": naming.sparse_input(t.spec.name),
                    "num_rows": t.spec.num_rows,
                    "rows_file": naming.table_rows_file(t.spec.name),
                }
                for t in plan.tables
            ],
        }
        parameters = {"tables": _compact_json(layout)}
    return _serving_config(
        naming.ensemble_model(plan.model_name),
        triton_backend,
        plan.max_batch_size,
        plan.dense,
        ensemble_inputs(plan, num_dense_features),
        ensemble_outputs(),
        parameters,
    )


def ensemble_config(plan: Plan, num_dense_features: int) -> mc.ModelConfig:
    """Ensemble: router, then every shard group (dispatched together), then dense; named after the model."""
    config = _base_config(
        naming.ensemble_model(plan.model_name),
        plan.max_batch_size,
        ensemble_inputs(plan, num_dense_features),
        ensemble_outputs(),
    )
    config.platform = "ensemble"
    steps = config.ensemble_scheduling.step
    router = steps.add(model_name=naming.router_model(plan.model_name), model_version=-1)
    for table in plan.tables:
        router.input_map[naming.sparse_input(table.spec.name)] = naming.sparse_input(table.spec.name)
    _group_steps(plan, config, router)
    dense = steps.add(model_name=naming.dense_model(plan.model_name), model_version=-1)
    for spec in dense_inputs(plan, num_dense_features):
        dense.input_map[spec.name] = spec.name
    dense.output_map[naming.SCORE] = naming.SCORE
    return config


def _group_steps(plan: Plan, config: mc.ModelConfig, router: mc.ModelEnsembling.Step) -> None:
    """Every shard group as a step fed by the router's packed ids (the same steps in both ensembles)."""
    if plan.has_front_cache:  # straight from the router to the dense model
        router.output_map[naming.FRONT_CACHE_PARTIALS] = naming.FRONT_CACHE_PARTIALS
    for group in plan.shard_groups():
        local, partial = naming.group_local_ids(group.index), naming.group_partial_sums(group.index)
        router.output_map[local] = local
        step = config.ensemble_scheduling.step.add(model_name=shard_group_model_name(plan, group), model_version=-1)
        step.input_map[local] = local
        step.output_map[partial] = partial


def to_text(config: mc.ModelConfig) -> str:
    """config.pbtxt text of a message."""
    return text_format.MessageToString(config)


def parse_strict(text: str, source: str = "config.pbtxt") -> mc.ModelConfig:
    """Parse config.pbtxt text with Triton's schema, rejecting unknown fields and duplicated scalars."""
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as error:
        raise ConfigValidationError(
            f"{source} does not parse with Triton 2.51's model_config schema: {error}"
        ) from error


def write_config(config: mc.ModelConfig, model_dir: Path) -> Path:
    """Write `model_dir/config.pbtxt` and prove it parses back to the same message."""
    path = model_dir / naming.CONFIG_FILE
    text = to_text(config)
    path.write_text(text)
    if parse_strict(path.read_text(), str(path)) != config:
        raise ConfigValidationError(f"{path} does not round-trip: the parsed config differs from the rendered one")
    return path


def _tensor_signature(
    tensors: Iterable[mc.ModelInput] | Iterable[mc.ModelOutput], max_batch_size: int = 0
) -> dict[str, tuple[int, tuple]]:
    """Name -> (dtype, full shape): a batching model's tensors get their leading -1 batch dimension."""
    batch = (-1,) if max_batch_size > 0 else ()
    return {tensor.name: (tensor.data_type, (*batch, *tensor.dims)) for tensor in tensors}


def _compatible(a: tuple[int, tuple], b: tuple[int, tuple]) -> bool:
    """Same dtype and shapes equal up to -1 wildcards (Triton's rule between ensemble tensors and step tensors)."""
    (type_a, shape_a), (type_b, shape_b) = a, b
    return (
        type_a == type_b
        and len(shape_a) == len(shape_b)
        and all(x == y or x == -1 or y == -1 for x, y in zip(shape_a, shape_b, strict=True))
    )


def check_ensemble(ensemble: mc.ModelConfig, composing: Mapping[str, mc.ModelConfig]) -> None:
    """Raise ConfigValidationError unless the ensemble's steps form a consistent data flow (Triton's load rules)."""
    problems: list[str] = []
    known: dict[str, tuple[int, tuple]] = _tensor_signature(ensemble.input, ensemble.max_batch_size)
    produced: Counter[str] = Counter()
    consumed: Counter[str] = Counter()
    for step in ensemble.ensemble_scheduling.step:
        model = composing.get(step.model_name)
        if model is None:
            problems.append(f"step model {step.model_name!r} is not generated")
            continue
        if model.max_batch_size and ensemble.max_batch_size > model.max_batch_size:
            problems.append(f"ensemble max_batch_size exceeds {step.model_name!r}'s {model.max_batch_size}")
        model_inputs = _tensor_signature(model.input, model.max_batch_size)
        model_outputs = _tensor_signature(model.output, model.max_batch_size)
        if set(step.input_map) != set(model_inputs):
            problems.append(
                f"step {step.model_name!r} maps inputs {sorted(step.input_map)}, model has {sorted(model_inputs)}"
            )
        for model_tensor, ensemble_tensor in step.input_map.items():
            consumed[ensemble_tensor] += 1
            if ensemble_tensor not in known:
                problems.append(f"step {step.model_name!r} reads {ensemble_tensor!r} before any step produces it")
            elif model_tensor in model_inputs and not _compatible(known[ensemble_tensor], model_inputs[model_tensor]):
                problems.append(
                    f"{ensemble_tensor!r} feeds {step.model_name}.{model_tensor} with another dtype or shape"
                )
        for model_tensor, ensemble_tensor in step.output_map.items():
            if model_tensor not in model_outputs:
                problems.append(f"step {step.model_name!r} maps unknown output {model_tensor!r}")
                continue
            produced[ensemble_tensor] += 1
            known[ensemble_tensor] = model_outputs[model_tensor]
    outputs = _tensor_signature(ensemble.output)
    problems += [f"{name!r} is produced {count} times" for name, count in produced.items() if count > 1]
    problems += [
        f"ensemble input {name!r} is never consumed" for name in _tensor_signature(ensemble.input) if not consumed[name]
    ]
    problems += [
        f"intermediate tensor {name!r} is never consumed"
        for name in produced
        if name not in outputs and not consumed[name]
    ]
    problems += [f"ensemble output {name!r} is not written" for name in outputs if not produced[name]]
    if problems:
        raise ConfigValidationError(f"ensemble {ensemble.name!r} is inconsistent: " + "; ".join(problems))
