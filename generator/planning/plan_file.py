"""plan.json (schema-versioned) and its row orders (`<stem>.rows.npz`, checked by sha256): the plan on disk.

One writer for every plan: a uniform one, a planner's (then with every shard's access share, the totals and what
the plan was made from), and the copy a distributed build keeps. The reader checks every field as if the plan
were built by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from generator import naming
from generator.errors import PlanError
from generator.model.dlrm import TableSpec
from generator.model.features import FeatureSpec
from generator.planning import queueing
from generator.planning.plan import Placement, Plan, TablePlan, table_plan
from generator.planning.precision import check_row_dtype
from generator.planning.report import PlanReport

PLAN_FORMAT = "recgen.plan"
PLAN_SCHEMA_VERSION = 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def row_order_path(plan_path: Path) -> Path:
    """The .npz beside plan.json that holds the hotness row orders."""
    return plan_path.with_name(plan_path.stem + ".rows.npz")


def _report_sections(report: PlanReport | None, profile_source: str) -> dict[str, Any]:
    """What a planner's report adds to plan.json: inputs, per-shard expectations, totals."""
    if report is None:
        return {"inputs": {}, "details": {}, "totals": {}}
    details = {
        (s.table, s.index): {"access_share": s.access_share, "replicas": s.replicas, "bytes": s.bytes_per_replica}
        for s in report.shards
    }
    inputs = {
        "target_qps": report.target_qps,
        "batch_size": report.batch_size,
        "window_s": report.window_s,
        "profile": profile_source,
        "capacity": report.capacity.to_dict(),
    }
    totals = {**report.to_dict(), "router_replicas": report.router_replicas, "dense_replicas": report.dense_replicas}
    return {"inputs": inputs, "details": details, "totals": totals}


def _table_entry(table: TablePlan, details: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    return {
        **dataclasses.asdict(table.spec),
        "permuted": table.row_order is not None,
        "cached_rows": table.cached_rows,
        "shards": [
            {
                "index": s.index,
                "row_start": s.row_start,
                "row_end": s.row_end,
                "replicas": s.placement.instance_count,
                "device": s.placement.device,
                "row_dtype": s.row_dtype,
                "bytes": table.shard_bytes(s),
                **details.get((table.spec.name, s.index), {}),
            }
            for s in table.shards
        ],
    }


def save_plan(plan: Plan, path: str | Path, report: PlanReport | None = None, *, profile_source: str = "") -> Path:
    """Write plan.json and, for permuted tables, the row orders; with a report, also what the planner expects."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    orders = {t.spec.name: np.asarray(t.row_order) for t in plan.tables if t.row_order is not None}
    rows_path = row_order_path(path)
    if orders:
        with rows_path.open("wb") as file:
            np.savez(file, **orders)
    sections = _report_sections(report, profile_source)
    document = {
        "format": PLAN_FORMAT,
        "schema_version": PLAN_SCHEMA_VERSION,
        "model_name": plan.model_name,
        "max_batch_size": plan.max_batch_size,
        "group_by": plan.group_by,
        "lookup_step": plan.lookup_step,
        "lookup_engine": plan.lookup_engine,
        "latency_slo_ms": plan.latency_slo_ms,
        "shedding": plan.shedding,
        "check_finite": plan.check_finite,
        "count_accesses": plan.count_accesses,
        "generation": plan.generation,
        "inputs": sections["inputs"],
        "row_order_file": rows_path.name if orders else None,
        "row_order_sha256": _sha256(rows_path) if orders else None,
        "router": {"instance_count": plan.router.instance_count, "device": plan.router.device},
        "dense": {"instance_count": plan.dense.instance_count, "device": plan.dense.device},
        "tables": [_table_entry(t, sections["details"]) for t in plan.tables],
        "features": [dataclasses.asdict(feature) for feature in plan.features],
        "totals": sections["totals"],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def _row_orders(path: Path, document: dict[str, Any]) -> dict[str, np.ndarray]:
    if not document.get("row_order_file"):
        return {}
    rows_path = path.with_name(document["row_order_file"])
    if not rows_path.is_file():
        raise PlanError(f"plan `{path}` needs its row orders `{rows_path}`, which is missing")
    if _sha256(rows_path) != document.get("row_order_sha256"):
        raise PlanError(f"`{rows_path}` does not match plan `{path}` (sha256 differs); re-run `recgen plan`")
    with np.load(rows_path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _table_from_entry(path: Path, entry: dict[str, Any], orders: dict[str, np.ndarray]) -> TablePlan:
    spec = TableSpec(
        entry["name"], entry["num_rows"], entry["dim"], entry["max_ids_per_sample"], entry.get("side", "item")
    )
    shards = entry["shards"]
    boundaries = [shards[0]["row_start"], *(shard["row_end"] for shard in shards)]
    placements = [Placement(shard["replicas"], shard["device"]) for shard in shards]
    order = orders.get(spec.name) if entry.get("permuted") else None
    if entry.get("permuted") and order is None:
        raise PlanError(f"plan `{path}`: table {spec.name!r} is permuted but has no row order")
    dtypes = [  # plans written before row dtypes: fp32
        check_row_dtype(shard.get("row_dtype", "fp32"), f"plan `{path}` table {spec.name!r} shard `row_dtype`")
        for shard in shards
    ]
    return table_plan(
        spec, boundaries, placements, row_order=order, cached_rows=entry.get("cached_rows", 0), row_dtypes=dtypes
    )


def load_plan(path: str | Path) -> Plan:
    """Read plan.json and its row orders; every field is checked as if the plan were built by hand."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PlanError(f"plan `{path}` cannot be read: {error}") from error
    if document.get("format") != PLAN_FORMAT:
        raise PlanError(f"`{path}` is not a recgen plan")
    if document.get("schema_version") != PLAN_SCHEMA_VERSION:
        raise PlanError(
            f"plan `{path}` has schema version {document.get('schema_version')!r}; this recgen reads "
            f"{PLAN_SCHEMA_VERSION}"
        )
    orders = _row_orders(path, document)
    try:
        return Plan(
            model_name=document["model_name"],
            tables=tuple(_table_from_entry(path, entry, orders) for entry in document["tables"]),
            router=Placement(document["router"]["instance_count"], document["router"]["device"]),
            dense=Placement(document["dense"]["instance_count"], document["dense"]["device"]),
            max_batch_size=document["max_batch_size"],
            group_by=document.get("group_by", "placement"),
            lookup_step=document.get("lookup_step", "separate"),
            lookup_engine=document.get("lookup_engine", "python"),
            latency_slo_ms=document.get("latency_slo_ms", queueing.DEFAULT_LATENCY_SLO_MS),
            shedding=document.get("shedding", "router"),
            check_finite=bool(document.get("check_finite", True)),
            count_accesses=bool(document.get("count_accesses", True)),
            generation=int(document.get("generation", naming.FIRST_GENERATION)),
            features=tuple(FeatureSpec(**entry) for entry in document.get("features", [])),
        )
    except (KeyError, IndexError, TypeError) as error:
        raise PlanError(f"plan `{path}` is missing a field: {error!r}") from error
