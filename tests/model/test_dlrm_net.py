"""facebookresearch/dlrm checkpoints: the architecture flags rebuild DLRM_Net, the weights load safely."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from generator.errors import ModelFileError, UserInputError
from generator.model.dlrm_net import DlrmNetArchitecture, import_dlrm_checkpoint
from generator.model.imported import verify
from tests.model import zoo

VARIANTS = {
    "dot": ({}, {}),
    "dot_itself_learned_weights": (
        {"itself": True, "weighted": True},
        {"arch_interaction_itself": True, "weighted_pooling": True},
    ),
    "cat": ({"interaction": "cat"}, {"arch_interaction_op": "cat"}),
    "clamp": ({"clamp": 0.02}, {"loss_threshold": 0.02}),
    "no_sigmoid": ({"sigmoid_top": -1}, {"sigmoid_top": -1}),  # DLRM_Net(...) with its own default: logits
    "sigmoid_mid_top": ({"sigmoid_top": 0}, {"sigmoid_top": 0, "arch_mlp_top": "16-4-1"}),
}


def _checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """What dlrm_s_pytorch.py saves: numpy scalars beside the state_dict."""
    torch.save(
        {"epoch": np.int64(2), "nbatches": 7, "train_acc": np.float64(0.78), "state_dict": model.state_dict()}, path
    )
    return path


def _arch(**flags: object) -> DlrmNetArchitecture:
    flags = {"arch_mlp_top": "16-1", **flags}
    return DlrmNetArchitecture.from_flags(
        arch_sparse_feature_size=8, arch_embedding_size="50-7-300", arch_mlp_bot="4-16-8", **flags
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_checkpoint_with_its_flags_matches_the_module_it_came_from(variant: str, tmp_path: Path) -> None:
    structure, flags = VARIANTS[variant]
    top = [int(width) for width in str(flags.get("arch_mlp_top", "16-1")).split("-")]
    original = zoo.DlrmNetLike(8, [50, 7, 300], [4, 16, 8], top, **structure, seed=3).eval()
    imported = import_dlrm_checkpoint(_checkpoint(original, tmp_path / "ckpt.pt"), _arch(**flags), max_ids={"*": 4})
    request = imported.random_request(25, seed=6)
    args, _ = imported.module_inputs(request)
    with torch.no_grad():
        expected = original(*args).numpy()
    np.testing.assert_allclose(imported.served_outputs(request)[0], expected, atol=1e-6)
    assert verify(imported) < 1e-5


def test_flags_that_do_not_fit_the_checkpoint_name_the_parameters(tmp_path: Path) -> None:
    original = zoo.DlrmNetLike(8, [50, 7, 300], [4, 16, 8], [16, 1]).eval()
    path = _checkpoint(original, tmp_path / "ckpt.pt")
    with pytest.raises(ModelFileError, match=r"emb_l\.1\.weight"):
        import_dlrm_checkpoint(
            path,
            DlrmNetArchitecture.from_flags(
                arch_sparse_feature_size=8, arch_embedding_size="50-9-300", arch_mlp_bot="4-16-8", arch_mlp_top="16-1"
            ),
        )
    out_of_range = r"`--sigmoid-top` must be -1 \(no sigmoid\) to 2 \(the top MLP's last layer\), got 3"
    with pytest.raises(UserInputError, match=out_of_range):
        _arch(arch_mlp_top="16-4-1", sigmoid_top=3)
    with pytest.raises(UserInputError, match=r"--arch-mlp-bot. must end with --arch-sparse-feature-size"):
        DlrmNetArchitecture.from_flags(
            arch_sparse_feature_size=4, arch_embedding_size="50-7", arch_mlp_bot="4-16-8", arch_mlp_top="16-1"
        )


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this ran",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "hook": _RunsCode()}, path)
    with pytest.raises(ModelFileError, match="weights_only=True"):
        import_dlrm_checkpoint(path, _arch())
