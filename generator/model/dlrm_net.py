"""facebookresearch/dlrm checkpoints: the architecture from `dlrm_s_pytorch.py`'s flags, the weights read safely.

`DlrmNet` rebuilds `DLRM_Net`'s module layout (parameter names included: `emb_l.<k>.weight`, `bot_l.<2i>.*`,
`top_l.<2i>.*`, `v_W_l.<k>` for learned per-row weights) from the same flags `dlrm_s_pytorch.py` takes, so its
`state_dict` loads the checkpoint's as is. The checkpoint is read with `torch.load(weights_only=True)`, with numpy
scalars and dtypes (the epoch and accuracy fields) the only classes allowed; the module is then imported like any
other, cut at its `nn.EmbeddingBag` lookups. QR and mixed-dimension embeddings (`--qr-flag`, `--md-flag`) are
not supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from generator.errors import ModelFileError, UserInputError
from generator.model.imported import ImportedModel, import_module

INTERACTIONS = ("dot", "cat")


def _widths(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.split("-")]
    except ValueError:
        raise UserInputError(f"`{flag}` must be integers joined by '-', got {text!r}") from None
    if not values or min(values) < 1:
        raise UserInputError(f"`{flag}` must list integers >= 1, got {text!r}")
    return values


@dataclass(frozen=True)
class DlrmNetArchitecture:
    """The architecture flags of `dlrm_s_pytorch.py`, checked."""

    sparse_feature_size: int
    embedding_sizes: tuple[int, ...]
    mlp_bot: tuple[int, ...]
    mlp_top: tuple[int, ...]
    interaction_op: str = "dot"
    interaction_itself: bool = False
    weighted_pooling: bool = False
    loss_threshold: float = 0.0
    #: DLRM_Net's `sigmoid_top`: the top MLP layer a sigmoid follows (-1: none, DLRM_Net's own default); None: the
    #: last layer, as dlrm_s_pytorch.py builds it.
    sigmoid_top: int | None = None

    @classmethod
    def from_flags(
        cls,
        *,
        arch_sparse_feature_size: int,
        arch_embedding_size: str,
        arch_mlp_bot: str,
        arch_mlp_top: str,
        arch_interaction_op: str = "dot",
        arch_interaction_itself: bool = False,
        weighted_pooling: bool = False,
        loss_threshold: float = 0.0,
        sigmoid_top: int | None = None,
    ) -> DlrmNetArchitecture:
        """Parse the flags as `dlrm_s_pytorch.py` writes them ("13-512-256-64")."""
        arch = cls(
            arch_sparse_feature_size,
            tuple(_widths(arch_embedding_size, "--arch-embedding-size")),
            tuple(_widths(arch_mlp_bot, "--arch-mlp-bot")),
            tuple(_widths(arch_mlp_top, "--arch-mlp-top")),
            arch_interaction_op,
            arch_interaction_itself,
            weighted_pooling,
            loss_threshold,
            sigmoid_top,
        )
        arch.check()
        return arch

    def check(self) -> None:
        """Raise UserInputError naming the flag that does not fit."""
        if self.interaction_op not in INTERACTIONS:
            raise UserInputError(
                f"`--arch-interaction-op` must be one of {', '.join(INTERACTIONS)}, got {self.interaction_op!r}"
            )
        if self.sparse_feature_size < 1:
            raise UserInputError(f"`--arch-sparse-feature-size` must be >= 1, got {self.sparse_feature_size}")
        if self.interaction_op == "dot" and self.mlp_bot[-1] != self.sparse_feature_size:
            raise UserInputError(
                f"`--arch-mlp-bot` must end with --arch-sparse-feature-size ({self.sparse_feature_size}) for the dot "
                f"interaction, got {'-'.join(map(str, self.mlp_bot))}"
            )
        if not 0.0 <= self.loss_threshold < 0.5:
            raise UserInputError(f"`--loss-threshold` must be in [0, 0.5), got {self.loss_threshold}")
        if self.sigmoid_top is not None and not -1 <= self.sigmoid_top < len(self.mlp_top):
            raise UserInputError(
                f"`--sigmoid-top` must be -1 (no sigmoid) to {len(self.mlp_top) - 1} (the top MLP's last layer), "
                f"got {self.sigmoid_top}"
            )

    @property
    def sigmoid_layer(self) -> int:
        """The top MLP layer the sigmoid follows (-1: none)."""
        return len(self.mlp_top) - 1 if self.sigmoid_top is None else self.sigmoid_top

    @property
    def top_input(self) -> int:
        """Width of the top MLP's input (what `dlrm_s_pytorch.py` prepends to --arch-mlp-top)."""
        vectors = len(self.embedding_sizes) + 1
        if self.interaction_op == "cat":
            return self.mlp_bot[-1] + len(self.embedding_sizes) * self.sparse_feature_size
        pairs = vectors * (vectors + 1) // 2 if self.interaction_itself else vectors * (vectors - 1) // 2
        return self.mlp_bot[-1] + pairs


def _mlp(widths: Sequence[int], sigmoid_layer: int) -> nn.Sequential:
    """DLRM_Net's create_mlp: Linear then ReLU (Sigmoid at `sigmoid_layer`), so Linear layers sit at even indices."""
    layers: list[nn.Module] = []
    for index in range(len(widths) - 1):
        layers += [nn.Linear(widths[index], widths[index + 1]), nn.Sigmoid() if index == sigmoid_layer else nn.ReLU()]
    return nn.Sequential(*layers)


class DlrmNet(nn.Module):
    """DLRM_Net's forward: bottom MLP, sum-pooled bags, dot (or cat) interaction, top MLP (with its sigmoid)."""

    pair_rows: torch.Tensor
    pair_cols: torch.Tensor

    def __init__(self, arch: DlrmNetArchitecture):
        super().__init__()
        self.arch = arch
        self.emb_l = nn.ModuleList(
            [nn.EmbeddingBag(rows, arch.sparse_feature_size, mode="sum") for rows in arch.embedding_sizes]
        )
        self.v_W_l = nn.ParameterList(
            [nn.Parameter(torch.ones(rows)) for rows in arch.embedding_sizes] if arch.weighted_pooling else []
        )
        self.bot_l = _mlp(arch.mlp_bot, -1)
        top = [arch.top_input, *arch.mlp_top]
        self.top_l = _mlp(top, arch.sigmoid_layer)
        self.register_pairs()

    def register_pairs(self) -> None:
        """The (row, column) pairs of the gram matrix the dot interaction keeps (DLRM_Net's li, lj), on the CPU."""
        vectors = len(self.arch.embedding_sizes) + 1
        offset = 1 if self.arch.interaction_itself else 0
        pairs = [(i, j) for i in range(vectors) for j in range(i + offset)]
        rows = torch.tensor([i for i, _ in pairs], dtype=torch.int64, device="cpu")
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", torch.tensor([j for _, j in pairs], device="cpu"), persistent=False)

    def forward(self, dense_x: torch.Tensor, lS_o: torch.Tensor, lS_i: list[torch.Tensor]) -> torch.Tensor:  # noqa: N803
        """Click probability [B, 1] from dense features, offsets [T, B] and one id tensor per table."""
        x = self.bot_l(dense_x)
        pooled = []
        for k, bag in enumerate(self.emb_l):
            weights = self.v_W_l[k].gather(0, lS_i[k]) if self.arch.weighted_pooling else None
            pooled.append(bag(lS_i[k], lS_o[k], per_sample_weights=weights))
        if self.arch.interaction_op == "dot":
            batch, width = x.shape
            vectors = torch.cat([x, *pooled], dim=1).view((batch, -1, width))
            gram = torch.bmm(vectors, vectors.transpose(1, 2))
            interaction = torch.cat([x, gram[:, self.pair_rows, self.pair_cols]], dim=1)
        else:
            interaction = torch.cat([x, *pooled], dim=1)
        probability = self.top_l(interaction)
        if self.arch.loss_threshold > 0:
            probability = torch.clamp(probability, self.arch.loss_threshold, 1.0 - self.arch.loss_threshold)
        return probability

    def example_inputs(self, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """One small batch in DLRM_Net's input form (two ids per bag)."""
        offsets = torch.arange(0, 2 * batch, 2).repeat(len(self.emb_l), 1)
        ids = [torch.arange(2 * batch) % rows for rows in self.arch.embedding_sizes]
        return torch.randn(batch, self.arch.mlp_bot[0]), offsets, ids


#: Classes a facebookresearch checkpoint holds besides tensors and builtins (numpy scalars in its metadata).
_CHECKPOINT_GLOBALS: list[Any] = [
    np.dtype,
    np.core.multiarray.scalar,  # type: ignore[attr-defined]
    *(type(np.dtype(kind)) for kind in (np.float32, np.float64, np.int32, np.int64, np.bool_)),
]


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The `state_dict` of a checkpoint saved by `dlrm_s_pytorch.py` (or a bare state_dict), read safely."""
    if not path.is_file():
        raise ModelFileError(f"checkpoint `{path}` does not exist")
    try:
        with torch.serialization.safe_globals(_CHECKPOINT_GLOBALS):
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # weights_only refusals and broken files come as many types
        raise ModelFileError(
            f"checkpoint `{path}` cannot be read with weights_only=True ({str(error).splitlines()[0]}); recgen "
            "unpickles tensors, builtins and numpy scalars only"
        ) from error
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ModelFileError(f"checkpoint `{path}` holds no state_dict of tensors")
    return state


def load_dlrm_net(path: str | Path, arch: DlrmNetArchitecture) -> DlrmNet:
    """A DlrmNet with the checkpoint's weights; a mismatch names the parameters and shapes."""
    state = read_checkpoint(Path(path))
    with torch.device("meta"):  # no random fill: the checkpoint's tensors (memory-mapped) become the parameters
        module = DlrmNet(arch)
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise ModelFileError(f"checkpoint `{path}` does not fit the architecture flags: {error}") from error
    module.register_pairs()  # built on the meta device, like every parameter before the checkpoint's replaced it
    return module.eval()


def import_dlrm_checkpoint(
    path: str | Path, arch: DlrmNetArchitecture, *, max_ids: dict[str, int] | None = None
) -> ImportedModel:
    """A facebookresearch/dlrm checkpoint, imported (features `ls_i_<k>`, tables `emb_l_<k>`)."""
    module = load_dlrm_net(path, arch)
    return import_module(module, module.example_inputs(), max_ids=max_ids)
