from pathlib import Path

import pytest
import torch

from generator.errors import ModelFileError, UserInputError
from generator.model.dlrm import DLRM, TableSpec, pool_rows
from generator.model.examples import example_model
from tests.conftest import tiny_model, wide_model


@pytest.mark.parametrize("make", [tiny_model, wide_model, example_model])
def test_save_load_round_trip_keeps_architecture_and_scores(make, tmp_path: Path) -> None:
    model = make()
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = DLRM.load(path)
    assert loaded.architecture() == model.architecture()
    assert loaded.tables == model.tables
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(6, model.num_dense_features, generator=generator)
    sparse = {
        t.name: torch.randint(-1, t.num_rows, (6, t.max_ids_per_sample), generator=generator) for t in model.tables
    }
    torch.testing.assert_close(loaded(dense, sparse), model(dense, sparse), rtol=0, atol=0)


def test_saved_file_loads_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    tiny_model().save(path)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "recgen.dlrm"


def test_constructor_arguments_stay_readable() -> None:
    model = wide_model()
    assert model.num_dense_features == 1
    assert model.bottom_mlp == [4]
    assert model.top_mlp == [16, 4, 1]
    assert [t.name for t in model.tables] == ["history", "tiny"]


def test_padding_pools_to_zero_and_all_padding_sample_is_zero() -> None:
    weight = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    ids = torch.tensor([[1, 3, -1], [-1, -1, -1], [0, 0, 2]])
    pooled = pool_rows(weight, ids)
    torch.testing.assert_close(pooled[0], weight[1] + weight[3])
    torch.testing.assert_close(pooled[1], torch.zeros(3))
    torch.testing.assert_close(pooled[2], 2 * weight[0] + weight[2])


def test_forward_rejects_out_of_range_ids() -> None:
    model = tiny_model()
    dense = torch.zeros(1, 5)
    sparse = {"one_row": torch.tensor([[1]]), "small": torch.tensor([[0, -1, -1]]), "medium": torch.tensor([[3]])}
    with pytest.raises(UserInputError, match=r"one_row.*id 1"):
        model(dense, sparse)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bottom_mlp": [16, 4]}, "dim"),
        ({"top_mlp": [8, 2]}, "end with 1"),
        ({"tables": []}, "at least one table"),
        ({"num_dense_features": 0}, "num_dense_features"),
    ],
)
def test_bad_architecture_names_the_field(kwargs, message) -> None:
    args = {"num_dense_features": 5, "tables": [TableSpec("t", 4, 8, 1)], "bottom_mlp": [8], "top_mlp": [4, 1]}
    args.update(kwargs)
    with pytest.raises(UserInputError, match=message):
        DLRM(**args)


@pytest.mark.parametrize("bad", [dict(name="9lives"), dict(name="a__b"), dict(num_rows=0), dict(dim=-1)])
def test_table_spec_validation(bad) -> None:
    fields = {"name": "t", "num_rows": 3, "dim": 4, "max_ids_per_sample": 1} | bad
    with pytest.raises(UserInputError):
        TableSpec(**fields)


def test_load_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        DLRM.load(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ModelFileError, match="not a recgen DLRM"):
        DLRM.load(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match="cannot be read"):
        DLRM.load(garbage)
