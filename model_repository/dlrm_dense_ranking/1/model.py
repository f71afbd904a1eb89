"""Dense model of the ranking ensemble (numpy): one user, N candidates; user-only terms computed once.

Typed parameter `ranking` (`recgen_params.RankingDenseParams`): the user and item dense-feature inputs (either may
be absent), the score output, the row width `dim`, the side of every dense feature, and per table (model order) its
side and its parts: (packed partial-sum input, slot) pairs to add. Every partial-sum input holds 1 + N rows: row 0
the user-side tables' pools, rows 1..N the candidates'. Weights are in `dense.npz`; `recgen_kernels.RankingTower`
splits them once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import recgen_kernels as kernels
from . import recgen_params as params
from . import recgen_triton

pb_utils = recgen_triton.utils()  # Triton's utilities inside a stub, None in tooling and tests


class RankingDense:
    """The ranking tower and the layout of its inputs."""

    def __init__(self, layout: params.RankingDenseParams, version_dir: str):
        self.user_dense = layout.user_dense
        self.item_dense = layout.item_dense
        self.output_name = layout.output
        self.dim = layout.dim
        self.tables = [(table.side, [(part.input, part.slot) for part in table.parts]) for table in layout.tables]
        bottom, top = kernels.load_dense_tower(version_dir)
        self.tower = kernels.RankingTower.build(bottom, top, layout.dense_sides, [side for side, _ in self.tables])
        self.partial_inputs = sorted({name for _, parts in self.tables for name, _ in parts})

    def scores(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Scores [N, 1]; raises ValueError naming the tensor when the candidate counts disagree."""
        rows = {name: inputs[name].shape[0] for name in self.partial_inputs}
        if len(set(rows.values())) > 1:
            raise ValueError(f"the partial sums disagree on 1 + N rows: {rows}")
        partial_rows = next(iter(rows.values()))
        dense_count = inputs[self.item_dense].shape[0] if self.item_dense else None
        if any(side == "item" for side, _ in self.tables):  # the router sent 1 + N rows
            count = partial_rows - 1
            if dense_count is not None and dense_count != count:
                raise ValueError(
                    f"input '{self.item_dense}' holds {dense_count} candidates, the candidates' sparse inputs {count}"
                )
        else:
            count = dense_count or 0
        if count < 1:
            raise ValueError("a ranking request needs at least one candidate")
        user_dense = inputs[self.user_dense] if self.user_dense else np.zeros((1, 0), np.float32)
        item_dense = inputs[self.item_dense] if self.item_dense else np.zeros((count, 0), np.float32)
        if user_dense.shape[0] != 1:
            raise ValueError(f"input '{self.user_dense}' holds {user_dense.shape[0]} rows; a ranking request has one")
        dim = self.dim
        user_pooled: list[np.ndarray] = []
        item_pooled: list[np.ndarray] = []
        for side, parts in self.tables:
            rows_of_side = slice(0, 1) if side == "user" else slice(1, None)
            (first_input, first_slot), *rest = parts
            total = inputs[first_input][rows_of_side, first_slot * dim : (first_slot + 1) * dim].copy()
            for name, slot in rest:
                total += inputs[name][rows_of_side, slot * dim : (slot + 1) * dim]
            (user_pooled if side == "user" else item_pooled).append(total)
        return kernels.ranking_scores(self.tower, user_dense, item_dense, user_pooled, item_pooled, count)


class TritonPythonModel:
    """Triton entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the weights and split them by side once per instance."""
        recgen_triton.require_cpu_instance(args)
        layout = params.RankingDenseParams.from_model_config(json.loads(args["model_config"]))
        self.dense = RankingDense(layout, str(Path(args["model_repository"]) / args["model_version"]))
        self.input_names = [name for name in (self.dense.user_dense, self.dense.item_dense) if name]
        self.input_names += self.dense.partial_inputs

    def execute(self, requests: list[Any]) -> list[Any]:
        """Score each request (not batching: every request has its own user)."""
        responses = []
        for request in requests:
            inputs = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
            try:
                scores = self.dense.scores(inputs)
            except ValueError as error:
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))
                )
                continue
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.dense.output_name, scores)])
            )
        return responses
