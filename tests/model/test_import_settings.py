"""A program recgen saves carries how it was imported: later loads serve the same widths and user side, and a flag
that disagrees is refused naming both. (A program saved by torch.export itself takes the flags:
test_import.test_a_saved_program_loads_and_matches.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from generator.errors import UserInputError
from generator.model.imported import import_module
from generator.model.loading import load_model
from tests.model import zoo


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    imported = import_module(zoo.DcnV2().eval(), zoo.dcn_example(), max_ids={"*": 3, "item_ids": 7})
    user = imported.features[0].name
    return imported.with_user_side([user]).save(tmp_path_factory.mktemp("settings") / "dcn.pt2")


def test_a_load_without_flags_serves_what_the_import_chose(saved: Path) -> None:
    loaded = load_model(saved)
    assert {f.name: f.max_ids_per_sample for f in loaded.features} == {
        f.name: 7 if f.name == "item_ids" else 3 for f in loaded.features
    }
    assert [f.side for f in loaded.features] == ["user"] + ["item"] * (len(loaded.features) - 1)
    again = load_model(saved, max_ids={"item_ids": 7}, user_features=[loaded.features[0].name])  # flags that agree
    assert [f.max_ids_per_sample for f in again.features] == [f.max_ids_per_sample for f in loaded.features]


def test_flags_that_disagree_with_the_file_are_refused_naming_both(saved: Path) -> None:
    with pytest.raises(UserInputError, match=r"--max-ids gives feature .item_ids. 4 ids per sample, but .* with 7"):
        load_model(saved, max_ids={"*": 4})
    other = [f.name for f in load_model(saved).features][1]
    with pytest.raises(UserInputError, match=rf"--user-features {other} disagrees with .*imported with the user side"):
        load_model(saved, user_features=[other])
