"""recgen_files.json: a repository that is not what was built is refused before a server starts on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from generator import naming
from generator.deploy import supervisor
from generator.deploy.server import ServerConfig
from generator.errors import UserInputError
from generator.planning.plan import uniform_plan
from generator.repository import build, contents
from tests.conftest import tiny_model


@pytest.fixture
def built(tmp_path: Path) -> build.BuildResult:
    model = tiny_model()
    return build.build(model, uniform_plan(model), tmp_path / "repo", tmp_path / "ens")


def _rows_file(repository: Path) -> Path:
    return max((path for path in repository.rglob("*.npy")), key=lambda path: path.stat().st_size)


def test_a_build_lists_every_file_it_wrote_and_verifies(built: build.BuildResult) -> None:
    for repository in built.repositories:
        listed = contents.file_hashes(repository)
        assert naming.CONFIG_FILE in {Path(name).name for name in listed}
        assert naming.CONTENTS_FILE not in listed and "README.md" not in listed
        assert contents.verify(repository) == len(listed) > 0
    assert naming.MANIFEST_FILE in contents.file_hashes(built.repository)


def test_what_python_and_people_add_is_not_a_change(built: build.BuildResult) -> None:
    model_dir = built.repository / naming.router_model("dlrm")
    (model_dir / "1" / "__pycache__").mkdir()
    (model_dir / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"byte code")
    (built.repository / "README.md").write_text("my notes\n")
    contents.verify(built.repository)


def test_rows_changed_by_half_are_refused_and_named(built: build.BuildResult) -> None:
    rows_file = _rows_file(built.repository)
    rows = np.load(rows_file)
    np.save(rows_file, rows + np.asarray(0.5, dtype=rows.dtype))
    name = rows_file.relative_to(built.repository).as_posix()
    with pytest.raises(UserInputError, match=rf"is not what recgen built .*{name} was changed"):
        contents.verify(built.repository)


def test_a_config_edited_by_hand_a_missing_file_and_an_added_model_are_refused(built: build.BuildResult) -> None:
    router = built.repository / naming.router_model("dlrm")
    config = router / naming.CONFIG_FILE
    config.write_text(config.read_text().replace("max_batch_size", "max_batch_size", 1) + "\n# edited\n")
    _rows_file(built.repository).unlink()
    shutil.copytree(router, built.repository / "dlrm_router_copy")
    with pytest.raises(UserInputError) as refused:
        contents.verify(built.repository)
    message = str(refused.value)
    assert "dlrm_router/config.pbtxt was changed" in message and "is missing" in message
    assert "dlrm_router_copy/ was not written by the build" in message


def test_serve_refuses_before_it_starts_a_server(built: build.BuildResult) -> None:
    (built.ensembles / "dlrm" / naming.CONFIG_FILE).write_text("")  # type: ignore[operator]
    with pytest.raises(UserInputError, match=r"dlrm/config\.pbtxt was changed"):
        supervisor.serve_until_stopped(ServerConfig(repositories=built.repositories), echo=lambda line: None)


def test_a_lost_list_is_refused_and_a_repository_recgen_did_not_write_is_not_checked(
    built: build.BuildResult, tmp_path: Path
) -> None:
    (built.repository / naming.CONTENTS_FILE).unlink()
    with pytest.raises(UserInputError, match=r"recgen_files\.json is missing or unreadable"):
        contents.verify(built.repository)
    plain = tmp_path / "plain"
    shutil.copytree(built.repository / naming.router_model("dlrm"), plain / "m")
    assert contents.verify(plain) == 0
