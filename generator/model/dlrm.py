"""The reference DLRM (protocol in DESIGN.md) and the bundled example model.

The dense part (bottom MLP, dot interaction, top MLP, sigmoid) is its own module, `DenseTower`, so the exported
dense model of a repository runs exactly the code the reference forward runs.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from generator import naming
from generator.errors import ModelFileError, UserInputError
from generator.model.features import FeatureSpec

#: Written into every saved model file; `DLRM.load` refuses other formats and newer versions.
MODEL_FILE_FORMAT = "recgen.dlrm"
MODEL_FILE_VERSION = 1
#: Padding id of multi-hot sparse features: ids right-padded with -1 pool to nothing.
PADDING_ID = -1

#: Which side of a ranking request a feature belongs to (RecServe's structured features): user-side features are
#: the same for all N candidates of a request, item-side ones differ per candidate.
Side = Literal["user", "item"]
SIDES: tuple[Side, ...] = ("user", "item")


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: `num_rows` rows of width `dim`; a sample reads up to `max_ids_per_sample` of them."""

    name: str
    num_rows: int
    dim: int
    max_ids_per_sample: int
    side: Side = "item"

    def __post_init__(self) -> None:
        if not naming.is_valid_identifier(self.name):
            raise UserInputError(
                f"table `name` {self.name!r} is not allowed: use 1-64 letters, digits and single '_', "
                "starting with a letter"
            )
        if self.side not in SIDES:
            raise UserInputError(f"table {self.name!r}: `side` must be one of {', '.join(SIDES)}, got {self.side!r}")
        for field in ("num_rows", "dim", "max_ids_per_sample"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserInputError(f"table {self.name!r}: `{field}` must be an integer >= 1, got {value!r}")

    @property
    def bytes_per_row(self) -> int:
        """Bytes of one fp32 row."""
        return 4 * self.dim


@dataclass(frozen=True)
class NumpyTower:
    """The DLRM tower as recgen's numpy dense models read it: its weights, and each dense feature's side."""

    weights: Mapping[str, np.ndarray]
    dense_sides: tuple[Side, ...]


def _mlp(widths: Sequence[int], *, relu_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(fan_in, fan_out))
        if relu_last or index < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DenseTower(nn.Module):
    """Bottom MLP over dense features, dot interaction with the pooled tables, top MLP, sigmoid."""

    upper_rows: torch.Tensor  # buffers: the strict upper triangle of the interaction's gram matrix
    upper_cols: torch.Tensor

    def __init__(self, num_dense_features: int, num_tables: int, bottom_mlp: Sequence[int], top_mlp: Sequence[int]):
        super().__init__()
        self.num_tables = num_tables
        self.bottom = _mlp([num_dense_features, *bottom_mlp], relu_last=True)
        num_vectors = num_tables + 1
        num_interactions = num_vectors * (num_vectors - 1) // 2
        self.top = _mlp([bottom_mlp[-1] + num_interactions, *top_mlp], relu_last=False)
        upper_rows, upper_cols = torch.triu_indices(num_vectors, num_vectors, offset=1)
        self.register_buffer("upper_rows", upper_rows, persistent=False)
        self.register_buffer("upper_cols", upper_cols, persistent=False)

    def forward(self, dense_features: torch.Tensor, pooled: Sequence[torch.Tensor]) -> torch.Tensor:
        """Score a batch from its dense features and one pooled [B, dim] vector per table."""
        bottom_out = self.bottom(dense_features)
        vectors = torch.stack([bottom_out, *pooled], dim=1)
        gram = torch.bmm(vectors, vectors.transpose(1, 2))
        interactions = gram[:, self.upper_rows, self.upper_cols]
        return torch.sigmoid(self.top(torch.cat([bottom_out, interactions], dim=1)))


class _TowerGraph(nn.Module):
    """The dense tower in the dense-graph form: pools as separate inputs, outputs as a tuple."""

    def __init__(self, tower: DenseTower):
        super().__init__()
        self.tower = tower

    def forward(self, dense_features: torch.Tensor, *pooled: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.tower(dense_features, list(pooled)),)


def pool_rows(weight: torch.Tensor, ids: torch.Tensor, id_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum-pool the rows `ids` [B, L] of `weight` (each times its `id_weights` [B, L], if given), skipping -1."""
    present = ids >= 0
    rows = nn.functional.embedding(torch.where(present, ids, torch.zeros_like(ids)), weight)
    scale = present.to(rows.dtype) if id_weights is None else torch.where(present, id_weights, 0.0)
    return (rows * scale.unsqueeze(-1)).sum(dim=1)


class DLRM(nn.Module):
    """DLRM-style model: sum-pooled embedding tables and MLPs with dot interaction.

    Args:
        num_dense_features: width of the dense (continuous) input.
        tables: the embedding tables; every table's `dim` must equal `bottom_mlp[-1]`.
        bottom_mlp: layer widths of the bottom MLP (ReLU after every layer).
        top_mlp: layer widths of the top MLP including the final 1 (ReLU between layers, sigmoid at the end).
        seed: seed of the weight initialisation.
        dense_sides: per dense feature, "user" or "item" (default: all item-side). With `TableSpec.side`, this is
            what the `<model>_ranking` ensemble computes once per request instead of once per candidate.
        initialize_tables: False leaves the tables on the meta device, for `load` to assign the file's tensors.

    Example:
        >>> model = DLRM(num_dense_features=4, tables=[TableSpec("user", 10, 8, 2)], bottom_mlp=[16, 8],
        ...              top_mlp=[8, 1])
        >>> model(torch.zeros(3, 4), {"user": torch.tensor([[1, -1], [2, 3], [-1, -1]])}).shape
        torch.Size([3, 1])

    """

    def __init__(
        self,
        *,
        num_dense_features: int,
        tables: Sequence[TableSpec],
        bottom_mlp: Sequence[int],
        top_mlp: Sequence[int],
        seed: int = 0,
        dense_sides: Sequence[Side] | None = None,
        initialize_tables: bool = True,
    ):
        super().__init__()
        _validate_architecture(num_dense_features, tables, bottom_mlp, top_mlp)
        self.dense_sides: list[Side] = list(dense_sides) if dense_sides is not None else ["item"] * num_dense_features
        if len(self.dense_sides) != num_dense_features or not set(self.dense_sides) <= set(SIDES):
            raise UserInputError(
                f"`dense_sides` must list 'user' or 'item' for each of the {num_dense_features} dense features, "
                f"got {dense_sides!r}"
            )
        self.num_dense_features = num_dense_features
        self.tables = list(tables)
        self.bottom_mlp = list(bottom_mlp)
        self.top_mlp = list(top_mlp)
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        self.embeddings = nn.ParameterDict()
        for table in self.tables:
            if not initialize_tables:  # `load` replaces them: no memory, no random fill
                self.embeddings[table.name] = nn.Parameter(torch.empty(table.num_rows, table.dim, device="meta"))
                continue
            # Rows of norm ~1, so every pooled vector moves the score visibly (a routing bug cannot hide under 1e-5).
            bound = math.sqrt(3.0 / table.dim)
            weight = (torch.rand(table.num_rows, table.dim, generator=generator) * 2 - 1) * bound
            self.embeddings[table.name] = nn.Parameter(weight)
        self.dense = DenseTower(num_dense_features, len(self.tables), self.bottom_mlp, self.top_mlp)
        # He initialisation keeps activations O(1) through the ReLU stack, so scores spread over (0, 1)
        # instead of sitting at 0.5: served-vs-reference checks then see every input.
        for layer in self.dense.modules():
            if isinstance(layer, nn.Linear):
                fan_in = layer.in_features
                with torch.no_grad():
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
                    layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * 0.1)

    @property
    def supports_ranking_requests(self) -> bool:
        """Whether features sit on both sides (then the build adds the `<model>_ranking` ensemble)."""
        sides = {*self.dense_sides, *(table.side for table in self.tables)}
        return sides == {"user", "item"}

    # -- the model protocol (generator.model.protocol.ServedModel) ------------------------------------------------

    @property
    def features(self) -> list[FeatureSpec]:
        """One sum-pooled feature per table, named as the table."""
        return [FeatureSpec(t.name, t.name, t.max_ids_per_sample, "sum", t.side) for t in self.tables]

    @property
    def plan_features(self) -> tuple[FeatureSpec, ...]:
        """() : a plan of recgen's DLRM derives its features from the tables."""
        return ()

    @property
    def dense_signature(self) -> int:
        """One `dense_features` tensor [B, num_dense_features]."""
        return self.num_dense_features

    @property
    def outputs(self) -> list[tuple[str, tuple[int, ...]]]:
        """One `score` [B, 1]."""
        return [(naming.SCORE, (1,))]

    def ranking_dense_tensors(self) -> list[tuple[str, Side, int]]:
        """The user's dense features [1, Du] and the candidates' [N, Di] (a side without any sends none)."""
        widths = {side: len(self.dense_indices(side)) for side in SIDES}
        names = {"user": naming.USER_DENSE_FEATURES, "item": naming.ITEM_DENSE_FEATURES}
        return [(names[side], side, widths[side]) for side in SIDES if widths[side]]

    @property
    def dense_graph(self) -> nn.Module:
        """The tower as a graph of (dense features, one pool per table) -> (score,)."""
        return _TowerGraph(self.dense)

    @property
    def numpy_dense(self) -> bool:
        """True: recgen's numpy dense models compute its tower."""
        return True

    def numpy_tower(self) -> NumpyTower:
        """The tower's weights and dense sides, which recgen's numpy dense models compute with."""
        weights = {key: value.detach().cpu().numpy() for key, value in self.dense.state_dict().items()}
        return NumpyTower(weights, tuple(self.dense_sides))

    @property
    def dense_parameter_bytes(self) -> int:
        """fp32 bytes of the tower's weights and biases."""
        return sum(parameter.numel() * 4 for parameter in self.dense.parameters())

    @property
    def dense_description(self) -> str:
        """Its MLPs' widths."""
        return f"MLPs {self.bottom_mlp} / {self.top_mlp}"

    def user_split(self) -> None:
        """None: recgen's numpy ranking model computes the user-only terms of its tower by hand."""
        return None

    def rows_of(self, table: str) -> torch.Tensor:
        """A table's rows."""
        return self.embeddings[table]

    def with_rows(self, rows: Mapping[str, torch.Tensor]) -> DLRM:
        """A copy serving these rows for these tables."""
        copied = copy.deepcopy(self)
        with torch.no_grad():
            for name, values in rows.items():
                copied.embeddings[name].copy_(values)
        return copied

    def dense_indices(self, side: Side) -> list[int]:
        """Positions of the dense features of one side, in model order."""
        return [index for index, value in enumerate(self.dense_sides) if value == side]

    @property
    def table_names(self) -> list[str]:
        """Table names in the model's order (the order of the interaction)."""
        return [table.name for table in self.tables]

    def pooled(self, sparse: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Sum-pool every table's ids; raises UserInputError on a missing table or an out-of-range id."""
        pooled = []
        for table in self.tables:
            if table.name not in sparse:
                raise UserInputError(f"missing sparse ids for table {table.name!r}")
            ids = sparse[table.name]
            if ids.numel() and (int(ids.min()) < PADDING_ID or int(ids.max()) >= table.num_rows):
                bad = ids[(ids < PADDING_ID) | (ids >= table.num_rows)][0].item()
                raise UserInputError(
                    f"table {table.name!r}: id {bad} out of range; allowed -1 (padding) to {table.num_rows - 1}"
                )
            pooled.append(pool_rows(self.embeddings[table.name], ids))
        return pooled

    def forward(self, dense_features: torch.Tensor, sparse: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Click probability [B, 1] for dense features [B, num_dense_features] and ids [B, L] per table."""
        return self.dense(dense_features, self.pooled(sparse))

    def architecture(self) -> dict[str, Any]:
        """The constructor's arguments as plain JSON-able values."""
        return {
            "num_dense_features": self.num_dense_features,
            "tables": [dataclasses.asdict(table) for table in self.tables],
            "bottom_mlp": self.bottom_mlp,
            "top_mlp": self.top_mlp,
            "seed": self.seed,
            "dense_sides": list(self.dense_sides),
        }

    def embedding_bytes(self) -> int:
        """Bytes of all embedding rows (fp32)."""
        return sum(table.num_rows * table.bytes_per_row for table in self.tables)

    def save(self, path: str | Path) -> None:
        """Write architecture and weights as plain tensors and builtins (loadable with weights_only=True)."""
        payload = {
            "format": MODEL_FILE_FORMAT,
            "version": MODEL_FILE_VERSION,
            "architecture": self.architecture(),
            "state_dict": {key: value.detach().clone() for key, value in self.state_dict().items()},
        }
        torch.save(payload, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> DLRM:
        """Read a file written by `save`, without unpickling arbitrary objects."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"model file `{path}` does not exist")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # torch raises many unrelated types for a bad file
            raise ModelFileError(f"model file `{path}` cannot be read as a recgen DLRM: {error}") from error
        if not isinstance(payload, dict) or payload.get("format") != MODEL_FILE_FORMAT:
            raise ModelFileError(f"model file `{path}` is not a recgen DLRM (expected format {MODEL_FILE_FORMAT!r})")
        if payload.get("version") != MODEL_FILE_VERSION:
            raise ModelFileError(
                f"model file `{path}` has version {payload.get('version')!r}; this recgen reads "
                f"version {MODEL_FILE_VERSION}"
            )
        architecture = dict(payload["architecture"])
        try:
            architecture["tables"] = [TableSpec(**table) for table in architecture["tables"]]
            model = cls(**architecture, initialize_tables=False)
            model.load_state_dict(payload["state_dict"], assign=True)  # the file's (memory-mapped) tensors
        except (TypeError, KeyError, RuntimeError, UserInputError) as error:
            raise ModelFileError(f"model file `{path}` does not follow the DLRM protocol: {error}") from error
        return model.eval()


def _validate_architecture(
    num_dense_features: int, tables: Sequence[TableSpec], bottom_mlp: Sequence[int], top_mlp: Sequence[int]
) -> None:
    if num_dense_features < 1:
        raise UserInputError(f"`num_dense_features` must be >= 1, got {num_dense_features}")
    if not tables:
        raise UserInputError("`tables` must list at least one table")
    if not bottom_mlp or not top_mlp:
        raise UserInputError("`bottom_mlp` and `top_mlp` must each list at least one layer width")
    if any(width < 1 for width in (*bottom_mlp, *top_mlp)):
        raise UserInputError("every MLP layer width must be >= 1")
    if top_mlp[-1] != 1:
        raise UserInputError(f"`top_mlp` must end with 1 (the score), got {list(top_mlp)}")
    names = [table.name for table in tables]
    if len(set(names)) != len(names):
        raise UserInputError(f"table names must be unique, got {names}")
    for table in tables:
        if table.dim != bottom_mlp[-1]:
            raise UserInputError(
                f"table {table.name!r}: `dim` {table.dim} must equal `bottom_mlp[-1]` = {bottom_mlp[-1]}"
            )
