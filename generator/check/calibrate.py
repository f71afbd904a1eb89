"""`recgen calibrate`: measure the capacity model's figures on the embedded server.

The model (or the bundled example) is built with one shard per table and served. Each leaf model is then sent
requests directly at several batch sizes, one at a time, and its busy time per request is read from Triton's own
statistics (compute input + infer + output per execution, i.e. stub IPC included, queueing excluded). A straight
line through busy time vs rows looked up gives a shard's fixed and per-row cost; the same for the router per id;
the dense model's samples/s is taken at the calibration batch. Memory is the proportional set size
(`/proc/PID/smaps_rollup`): of the server process, of the dense model's stub process (a dense replica), and of a
router or shard replica: with the native lookup engine, what the server grows by when the smallest shard's model
(one instance thread) is loaded again; with the Python models, that shard's stub process. What a page fault of a
paged shard reads is measured in the build's directory (`page_faults`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from generator import naming, native
from generator.check import page_faults
from generator.check.client import RankingClient
from generator.deploy import server as serve
from generator.deploy import stub_health
from generator.errors import ServerError
from generator.planning import plan, queueing
from generator.planning.capacity import Capacity
from generator.planning.choices import LookupEngine
from generator.repository import build, layout, validation, wiring

_WARMUP_REQUESTS = 5


def step_statistics(client: RankingClient, model: str) -> tuple[int, int, int]:
    """(busy ns, successful requests, executions) of `model` so far, from Triton's statistics.

    Busy is compute input + infer + output: stub IPC included, queueing excluded; every request of a batched
    execution is charged the whole execution.
    """
    stats = client.client.get_inference_statistics(model)  # a dict over HTTP, a protobuf message over gRPC
    entry = stats["model_stats"][0] if isinstance(stats, dict) else stats.model_stats[0]
    if not isinstance(entry, dict):
        entry = json_format.MessageToDict(entry, preserving_proto_field_name=True)
    inference = entry["inference_stats"]
    busy = sum(int(inference[part].get("ns", 0)) for part in ("compute_input", "compute_infer", "compute_output"))
    return busy, int(inference["success"].get("count", 0)), int(entry.get("execution_count", 0))


def _busy_seconds_per_request(client: RankingClient, model: str, tensors: dict[str, np.ndarray], count: int) -> float:
    """Send `count` requests one by one; Triton's busy time per execution of `model`, in seconds."""

    def busy_ns_and_executions() -> tuple[int, int]:
        busy, _, executions = step_statistics(client, model)
        return busy, executions

    for _ in range(_WARMUP_REQUESTS):
        client.send(tensors, model_name=model, output_names=None)
    busy_before, executions_before = busy_ns_and_executions()
    for _ in range(count):
        client.send(tensors, model_name=model, output_names=None)
    busy_after, executions_after = busy_ns_and_executions()
    return (busy_after - busy_before) / max(executions_after - executions_before, 1) / 1e9


def _fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares intercept and slope, both clipped at 0."""
    slope, intercept = np.polyfit(np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64), 1)
    return max(float(intercept), 0.0), max(float(slope), 0.0)


def proportional_set_size_bytes(pid: int) -> int:
    """PSS of a process from /proc/PID/smaps_rollup (bytes)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise ServerError(f"no Pss line for process {pid}")


def stub_processes(server_pid: int) -> dict[str, int]:
    """Python-backend stub PIDs of a server, by model directory name (one per model: the last one found)."""
    return {stub.model: stub.pid for stub in stub_health.stub_processes(server_pid)}


_MODEL = "calib"
_FUSED_MODEL = "calibfused"


def _random_inputs(
    specs: Sequence[layout.TensorSpec], batch: int, rows: dict[str, int], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Valid tensors for a step: ids below `rows[name]` (every position filled), weights and features random."""
    tensors: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = (batch, *spec.dims)
        if spec.data_type == "FP32":
            tensors[spec.name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            dtype = np.int32 if spec.data_type == "INT32" else np.int64
            tensors[spec.name] = rng.integers(0, rows[spec.name], shape, dtype=dtype)
    return tensors


def _step_costs(
    client: RankingClient,
    the_plan: plan.Plan,
    wire: wiring.WireLayout,
    model: plan.Model,
    batches: list[int],
    requests: int,
    echo: Callable[[str], None],
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(rows looked up, busy s) of the widest table's shard and (ids, busy s) of the router, at every batch."""
    rng = np.random.default_rng(0)
    widest = max(model.tables, key=lambda t: t.max_ids_per_sample)
    widest_group = next(g for g in wire.groups if g.group.shards[0].table == widest.name)
    shard_name, group_inputs = widest_group.model_name, widest_group.inputs
    group_rows = {widest_group.ids.name: widest.num_rows}
    table_rows = {t.name: t.num_rows for t in model.tables}
    dense, _ = layout.model_signature(model)  # the router also reads (and checks) the dense features
    router_inputs = layout.with_checked(layout.router_inputs(the_plan), layout.finite_inputs(the_plan, dense))
    router_rows = {naming.sparse_input(f.name): table_rows[f.table] for f in the_plan.sparse_features}
    ids_per_sample = sum(f.max_ids_per_sample for f in the_plan.sparse_features)
    shard_points, router_points = [], []
    for batch in batches:
        tensors = _random_inputs(group_inputs, batch, group_rows, rng)
        busy = _busy_seconds_per_request(client, shard_name, tensors, requests)
        shard_points.append((float(batch * widest.max_ids_per_sample), busy))
        tensors = _random_inputs(router_inputs, batch, router_rows, rng)
        busy = _busy_seconds_per_request(client, naming.router_model(_MODEL), tensors, requests)
        router_points.append((float(batch * ids_per_sample), busy))
        echo(
            f"  batch {batch:>5}: shard {shard_points[-1][1] * 1e6:8.1f} us for {shard_points[-1][0]:.0f} rows, "
            f"router {router_points[-1][1] * 1e6:8.1f} us for {router_points[-1][0]:.0f} ids"
        )
    return shard_points, router_points


def _native_data_bytes(server: serve.TritonServer) -> int:
    """Bytes of the .npy files the server's native models map (their rows, rank maps and front caches)."""
    total = 0
    for repository in server.config.repositories:
        for config in Path(repository).glob(f"*/{naming.CONFIG_FILE}"):
            if validation.parse_strict(config.read_text()).backend == native.BACKEND_NAME:
                total += sum(path.stat().st_size for path in config.parent.glob("*/*.npy"))
    return total


def _memory(
    server: serve.TritonServer, smallest_table: str, lookup_engine: str, warm: Callable[[str], None]
) -> tuple[int, int, int]:
    """PSS of the server, of a dense replica (its stub) and of a router or shard replica (see the module's doc)."""
    if server.process is None:
        raise ServerError("the calibration server stopped unexpectedly")
    stubs = stub_processes(server.process.pid)
    shard = naming.shard_model(_MODEL, smallest_table, 0)
    wanted = [naming.dense_model(_MODEL)] + ([] if lookup_engine == "native" else [shard])
    missing = [name for name in wanted if name not in stubs]
    if missing:
        raise ServerError(f"could not find the stub processes of {missing} among {sorted(stubs)}")
    # Native models map their data files into the server; the planner counts those bytes apart, so they are not
    # part of the server's overhead.
    server_bytes = max(0, proportional_set_size_bytes(server.process.pid) - _native_data_bytes(server))
    dense_bytes = proportional_set_size_bytes(stubs[naming.dense_model(_MODEL)])
    if lookup_engine != "native":
        return server_bytes, dense_bytes, proportional_set_size_bytes(stubs[shard])
    server.admin("unload", shard)
    without = proportional_set_size_bytes(server.process.pid)
    server.admin("load", shard)
    server.wait_until_ready([shard], timeout_s=60)
    warm(shard)  # what serving requests adds (buffers), not only what loading does
    return server_bytes, dense_bytes, max(0, proportional_set_size_bytes(server.process.pid) - without)


def _fault_bytes(directory: Path, echo: Callable[[str], None]) -> int:
    fault_bytes = page_faults.measure_fault_bytes(directory)
    echo(f"  a paged fault reads {fault_bytes / 1024:g} KiB here (MADV_RANDOM, first read of a page)")
    return fault_bytes


def calibrate(
    model: plan.Model,
    *,
    batch_size: int = 256,
    requests: int = 40,
    echo: Callable[[str], None] = print,
    lookup_engine: LookupEngine = "native",
) -> Capacity:
    """Measure every figure of the capacity model on the embedded server (one shard per table, `lookup_engine`)."""
    the_plan = plan.uniform_plan(
        model,
        name=_MODEL,
        shards_per_table=1,
        max_batch_size=max(batch_size, 8),
        group_by="shard",
        lookup_step="separate",  # every shard its own step, so its cost is measured apart from the router's
        latency_slo_ms=queueing.LATENCY_SLO_RANGE_MS[1],  # busy time is measured here: reject nothing
    )
    the_plan = dataclasses.replace(the_plan, lookup_engine=lookup_engine)
    batches = sorted({max(1, batch_size // 16), max(1, batch_size // 4), batch_size})
    rng = np.random.default_rng(1)
    fused_plan = dataclasses.replace(the_plan, model_name=_FUSED_MODEL, group_by="placement", lookup_step="fused")
    wire = wiring.wire_layout(the_plan)
    with tempfile.TemporaryDirectory(prefix="recgen-calibrate-") as workdir:
        result = build.build(model, the_plan, Path(workdir) / "repo", Path(workdir) / "ens")
        fused = build.build(model, fused_plan, Path(workdir) / "fused", Path(workdir) / "fused_ens")
        repositories = [*result.repositories, *fused.repositories]
        with serve.running_server(repositories) as server, RankingClient(server.http_url, "http") as client:
            shard_points, router_points = _step_costs(client, the_plan, wire, model, batches, requests, echo)
            dense, _ = layout.model_signature(model)
            dense_inputs = _random_inputs(wiring.dense_inputs(wire, dense), batch_size, {}, rng)
            dense_busy = _busy_seconds_per_request(client, naming.dense_model(_MODEL), dense_inputs, requests)
            echo(f"  dense: {dense_busy * 1e6:.1f} us per {batch_size} samples")
            smallest = min(model.tables, key=lambda t: t.num_rows).name
            wired = next(g for g in wire.groups if g.group.shards[0].table == smallest)
            rows = {wired.ids.name: wired.group.shards[0].num_rows}
            shard_inputs = _random_inputs(wired.inputs, batch_size, rows, rng)

            def warm(model_name: str) -> None:
                for _ in range(_WARMUP_REQUESTS):
                    client.send(shard_inputs, model_name=model_name, output_names=None)

            server_bytes, dense_bytes, lookup_bytes = _memory(server, smallest, lookup_engine, warm)
            shard_fixed, shard_per_row = _fit_line(*zip(*shard_points, strict=True))
            router_fixed, router_per_id = _fit_line(*zip(*router_points, strict=True))
            figures = Capacity(
                batch_size=batch_size,
                shard_fixed_s=shard_fixed,
                shard_per_row_s=shard_per_row,
                router_fixed_s=router_fixed,
                router_per_id_s=router_per_id,
                dense_samples_per_s=batch_size / dense_busy,
                replica_overhead_bytes=dense_bytes,
                server_overhead_bytes=server_bytes,
                lookup_replica_overhead_bytes=lookup_bytes,
                fault_bytes=_fault_bytes(Path(workdir), echo),
                source=f"calibrated on the embedded server at batch {batch_size}, {lookup_engine} lookup engine",
            )
            _check_fused(client, fused_plan, model, figures, requests, echo)
    return figures


def _check_fused(
    client: RankingClient,
    fused_plan: plan.Plan,
    model: plan.Model,
    figures: Capacity,
    requests: int,
    echo: Callable[[str], None],
) -> None:
    """Measure the fused lookup step (routing plus pooling in the router) beside what the capacity model charges."""
    dense, _ = layout.model_signature(model)
    inputs = layout.with_checked(layout.router_inputs(fused_plan), layout.finite_inputs(fused_plan, dense))
    table_rows = {t.name: t.num_rows for t in model.tables}
    rows = {naming.sparse_input(f.name): table_rows[f.table] for f in fused_plan.sparse_features}
    tensors = _random_inputs(inputs, figures.batch_size, rows, np.random.default_rng(2))
    busy = _busy_seconds_per_request(client, naming.router_model(_FUSED_MODEL), tensors, requests)
    ids = figures.batch_size * sum(f.max_ids_per_sample for f in fused_plan.sparse_features)
    charged = figures.fused_seconds(ids, ids)  # every id valid and uncached: each pools one row
    echo(
        f"  fused lookup step: {busy * 1e6:.1f} us for {ids} ids pooled, the capacity model charges "
        f"{charged * 1e6:.1f} us ({charged / busy:.2f}x)"
    )
