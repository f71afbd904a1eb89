"""The committed `model_repository/` and `ensembles/`: exactly what `recgen build` writes for the tiny example.

Regenerate them after an intended change, from the repository root:
`recgen example --tiny --out tiny.pt && recgen build --model tiny.pt --lookup-engine python --force`.
They are built with the Python models: the native engine's library is compiled on each machine, and a committed
binary would be one machine's build, so a fresh clone builds its own and `recgen build` there writes it.
"""

from pathlib import Path

import pytest
from click.testing import CliRunner

from generator.check import client
from generator.cli import main
from generator.model.examples import tiny_example_model
from tests.conftest import requires_server

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ("model_repository", "ensembles")
REGENERATE = "recgen example --tiny --out tiny.pt && recgen build --model tiny.pt --lookup-engine python --force"


def _files(root: Path) -> dict[str, bytes]:
    """Every file's bytes, and every directory (git keeps no empty one, so a clone must not need any)."""
    tree = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        if path.is_dir():
            assert any(path.iterdir()), f"{path} is empty: a git clone would not have it"
            continue
        tree[str(path.relative_to(root))] = path.read_bytes()
    return tree


def test_the_committed_repository_is_what_recgen_build_writes(tmp_path: Path) -> None:
    runner = CliRunner()
    model = tmp_path / "tiny.pt"
    result = runner.invoke(main, ["example", "--tiny", "--out", str(model)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = ["--out", str(tmp_path / COMMITTED[0]), "--ensembles", str(tmp_path / COMMITTED[1])]
    command = ["build", "--model", str(model), "--lookup-engine", "python", *out]
    result = runner.invoke(main, command, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in COMMITTED:
        committed, regenerated = _files(ROOT / name), _files(tmp_path / name)
        assert sorted(committed) == sorted(regenerated), f"{name}/ lists other files; regenerate: {REGENERATE}"
        drifted = [path for path in committed if committed[path] != regenerated[path]]
        assert not drifted, f"{name}/ drifted from `recgen build` in {drifted}; regenerate: {REGENERATE}"
    total = sum(len(data) for name in COMMITTED for data in _files(ROOT / name).values())
    assert total < 1_000_000, f"the committed example holds {total:,} bytes"


@requires_server
@pytest.mark.server
def test_the_committed_repository_serves_the_tiny_example(server_factory) -> None:
    server = server_factory([ROOT / name for name in COMMITTED])
    model = tiny_example_model()
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        assert client.check(model, url, protocol=protocol, requests=2, batch_size=32).passed
    assert client.check(model, server.grpc_url, protocol="grpc", model_name="dlrm_ranking", structured=True).passed
