"""The closed sets of choices a plan makes: devices, grouping, the lookup step and its engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from generator.errors import UserInputError

Device = Literal["cpu", "gpu"]
DEVICES: tuple[Device, ...] = ("cpu", "gpu")
#: How shards become Triton models: all shards with the same placement in one model (fewer ensemble steps, each
#: group still scaled on its own), or one model per shard.
GroupBy = Literal["placement", "shard"]
GROUP_BY: tuple[GroupBy, ...] = ("placement", "shard")
#: Where the lookups of the shard groups placed like the router run: in the router's own step ("fused": routing and
#: pooling in one step, a two-step ensemble, one process per request fewer) or each group in its own step
#: ("separate": every group scaled on its own; what the distributed layout and GPU placements need).
LookupStep = Literal["fused", "separate"]
LOOKUP_STEPS: tuple[LookupStep, ...] = ("fused", "separate")
#: What serves the lookup side's steps (the routers and the shard groups on the CPU): recgen's native Triton backend
#: (generator/native, docs/native.md; the default), or the Python-backend models (numpy kernels, compiled by numba
#: when it is installed), which stay the reference and the fallback where the native backend is not built.
LookupEngine = Literal["python", "native"]
LOOKUP_ENGINES: tuple[LookupEngine, ...] = ("python", "native")


def serves_natively(lookup_engine: str, device: str) -> bool:
    """Whether a lookup-side step placed on `device` runs on the native backend.

    The native steps run on the CPU only; a GPU shard group keeps its Python or ONNX model, which must run on the GPU.
    """
    return lookup_engine == "native" and device == "cpu"


def check_choice(field_name: str, value: object, allowed: Sequence[str], what: str = "") -> None:
    """UserInputError naming the field and the allowed values unless `value` is one of them."""
    if value not in allowed:
        raise UserInputError(f"{what}`{field_name}` must be one of {', '.join(allowed)}, got {value!r}")


def check_placement(
    instance_count: int, device: str, what: str, per_server: int = 1, cores: float | None = None
) -> None:
    """Raise UserInputError unless a placement's counts, device and cores are in range (naming `what`)."""
    if cores is not None and not (isinstance(cores, (int, float)) and 0 <= cores <= 1):
        raise UserInputError(f"{what} `cores_per_instance` must be in 0..1 or null, got {cores!r}")
    if not isinstance(instance_count, int) or not 1 <= instance_count <= 256:
        raise UserInputError(f"{what} `instance_count` must be an integer in 1..256, got {instance_count!r}")
    if not isinstance(per_server, int) or not 1 <= per_server <= instance_count:
        raise UserInputError(
            f"{what} `instances_per_server` must be an integer in 1..{instance_count} (its instance_count), "
            f"got {per_server!r}"
        )
    check_choice("device", device, DEVICES, f"{what} ")
