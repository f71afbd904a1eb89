"""perf_analyzer's `--input-data` file for every ensemble of a build: requests the ensemble accepts.

perf_analyzer's own random INT64 data falls outside the tables (the router refuses it), so each build writes, at
the root of its ensemble repository (Triton ignores plain files there), `perf_input_<ensemble>.json` in
perf_analyzer's format: `{"data": [{tensor: {"content": [...], "shape": [...]}}, ...]}`. Ids are drawn per feature
from [-1, rows) of its table (-1 pads), weights are positive, dense features standard normal. A flattened request's
entries are single samples (perf_analyzer's `-b` batches them); a ranking request's entries are one user with
`CANDIDATES` candidates, their shapes given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from generator import naming
from generator.repository import validation
from generator.triton_models import recgen_params as params

#: Requests in every file (perf_analyzer sends them round-robin).
REQUESTS = 16
#: Candidates of every ranking request.
CANDIDATES = 64
FILE_PATTERN = "perf_input_{ensemble}.json"


def _config_dict(config: mc.ModelConfig) -> dict[str, Any]:
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def _ids(rows: int, shape: tuple[int, ...], rng: np.random.Generator) -> list[int]:
    return [int(value) for value in rng.integers(-1, rows, size=shape).ravel()]


def request_entry(
    ensemble: mc.ModelConfig, routing: params.RoutingParams, rng: np.random.Generator
) -> dict[str, dict[str, list[Any]]]:
    """One valid request for `ensemble`, whose first step routes by `routing`."""
    rows_of = {table.input: table.num_rows for table in routing.tables}
    weights = {table.weights_input for table in routing.tables if table.weights_input}
    entry: dict[str, dict[str, list[Any]]] = {}
    for tensor in ensemble.input:
        shape = tuple(CANDIDATES if dim == -1 else int(dim) for dim in tensor.dims)
        if tensor.data_type == mc.TYPE_INT64 and tensor.name in rows_of:
            content: list[Any] = _ids(rows_of[tensor.name], shape, rng)
        elif tensor.name in weights:
            content = [float(v) for v in rng.uniform(0.1, 2.0, size=shape).astype(np.float32).ravel()]
        elif tensor.data_type == mc.TYPE_FP32:
            content = [float(v) for v in rng.standard_normal(shape).astype(np.float32).ravel()]
        else:
            raise ValueError(f"ensemble {ensemble.name!r}: no valid data for input {tensor.name!r}")
        entry[tensor.name] = {"content": content, "shape": list(shape)}
    return entry


def write_perf_inputs(leaf_repository: Path, ensemble_repository: Path, seed: int = 0) -> list[Path]:
    """Write the input-data file of every ensemble in `ensemble_repository`; returns their paths."""
    written = []
    for config_path in sorted(Path(ensemble_repository).glob(f"*/{naming.CONFIG_FILE}")):
        ensemble = validation.parse_strict(config_path.read_text(), str(config_path))
        if ensemble.platform != "ensemble":
            continue
        router_path = Path(leaf_repository) / ensemble.ensemble_scheduling.step[0].model_name / naming.CONFIG_FILE
        router = validation.parse_strict(router_path.read_text(), str(router_path))
        routing = params.RoutingParams.from_model_config(_config_dict(router))
        rng = np.random.default_rng(seed)
        data = [request_entry(ensemble, routing, rng) for _ in range(REQUESTS)]
        path = Path(ensemble_repository) / FILE_PATTERN.format(ensemble=ensemble.name)
        path.write_text(json.dumps({"data": data}, separators=(",", ":")) + "\n")
        written.append(path)
    return written
