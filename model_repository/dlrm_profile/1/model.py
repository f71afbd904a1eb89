"""Profile model: the routers' access counters of this server, summed over every router instance.

Typed parameter `access_counts` (`recgen_params.AccessCountsParams`, the routers' own): where the counters live,
the key they are filed under and every table's row count. A request (with `reset` = 1 to start a new window after
reading) returns, per table, the original rows read at least once and their counts, the samples each table saw,
the window's start (Unix ms) and how many router instances were read. `recgen profile --from-server` calls it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from . import recgen_access as access
from . import recgen_params as params
from . import recgen_triton

pb_utils = recgen_triton.utils()  # Triton's utilities inside a stub, None in tooling and tests

#: The tensors (as `generator.naming` names them; this module runs without recgen installed).
RESET = "reset"
SAMPLES = "samples"
SINCE = "since_unix_ms"
INSTANCES = "instances"


def rows_output(table: str) -> str:
    """The output of a table's touched original rows."""
    return f"rows__{table}"


def counts_output(table: str) -> str:
    """The output of those rows' access counts (aligned with `rows_output`)."""
    return f"counts__{table}"


def profile_outputs(spec: params.AccessCountsParams, reset: bool) -> dict[str, np.ndarray]:
    """Every output of one request: touched rows and counts per table, samples, window start, instances read."""
    collected = access.collect(spec, reset=reset)
    outputs: dict[str, np.ndarray] = {}
    for table, counts in zip(spec.tables, collected.counts, strict=True):
        rows = np.flatnonzero(counts)
        outputs[rows_output(table)] = rows.astype(np.int64)
        outputs[counts_output(table)] = counts[rows].astype(np.int64)
    outputs[SAMPLES] = collected.samples.astype(np.int64)
    outputs[SINCE] = np.array([int(collected.since_unix_s * 1000)], dtype=np.int64)
    outputs[INSTANCES] = np.array([collected.instances], dtype=np.int64)
    return outputs


class TritonPythonModel:
    """Triton entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        """Read where the routers of this model keep their counters."""
        self.spec = params.AccessCountsParams.from_model_config(json.loads(args["model_config"]))

    def execute(self, requests: list[Any]) -> list[Any]:
        """One answer per request (each reads every instance's counters; a reset zeroes them after the read)."""
        responses = []
        for request in requests:
            flag = pb_utils.get_input_tensor_by_name(request, RESET)
            reset = flag is not None and bool(np.asarray(flag.as_numpy()).any())
            outputs = profile_outputs(self.spec, reset)
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()])
            )
        return responses
