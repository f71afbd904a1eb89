"""Serving a written Python-backend model with recgen's native backend instead (generator/native).

The native steps read the same typed parameters and tensors as their Python twins, so switching a model is a
change of its config's backend plus the parameter that names the step, with the library placed in the model's
directory (where Triton looks first). The build does this for the steps it serves natively; the benchmarks and
the native tier of the tests do it to compare both engines on the same repository.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from generator import naming, native
from generator.repository import validation
from generator.repository.configs import NATIVE_STEP_PARAMETER as STEP_PARAMETER
from generator.repository.configs import native_step_parameters

#: The steps libtriton_recgen.so serves, each with the typed parameter it reads ("" = none).
NATIVE_STEPS = {"floor": "", "shard_group": "shards", "router": "routing"}


def install_library(model_dir: Path, library: Path | None = None) -> None:
    """Put the native backend in a model's directory, where Triton looks for it first.

    `library` defaults to the build of the current sources; NativeUnavailableError (saying why and what to
    install) when that was not built.
    """
    shutil.copy(library or native.library(), model_dir / native.LIBRARY_NAME)


def use_native_step(model_dir: Path, step: str, library: Path) -> None:
    """Serve the Python-backend model in `model_dir` with the native `step` (config rewritten, library copied)."""
    if step not in NATIVE_STEPS:
        raise ValueError(f"native step must be one of {', '.join(NATIVE_STEPS)}, got {step!r}")
    config = validation.parse_strict((model_dir / naming.CONFIG_FILE).read_text())
    if config.backend == native.BACKEND_NAME and config.parameters[STEP_PARAMETER].string_value == step:
        install_library(model_dir, library)  # already this step (the default engine): serve it with `library`
        return
    if config.backend != "python":
        raise ValueError(f"{model_dir.name} is served by {config.backend!r}, not the Python backend")
    needed = NATIVE_STEPS[step]
    if needed and needed not in config.parameters:
        raise ValueError(f"{model_dir.name} has no parameter {needed!r}: it is not a {step} model")
    config.backend = native.BACKEND_NAME
    for key, value in native_step_parameters(step).items():
        config.parameters[key].string_value = value
    validation.write_config(config, model_dir)
    install_library(model_dir, library)
