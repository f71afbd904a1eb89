"""Writing config.pbtxt and proving it: strict parse-back with Triton 2.51's schema, and the ensemble's data flow.

Configs are written with `text_format` and parsed back with the schema of the 2.51 server (tritonclient 2.51's
`model_config_pb2`) before a build succeeds. `check_ensemble` checks an ensemble mechanically, as Triton does when
it loads one: every step's tensors exist in the composed model with the same dtype and dims, every intermediate
tensor is produced exactly once and consumed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from generator import naming
from generator.errors import ConfigValidationError

#: A tensor as an ensemble sees it: (dtype, full shape with -1 wildcards).
Signature = tuple[int, tuple[int, ...]]


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
    path.write_text(to_text(config))
    if parse_strict(path.read_text(), str(path)) != config:
        raise ConfigValidationError(f"{path} does not round-trip: the parsed config differs from the rendered one")
    return path


def _tensor_signature(
    tensors: Iterable[mc.ModelInput] | Iterable[mc.ModelOutput], max_batch_size: int = 0
) -> dict[str, Signature]:
    """Name -> (dtype, full shape): a batching model's tensors get their leading -1 batch dimension."""
    batch = (-1,) if max_batch_size > 0 else ()
    return {tensor.name: (tensor.data_type, (*batch, *tensor.dims)) for tensor in tensors}


def _compatible(a: Signature, b: Signature) -> bool:
    """Same dtype and shapes equal up to -1 wildcards (Triton's rule between ensemble tensors and step tensors)."""
    (type_a, shape_a), (type_b, shape_b) = a, b
    return (
        type_a == type_b
        and len(shape_a) == len(shape_b)
        and all(x == y or x == -1 or y == -1 for x, y in zip(shape_a, shape_b, strict=True))
    )


def _step_problems(
    ensemble: mc.ModelConfig,
    step: mc.ModelEnsembling.Step,
    model: mc.ModelConfig,
    known: dict[str, Signature],
    produced: Counter[str],
    consumed: Counter[str],
) -> list[str]:
    """What is wrong with one step; records what it consumes and produces."""
    problems = []
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
            problems.append(f"{ensemble_tensor!r} feeds {step.model_name}.{model_tensor} with another dtype or shape")
    for model_tensor, ensemble_tensor in step.output_map.items():
        if model_tensor not in model_outputs:
            problems.append(f"step {step.model_name!r} maps unknown output {model_tensor!r}")
            continue
        produced[ensemble_tensor] += 1
        known[ensemble_tensor] = model_outputs[model_tensor]
    return problems


def check_ensemble(ensemble: mc.ModelConfig, composing: Mapping[str, mc.ModelConfig]) -> None:
    """Raise ConfigValidationError unless the ensemble's steps form a consistent data flow (Triton's load rules)."""
    problems: list[str] = []
    known = _tensor_signature(ensemble.input, ensemble.max_batch_size)
    produced: Counter[str] = Counter()
    consumed: Counter[str] = Counter()
    for step in ensemble.ensemble_scheduling.step:
        model = composing.get(step.model_name)
        if model is None:
            problems.append(f"step model {step.model_name!r} is not generated")
            continue
        problems += _step_problems(ensemble, step, model, known, produced, consumed)
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
