from pathlib import Path

import pytest

from bench.execution_sharing import SYSTEMS, one_request_per_execution, savings
from bench.report import write_report

CONFIG = 'name: "{name}"\nmax_batch_size: 1024\ninput {{\n  name: "x"\n  dims: 1024\n}}\n'


def _build(root: Path) -> tuple[Path, Path]:
    repository, ensembles = root / "r", root / "e"
    for folder, name in ((repository / "dlrm_dense", "dlrm_dense"), (ensembles / "dlrm", "dlrm")):
        folder.mkdir(parents=True)
        (folder / "config.pbtxt").write_text(CONFIG.format(name=name))
    (repository / "dlrm_router").mkdir()
    (repository / "dlrm_router" / "config.pbtxt").write_text(CONFIG.format(name="dlrm_router"))
    return repository, ensembles


def test_the_copy_limits_the_dense_step_and_ensemble_to_one_request_and_leaves_the_rest(tmp_path: Path) -> None:
    repository, ensembles = _build(tmp_path)
    copy_repository, copy_ensembles = one_request_per_execution(repository, ensembles, 256, tmp_path / "one")
    for config in (copy_repository / "dlrm_dense" / "config.pbtxt", copy_ensembles / "dlrm" / "config.pbtxt"):
        assert "max_batch_size: 256\n" in config.read_text()
        assert "dims: 1024" in config.read_text()  # only the max_batch_size line changes
    assert "max_batch_size: 1024" in (copy_repository / "dlrm_router" / "config.pbtxt").read_text()
    assert "max_batch_size: 1024" in (repository / "dlrm_dense" / "config.pbtxt").read_text()  # the build is kept


def test_a_config_without_one_max_batch_size_line_is_refused(tmp_path: Path) -> None:
    repository, ensembles = _build(tmp_path)
    (repository / "dlrm_dense" / "config.pbtxt").write_text('name: "dlrm_dense"\n')
    with pytest.raises(ValueError, match="found 0"):
        one_request_per_execution(repository, ensembles, 256, tmp_path / "one")


def test_savings_are_one_request_per_execution_minus_shared_beside_the_packed_cost() -> None:
    cpu = dict(zip(SYSTEMS, (1.5, 1.75, 0.5), strict=True))
    cells = [
        {"workload": "w", "candidates": 64, "system": system, "cpu_ms_per_request": ms} for system, ms in cpu.items()
    ]
    assert savings(cells) == [("w", 64, 0.25, 0.5)]


def test_a_report_is_the_table_the_figures_and_the_plot_under_one_stem(tmp_path: Path) -> None:
    write_report(tmp_path / "out", "bench", "| a |", {"cells": [1]}, lambda path: path.write_bytes(b"png"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.json", "bench.md", "bench.png"]
    assert (tmp_path / "out" / "bench.md").read_text() == "| a |\n"
