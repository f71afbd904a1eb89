"""What each part of a deployment holds in bytes: the one memory model of the planner and the deployments.

The planner's totals, the distributed topology and the Kubernetes memory requests all count the same bytes here:
rows of shards, the router's rank maps and front cache, the dense tower's weights. Per-process overheads (a
Python-backend stub, a server) are the capacity model's figures.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from generator.model.dlrm import TableSpec
from generator.model.features import FeatureSpec
from generator.model.protocol import ServedModel

#: Bytes of one entry of the router's id -> hotness-rank map (int32; a table holds < 2**31 rows).
RANK_BYTES = 4
#: Bytes of one row's access counter in every router instance (uint32, `recgen_access`).
COUNT_BYTES = 4


def dense_bytes(num_dense_features: int, num_tables: int, bottom_mlp: Sequence[int], top_mlp: Sequence[int]) -> int:
    """fp32 bytes of the dense tower's parameters."""
    widths = [num_dense_features, *bottom_mlp]
    parameters = sum((a + 1) * b for a, b in itertools.pairwise(widths))
    vectors = num_tables + 1
    top = [bottom_mlp[-1] + vectors * (vectors - 1) // 2, *top_mlp]
    parameters += sum((a + 1) * b for a, b in itertools.pairwise(top))
    return 4 * parameters


def counter_bytes(tables: Sequence[TableSpec]) -> int:
    """The most bytes one router instance's access counters take (every row of every table)."""
    return sum(spec.num_rows for spec in tables) * COUNT_BYTES


def router_bytes(
    tables: Sequence[TableSpec], cached_rows: Sequence[int], permuted: Sequence[bool], counted: bool = True
) -> int:
    """What one router instance holds: rank maps of permuted tables, front-cache rows, access counters.

    Unless the build turned counting off, every row of every table has a counter (at most: pages no id touched
    cost nothing).
    """
    counters = counter_bytes(tables) if counted else 0
    return router_data_bytes(tables, cached_rows, permuted) + counters


def router_data_bytes(tables: Sequence[TableSpec], cached_rows: Sequence[int], permuted: Sequence[bool]) -> int:
    """A router's read-only files: rank maps of permuted tables and front-cache rows.

    The native router maps them once per model, shared by its instances (threads); a Python router loads them into
    every instance's stub.
    """
    ranks = sum(spec.num_rows * RANK_BYTES for spec, is_permuted in zip(tables, permuted, strict=True) if is_permuted)
    return ranks + sum(rows * spec.bytes_per_row for spec, rows in zip(tables, cached_rows, strict=True))


def router_memory(
    tables: Sequence[TableSpec],
    cached_rows: Sequence[int],
    permuted: Sequence[bool],
    *,
    counted: bool,
    shares_files: bool,
) -> tuple[int, int]:
    """(held once per server, held by each instance) of a server's routers.

    `shares_files`: the native router, whose instances (threads) map the rank maps and front cache once; a Python
    router's stubs each load them. Each instance has counters of its own unless counting is off.
    """
    files = router_data_bytes(tables, cached_rows, permuted)
    counters = counter_bytes(tables) if counted else 0
    return (files, counters) if shares_files else (0, files + counters)


@dataclass(frozen=True)
class ModelShape:
    """What planning needs of a model (no weights): tables and MLP widths."""

    tables: tuple[TableSpec, ...]
    num_dense_features: int
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    #: An imported model's features (() for recgen's DLRM: one per table) and its dense graph's constant bytes.
    features: tuple[FeatureSpec, ...] = ()
    dense_graph_bytes: int | None = None

    @classmethod
    def of(cls, model: ServedModel) -> ModelShape:
        """The shape of a model: its tables, features and dense graph's bytes (instead of MLP widths)."""
        dense = model.dense_signature
        width = dense if isinstance(dense, int) else sum(w for _, w in dense)
        return cls(tuple(model.tables), width, (), (), model.plan_features, model.dense_parameter_bytes)

    @property
    def dense_bytes(self) -> int:
        """Bytes of the dense tower (or of an imported model's dense graph)."""
        if self.dense_graph_bytes is not None:
            return self.dense_graph_bytes
        return dense_bytes(self.num_dense_features, len(self.tables), self.bottom_mlp, self.top_mlp)

    @property
    def embedding_bytes(self) -> int:
        """Bytes of every table's rows."""
        return sum(spec.num_rows * spec.bytes_per_row for spec in self.tables)
