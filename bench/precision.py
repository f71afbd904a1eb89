"""Benchmark: what fp16, int8 row-wise and hotness-mixed rows save and cost, against fp32 rows.

For the bundled example (dim 16) and a held-out imported model (a custom module over nn.EmbeddingBag, dim 64, that
no test uses), it plans one set of cuts from a Zipf profile (hottest rows holding `--hot-share` of the accesses cut
apart) and builds four variants that differ only in row dtype: fp32, fp16, int8 everywhere, and mixed (fp32 hot,
int8 cold). Per variant:

- embedding bytes as stored, and the PSS of the processes holding the rows (the shard-group stubs of a separate
  lookup step build; the router stubs of the fused default);
- requests/s and server CPU per request (tritonserver plus every stub, from /proc) on the embedded server, all
  variants served by one server and measured in interleaved rounds (median round), without queue policies (their
  batcher stalls, docs/faults.md, would swamp what the rows cost);
- the change of the output against fp32 (max, p99) and the ranking agreement inside requests of N = 256
  candidates (Kendall tau-b, top-10 overlap), from `recgen quality`'s measure;
- the held-out planner case: the Criteo Kaggle table sizes (dim 64) under Zipf 1.05 at 4x a model-wise replica's
  load, planned with each precision, memory allocated against model-wise fp32.

Prints a markdown table and writes JSON, markdown and a PNG.

    python -m bench.precision [--seconds 3] [--rounds 3] [--concurrency 2] [--out runs/bench/precision]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.loadgen import cpu_seconds, pss_bytes, server_processes
from bench.plan_memory import BATCH, _model_wise_qps, criteo_shape_and_profile
from bench.rounds import median_round, odd_rounds
from bench.structured import LATENCY_SLO_MS
from bench.threads import closed_loop
from generator import naming
from generator.check import client, quality
from generator.deploy import server as serve
from generator.model.examples import example_model
from generator.model.imported import ImportedModel, import_module
from generator.planning import precision
from generator.planning.capacity import Capacity
from generator.planning.memory import ModelShape
from generator.planning.plan import Model, Placement, Plan
from generator.planning.planner import plan_from_report, plan_model
from generator.repository import build
from generator.traffic.profile import AccessProfile, TableShape, zipf_profile
from generator.traffic.sampler import RequestSampler, table_traffic

VARIANTS = ("fp32", "fp16", "int8", "mixed")
ZIPF_ALPHA = 1.05


class HeldOutRanker(nn.Module):
    """A ranking model no test uses: three sum bags and one mean bag of dim 64, concatenated with an MLP of the
    dense features, then two ReLU layers and a sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.video = nn.EmbeddingBag(300_000, 64, mode="sum")
        self.creator = nn.EmbeddingBag(40_000, 64, mode="sum")
        self.topic = nn.EmbeddingBag(2_000, 64, mode="mean")
        self.region = nn.EmbeddingBag(300, 64, mode="sum")
        for bag in (self.video, self.creator, self.topic, self.region):
            nn.init.uniform_(bag.weight, -0.05, 0.05)  # an initialisation at a trained table's scale
        self.dense = nn.Sequential(nn.Linear(8, 64), nn.ReLU())
        self.top = nn.Sequential(nn.Linear(5 * 64, 128), nn.ReLU(), nn.Linear(128, 1))

    def forward(
        self,
        context: torch.Tensor,
        video: torch.Tensor,
        creator: torch.Tensor,
        topic: torch.Tensor,
        region: torch.Tensor,
    ) -> torch.Tensor:
        """Click probability [B, 1] from context [B, 8] and [B, L] ids per bag."""
        parts = [self.dense(context), self.video(video), self.creator(creator), self.topic(topic), self.region(region)]
        return torch.sigmoid(self.top(torch.cat(parts, dim=1)))


def held_out_model() -> Model:
    """HeldOutRanker imported as a user would (ids per sample from the example's 2-D id tensors)."""
    generator = torch.Generator().manual_seed(0)
    example = (
        torch.randn(4, 8, generator=generator),
        torch.randint(0, 300_000, (4, 8), generator=generator),
        torch.randint(0, 40_000, (4, 2), generator=generator),
        torch.randint(0, 2_000, (4, 4), generator=generator),
        torch.randint(0, 300, (4, 1), generator=generator),
    )
    return import_module(HeldOutRanker().eval(), example)


def profile_of(model: Model) -> AccessProfile:
    """A Zipf profile over the model's tables (ids per sample as the model's features read them)."""
    widths: dict[str, int] = {}
    for feature in getattr(model, "features", []) or []:
        widths[feature.table] = max(widths.get(feature.table, 1), feature.max_ids_per_sample)
    tables = [TableShape(t.name, t.num_rows, widths.get(t.name, t.max_ids_per_sample)) for t in model.tables]
    return zipf_profile(tables, ZIPF_ALPHA, samples=200_000, seed=1)


def variant_plans(model: Model, profile: AccessProfile, hot_share: float) -> dict[str, Plan]:
    """One set of cuts (the hot share cut apart), one instance per model, in every row dtype."""
    shape = ModelShape.of(model)
    chosen = precision.RowPrecision({}, hot_share, "fp32", "int8")
    report = plan_model(shape, profile, target_qps=100.0, precision=chosen)
    mixed = plan_from_report(report, shape, profile, latency_slo_ms=LATENCY_SLO_MS)
    tables = tuple(
        dataclasses.replace(t, shards=tuple(dataclasses.replace(s, placement=Placement()) for s in t.shards))
        for t in mixed.tables
    )
    mixed = dataclasses.replace(mixed, tables=tables, router=Placement(), dense=Placement())
    names = [t.spec.name for t in mixed.tables]
    plans = {kind: precision.with_row_dtypes(mixed, dict.fromkeys(names, kind)) for kind in ("fp32", "fp16", "int8")}
    plans["mixed"] = mixed
    return plans


def _stub_pss(processes: dict[str, int], owners: Callable[[str], bool]) -> int:
    return sum(size for name, size in pss_bytes(processes).items() if owners(name.split("#")[0]))


def _send_for_all_outputs(
    clients: Sequence[client.RankingClient], requests: Sequence[Mapping[str, np.ndarray]], i: int
) -> object:
    return clients[i].send(requests[i], output_names=None)


def serve_variants(
    label: str, model: Model, plans: dict[str, Plan], options: argparse.Namespace, workdir: Path
) -> dict[str, dict[str, Any]]:
    """Per variant: PSS of the rows' processes (both lookup steps) and throughput (fused and separate steps)."""
    figures: dict[str, dict[str, Any]] = {kind: {} for kind in plans}
    sampler = _sampler(model, profile_of(model))
    requests = [sampler.sample_tensors(BATCH, np.random.default_rng(i)) for i in range(options.concurrency)]
    for step in ("fused", "separate"):
        repositories, names = [], {}
        for kind, plan in plans.items():
            names[kind] = f"{label}_{kind}_{step[:3]}"
            named = dataclasses.replace(plan, model_name=names[kind], lookup_step=step)
            result = build.build(model, named, workdir / f"{names[kind]}_r", workdir / f"{names[kind]}_e")
            repositories += list(result.repositories)
            figures[kind]["embedding_bytes"] = sum(t.embedding_bytes for t in plan.tables)
        with serve.running_server(repositories, timeout_s=600) as server:
            processes = server_processes(server.pid) if server.pid else {}
            pids = list(processes.values())
            for kind, name in names.items():
                holders = (
                    (lambda model_name, n=name: model_name in (naming.router_model(n), f"{n}_router_ranking"))
                    if step == "fused"
                    else (lambda model_name, n=name: model_name.startswith(f"{n}_shard"))
                )
                figures[kind][f"rows_pss_bytes_{step}"] = _stub_pss(processes, holders)
            clients = {
                kind: [client.RankingClient(server.grpc_url, "grpc", n) for _ in requests] for kind, n in names.items()
            }
            runs: dict[str, list[dict]] = {kind: [] for kind in plans}
            for _ in range(options.rounds):
                for kind in plans:
                    runs[kind].append(
                        closed_loop(
                            functools.partial(_send_for_all_outputs, clients[kind], requests),
                            options.concurrency,
                            options.seconds,
                            warmup_s=0.5,
                            cpu_s=functools.partial(cpu_seconds, pids) if pids else None,
                        )
                    )
            for kind, measured in runs.items():
                median = median_round(measured, key=lambda c: c["requests_per_s"])
                figures[kind][f"requests_per_s_{step}"] = median["requests_per_s"]
                figures[kind][f"cpu_ms_per_request_{step}"] = median.get("cpu_ms_per_request", float("nan"))
                print(f"{label} {kind:<5} {step:<8}: {median['requests_per_s']:8.1f} req/s", flush=True)
            for each in (c for per_kind in clients.values() for c in per_kind):
                each.close()
    return figures


def _sampler(model: Model, profile: AccessProfile) -> RequestSampler:
    """Profile-shaped flattened requests for either kind of model."""
    if isinstance(model, ImportedModel):
        rows = {t.name: t.num_rows for t in model.tables}
        traffic = tuple(
            dataclasses.replace(
                table_traffic(f.table, rows[f.table], f.max_ids_per_sample, profile), input=naming.sparse_input(f.name)
            )
            for f in model.features
        )
        return RequestSampler(0, traffic, dense_inputs=tuple(model.dense_inputs))
    tables = tuple(table_traffic(t.name, t.num_rows, t.max_ids_per_sample, profile) for t in model.tables)
    return RequestSampler(model.num_dense_features, tables)


def planner_case(hot_share: float) -> list[dict[str, Any]]:
    """The held-out planner case: Criteo sizes, Zipf 1.05, 4x one model-wise replica's load, each precision."""
    shape, profile = criteo_shape_and_profile(ZIPF_ALPHA, samples=300_000)
    capacity = Capacity()
    qps = 4 * _model_wise_qps(shape, profile, capacity)
    choices = {
        "fp32": precision.RowPrecision(),
        "fp16": precision.row_precision(["fp16"], None),
        "int8": precision.row_precision(["int8"], None),
        "mixed": precision.RowPrecision({}, hot_share, "fp32", "int8"),
    }
    cells = []
    for kind, chosen in choices.items():
        report = plan_model(shape, profile, target_qps=qps, batch_size=BATCH, capacity=capacity, precision=chosen)
        cells.append(
            {
                "variant": kind,
                "model_wise_fp32_gb": report.model_wise.memory_bytes / 1e9,
                "planned_gb": report.planned.memory_bytes / 1e9,
                "memory_ratio_vs_model_wise_fp32": report.memory_ratio,
                "planned_embedding_gb": report.planned.embedding_bytes / 1e9,
            }
        )
    return cells


def markdown(results: dict[str, Any]) -> str:
    """The benchmark's tables."""
    lines = []
    for label, per_kind in results["models"].items():
        base = per_kind["fp32"]
        lines += [
            f"### {label}",
            "",
            "| rows | embedding MB | bytes vs fp32 | rows' PSS MB (separate / fused) | req/s fused (x fp32) | "
            "req/s separate (x fp32) | CPU ms/req fused | max / p99 output change | Kendall tau mean (min) | "
            "top-10 overlap mean (min) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for kind, cell in per_kind.items():
            lines.append(_row(kind, cell, base))
        lines.append("")
    lines += [
        "### held-out planner case (Criteo Kaggle sizes, dim 64, Zipf 1.05, 4x a model-wise replica's load)",
        "",
        "| rows | planned GB | model-wise fp32 GB | memory ratio vs model-wise fp32 | planned embedding GB |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['variant']} | {c['planned_gb']:.2f} | {c['model_wise_fp32_gb']:.2f} | "
        f"{c['memory_ratio_vs_model_wise_fp32']:.2f}x | {c['planned_embedding_gb']:.2f} |"
        for c in results["planner"]
    ]
    return "\n".join(lines) + "\n"


def _row(kind: str, cell: dict[str, Any], base: dict[str, Any]) -> str:
    q = cell["quality"]
    saved = base["embedding_bytes"] / cell["embedding_bytes"]
    fused = cell["requests_per_s_fused"] / base["requests_per_s_fused"]
    separate = cell["requests_per_s_separate"] / base["requests_per_s_separate"]
    return (
        f"| {kind} | {cell['embedding_bytes'] / 1e6:.2f} | {saved:.2f}x less | "
        f"{cell['rows_pss_bytes_separate'] / 1e6:.1f} / {cell['rows_pss_bytes_fused'] / 1e6:.1f} | "
        f"{cell['requests_per_s_fused']:.1f} ({fused:.2f}x) | "
        f"{cell['requests_per_s_separate']:.1f} ({separate:.2f}x) | {cell['cpu_ms_per_request_fused']:.2f} | "
        f"{q['outputs'][0]['max_abs']:.2g} / {q['outputs'][0]['p99_abs']:.2g} | "
        f"{q['kendall_tau_mean']:.4f} ({q['kendall_tau_min']:.4f}) | "
        f"{q['top_k_overlap_mean']:.3f} ({q['top_k_overlap_min']:.3f}) |"
    )


def plot(results: dict[str, Any], path: Path) -> None:
    """Bytes vs fp32, throughput vs fp32 and top-10 overlap per variant and model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    width = 0.35
    for offset, (label, per_kind) in enumerate(results["models"].items()):
        base = per_kind["fp32"]
        x = np.arange(len(per_kind)) + offset * width
        axes[0].bar(x, [base["embedding_bytes"] / c["embedding_bytes"] for c in per_kind.values()], width, label=label)
        axes[1].bar(x, [c["requests_per_s_fused"] / base["requests_per_s_fused"] for c in per_kind.values()], width)
        axes[2].bar(x, [c["quality"]["top_k_overlap_mean"] for c in per_kind.values()], width)
    for axis, title, goal in zip(
        axes, ("embedding bytes: fp32 / stored", "requests/s vs fp32 (fused)", "top-10 overlap (N=256)"),
        (3.5, 0.9, 0.95), strict=True,
    ):  # fmt: skip
        axis.set_xticks(np.arange(len(VARIANTS)) + width / 2, VARIANTS)
        axis.axhline(goal, color="red", linestyle="--", linewidth=1)
        axis.set_title(title)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=odd_rounds, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--hot-share", type=float, default=0.8)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/precision"))
    options = parser.parse_args()
    results: dict[str, Any] = {"models": {}, "options": {k: str(v) for k, v in vars(options).items()}}
    for label, make in (("example", example_model), ("heldout", held_out_model)):
        model = make()
        profile = profile_of(model)
        plans = variant_plans(model, profile, options.hot_share)
        with tempfile.TemporaryDirectory(prefix="recgen-bench-") as workdir:
            figures = serve_variants(label, model, plans, options, Path(workdir))
        for kind, plan in plans.items():
            report = quality.measure_quality(model, plan, profile=profile, requests=32, candidates=256)
            figures[kind]["quality"] = report.to_dict()
            figures[kind]["row_dtypes"] = report.row_dtypes
        results["models"][label] = figures
    results["planner"] = planner_case(options.hot_share)
    text = markdown(results)
    print(text)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "precision.json").write_text(json.dumps(results, indent=2) + "\n")
    (options.out / "precision.md").write_text(text)
    plot(results, options.out / "precision.png")
    print(f"wrote {options.out}/precision.json, precision.md, precision.png")


if __name__ == "__main__":
    main()
