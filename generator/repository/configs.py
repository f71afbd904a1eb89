"""The one mapping from a plan to Triton's config schema (`model_config_pb2.ModelConfig` messages).

Signatures come from `layout`, the runtime models' parameters from `params`; this module only says how they become
config messages: backend, instance group, dynamic batching, parameters, ensemble steps. `validation` writes the
messages and parses them back strictly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tritonclient.grpc import model_config_pb2 as mc

from generator import naming, native
from generator.planning import queueing
from generator.planning.choices import serves_natively
from generator.planning.plan import Model, Placement, Plan
from generator.repository import layout, params, wiring
from generator.repository.layout import TensorSpec
from generator.repository.wiring import GroupWire, WireLayout
from generator.triton_models.recgen_params import Spec

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

#: The parameter of a native model's config that names the step it serves (generator/native).
NATIVE_STEP_PARAMETER = "recgen_native_step"

#: The version every leaf model is served as (a generation gets new names, not new versions; see `naming.leaf_stem`).
LEAF_VERSION = int(naming.MODEL_VERSION)

_KIND = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU}


@dataclass(frozen=True)
class LeafOptions:
    """How shard groups and dense models are served: numpy or ONNX models, for the embedded server or the NGC one."""

    backend: Backend = "python"
    target: Target = "embedded"

    @property
    def triton_backend(self) -> str:
        """Triton backend of a shard or dense model."""
        return "onnxruntime" if self.backend == "onnx" and self.target == "container" else "python"

    def parameters(self, spec: Spec) -> list[Spec] | dict[str, str]:
        """The numpy model's typed parameters, or ORT's thread counts for an ONNX model."""
        if self.backend == "onnx":
            threads = str(ORT_THREADS_PER_INSTANCE)
            return {"intra_op_thread_count": threads, "inter_op_thread_count": threads}
        return [spec]


def _data_type(name: str) -> int:
    return mc.DataType.Value(f"TYPE_{name}")


def _add_tensors(target: Any, specs: Sequence[TensorSpec]) -> None:
    """Append tensors to a config's repeated `input` or `output` field (protobuf containers carry no types)."""
    for spec in specs:
        tensor = target.add()
        tensor.name = spec.name
        tensor.data_type = _data_type(spec.data_type)
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
    signature: tuple[Sequence[TensorSpec], Sequence[TensorSpec]],
    parameters: Sequence[Spec] | dict[str, str] = (),
) -> mc.ModelConfig:
    """A leaf model: backend, one instance group, dynamic batching across concurrent requests, its parameters.

    Its queue has no policy (no bound, no timeout): the router sheds overload (`queueing`).
    """
    config = _base_config(name, max_batch_size, *signature)
    config.backend = backend
    config.instance_group.add(kind=_KIND[placement.device], count=placement.instance_count)
    # Concurrent requests that queue up share one execute() (see QUEUE_DELAY_US). No queue policy: any policy turns
    # the batcher's prefetching off and with it come ~0.5 s stalls; the router sheds overload instead (queueing).
    # A model that does not batch (max_batch_size 0) gets the scheduler too: Triton 2.51 accepts it and batches
    # nothing.
    config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    values = parameters if isinstance(parameters, dict) else {spec.PARAMETER: spec.to_json() for spec in parameters}
    for key, value in values.items():
        config.parameters[key].string_value = value
    return config


def with_shedding(plan: Plan, config: mc.ModelConfig) -> mc.ModelConfig:
    """`config` with Triton's queue policy when the plan sheds that way (`--shedding queue-policy`); else as it is."""
    if plan.shedding == "queue-policy" and config.HasField("dynamic_batching"):
        policy = queueing.queue_policy(plan.latency_slo_ms, config.instance_group[0].count)
        queue = config.dynamic_batching.default_queue_policy
        queue.timeout_action = mc.ModelQueuePolicy.REJECT
        queue.default_timeout_microseconds = policy.timeout_us
        queue.max_queue_size = policy.max_queue_size
    return config


def router_config(plan: Plan, wire: WireLayout, dense: layout.DenseSignature) -> mc.ModelConfig:
    """Router: sparse ids in, one packed local-id tensor per shard group out; routing travels as a parameter.

    It also reads the dense tensors of `dense` (unless the plan allows non-finite inputs), only to check them.
    """
    inputs = layout.sparse_inputs(plan)
    checked = layout.finite_inputs(plan, dense)
    specs: list[Spec] = [params.routing(plan, wire, [spec.name for spec in inputs]), *params.request_checks(checked)]
    specs += _router_extras(plan, wire)
    name = naming.router_model(plan.leaf_stem)
    if plan.shedding == "router":
        specs.append(params.admission(plan, name, _later_steps(plan, wire, naming.dense_model(plan.leaf_stem))))
    backend, parameters = _router_backend(plan, specs)
    return _serving_config(
        name,
        backend,
        plan.max_batch_size,
        plan.router,
        (layout.with_checked(layout.router_inputs(plan), checked), wire.router_outputs()),
        parameters,
    )


def native_step_parameters(step: str) -> dict[str, str]:
    """What a native model's config says besides its typed parameters: its step, and the backend's version."""
    return {NATIVE_STEP_PARAMETER: step, native.VERSION_PARAMETER: native.version()}


def _router_backend(plan: Plan, specs: Sequence[Spec]) -> tuple[str, dict[str, str]]:
    """A router's backend and parameters: the Python model, or the native step reading the same parameters."""
    parameters = {spec.PARAMETER: spec.to_json() for spec in specs}
    if not serves_natively(plan.lookup_engine, plan.router.device):
        return "python", parameters
    return native.BACKEND_NAME, {**parameters, **native_step_parameters("router")}


def _router_extras(plan: Plan, wire: WireLayout) -> list[Spec]:
    """The router's optional parameters: its front cache, the groups it pools, its access counters."""
    return [
        spec
        for spec in (params.front_cache(plan), params.router_pooling(plan, wire), params.access_counts(plan))
        if spec
    ]


def _later_steps(plan: Plan, wire: WireLayout, dense_name: str) -> list[tuple[str, int]]:
    """The ensemble's steps after the router on the router's server (shard groups or their remote steps, dense)."""
    groups = [(g.model_name, g.group.placement.instance_count) for g in wire.steps]
    return [*groups, (dense_name, plan.dense.instance_count)]


def profile_config(plan: Plan) -> mc.ModelConfig | None:
    """The model that sums the routers' access counters on its server (None when the build turned counting off).

    One CPU instance, no batching; its `reset` input is optional.
    """
    counters = params.access_counts(plan)
    if counters is None:
        return None
    config = _serving_config(
        naming.profile_model(plan.model_name),
        "python",
        0,
        Placement(1, "cpu"),
        layout.profile_signature(plan),
        [counters],
    )
    config.input[0].optional = True
    return config


def ranking_router_config(plan: Plan, wire: WireLayout, model: Model) -> mc.ModelConfig:
    """The ranking ensemble's router: the user's ids and the N candidates' ids in, per group [1 + N, width] out.

    Row 0 of every output carries the user-side tables' ids, rows 1..N the item-side ones, so the shard groups pool
    the user's rows once, in the same step (and batch) as the candidates'. Not batching (max_batch_size 0): the
    user and item tensors of one request have different first dimensions. Checks the dense tensors like the router.
    """
    inputs = layout.ranking_sparse_inputs(plan)
    weights = [spec.name for spec in layout.ranking_weight_inputs(plan)]
    checked = layout.ranking_finite_inputs(plan, model)
    specs: list[Spec] = [params.routing(plan, wire, [s.name for s in inputs], weights), params.ranking_router(plan)]
    specs += params.request_checks(checked)
    specs += _router_extras(plan, wire)
    name = naming.ranking_router_model(plan.leaf_stem)
    if plan.shedding == "router":
        dense_name = naming.ranking_dense_model(plan.leaf_stem)
        specs.append(params.admission(plan, name, _later_steps(plan, wire, dense_name)))
    reads = layout.with_checked(layout.ranking_router_inputs(plan), checked)
    backend, parameters = _router_backend(plan, specs)
    return _serving_config(
        name,
        backend,
        0,
        plan.router,
        (reads, [spec.unbatched() for spec in wire.router_outputs()]),
        parameters,
    )


def shard_group_config(
    plan: Plan, wired: GroupWire, leaves: LeafOptions, placement: Placement | None = None
) -> mc.ModelConfig:
    """Shard group: packed row ids of its tables in; per table it holds, the pool over all its shards out.

    `placement` replaces the group's own (the distributed layout runs one instance per replica server). With the
    native lookup engine the same typed parameter goes to recgen's backend, with the step it serves.
    """
    spec, group = params.shard_group(wired), wired.group
    backend, parameters = leaves.triton_backend, leaves.parameters(spec)
    if serves_natively(plan.lookup_engine, (placement or group.placement).device):
        backend = native.BACKEND_NAME
        parameters = {spec.PARAMETER: spec.to_json(), **native_step_parameters("shard_group")}
    return _serving_config(
        wired.model_name,
        backend,
        plan.max_batch_size,
        placement or group.placement,
        (wired.inputs, [wired.partial_sums]),
        parameters,
    )


def remote_group_config(
    plan: Plan, wired: GroupWire, policy: params.RemoteCallPolicy, instances: int
) -> mc.ModelConfig:
    """The front's step for a shard group served elsewhere: same name and tensors, calls the group over gRPC.

    `instances`: the front server's share of the group's instances, so the fronts together keep every one busy;
    the endpoints default to the group's Kubernetes Service and are overridden through the environment (see
    remote_group_model).
    """
    return _serving_config(
        wired.model_name,
        "python",
        plan.max_batch_size,
        Placement(device="cpu", instance_count=instances),
        (wired.inputs, [wired.partial_sums]),
        [params.remote_group(wired, policy)],
    )


def dense_config(plan: Plan, wire: WireLayout, model: Model, leaves: LeafOptions) -> mc.ModelConfig:
    """Dense model: dense inputs, the packed partial sums (and mean counts) in, the model's outputs out.

    A dense graph recgen has no numpy kernels for (an imported model's) is always ONNX: run by ORT inside a Python
    model on the embedded server, by the native onnxruntime backend in the container.
    """
    if not model.numpy_dense:
        leaves = LeafOptions("onnx", leaves.target)
    dense, outputs = layout.model_signature(model)
    return _serving_config(
        naming.dense_model(plan.leaf_stem),
        leaves.triton_backend,
        plan.max_batch_size,
        plan.dense,
        (wiring.dense_inputs(wire, dense), layout.ensemble_outputs(outputs)),
        leaves.parameters(params.dense(plan, wire)),
    )


def ranking_dense_config(plan: Plan, wire: WireLayout, model: Model, leaves: LeafOptions) -> mc.ModelConfig:
    """The ranking ensemble's dense model, fed [1 + N, ...] partial sums (row 0 the user's pools).

    recgen's DLRM: user-only terms once, broadcast onto the N candidates (numpy). Any other model: its dense
    graph split between the user side, once, and the N candidates (ONNX; `imported_graphs`).
    """
    inputs = wiring.ranking_dense_step_inputs(wire, model)
    _, outputs = layout.ranking_signature(plan, model)
    tower = model.numpy_tower()
    if tower is None:
        leaves = LeafOptions("onnx", leaves.target)
        return _serving_config(
            naming.ranking_dense_model(plan.leaf_stem),
            leaves.triton_backend,
            0,
            plan.dense,
            (inputs, outputs),
            leaves.parameters(params.dense(plan, wire)),
        )
    return _serving_config(
        naming.ranking_dense_model(plan.leaf_stem),
        "python",
        0,
        plan.dense,
        (inputs, outputs),
        [params.ranking_dense(plan, wire, list(tower.dense_sides))],
    )


def monolithic_config(plan: Plan, num_dense_features: int, leaves: LeafOptions) -> mc.ModelConfig:
    """The whole model as one Triton model with the ensemble's request contract (the model-wise baseline)."""
    return _serving_config(
        naming.ensemble_model(plan.model_name),
        leaves.triton_backend,
        plan.max_batch_size,
        plan.dense,
        (layout.ensemble_inputs(plan, num_dense_features), layout.ensemble_outputs()),
        leaves.parameters(params.monolithic(plan)),
    )


def ensemble_config(
    plan: Plan, wire: WireLayout, dense: layout.DenseSignature, outputs: layout.OutputSignature = None
) -> mc.ModelConfig:
    """Ensemble: router, then every shard group (dispatched together), then dense; named after the model."""
    return _ensemble(
        naming.ensemble_model(plan.model_name),
        wire,
        plan.max_batch_size,
        (layout.ensemble_inputs(plan, dense), layout.ensemble_outputs(outputs)),
        naming.router_model(plan.leaf_stem),
        layout.with_checked(layout.router_inputs(plan), layout.finite_inputs(plan, dense)),
        (naming.dense_model(plan.leaf_stem), wiring.dense_inputs(wire, dense)),
    )


def ranking_ensemble_config(plan: Plan, wire: WireLayout, model: Model) -> mc.ModelConfig:
    """`<model>_ranking`: ranking router, the same shard groups as the flattened ensemble, ranking dense."""
    return _ensemble(
        naming.ranking_ensemble(plan.model_name),
        wire,
        0,
        layout.ranking_signature(plan, model),
        naming.ranking_router_model(plan.leaf_stem),
        layout.with_checked(layout.ranking_router_inputs(plan), layout.ranking_finite_inputs(plan, model)),
        (naming.ranking_dense_model(plan.leaf_stem), wiring.ranking_dense_step_inputs(wire, model)),
    )


def _ensemble(
    name: str,
    wire: WireLayout,
    max_batch_size: int,
    signature: tuple[Sequence[TensorSpec], Sequence[TensorSpec]],
    router_name: str,
    router_inputs: Sequence[TensorSpec],
    dense_step: tuple[str, Sequence[TensorSpec]],
) -> mc.ModelConfig:
    """Router step, every shard group it does not pool itself as a step fed by its packed ids, then the dense step."""
    config = _base_config(name, max_batch_size, *signature)
    config.platform = "ensemble"
    steps = config.ensemble_scheduling.step
    # Each step pins its model's version: an ensemble version is one generation's exact set of models.
    router = steps.add(model_name=router_name, model_version=LEAF_VERSION)
    for spec in router_inputs:
        router.input_map[spec.name] = spec.name
    for spec in [*wire.front_cache, *wire.counts]:  # straight to the dense model
        router.output_map[spec.name] = spec.name
    for wired in wire.pooled:  # fused lookup step: the router's partial sums go to the dense model
        router.output_map[wired.partial_sums.name] = wired.partial_sums.name
    for wired in wire.steps:
        step = steps.add(model_name=wired.model_name, model_version=LEAF_VERSION)
        for spec in wired.inputs:  # the packed ids (and their weights) go straight from the router
            router.output_map[spec.name] = spec.name
            step.input_map[spec.name] = spec.name
        step.output_map[wired.partial_sums.name] = wired.partial_sums.name
    dense_name, dense_inputs = dense_step
    dense = steps.add(model_name=dense_name, model_version=LEAF_VERSION)
    for spec in dense_inputs:
        dense.input_map[spec.name] = spec.name
    for spec in signature[1]:
        dense.output_map[spec.name] = spec.name
    return config
