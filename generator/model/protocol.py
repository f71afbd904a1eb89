"""The one model protocol: what the stages after loading need of a model, whatever its class.

recgen's own `DLRM` and an `ImportedModel` (any module cut at its embedding bags) both implement it, so planning
and the repository stage ask a model what it has (its features, its request contract, its dense graph, whether
recgen has hand-written numpy kernels for its dense tower) instead of asking which class it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, Self

import torch
from torch import nn

from generator.model.dlrm import DLRM, NumpyTower, Side, TableSpec
from generator.model.features import FeatureSpec
from generator.model.imported import ImportedModel
from generator.model.user_split import UserSplit

#: The dense side of a flattened request: one `dense_features` tensor of this width, or named tensors and widths.
DenseSignature = int | Sequence[tuple[str, int]]


class ServedModel(Protocol):
    """A model recgen can plan, build and check."""

    @property
    def tables(self) -> Sequence[TableSpec]:
        """The embedding tables, in the model's order."""
        ...

    @property
    def features(self) -> Sequence[FeatureSpec]:
        """Every request feature (ids pooled from one table), in the order the dense graph takes the pools."""
        ...

    @property
    def plan_features(self) -> tuple[FeatureSpec, ...]:
        """The features a plan records: () when they are one sum-pooled feature per table, named as the table."""
        ...

    @property
    def supports_ranking_requests(self) -> bool:
        """Whether a ranking request (one user, N candidates) computes anything once: both sides are present."""
        ...

    @property
    def dense_signature(self) -> DenseSignature:
        """The flattened request's dense tensors."""
        ...

    @property
    def outputs(self) -> list[tuple[str, tuple[int, ...]]]:
        """The model's outputs: (name, per-sample dims)."""
        ...

    def ranking_dense_tensors(self) -> list[tuple[str, Side, int]]:
        """A ranking request's dense tensors: (name, side, width); user-side ones are [1, width], item ones [N, ...]."""
        ...

    @property
    def dense_graph(self) -> nn.Module:
        """The dense graph: (dense tensors..., one pooled [B, width] tensor per feature) -> a tuple of outputs."""
        ...

    @property
    def numpy_dense(self) -> bool:
        """Whether recgen's numpy dense models serve it (its own DLRM tower); otherwise its dense graph is ONNX."""
        ...

    def numpy_tower(self) -> NumpyTower | None:
        """What recgen's numpy dense models compute with; None where `numpy_dense` is False."""
        ...

    @property
    def dense_parameter_bytes(self) -> int:
        """Bytes of the dense graph's weights and constants (one copy per dense replica)."""
        ...

    @property
    def dense_description(self) -> str:
        """What the dense graph is, in a few words (the build's summary)."""
        ...

    def user_split(self) -> UserSplit | None:
        """The dense graph split between the user side and the candidates (None where numpy kernels do it)."""
        ...

    def rows_of(self, table: str) -> torch.Tensor:
        """A table's served rows [num_rows, dim]."""
        ...

    def with_rows(self, rows: Mapping[str, torch.Tensor]) -> Self:
        """The same model serving these rows for these tables (reduced precision read back); the rest as it is."""
        ...


#: A model recgen builds: its own DLRM (numpy fast path) or an imported one (a program cut at its lookups).
Model = DLRM | ImportedModel


def _implements_the_protocol(model: Model) -> ServedModel:
    """Both model classes implement the one model protocol: the type checker refuses this otherwise."""
    return model
