"""Triton's Python-backend utilities, and what every model checks of the instance Triton starts.

`triton_python_backend_utils` exists only in a stub process. recgen's tooling and unit tests import the model
modules too (to route, pool and check requests without a server), so a model module asks for the utilities here
rather than importing them itself: inside a stub they are the stub's module, elsewhere None, and only
`TritonPythonModel`'s Triton-facing paths touch them.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

UTILS_MODULE = "triton_python_backend_utils"


def utils() -> Any:
    """The stub's `triton_python_backend_utils`; None where no Triton stub runs this process."""
    if importlib.util.find_spec(UTILS_MODULE) is None:
        return None
    return importlib.import_module(UTILS_MODULE)


class PlacementError(RuntimeError):
    """An instance placed where its model cannot compute (Triton fails the model's load with this message)."""


def require_cpu_instance(args: dict[str, str]) -> None:
    """Refuse a KIND_GPU instance of a model that computes with numpy: a GPU placement must run on the GPU.

    Triton starts a Python-backend instance on a GPU without asking the model, and numpy would then compute on the
    host under a GPU label; the model refuses to load instead, saying what serves a GPU placement.
    """
    if args.get("model_instance_kind") == "GPU":
        raise PlacementError(
            f"model {args.get('model_name')!r}: instance {args.get('model_instance_name')!r} is placed on GPU "
            f"{args.get('model_instance_device_id')}, but this model computes with numpy on the CPU; build the GPU "
            "steps with --backend onnx (ONNX Runtime's CUDA provider), or place them on the CPU"
        )
