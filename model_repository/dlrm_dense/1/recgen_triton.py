"""Triton's Python-backend utilities (`triton_python_backend_utils`), which only a stub process provides.

recgen's tooling and unit tests import the model modules too (to route, pool and check requests without a server),
so a model module asks for the utilities here rather than importing them itself: inside a stub they are the
stub's module, elsewhere None, and only `TritonPythonModel`'s Triton-facing paths touch them.
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
