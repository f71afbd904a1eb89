"""Sparse features: the request's id tensors, each pooled from one table (several features may share a table).

recgen's own DLRM has one sum-pooled feature per table, named as the table. An imported model's features come
from its embedding-bag lookups: each keeps its pooling, and a table that several lookups read is stored once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from generator import naming
from generator.errors import UserInputError

#: How a feature's rows become one vector: their sum, or their mean (the sum over a per-sample count of ids).
Pooling = Literal["sum", "mean"]
POOLINGS: tuple[Pooling, ...] = ("sum", "mean")


@dataclass(frozen=True)
class FeatureSpec:
    """One multi-hot request tensor `sparse_<name>` [B, max_ids_per_sample], pooled from rows of `table`."""

    name: str
    table: str
    max_ids_per_sample: int
    pooling: Pooling = "sum"
    side: str = "item"
    #: Every id comes with a weight, `weights_<name>` [B, max_ids_per_sample] FP32 (sum pooling of weighted rows).
    weighted: bool = False
    #: An id the model pools as nothing (an embedding bag's padding_idx); the router drops it like -1. -1 = none.
    padding_id: int = -1

    def __post_init__(self) -> None:
        if not naming.is_valid_identifier(self.name):
            raise UserInputError(
                f"feature `name` {self.name!r} is not allowed: use 1-64 letters, digits and single '_', "
                "starting with a letter"
            )
        if self.pooling not in POOLINGS:
            raise UserInputError(
                f"feature {self.name!r}: `pooling` must be one of {', '.join(POOLINGS)}, got {self.pooling!r}"
            )
        if self.weighted and self.pooling != "sum":
            raise UserInputError(f"feature {self.name!r}: per-id weights need `pooling` sum, got {self.pooling!r}")
        value = self.max_ids_per_sample
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1 << 16:
            raise UserInputError(
                f"feature {self.name!r}: `max_ids_per_sample` must be an integer in 1..{1 << 16}, got {value!r}"
            )


def max_ids_items(max_ids: Mapping[str, int]) -> list[str]:
    """`--max-ids` values as the CLI takes them: `FEATURE=L`, or a bare `L` for the default (key "*")."""
    return [str(count) if name == "*" else f"{name}={count}" for name, count in max_ids.items()]
