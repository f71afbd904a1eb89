"""The structured (RecServe) half of bench/serving.py: packed ranking requests vs flattened ones of the same samples.

Per workload (a user-side share of the features, or the heavy-user model) it serves the flattened ensemble and
`<model>_ranking` and sends the same samples both ways: N rows of everything, or the user's features once and N
candidates' item features. Run through `python -m bench.serving --structured`.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from bench.loadgen import cpu_seconds, server_processes
from bench.rounds import median_round
from bench.threads import closed_loop
from generator import naming
from generator.check import client
from generator.deploy import server as serve
from generator.model import dlrm as models
from generator.planning import plan
from generator.repository import build
from generator.traffic.requests import random_structured_request

#: The latency target of the builds here (ms): generous, so that a stall of this shared VM sheds no request (with
#: the default 2 s target a step rejects what queued over 1 s, which a stall at a loop's start has reached).
LATENCY_SLO_MS = 60_000.0


def shared_model(user_share: float) -> models.DLRM:
    """8 equal tables (100k rows, dim 16, up to 4 ids) and 16 dense features; the first `user_share` of each are
    user-side, so the share is exact for tables and dense features alike."""
    user_tables = round(8 * user_share)
    tables = [models.TableSpec(f"t{i}", 100_000, 16, 4, "user" if i < user_tables else "item") for i in range(8)]
    user_dense = round(16 * user_share)
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


def structured_workloads(shares: list[float], heavy_user: bool) -> list[tuple[str, Callable[[], models.DLRM]]]:
    """(label, model factory) of every structured workload: the user-side shares, or the heavy-user model."""
    if heavy_user:
        return [("heavy user", heavy_user_model)]
    return [(f"user share {share:.0%}", functools.partial(shared_model, share)) for share in shares]


def _infer_one(clients: Sequence[client.RankingClient], payloads: Sequence[Mapping[str, np.ndarray]], i: int) -> object:
    return clients[i].infer(payloads[i])


def run_structured(
    workloads: list[tuple[str, Callable[[], models.DLRM]]],
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
                    structured = [
                        random_structured_request(model, count, np.random.default_rng(i)) for i in range(concurrency)
                    ]
                    tensors = {
                        "packed": [r.tensors() for r in structured],
                        "flattened": [r.flattened(model).tensors() for r in structured],
                    }
                    runs: dict[str, list[dict]] = {"flattened": [], "packed": []}
                    for _ in range(rounds):
                        for mode in runs:
                            runs[mode].append(
                                closed_loop(
                                    functools.partial(_infer_one, clients[mode], tensors[mode]),
                                    concurrency,
                                    seconds,
                                    warmup_s=0.5,
                                    cpu_s=functools.partial(cpu_seconds, pids) if pids else None,
                                )
                            )
                    for mode, measured in runs.items():
                        median = median_round(measured, key=lambda c: c["requests_per_s"])
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
                            f"{cell['cpu_ms_per_request']:.2f} CPU ms/request",
                            flush=True,
                        )
                for each in (c for per_mode in clients.values() for c in per_mode):
                    each.close()
    return cells


def markdown_structured(cells: list[dict]) -> str:
    by_key = {(c["workload"], c["candidates"], c["mode"]): c for c in cells}
    lines = [
        "| workload | N | flattened req/s | packed req/s | packed ÷ flattened | server CPU ms/request, flattened "
        "| packed | flattened B/req | packed B/req | bytes ÷ |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, count in dict.fromkeys((c["workload"], c["candidates"]) for c in cells):
        flat, packed = by_key[(label, count, "flattened")], by_key[(label, count, "packed")]
        lines.append(
            f"| {label} | {count} | {flat['requests_per_s']:,.1f} | {packed['requests_per_s']:,.1f} | "
            f"{packed['requests_per_s'] / flat['requests_per_s']:.2f}x | {flat['cpu_ms_per_request']:.2f} | "
            f"{packed['cpu_ms_per_request']:.2f} | {flat['bytes_per_request']:,} | "
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
