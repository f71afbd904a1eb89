"""The cut of imported models: every supported pattern reproduces the module, every unsupported one is refused."""

from __future__ import annotations

import inspect
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from generator import naming
from generator.errors import ModelFileError, ModelImportError, UserInputError
from generator.model.import_settings import IMPORT_SETTINGS_FILE, ImportSettings
from generator.model.imported import import_module, import_program, module_inputs, verify
from generator.model.loading import load_model
from tests.model import zoo

DLRM_NET_VARIANTS = {
    "dot": {},
    "dot_itself": {"itself": True},
    "cat": {"interaction": "cat"},
    "cat_mixed_widths": {"interaction": "cat", "widths": [8, 4, 2]},
    "learned_weights": {"weighted": True},
    "clamp": {"clamp": 0.05},
}


@pytest.mark.parametrize("variant", list(DLRM_NET_VARIANTS))
def test_dlrm_net_variants_match_the_module(variant: str) -> None:
    model = zoo.DlrmNetLike(8, [50, 7, 300], [4, 16, 8], [16, 1], **DLRM_NET_VARIANTS[variant]).eval()
    imported = import_module(model, zoo.dlrm_net_example(model), max_ids={"*": 5})
    assert [t.name for t in imported.tables] == ["emb_l_0", "emb_l_1", "emb_l_2"]
    assert [f.name for f in imported.features] == ["ls_i_0", "ls_i_1", "ls_i_2"]
    assert [t.dim for t in imported.tables] == DLRM_NET_VARIANTS[variant].get("widths", [8, 8, 8])
    assert imported.dense_inputs == [("dense_x", 4)]
    assert verify(imported, batch=64, seed=5) < 1e-5
    if variant == "learned_weights":  # the per-row weights are folded into the served rows
        assert all(lookup.row_weights for lookup in imported.lookups)
        folded = model.emb_l[0].weight * model.v_W_l[0].reshape(-1, 1)
        torch.testing.assert_close(imported.embeddings["emb_l_0"], folded.detach())


def test_dlrm_nets_natural_form_imports_though_the_export_reads_the_batch_from_an_offsets_tensor() -> None:
    """DLRM_Net fed offsets as a list of per-table tensors: the dynamic export takes the batch size (for the
    interaction's view) from one of them. A shape is not a value: the remainder reads it from a pool instead."""
    model = zoo.DlrmNetLike(8, [50, 7, 300], [4, 16, 8], [16, 1], seed=3).eval()
    dense, offsets, ids = zoo.dlrm_net_example(model)
    imported = import_module(model, (dense, list(offsets), ids), max_ids={"*": 3})
    remainder = imported.cut.remainder.graph
    assert all(node.op != "placeholder" or not node.name.startswith("ls_o") for node in remainder.nodes)
    assert verify(imported, batch=17, seed=2) < 1e-5


class _ReadsTheIdCount(nn.Module):
    """Reads a size that is not the batch: the number of ids (a value of the request, not its shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 4)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.bag(ids, offsets) * ids.shape[0] + x


def test_a_size_other_than_the_batch_read_from_a_sparse_input_is_refused() -> None:
    example = (torch.randn(3, 4), torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0, 2, 3]))
    refused = r"sparse input 'ids' is read outside the embedding-bag lookups"
    with pytest.raises(ModelImportError, match=refused) as error:
        import_module(_ReadsTheIdCount().eval(), example)
    assert "_empty_nn_module_stack" not in str(error.value)  # torch's placeholder is no module of the user's


def test_a_refusal_names_the_line_of_the_users_code() -> None:
    example = (torch.randn(3, 4), torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0, 2, 3]))
    with pytest.raises(ModelImportError, match=r"'offsets' is read outside") as error:
        import_module(_ReadsIdsOutside().eval(), example)
    line = inspect.getsourcelines(_ReadsIdsOutside.forward)[1] + 1  # the forward's one statement
    assert f"at test_import.py:{line} in forward" in str(error.value), str(error.value)


class _IteratesStackedIds(nn.Module):
    """dlrm_s_pytorch's Criteo loader form: every table's ids stacked in one tensor, iterated table by table."""

    def __init__(self) -> None:
        super().__init__()
        self.emb_l = nn.ModuleList([nn.EmbeddingBag(20, 4, mode="sum"), nn.EmbeddingBag(30, 4, mode="sum")])

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        pooled = [bag(table_ids, offsets[k]) for k, (bag, table_ids) in enumerate(zip(self.emb_l, ids, strict=True))]
        return x + sum(pooled)


def test_the_criteo_loaders_stacked_ids_are_refused_saying_what_to_pass_instead() -> None:
    example = (torch.randn(3, 4), torch.tensor([[0, 2, 3], [0, 1, 2]]), torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]))
    with pytest.raises(ModelImportError, match=r"cannot route; pass each table's ids as a tensor of its own"):
        import_module(_IteratesStackedIds().eval(), example)
    model = zoo.DlrmNetLike(8, [50, 7, 300], [4, 16, 8], [16, 1], seed=3).eval()  # indexes lS_i[k] instead
    dense, offsets, _ = zoo.dlrm_net_example(model)
    stacked = torch.stack([torch.arange(6) % 7 for _ in range(3)])
    with pytest.raises(ModelImportError, match=r"a row of input 'ls_i', which stacks every table's ids; pass each"):
        import_module(model, (dense, offsets, stacked))


def test_a_batch_of_any_size_runs_through_the_same_graph() -> None:
    model = zoo.DlrmNetLike(8, [50, 7], [4, 8], [8, 1]).eval()
    imported = import_module(model, zoo.dlrm_net_example(model, batch=3))
    for batch in (1, 2, 3, 129):
        assert verify(imported, batch=batch, seed=batch) < 1e-5


def test_mixed_widths_mean_pooling_and_2d_ids_with_padding() -> None:
    imported = import_module(zoo.DcnV2().eval(), zoo.dcn_example(), max_ids={"tag_ids": 3, "*": 4})
    assert {t.name: t.dim for t in imported.tables} == {"user": 16, "item": 8, "tags": 4}
    assert [(f.name, f.pooling, f.max_ids_per_sample) for f in imported.features] == [
        ("user_ids", "sum", 4),
        ("item_ids", "mean", 4),
        ("tag_ids", "sum", 3),
    ]
    assert imported.lookups[2].padding_idx == 0
    assert torch.all(imported.embeddings["tags"][0] == 0)
    assert verify(imported, batch=50, seed=1) < 1e-5


def test_mean_counts_skip_padding_and_empty_bags_pool_to_zero() -> None:
    imported = import_module(zoo.DcnV2().eval(), zoo.dcn_example(), max_ids={"*": 3})
    request = imported.random_request(4, seed=0)
    request["sparse_item_ids"] = np.array([[5, -1, -1], [5, 6, -1], [-1, -1, -1], [5, 5, 5]])
    pooled = imported.pooled(request)[1]
    rows = imported.embeddings["item"]
    torch.testing.assert_close(pooled[0], rows[5])
    torch.testing.assert_close(pooled[1], (rows[5] + rows[6]) / 2)
    torch.testing.assert_close(pooled[2], torch.zeros(8))
    for ours, theirs in zip(imported.served_outputs(request), imported.reference_outputs(request), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_a_shared_table_is_stored_once_and_outputs_keep_their_names() -> None:
    imported = import_module(zoo.TwoTower().eval(), zoo.two_tower_example())
    assert [t.name for t in imported.tables] == ["items"]
    assert [f.table for f in imported.features] == ["items", "items"]
    assert imported.tables[0].max_ids_per_sample == 64  # both features' ids per sample
    assert imported.outputs == [("click", (1,)), ("conversion", (2,))]
    assert verify(imported, batch=20) < 1e-5


def test_module_inputs_are_the_modules_own_form() -> None:
    model = zoo.DlrmNetLike(8, [50, 7], [4, 8], [8, 1]).eval()
    imported = import_module(model, zoo.dlrm_net_example(model))
    request = {
        "dense_x": np.zeros((2, 4), np.float32),
        "sparse_ls_i_0": np.array([[3, 4, -1], [-1, -1, -1]]),
        "sparse_ls_i_1": np.array([[1, -1, -1], [2, 6, 0]]),
    }
    (_, offsets, indices), kwargs = module_inputs(imported.cut, request)
    assert kwargs == {}
    assert offsets.tolist() == [[0, 2], [0, 1]]
    assert [ids.tolist() for ids in indices] == [[3, 4], [1, 2, 6, 0]]


# -- refusals ---------------------------------------------------------------------------------------------------


class _MaxPooling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 4, mode="max")

    def forward(self, x: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return x + self.bag(ids, offsets)


class _HashedIds(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 4)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return x + self.bag(ids % 10, offsets)


class _ReadsIdsOutside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 4)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return x * offsets.unsqueeze(1).to(x.dtype) + self.bag(ids, offsets)


class _MaxNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 4, max_norm=1.0)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return x + self.bag(ids, offsets)


class _PlainEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 4)
        self.history = nn.Embedding(10, 4)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return x + self.bag(ids, offsets) + self.history(ids).sum(0)  # rows of `history`, unpooled per sample


class _Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 4)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        pooled = self.bag(ids, offsets)
        return x + pooled if int(ids.max()) > 4 else x - pooled


class _SharedOffsets(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.EmbeddingBag(10, 4), nn.EmbeddingBag(10, 4)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, more: torch.Tensor) -> torch.Tensor:
        return x + self.first(ids, offsets) + self.second(more, offsets)


class _ComputedWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 4, mode="sum")

    def forward(self, x: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return x + self.bag(ids, offsets, per_sample_weights=torch.ones_like(ids, dtype=x.dtype) * x[0, 0])


class _NoBags(nn.Module):
    def forward(self, x: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return x * 2


REFUSALS = {
    "max_pooling": (_MaxPooling, "max pooling.*module 'bag'"),
    "computed_ids": (_HashedIds, "ids of the lookup of table 'bag' are computed inside the module"),
    "ids_read_outside": (_ReadsIdsOutside, "sparse input 'offsets' is read outside the embedding-bag lookups"),
    "max_norm": (_MaxNorm, "table .bag.weight. is read outside its pooled lookups .max_norm"),
    "plain_embedding": (_PlainEmbedding, "sparse input 'ids' is read outside the embedding-bag lookups"),
    "branches": (_Branches, "could not trace the module .*; data-dependent branches on ids or values"),
    "no_bags": (_NoBags, "no embedding-bag lookup"),
    "computed_weights": (_ComputedWeights, "per-sample weights of the lookup of table 'bag' are neither"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_what_cannot_be_pooled_from_partial_sums_is_refused(case: str) -> None:
    module_class, message = REFUSALS[case]
    example = (torch.randn(3, 4), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 3]))
    with pytest.raises(ModelImportError, match=message):
        import_module(module_class().eval(), example)


def test_lookups_that_share_one_offsets_input_are_refused() -> None:
    example = (torch.randn(3, 4), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 3]), torch.tensor([5, 6, 7, 8]))
    with pytest.raises(ModelImportError, match="'first' and 'second' read the same offsets input 'offsets'"):
        import_module(_SharedOffsets().eval(), example)


def test_an_unknown_max_ids_feature_is_named() -> None:
    model = zoo.DlrmNetLike(8, [50, 7], [4, 8], [8, 1]).eval()
    with pytest.raises(UserInputError, match=r"`max_ids` names features \['nope'\]"):
        import_module(model, zoo.dlrm_net_example(model), max_ids={"nope": 3})


# -- programs on disk -------------------------------------------------------------------------------------------


def _dynamic_program(model: zoo.DlrmNetLike) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=4096)
    ids = [torch.export.Dim(f"ids_{k}", min=2, max=1 << 20) for k in range(len(model.emb_l))]
    return torch.export.export(
        model, zoo.dlrm_net_example(model), dynamic_shapes=({0: batch}, {1: batch}, [{0: n} for n in ids])
    )


def test_a_saved_program_loads_and_matches(tmp_path: Path) -> None:
    model = zoo.DlrmNetLike(8, [50, 7], [4, 8], [8, 1], itself=True).eval()
    path = tmp_path / "model.pt2"
    torch.export.save(_dynamic_program(model), path)
    imported = load_model(path, max_ids={"*": 4})
    assert verify(imported, batch=33) < 1e-5


def test_a_program_with_a_static_batch_is_refused_with_the_fix() -> None:
    model = zoo.DlrmNetLike(8, [50, 7], [4, 8], [8, 1]).eval()
    with pytest.raises(ModelImportError, match=r"static batch .*dynamic_shapes"):
        import_program(torch.export.export(model, zoo.dlrm_net_example(model)))


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this ran",))


def test_a_program_whose_pickles_would_run_code_is_refused(tmp_path: Path) -> None:
    model = zoo.DlrmNetLike(8, [50, 7], [4, 8], [8, 1]).eval()
    good = tmp_path / "good.pt2"
    torch.export.save(_dynamic_program(model), good)
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for member in source.infolist():
            data = source.read(member)
            if "/data/sample_inputs/" in member.filename:
                buffer = io.BytesIO()
                torch.save({"payload": _RunsCode()}, buffer, pickle_protocol=pickle.DEFAULT_PROTOCOL)
                data = buffer.getvalue()
            target.writestr(member, data)
    with pytest.raises(ModelFileError, match="beyond tensors and the allowlist"):
        load_model(bad)


def test_a_file_of_another_kind_says_what_recgen_reads(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"emb_l.0.weight": torch.zeros(3, 2)}, path)
    with pytest.raises(ModelFileError, match=r"torch.export programs \(.pt2\)"):
        load_model(path)


# -- TorchRec ---------------------------------------------------------------------------------------------------


def test_request_time_weights_of_a_weighted_kjt_become_request_tensors() -> None:
    pytest.importorskip("torchrec")
    module, example = zoo.torchrec_models()["weighted"]
    imported = import_module(module.eval(), example, max_ids={"*": 4})
    assert [(f.name, f.table, f.weighted) for f in imported.features] == [
        ("watched", "movies", True),
        ("liked", "movies", True),
        ("genre", "genres", True),
    ]
    request = imported.random_request(30, seed=3)
    assert request["weights_liked"].shape == request["sparse_liked"].shape == (30, 4)
    assert verify(imported, batch=30, seed=3) < 1e-5
    (_, kjt), _ = imported.module_inputs(request)
    features = kjt.keys()  # the KJT's own key order
    present = np.concatenate([request[f"sparse_{key}"][request[f"sparse_{key}"] >= 0] for key in features])
    weights = np.concatenate([request[f"weights_{key}"][request[f"sparse_{key}"] >= 0] for key in features])
    np.testing.assert_array_equal(kjt.values().numpy(), present)
    np.testing.assert_array_equal(kjt.weights().numpy(), weights)


def test_request_time_weights_of_an_offsets_bag_scale_each_id() -> None:
    imported = import_module(zoo.DcnV2().eval(), zoo.dcn_example(), max_ids={"*": 3})
    assert [f.weighted for f in imported.features] == [True, False, False]
    request = imported.random_request(3, seed=1)
    request["sparse_user_ids"] = np.array([[4, 9, -1], [-1, -1, -1], [4, 4, 4]])
    request["weights_user_ids"] = np.array([[2.0, 0.5, 99.0], [1, 1, 1], [1.0, -1.0, 0.25]], np.float32)
    pooled = imported.pooled(request)[0]
    rows = imported.embeddings["user"]
    torch.testing.assert_close(pooled[0], 2 * rows[4] + 0.5 * rows[9])  # a padded position's weight is ignored
    torch.testing.assert_close(pooled[1], torch.zeros(16))
    torch.testing.assert_close(pooled[2], 0.25 * rows[4])
    for ours, theirs in zip(imported.served_outputs(request), imported.reference_outputs(request), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("kind", ["dlrm", "dcn", "projection"])
def test_torchrec_models_over_an_ebc(kind: str) -> None:
    pytest.importorskip("torchrec")
    module, example = zoo.torchrec_models()[kind]
    imported = import_module(module.eval(), example, max_ids={"*": 3})
    assert [(t.name, t.num_rows) for t in imported.tables] == [("products", 60), ("places", 25)]
    assert [(f.name, f.table, f.pooling) for f in imported.features] == [
        ("viewed", "products", "sum"),
        ("bought", "products", "sum"),
        ("city", "places", "mean"),
    ]
    assert verify(imported, batch=40, seed=2) < 1e-5
    request = imported.random_request(2)
    assert set(request) == {"dense_features", *(naming.sparse_input(f.name) for f in imported.features)}


def test_saving_writes_torch_export_saves_own_archive_without_copying_weights(tmp_path: Path) -> None:
    from torch.export.pt2_archive import _package

    imported = import_module(zoo.DcnV2().eval(), zoo.dcn_example(), max_ids={"*": 4})
    before = _package._get_raw_tensor_bytes
    ours = imported.save(tmp_path / "ours" / "model.pt2")
    assert _package._get_raw_tensor_bytes is before  # torch's writer is restored
    (tmp_path / "torch").mkdir()
    record = ImportSettings.of(imported.features, []).to_json()  # recgen's record of the import, beside the program
    torch.export.save(imported.program, tmp_path / "torch" / "model.pt2", extra_files={IMPORT_SETTINGS_FILE: record})
    assert ours.read_bytes() == (tmp_path / "torch" / "model.pt2").read_bytes()
