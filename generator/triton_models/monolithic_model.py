"""The whole DLRM as one Python-backend model (numpy): the model-wise baseline a sharded ensemble is compared with.

Typed parameter `tables` (`recgen_params.MonolithicParams`) lists per table the input tensor, the row count and the
rows file next to this file; the dense weights are in `dense.npz`. Bad ids fail only their own request, with the
router's message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import recgen_compiled as compiled
from . import recgen_kernels as kernels
from . import recgen_params as params
from . import recgen_triton

pb_utils = recgen_triton.utils()  # Triton's utilities inside a stub, None in tooling and tests


class TritonPythonModel:
    """Triton entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load every table and the dense weights once per instance; compile the pooling kernel."""
        recgen_triton.require_cpu_instance(args)
        compiled.compile_for(args["model_name"])
        layout = params.MonolithicParams.from_model_config(json.loads(args["model_config"]))
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.dense_input = layout.dense_input
        self.output_name = layout.output
        self.tables = [
            (entry.input, entry.table, entry.num_rows, kernels.with_padding_row(np.load(version_dir / entry.rows_file)))
            for entry in layout.tables
        ]
        self.bottom, self.top = kernels.load_dense_tower(str(version_dir))

    def execute(self, requests: list[Any]) -> list[Any]:
        """Validate each request, then score all valid ones in one batch."""
        responses: list[Any] = [None] * len(requests)
        valid: list[int] = []
        for index, request in enumerate(requests):
            for input_name, table, num_rows, _ in self.tables:
                ids = pb_utils.get_input_tensor_by_name(request, input_name).as_numpy()
                bad = kernels.first_bad_id(ids, num_rows)
                if bad is not None:
                    message = kernels.bad_id_message(input_name, bad, num_rows, table)
                    responses[index] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
                    )
                    break
            else:
                valid.append(index)
        if valid:

            def stacked(name: str) -> tuple[np.ndarray, list[int]]:
                return kernels.stack_requests(
                    [pb_utils.get_input_tensor_by_name(requests[i], name).as_numpy() for i in valid]
                )

            dense_features, split_points = stacked(self.dense_input)
            pooled = [compiled.pool(rows, stacked(input_name)[0]) for input_name, _, _, rows in self.tables]
            scores = compiled.dense_tower(dense_features, pooled, self.bottom, self.top)
            for index, part in zip(valid, kernels.unstack_responses(scores, split_points), strict=True):
                responses[index] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)])
        return responses
