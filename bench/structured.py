"""The structured (RecServe) half of bench/serving.py: packed ranking requests vs flattened ones of the same samples.

Per workload (a user-side share of the features, or the heavy-user model) it serves the flattened ensemble and
`<model>_ranking` and sends the same samples both ways: N rows of everything, or the user's features once and N
candidates' item features. Run through `python -m bench.serving --structured`.

`--imported` adds, beside each recgen DLRM, the same model written as a user would write it (`AsImported`:
`nn.EmbeddingBag` tables, the same dense tower) and brought in with `import_module`: its ranking dense step is the
user/candidate split of the traced graph, where recgen's own class has a hand-written one.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.loadgen import cpu_seconds, server_processes
from bench.rounds import median_round
from bench.threads import closed_loop
from generator import naming
from generator.check import client
from generator.check.calibrate import step_statistics
from generator.deploy import server as serve
from generator.model import dlrm as models
from generator.model.imported import ImportedModel, import_module
from generator.planning import plan
from generator.planning.plan import Model
from generator.repository import build
from generator.traffic.requests import random_structured_request

#: The latency target of the builds here (ms): generous, so that a stall of this shared VM sheds no request (with
#: the default 2 s target a step rejects what queued over 1 s, which a stall at a loop's start has reached).
LATENCY_SLO_MS = 60_000.0


def shared_model(user_share: float, dense_user_share: float | None = None) -> models.DLRM:
    """8 equal tables (100k rows, dim 16, up to 4 ids) and 16 dense features; the first `user_share` of each are
    user-side (of the dense features `dense_user_share`, if given), so the share is exact for both."""
    user_tables = round(8 * user_share)
    tables = [models.TableSpec(f"t{i}", 100_000, 16, 4, "user" if i < user_tables else "item") for i in range(8)]
    user_dense = round(16 * (user_share if dense_user_share is None else dense_user_share))
    user: list[models.Side] = ["user"]
    item: list[models.Side] = ["item"]
    sides = user * user_dense + item * (16 - user_dense)
    return models.DLRM(
        num_dense_features=16, tables=tables, bottom_mlp=[64, 16], top_mlp=[64, 32, 1], dense_sides=sides
    ).eval()


def heavy_user_model() -> models.DLRM:
    """A heavy user side (RecServe's case): a 200-id history over two tables, three more user tables, 256 user-side
    dense features through a wide bottom MLP (computed once per ranking request); three single-id item tables."""
    tables = [
        models.TableSpec("user_history_items", 200_000, 32, 120, "user"),
        models.TableSpec("user_history_categories", 20_000, 32, 80, "user"),
        models.TableSpec("user_id", 100_000, 32, 1, "user"),
        models.TableSpec("user_geo", 2_000, 32, 1, "user"),
        models.TableSpec("user_device", 500, 32, 1, "user"),
        models.TableSpec("item_id", 200_000, 32, 1, "item"),
        models.TableSpec("item_category", 20_000, 32, 1, "item"),
        models.TableSpec("item_brand", 10_000, 32, 1, "item"),
    ]
    return models.DLRM(
        num_dense_features=256,
        tables=tables,
        bottom_mlp=[512, 256, 32],
        top_mlp=[256, 64, 1],
        dense_sides=["user"] * 256,
    ).eval()


class AsImported(nn.Module):
    """A recgen DLRM as a user writes it: one `nn.EmbeddingBag` per table (ids and offsets), the same dense tower."""

    def __init__(self, model: models.DLRM):
        super().__init__()
        self.names = model.table_names
        self.bags = nn.ModuleDict(
            {
                name: nn.EmbeddingBag.from_pretrained(model.embeddings[name].detach(), freeze=True, mode="sum")
                for name in self.names
            }
        )
        self.tower = model.dense

    def forward(self, dense: torch.Tensor, ids: dict[str, torch.Tensor], offsets: dict[str, torch.Tensor]) -> Any:
        return self.tower(dense, [self.bags[name](ids[name], offsets[name]) for name in self.names])


def as_imported(model: models.DLRM) -> ImportedModel:
    """The DLRM imported through `import_module`, with the same user side (its dense input only if all user-side)."""
    if set(model.dense_sides) != {"user"}:
        raise ValueError("as_imported takes a DLRM whose dense features are all user-side (one dense input)")
    module = AsImported(model).eval()
    ids = {name: torch.tensor([1, 0, 1]) for name in module.names}
    offsets = {name: torch.tensor([0, 1, 3]) for name in module.names}
    max_ids = {f"ids_{table.name}": table.max_ids_per_sample for table in model.tables}
    imported = import_module(module, (torch.randn(3, model.num_dense_features), ids, offsets), max_ids=max_ids)
    return imported.with_user_side(["dense", *(f"ids_{table.name}" for table in model.tables if table.side == "user")])


def light_user_model() -> models.DLRM:
    """Half the tables user-side and every dense feature (as `as_imported` needs): a light user side."""
    return shared_model(0.5, dense_user_share=1.0)


def structured_workloads(
    shares: list[float], heavy_user: bool, imported: bool = False
) -> list[tuple[str, Callable[[], Model]]]:
    """(label, model factory) of every structured workload: the user-side shares, or the heavy-user model.

    `imported`: a light and the heavy user side, each as recgen's DLRM and as the same model imported.
    """
    if imported:
        pairs = [("light user", light_user_model), ("heavy user", heavy_user_model)]
        return [
            workload
            for label, make in pairs
            for workload in ((label, make), (f"{label} (imported)", lambda make=make: as_imported(make())))
        ]
    if heavy_user:
        return [("heavy user", heavy_user_model)]
    return [(f"user share {share:.0%}", functools.partial(shared_model, share)) for share in shares]


def ranking_requests(model: Model, candidates: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A ranking request (one user, N candidates) and the same samples flattened, as tensors to send."""
    if isinstance(model, ImportedModel):
        return model.random_ranking_request(candidates, seed)
    structured = random_structured_request(model, candidates, np.random.default_rng(seed))
    return structured.tensors(), structured.flattened(model).tensors()


def _infer_one(clients: Sequence[client.RankingClient], payloads: Sequence[Mapping[str, np.ndarray]], i: int) -> object:
    return clients[i].send(payloads[i], output_names=None)  # every output, whatever the model names it


#: Each mode's lookup and dense steps (the fused lookup step: the router pools every group).
STEPS = {
    "flattened": {"router": "dlrm_router", "dense": "dlrm_dense"},
    "packed": {"router": "dlrm_router_ranking", "dense": "dlrm_dense_ranking"},
}


def _steps_busy(session: client.RankingClient, steps: Mapping[str, str]) -> dict[str, tuple[int, int, int]]:
    return {step: step_statistics(session, model) for step, model in steps.items()}


def _busy_us_per_request(
    before: Mapping[str, tuple[int, int, int]], after: Mapping[str, tuple[int, int, int]]
) -> dict[str, float]:
    """Each step's busy time per request between two readings (Triton charges each request of an execution the
    whole execution: x executions / requests undoes it)."""
    busy_us = {}
    for step in before:
        busy_ns, served, executions = (a - b for a, b in zip(after[step], before[step], strict=True))
        busy_us[step] = busy_ns / 1e3 / served * executions / served if served else float("nan")
    return busy_us


def _onnx_run_us(repository: Path, candidates: int, runs: int = 200) -> dict[str, float]:
    """Microseconds one ONNX Runtime call of each ONNX dense step takes in this process (1 thread) for N candidates.

    What the step's busy time holds beyond this is the Python backend's cost of an execution (stub IPC, tensors).
    """
    import onnxruntime as ort

    timings = {}
    for step in (s["dense"] for s in STEPS.values()):
        path = repository / step / "1" / naming.ONNX_MODEL_FILE
        if not path.exists():  # recgen's DLRM with --backend python: numpy kernels
            continue
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        feeds = {}
        for tensor in session.get_inputs():
            rows = 1 if tensor.name.startswith("user_") else candidates + (0 if "ranking" not in step else 1)
            rows = candidates if tensor.name.startswith("item_") else rows
            dims = [rows, *(d if isinstance(d, int) else 1 for d in tensor.shape[1:])]
            feeds[tensor.name] = np.random.default_rng(0).random(dims, dtype=np.float32)
        for _ in range(20):
            session.run(None, feeds)
        start = time.perf_counter()
        for _ in range(runs):
            session.run(None, feeds)
        timings[step] = (time.perf_counter() - start) / runs * 1e6
    return timings


def run_structured(
    workloads: list[tuple[str, Callable[[], Model]]],
    candidates: list[int],
    concurrency: int,
    seconds: float,
    rounds: int,
) -> list[dict]:
    """Packed (`<model>_ranking`) vs flattened requests of the same samples, interleaved, median of rounds."""
    cells = []
    for label, make_model in workloads:
        model = make_model()
        with tempfile.TemporaryDirectory(prefix="recgen-bench-") as workdir:
            the_plan = plan.uniform_plan(model, latency_slo_ms=LATENCY_SLO_MS)
            result = build.build(model, the_plan, Path(workdir) / "r", Path(workdir) / "e")
            with serve.running_server(result.repositories, timeout_s=300) as server:
                names = {"flattened": "dlrm", "packed": naming.ranking_ensemble("dlrm")}
                clients = {
                    mode: [client.RankingClient(server.grpc_url, "grpc", name) for _ in range(concurrency)]
                    for mode, name in names.items()
                }
                pids = list(server_processes(server.pid).values()) if server.pid else []
                for count in candidates:
                    pairs = [ranking_requests(model, count, seed) for seed in range(concurrency)]
                    tensors = {"packed": [p for p, _ in pairs], "flattened": [f for _, f in pairs]}
                    runs: dict[str, list[dict]] = {"flattened": [], "packed": []}
                    for _ in range(rounds):
                        for mode in runs:
                            before = _steps_busy(clients[mode][0], STEPS[mode])
                            timed = closed_loop(
                                functools.partial(_infer_one, clients[mode], tensors[mode]),
                                concurrency,
                                seconds,
                                warmup_s=0.5,
                                cpu_s=functools.partial(cpu_seconds, pids) if pids else None,
                            )
                            after = _steps_busy(clients[mode][0], STEPS[mode])
                            for step, busy_us in _busy_us_per_request(before, after).items():
                                timed[f"{step}_us_per_request"] = busy_us
                            runs[mode].append(timed)
                    onnx_us = _onnx_run_us(result.repository, count)
                    for mode, measured in runs.items():
                        median = median_round(measured, key=lambda c: c["requests_per_s"])
                        median["dense_onnx_run_us"] = onnx_us.get(STEPS[mode]["dense"], float("nan"))
                        cell = {
                            **median,
                            "mode": mode,
                            "workload": label,
                            "candidates": count,
                            "bytes_per_request": sum(a.nbytes for a in tensors[mode][0].values()),
                        }
                        cells.append(cell)
                        print(
                            f"{label} N {count:>4} {mode:<9}: {cell['requests_per_s']:8.1f} req/s, "
                            f"{cell['bytes_per_request']:>9,} B/request, p99 {cell['p99_ms']:.1f} ms, "
                            f"{cell['cpu_ms_per_request']:.2f} CPU ms/request, busy per request: router "
                            f"{cell['router_us_per_request']:.0f} us, dense {cell['dense_us_per_request']:.0f} us "
                            f"(its ONNX graph alone {cell['dense_onnx_run_us']:.0f} us)",
                            flush=True,
                        )
                for each in (c for per_mode in clients.values() for c in per_mode):
                    each.close()
    return cells


def markdown_structured(cells: list[dict]) -> str:
    by_key = {(c["workload"], c["candidates"], c["mode"]): c for c in cells}
    lines = [
        "| workload | N | flattened req/s | packed req/s | packed ÷ flattened | server CPU ms/request, flattened "
        "| packed | dense step us/request, flattened | packed | packed dense ONNX run alone, us | flattened B/req "
        "| packed B/req | bytes ÷ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, count in dict.fromkeys((c["workload"], c["candidates"]) for c in cells):
        flat, packed = by_key[(label, count, "flattened")], by_key[(label, count, "packed")]
        lines.append(
            f"| {label} | {count} | {flat['requests_per_s']:,.1f} | {packed['requests_per_s']:,.1f} | "
            f"{packed['requests_per_s'] / flat['requests_per_s']:.2f}x | {flat['cpu_ms_per_request']:.2f} | "
            f"{packed['cpu_ms_per_request']:.2f} | {flat.get('dense_us_per_request', float('nan')):.0f} | "
            f"{packed.get('dense_us_per_request', float('nan')):.0f} | "
            f"{packed.get('dense_onnx_run_us', float('nan')):.0f} | {flat['bytes_per_request']:,} | "
            f"{packed['bytes_per_request']:,} | {flat['bytes_per_request'] / packed['bytes_per_request']:.2f}x |"
        )
    return "\n".join(lines)


def plot_structured(cells: list[dict], path: Path) -> None:
    """Packed ÷ flattened requests/s per workload and N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = {(c["workload"], c["candidates"], c["mode"]): c for c in cells}
    pairs = list(dict.fromkeys((c["workload"], c["candidates"]) for c in cells))
    ratios = [
        by_key[(*pair, "packed")]["requests_per_s"] / by_key[(*pair, "flattened")]["requests_per_s"] for pair in pairs
    ]
    figure, axis = plt.subplots(figsize=(max(4, 1.2 * len(pairs)), 4))
    axis.bar([f"{label}\nN={count}" for label, count in pairs], ratios)
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set_ylabel("packed ÷ flattened requests/s")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
