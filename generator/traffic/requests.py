"""Ranking requests in the shapes the ensembles take, random valid ones, and the PyTorch reference scores.

`RankingRequest` is the flattened contract (B samples), `StructuredRequest` the ranking contract (one user, N
candidates, RecServe's structured features). Both know their ensemble input names; the load-test sampler and the
checks build them, the client sends them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from generator import naming
from generator.errors import UserInputError
from generator.model.dlrm import DLRM, PADDING_ID


@dataclass(frozen=True)
class RankingRequest:
    """One flattened ranking request: B samples of dense features and right-padded ids per table."""

    dense_features: np.ndarray
    sparse: Mapping[str, np.ndarray]

    @property
    def batch_size(self) -> int:
        """Samples in the request."""
        return int(self.dense_features.shape[0])

    def tensors(self) -> dict[str, np.ndarray]:
        """Request tensors by ensemble input name."""
        tensors = {naming.DENSE_FEATURES: self.dense_features}
        tensors.update({naming.sparse_input(table): ids for table, ids in self.sparse.items()})
        return tensors


@dataclass(frozen=True)
class StructuredRequest:
    """One ranking request as RecServe sends it: the user's features once, N candidates' item features.

    `user_dense` [1, Du] and `item_dense` [N, Di] hold the model's user- and item-side dense features (model order
    within a side); `user_sparse` ([1, L]) and `item_sparse` ([N, L]) the ids of the user- and item-side tables.
    """

    user_dense: np.ndarray
    item_dense: np.ndarray
    user_sparse: Mapping[str, np.ndarray]
    item_sparse: Mapping[str, np.ndarray]

    @property
    def num_candidates(self) -> int:
        """N."""
        return int(self.item_dense.shape[0])

    def tensors(self) -> dict[str, np.ndarray]:
        """Request tensors by `<model>_ranking` input name (a side without dense features sends none)."""
        tensors = {}
        if self.user_dense.shape[1]:
            tensors[naming.USER_DENSE_FEATURES] = self.user_dense
        if self.item_dense.shape[1]:
            tensors[naming.ITEM_DENSE_FEATURES] = self.item_dense
        tensors.update({naming.side_sparse_input(t, "user"): ids for t, ids in self.user_sparse.items()})
        tensors.update({naming.side_sparse_input(t, "item"): ids for t, ids in self.item_sparse.items()})
        return tensors

    def flattened(self, model: DLRM) -> RankingRequest:
        """The same request for the flattened ensemble: the user's features repeated for every candidate."""
        count = self.num_candidates
        dense = np.empty((count, model.num_dense_features), dtype=np.float32)
        dense[:, model.dense_indices("user")] = self.user_dense
        dense[:, model.dense_indices("item")] = self.item_dense
        sparse = {name: np.repeat(ids, count, axis=0) for name, ids in self.user_sparse.items()}
        sparse.update(self.item_sparse)
        return RankingRequest(dense, {table.name: sparse[table.name] for table in model.tables})


def random_structured_request(model: DLRM, num_candidates: int, rng: np.random.Generator) -> StructuredRequest:
    """A valid random ranking request: one random user, `num_candidates` random candidates."""
    user = random_request(model, 1, rng)
    items = random_request(model, num_candidates, rng)
    return StructuredRequest(
        user.dense_features[:, model.dense_indices("user")],
        items.dense_features[:, model.dense_indices("item")],
        {t.name: user.sparse[t.name] for t in model.tables if t.side == "user"},
        {t.name: items.sparse[t.name] for t in model.tables if t.side == "item"},
    )


def random_request(model: DLRM, batch_size: int, rng: np.random.Generator) -> RankingRequest:
    """Valid random request: per sample 0..L ids drawn from the whole table, right-padded with -1."""
    if batch_size < 1:
        raise UserInputError(f"`batch` must be >= 1, got {batch_size}")
    dense = rng.standard_normal((batch_size, model.num_dense_features)).astype(np.float32)
    sparse = {}
    for table in model.tables:
        width = table.max_ids_per_sample
        ids = rng.integers(0, table.num_rows, size=(batch_size, width), dtype=np.int64)
        lengths = rng.integers(0, width + 1, size=batch_size)
        ids[np.arange(width)[np.newaxis, :] >= lengths[:, np.newaxis]] = PADDING_ID
        sparse[table.name] = ids
    return RankingRequest(dense, sparse)


def reference_scores(model: DLRM, request: RankingRequest) -> np.ndarray:
    """The PyTorch model's scores [B, 1] for a request."""
    with torch.no_grad():
        sparse = {table: torch.from_numpy(ids) for table, ids in request.sparse.items()}
        return model(torch.from_numpy(request.dense_features), sparse).numpy()
