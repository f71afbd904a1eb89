"""Models written for the tests in the structure of the ones users bring (our own code, parameter names kept).

- `DlrmNetLike`: facebookresearch/dlrm's `DLRM_Net` layout: `emb_l` (nn.EmbeddingBag per table), `bot_l` and
  `top_l` (nn.Sequential), `v_W_l` (learned per-row weights), forward(dense_x, lS_o [T, B], lS_i list of [nnz]),
  dot interaction with or without the diagonal, or cat; an optional output clamp.
- `DcnV2`: bags of mixed widths (sum, mean), a cross network, 2-D ids with a padding_idx for one feature.
- `TwoTower`: two outputs (a dict), a table shared by two id inputs.
- `HeavyUser`: a heavy user side (an MLP over the user's dense features, the user's history mean-pooled and
  projected, a user id) and an item side, joined by a head: an MLP, a dot product, a DCN cross over the
  concatenation, two outputs, or a normalization over the batch (a mistake the user/candidate split must catch).
- TorchRec builders: `DLRM`, `DLRM_DCN` and `DLRM_Projection` over an EmbeddingBagCollection (one table read by
  two features, one MEAN table), with a KeyedJaggedTensor example.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


def _mlp(widths: Sequence[int], *, sigmoid_layer: int = -1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(fan_in, fan_out, bias=True))
        layers.append(nn.Sigmoid() if index == sigmoid_layer else nn.ReLU())
    return nn.Sequential(*layers)


class DlrmNetLike(nn.Module):
    """DLRM_Net's structure: embeddings, bottom MLP, feature interaction, top MLP with a sigmoid."""

    def __init__(
        self,
        m_spa: int,
        ln_emb: Sequence[int],
        ln_bot: Sequence[int],
        ln_top: Sequence[int],
        *,
        interaction: str = "dot",
        itself: bool = False,
        weighted: bool = False,
        clamp: float = 0.0,
        widths: Sequence[int] | None = None,
        sigmoid_top: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        torch.manual_seed(seed)
        widths = list(widths or [m_spa] * len(ln_emb))
        self.emb_l = nn.ModuleList([nn.EmbeddingBag(n, w, mode="sum") for n, w in zip(ln_emb, widths, strict=True)])
        self.v_W_l = nn.ParameterList([nn.Parameter(torch.rand(n) + 0.5) for n in ln_emb] if weighted else [])
        num_vectors = len(ln_emb) + 1
        self.interaction, self.itself, self.clamp = interaction, itself, clamp
        offset = 1 if itself else 0
        self.li = torch.tensor([i for i in range(num_vectors) for j in range(i + offset)])
        self.lj = torch.tensor([j for i in range(num_vectors) for j in range(i + offset)])
        top_in = ln_bot[-1] + (len(self.li) if interaction == "dot" else sum(widths))
        self.bot_l = _mlp(ln_bot)
        sigmoid_layer = len(ln_top) - 1 if sigmoid_top is None else sigmoid_top  # DLRM_Net's sigmoid_top
        self.top_l = _mlp([top_in, *ln_top], sigmoid_layer=sigmoid_layer)
        for layer in self.modules():
            if isinstance(layer, nn.EmbeddingBag):
                nn.init.uniform_(layer.weight, -0.5, 0.5)

    def forward(self, dense_x: torch.Tensor, lS_o: torch.Tensor, lS_i: list[torch.Tensor]) -> torch.Tensor:  # noqa: N803
        x = self.bot_l(dense_x)
        ly = []
        for k, bag in enumerate(self.emb_l):
            weights = self.v_W_l[k].gather(0, lS_i[k]) if len(self.v_W_l) else None
            ly.append(bag(lS_i[k], lS_o[k], per_sample_weights=weights))
        if self.interaction == "dot":
            batch_size, d = x.shape
            t = torch.cat([x, *ly], dim=1).view((batch_size, -1, d))
            z = torch.bmm(t, torch.transpose(t, 1, 2))
            r = torch.cat([x, z[:, self.li, self.lj]], dim=1)
        else:
            r = torch.cat([x, *ly], dim=1)
        p = self.top_l(r)
        if self.clamp > 0:
            p = torch.clamp(p, min=self.clamp, max=1.0 - self.clamp)
        return p


def dlrm_net_example(model: DlrmNetLike, batch: int = 3, seed: int = 0) -> tuple[Any, ...]:
    """Positional inputs in DLRM_Net's form: dense_x [B, D], lS_o [T, B], lS_i [nnz] per table."""
    rng = np.random.default_rng(seed)
    lengths = [rng.integers(1, 4, batch) for _ in model.emb_l]
    offsets = torch.stack([torch.from_numpy(np.concatenate([[0], np.cumsum(n)[:-1]])) for n in lengths])
    indices = [
        torch.from_numpy(rng.integers(0, bag.num_embeddings, int(n.sum())))
        for n, bag in zip(lengths, model.emb_l, strict=True)
    ]
    return torch.randn(batch, model.bot_l[0].in_features), offsets, indices


class CrossLayer(nn.Module):
    """One DCN-v2 cross layer: x0 * (W x + b) + x."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class DcnV2(nn.Module):
    """Bags of widths 16 / 8 / 4 (sum with request-time per-id weights, mean, and 2-D ids with a padding_idx), a cross
    network, a logit."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.user = nn.EmbeddingBag(300, 16, mode="sum")
        self.item = nn.EmbeddingBag(500, 8, mode="mean")
        self.tags = nn.EmbeddingBag(40, 4, mode="sum", padding_idx=0)
        width = 6 + 16 + 8 + 4
        self.cross = nn.ModuleList([CrossLayer(width) for _ in range(2)])
        self.deep = nn.Sequential(nn.Linear(width, 12), nn.ReLU(), nn.Linear(12, 1))

    def forward(
        self,
        features: torch.Tensor,
        user_ids: torch.Tensor,
        user_offsets: torch.Tensor,
        user_weights: torch.Tensor,
        item_ids: torch.Tensor,
        item_offsets: torch.Tensor,
        tag_ids: torch.Tensor,
    ) -> torch.Tensor:
        x0 = torch.cat(
            [
                features,
                self.user(user_ids, user_offsets, per_sample_weights=user_weights),
                self.item(item_ids, item_offsets),
                self.tags(tag_ids),
            ],
            1,
        )
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.deep(x)


def dcn_example(batch: int = 3) -> tuple[torch.Tensor, ...]:
    return (
        torch.randn(batch, 6),
        torch.tensor([1, 2, 3, 4, 5]),
        torch.tensor([0, 2, 3]),
        torch.tensor([0.5, 1.0, 2.0, 0.25, 1.5]),
        torch.tensor([7, 8, 9, 10]),
        torch.tensor([0, 1, 3]),
        torch.tensor([[1, 2, 0], [3, 0, 0], [4, 5, 6]]),
    )


class TwoTower(nn.Module):
    """Two outputs (click and conversion), one table read by two id inputs (the viewed and the clicked items).

    `weighted`: the viewed items come with a weight each (seconds viewed, say); the clicked ones do not.
    """

    def __init__(self, seed: int = 0, weighted: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.weighted = weighted
        self.items = nn.EmbeddingBag(200, 8, mode="sum")
        self.dense = nn.Linear(3, 8)
        self.click = nn.Linear(24, 1)
        self.conversion = nn.Linear(24, 2)

    def forward(
        self,
        context: torch.Tensor,
        viewed: torch.Tensor,
        viewed_at: torch.Tensor,
        clicked: torch.Tensor,
        clicked_at: torch.Tensor,
        view_seconds: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        views = self.items(viewed, viewed_at, per_sample_weights=view_seconds if self.weighted else None)
        both = torch.cat([torch.relu(self.dense(context)), views, self.items(clicked, clicked_at)], 1)
        return {"click": torch.sigmoid(self.click(both)), "conversion": torch.softmax(self.conversion(both), dim=1)}


def two_tower_example(batch: int = 3, weighted: bool = False) -> tuple[torch.Tensor, ...]:
    example = (
        torch.randn(batch, 3),
        torch.tensor([1, 2, 3, 4]),
        torch.tensor([0, 1, 3]),
        torch.tensor([5, 6, 7]),
        torch.tensor([0, 2, 2]),
    )
    return (*example, torch.tensor([3.0, 0.5, 1.0, 2.0])) if weighted else example


#: The heads `HeavyUser` joins its user and item sides with.
HEAVY_USER_HEADS = ("mlp", "dot", "cross", "towers", "batch_normalized")


class HeavyUser(nn.Module):
    """A user side worth computing once per ranking request, and an item side, joined by `head`.

    Inputs: the user's dense features [B, 24], history ids and offsets (mean), user ids [B, 1]; item ids and offsets,
    item categories [B, 1], item dense features [B, 4]. The user side: an MLP over the dense features, the pooled
    history projected (tanh), the user id's row, concatenated and projected to 16. The item side: the same shape.
    """

    def __init__(self, head: str, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.head = head
        self.user_mlp = _mlp([24, 64, 32])
        self.history = nn.EmbeddingBag(500, 16, mode="mean")
        self.history_projection = nn.Linear(16, 16)
        self.user_id = nn.EmbeddingBag(300, 16, mode="sum")
        self.user_out = nn.Linear(32 + 16 + 16, 16)
        self.item_id = nn.EmbeddingBag(400, 16, mode="sum")
        self.item_category = nn.EmbeddingBag(50, 8, mode="sum")
        self.item_dense = nn.Linear(4, 8)
        self.item_out = nn.Linear(16 + 8 + 8, 16)
        self.cross = nn.ModuleList([CrossLayer(32) for _ in range(2)])
        self.top = _mlp([32, 16])
        self.logit = nn.Linear(16, 1)

    def forward(
        self,
        user_dense: torch.Tensor,
        history: torch.Tensor,
        history_offsets: torch.Tensor,
        user_ids: torch.Tensor,
        item_ids: torch.Tensor,
        item_offsets: torch.Tensor,
        item_categories: torch.Tensor,
        item_dense: torch.Tensor,
    ) -> Any:
        projected = torch.tanh(self.history_projection(self.history(history, history_offsets)))
        user = self.user_out(torch.cat([self.user_mlp(user_dense), projected, self.user_id(user_ids)], 1))
        item_parts = [
            self.item_id(item_ids, item_offsets),
            self.item_category(item_categories),
            self.item_dense(item_dense),
        ]
        item = self.item_out(torch.cat(item_parts, 1))
        if self.head == "batch_normalized":  # over dim 0, the batch: depends on the other rows of the batch
            user = nn.functional.normalize(user, dim=0)
        dot = torch.sigmoid((user * item).sum(1, keepdim=True))
        if self.head in ("dot", "batch_normalized"):
            return dot
        both = torch.cat([user, item], 1)
        if self.head == "cross":
            crossed = both
            for layer in self.cross:
                crossed = layer(both, crossed)
            both = crossed
        score = torch.sigmoid(self.logit(self.top(both)))
        return {"click": dot, "relevance": score} if self.head == "towers" else score


def heavy_user_example(batch: int = 3) -> tuple[torch.Tensor, ...]:
    return (
        torch.randn(batch, 24),
        torch.tensor([1, 2, 3, 4, 5, 6]),
        torch.tensor([0, 3, 3]),
        torch.tensor([[7], [8], [9]]),
        torch.tensor([10, 11, 12, 13]),
        torch.tensor([0, 1, 2]),
        torch.tensor([[1], [2], [3]]),
        torch.randn(batch, 4),
    )


def torchrec_models() -> dict[str, tuple[nn.Module, tuple[Any, ...]]]:
    """TorchRec's DLRM, DLRM_DCN and DLRM_Projection over one EBC, each with a (dense, KJT) example."""
    from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRM_Projection
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    torch.manual_seed(0)
    tables = [
        EmbeddingBagConfig(name="products", embedding_dim=8, num_embeddings=60, feature_names=["viewed", "bought"]),
        EmbeddingBagConfig(
            name="places", embedding_dim=8, num_embeddings=25, feature_names=["city"], pooling=PoolingType.MEAN
        ),
    ]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))
    common: dict[str, Any] = {
        "embedding_bag_collection": ebc,
        "dense_in_features": 5,
        "dense_arch_layer_sizes": [16, 8],
        "over_arch_layer_sizes": [8, 1],
    }
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["viewed", "bought", "city"],
        values=torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9]),
        lengths=torch.tensor([2, 1, 0, 1, 2, 1, 0, 1, 1]),
    )
    example = (torch.randn(3, 5), kjt)
    return {
        "weighted": (_WeightedKjtModel(), _weighted_kjt_example()),
        "dlrm": (DLRM(**common), example),
        "dcn": (DLRM_DCN(**common, dcn_num_layers=2, dcn_low_rank_dim=4), example),
        "projection": (
            DLRM_Projection(**common, interaction_branch1_layer_sizes=[12, 8], interaction_branch2_layer_sizes=[12, 8]),
            example,
        ),
    }


def _weighted_kjt_example() -> tuple[Any, ...]:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["watched", "liked", "genre"],
        values=torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9]),
        lengths=torch.tensor([2, 1, 0, 1, 2, 1, 0, 1, 1]),
        weights=torch.rand(9, generator=torch.Generator().manual_seed(0)),
    )
    return torch.randn(3, 3), kjt


class _WeightedKjtModel(nn.Module):
    """A weighted EmbeddingBagCollection (every id of the KJT carries a weight), one table read by two features."""

    def __init__(self) -> None:
        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        super().__init__()
        torch.manual_seed(0)
        tables = [
            EmbeddingBagConfig(name="movies", embedding_dim=8, num_embeddings=50, feature_names=["watched", "liked"]),
            EmbeddingBagConfig(name="genres", embedding_dim=4, num_embeddings=10, feature_names=["genre"]),
        ]
        self.ebc = EmbeddingBagCollection(tables=tables, is_weighted=True, device=torch.device("cpu"))
        self.top = nn.Linear(3 + 8 + 8 + 4, 1)

    def forward(self, dense: torch.Tensor, kjt: Any) -> torch.Tensor:
        return self.top(torch.cat([dense, self.ebc(kjt).values()], 1))
