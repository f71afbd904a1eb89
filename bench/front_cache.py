"""Benchmark: the router's front cache of hot rows (FlexEMR's temporal locality) and pooled partials (spatial).

For Zipf alpha 0.8, 1.05 and 1.2 and front caches of 0.1%, 1% and 10% of the embedding bytes (and none), on a
model of four 250k-row tables: plan with the cache (`planning.planner.plan_model(front_cache_bytes=...)`), then build,
serve on the embedded server and send requests drawn from a fresh sample of the same distribution. Reports the
plan's expected hit rate beside the hit rate the router measured (its Prometheus counters), the bytes per request
on every edge from the plan (`repository.edges.edge_bytes`: ids to the shard groups, pooled partials back, what raw rows
would cost) beside the real ids the router sent the groups (measured by calling the router model itself), and the
shard replicas the plan needs. Then the requests/s effect of a 1% cache in the local distributed topology (alpha
1.05). HugeCTR's embedding cache reports about 0.84 hit rate at power-law alpha 1.2.

    python -m bench.front_cache [--alphas 0.8 1.05 1.2] [--cache-shares 0 0.001 0.01 0.1] [--requests 40]
                                [--seconds 8] [--out runs/bench/front_cache]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from generator import naming
from generator.check import client, loadtest
from generator.deploy import server as serve
from generator.deploy.distributed import build_distributed
from generator.deploy.local import LocalTopology
from generator.model import dlrm as models
from generator.planning import planner
from generator.planning.memory import ModelShape
from generator.repository import build
from generator.repository.edges import edge_bytes
from generator.traffic.profile import AccessProfile, TableShape, zipf_profile

BATCH = 256
TABLES = (
    models.TableSpec("user_id", 250_000, 16, 1, "user"),
    models.TableSpec("item_id", 250_000, 16, 1),
    models.TableSpec("history", 250_000, 16, 10, "user"),
    models.TableSpec("category", 250_000, 16, 2),
)
TARGET_QPS = 2_000


def bench_model() -> models.DLRM:
    return models.DLRM(num_dense_features=8, tables=list(TABLES), bottom_mlp=[32, 16], top_mlp=[32, 1]).eval()


def _counter(text: str, name: str) -> float:
    match = re.search(rf'^{name}{{model="dlrm_router"}} ([0-9.e+]+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _scrape(server: serve.TritonServer) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        return response.read().decode()


def measure_one(
    model: models.DLRM, profile: AccessProfile, fresh: AccessProfile, cache_share: float, requests: int, workdir: Path
) -> dict:
    shape = ModelShape.of(model)
    budget = int(cache_share * model.embedding_bytes())
    # Separate lookup steps: the ids edge to the shard groups is what this measures (with the fused step, the
    # default on one server, the router pools every CPU shard itself and the cache saves it no work).
    report = planner.plan_model(
        shape, profile, target_qps=TARGET_QPS, max_shards_per_table=4, front_cache_bytes=budget, lookup_step="separate"
    )
    plan = planner.plan_from_report(report, shape, profile)
    edges = edge_bytes(plan, profile, BATCH)
    result = build.build(model, plan, workdir / "r", workdir / "e", force=True)
    with serve.running_server(result.repositories) as server:
        with client.RankingClient(server.grpc_url, "grpc") as ranking:
            sampler = loadtest.sampler_from_server(ranking, fresh)
        rng = np.random.default_rng(1)
        batch = [sampler.sample(BATCH, rng) for _ in range(requests)]
        before = _scrape(server)
        real_ids = 0
        group_ids = [naming.group_local_ids(g.index) for g in plan.shard_groups()]
        with client.RankingClient(server.grpc_url, "grpc") as ranking:
            for request in batch:
                ranking.score(request)
                # What the router hands the shard groups for this request: -1 is padding, the rest are real ids.
                # (The router reads the dense features too: it checks them for finite values.)
                routed = ranking.send(request.tensors(), model_name=naming.router_model("dlrm"), output_names=group_ids)
                real_ids += sum(int((routed.as_numpy(name) >= 0).sum()) for name in group_ids)
        after = _scrape(server)
    lookups = _counter(after, "recgen_front_cache_lookups_total") - _counter(before, "recgen_front_cache_lookups_total")
    hits = _counter(after, "recgen_front_cache_hits_total") - _counter(before, "recgen_front_cache_hits_total")
    return {
        "cache_share": cache_share,
        "cache_bytes": report.front_cache_bytes,
        "expected_hit_rate": report.expected_hit_rate,
        "measured_hit_rate": hits / lookups if lookups else 0.0,
        "shard_replicas": sum(s.replicas for s in report.shards),
        "planned_memory_bytes": report.planned.memory_bytes,
        "ids_to_groups_bytes": edges.ids_to_groups,
        "partials_bytes": edges.partials_to_dense,
        "cache_partials_bytes": edges.cache_partials,
        "raw_rows_bytes": edges.raw_rows_instead,
        "expected_ids_reaching_groups": edges.ids_reaching_groups,
        "measured_ids_reaching_groups": real_ids / len(batch),
    }


def distributed_rps(
    model: models.DLRM, profile: AccessProfile, cache_share: float, seconds: float, workdir: Path
) -> dict:
    shape = ModelShape.of(model)
    budget = int(cache_share * model.embedding_bytes())
    report = planner.plan_model(shape, profile, target_qps=TARGET_QPS, max_shards_per_table=4, front_cache_bytes=budget)
    plan = planner.plan_from_report(report, shape, profile)
    layout = build_distributed(model, plan, workdir / "dist", group_by="placement", force=True)
    with LocalTopology(layout.root) as local:
        local.start()
        with client.RankingClient(local.front.grpc_url, "grpc") as ranking:
            sampler = loadtest.sampler_from_server(ranking, profile)
        rng = np.random.default_rng(2)
        requests = [sampler.sample(BATCH, rng).tensors() for _ in range(16)]
        clients = [client.RankingClient(local.front.grpc_url, "grpc") for _ in range(4)]
        done = [0] * 4
        stop_at = time.perf_counter() + 1.0 + seconds

        def work(index: int) -> None:
            count = 0
            while time.perf_counter() < stop_at:
                clients[index].infer(requests[count % len(requests)])
                count += 1
                if time.perf_counter() > stop_at - seconds:
                    done[index] += 1

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for each in clients:
            each.close()
    return {"cache_share": cache_share, "servers": len(local.servers()), "requests_per_s": sum(done) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.8, 1.05, 1.2])
    parser.add_argument("--cache-shares", type=float, nargs="+", default=[0.0, 0.001, 0.01, 0.1])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/front_cache"))
    args = parser.parse_args()
    model = bench_model()
    shapes = [TableShape(t.name, t.num_rows, t.max_ids_per_sample) for t in TABLES]
    rows = []
    with tempfile.TemporaryDirectory(prefix="recgen-cache-") as tmp:
        for alpha in args.alphas:
            profile = zipf_profile(shapes, alpha, samples=200_000, seed=0)
            fresh = zipf_profile(shapes, alpha, samples=50_000, seed=9)  # same distribution, other draws
            for share in args.cache_shares:
                row = {"alpha": alpha, **measure_one(model, profile, fresh, share, args.requests, Path(tmp))}
                rows.append(row)
                print(
                    f"alpha {alpha:<4} cache {share:>6.1%}: hit rate expected {row['expected_hit_rate']:.3f}, "
                    f"measured {row['measured_hit_rate']:.3f}; ids to groups {row['measured_ids_reaching_groups']:,.0f}"
                    f"/request; shard replicas {row['shard_replicas']}",
                    flush=True,
                )
        profile = zipf_profile(shapes, 1.05, samples=200_000, seed=0)
        topology = [distributed_rps(model, profile, share, args.seconds, Path(tmp)) for share in (0.0, 0.01)]
    lines = [
        f"## Front cache (batch {BATCH}, 4 tables x 250k rows, dim 16; plan for {TARGET_QPS} queries/s)",
        "",
        "| alpha | cache | cache MB | hit rate expected | hit rate measured | real ids to shards / request (plan, "
        "measured) | packed ids B | group partials B | rows B if shipped raw | cache partials B (in the front) "
        "| shard replicas |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['alpha']} | {row['cache_share']:.1%} | {row['cache_bytes'] / 2**20:.2f} | "
            f"{row['expected_hit_rate']:.3f} | {row['measured_hit_rate']:.3f} | "
            f"{row['expected_ids_reaching_groups']:,.0f}, {row['measured_ids_reaching_groups']:,.0f} | "
            f"{row['ids_to_groups_bytes']:,} | {row['partials_bytes']:,} | {row['raw_rows_bytes']:,.0f} | "
            f"{row['cache_partials_bytes']:,} | {row['shard_replicas']} |"
        )
    lines += ["", "Local distributed topology, alpha 1.05, 4 closed-loop gRPC clients:", ""]
    lines += ["| cache | servers | requests/s |", "|---|---|---|"]
    lines += [f"| {t['cache_share']:.0%} | {t['servers']} | {t['requests_per_s']:.1f} |" for t in topology]
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "front_cache.json").write_text(json.dumps({"rows": rows, "topology": topology}, indent=2) + "\n")
    (args.out / "front_cache.md").write_text(table + "\n")
    print(f"wrote {args.out}/front_cache.json, front_cache.md")


if __name__ == "__main__":
    main()
