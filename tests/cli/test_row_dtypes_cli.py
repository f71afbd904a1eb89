"""`--row-dtype`, `--row-dtype-by-hotness` and `recgen quality` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from generator import naming
from tests.cli.test_cli import _run


def test_plan_by_hotness_build_it_and_measure_its_quality(tmp_path: Path) -> None:
    model, profile, plan = tmp_path / "m.pt", tmp_path / "p.npz", tmp_path / "plan.json"
    _run("example", "--out", str(model))
    code, out = _run("profile", "--model", str(model), "--zipf", "1.1", "--samples", "5000", "-o", str(profile))
    assert code == 0, out
    code, out = _run(
        "plan", "--model", str(model), "--profile", str(profile), "--target-qps", "100", "--row-dtype-by-hotness",
        "0.8", "--row-dtype", "country=fp16", "-o", str(plan),
    )  # fmt: skip
    assert code == 0, out
    assert "embedding rows planned:" in out and " int8" in out and " fp16" in out
    shards = {
        (t["name"], s["index"]): s["row_dtype"] for t in json.loads(plan.read_text())["tables"] for s in t["shards"]
    }
    assert shards[("user_id", 0)] == "fp32" and shards[("user_id", 1)] == "int8" and shards[("country", 0)] == "fp16"
    out_dirs = ["--out", str(tmp_path / "r"), "--ensembles", str(tmp_path / "e")]
    code, out = _run("build", "--model", str(model), "--plan", str(plan), *out_dirs, "--lookup-step", "separate")
    assert code == 0, out
    codes = list((tmp_path / "r").glob("*/1/" + naming.shard_rows_file("user_id", 1)))
    assert len(codes) == 1 and np.load(codes[0]).dtype == np.uint8
    readme = (tmp_path / "r" / "README.md").read_text()
    assert "give `recgen check` the build's `--plan`" in readme
    code, out = _run(
        "quality", "--model", str(model), "--plan", str(plan), "--profile", str(profile), "--requests", "3",
        "--candidates", "64", "--json", str(tmp_path / "q.json"),
    )  # fmt: skip
    assert code == 0, out
    assert "Kendall tau" in out and "top-10 overlap" in out and "MB as stored" in out
    figures = json.loads((tmp_path / "q.json").read_text())
    assert figures["candidates"] == 64 and 1 < figures["memory_ratio"] < 4


def test_row_dtype_errors_name_the_flag_and_the_allowed_values(tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    _run("example", "--out", str(model), "--tiny")
    out_dirs = ["--out", str(tmp_path / "r"), "--ensembles", str(tmp_path / "e")]
    code, out = _run("build", "--model", str(model), *out_dirs, "--row-dtype", "int4")
    assert code == 1 and "must be one of fp32, fp16, int8, got 'int4'" in out
    code, out = _run("build", "--model", str(model), *out_dirs, "--row-dtype", "nope=int8")
    assert code == 1 and "no table 'nope'" in out
    assert not (tmp_path / "r").exists()
    code, out = _run("build", "--model", str(model), *out_dirs, "--row-dtype", "fp16", "--row-dtype", "item_id=int8")
    assert code == 0, out
    assert "item_id" in out and " int8 " in out and " fp16 " in out
    _run("profile", "--model", str(model), "--zipf", "1.1", "--samples", "500", "-o", str(tmp_path / "p.npz"))
    code, out = _run(
        "plan", "--model", str(model), "--profile", str(tmp_path / "p.npz"), "--target-qps", "10",
        "--row-dtype", "int8", "--row-dtype-by-hotness", "0.9", "-o", str(tmp_path / "plan.json"),
    )  # fmt: skip
    assert code == 1 and "give one of them" in out
