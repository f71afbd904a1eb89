"""plan.json (schema-versioned) and its row orders (`<stem>.rows.npz`, checked by sha256): the plan on disk.

One writer for every plan: a uniform one, a planner's (then with every shard's access share and a `planner`
section: what the plan was made from, its totals and servers), and the copy a distributed build keeps. The reader
is strict: every field must be there with its type (none is read with a default), unknown fields are refused, and
older files are migrated in memory with exactly what their reader assumed: version 1 (written before 2026-12-07,
when fields could be missing) by `migrate_v1`, version 2 (before the distributed layout followed the planner's
servers: one instance per server) by `migrate_v2`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
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
PLAN_SCHEMA_VERSION = 3


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def row_order_path(plan_path: Path) -> Path:
    """The .npz beside plan.json that holds the hotness row orders."""
    return plan_path.with_name(plan_path.stem + ".rows.npz")


def _planner_section(report: PlanReport | None, profile_source: str) -> dict[str, Any] | None:
    """What a planner's report adds to plan.json: its inputs and totals (None for a plan not made by the planner)."""
    if report is None:
        return None
    inputs = {
        "target_qps": report.target_qps,
        "batch_size": report.batch_size,
        "window_s": report.window_s,
        "profile": profile_source,
        "capacity": report.capacity.to_dict(),
    }
    totals = {**report.to_dict(), "router_replicas": report.router_replicas, "dense_replicas": report.dense_replicas}
    return {"inputs": inputs, "totals": totals}


def _table_entry(table: TablePlan, shares: dict[tuple[str, int], float]) -> dict[str, Any]:
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
                "replicas_per_server": s.placement.instances_per_server,
                "cores_per_replica": s.placement.cores_per_instance,
                "device": s.placement.device,
                "row_dtype": s.row_dtype,
                "bytes": table.shard_bytes(s),
                "router_pooled": s.router_pooled,
                "resident": s.resident,
                "access_share": shares.get((table.spec.name, s.index)),
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
    shares = {(s.table, s.index): s.access_share for s in report.shards} if report is not None else {}
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
        "row_order_file": rows_path.name if orders else None,
        "row_order_sha256": _sha256(rows_path) if orders else None,
        "router": _placement_entry(plan.router),
        "dense": _placement_entry(plan.dense),
        "tables": [_table_entry(t, shares) for t in plan.tables],
        "features": [dataclasses.asdict(feature) for feature in plan.features],
        "planner": _planner_section(report, profile_source),
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


class _Fields:
    """Strict reads of one plan document: every field present, of its type, and nothing unknown."""

    def __init__(self, path: Path):
        self.path = path

    def get(self, entry: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
        """`entry[key]`, which must be there and of `kind` (an int is a float; a bool is no int)."""
        if not isinstance(entry, Mapping):
            raise PlanError(f"plan `{self.path}`: {where} must be an object, got {entry!r}")
        if key not in entry:
            raise PlanError(f"plan `{self.path}`: {where} has no `{key}`")
        value = entry[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        accepted = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            accepted = True
        if not accepted:
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise PlanError(f"plan `{self.path}`: {where} `{key}` must be {names}, got {value!r}")
        return value

    def only(self, entry: Mapping[str, Any], known: set[str], where: str) -> None:
        """Refuse fields this reader does not know (a typo must not be ignored)."""
        unknown = sorted(set(entry) - known)
        if unknown:
            raise PlanError(f"plan `{self.path}`: {where} has unknown fields {unknown}; known: {sorted(known)}")


_TOP_FIELDS = {
    "format", "schema_version", "model_name", "max_batch_size", "group_by", "lookup_step", "lookup_engine",
    "latency_slo_ms", "shedding", "check_finite", "count_accesses", "generation", "row_order_file",
    "row_order_sha256", "router", "dense", "tables", "features", "planner",
}  # fmt: skip
_TABLE_FIELDS = {"name", "num_rows", "dim", "max_ids_per_sample", "side", "permuted", "cached_rows", "shards"}
_SHARD_FIELDS = {
    "index", "row_start", "row_end", "replicas", "replicas_per_server", "cores_per_replica", "device", "row_dtype",
    "bytes", "router_pooled", "resident", "access_share",
}  # fmt: skip
_PLACEMENT_FIELDS = {"instance_count", "instances_per_server", "cores_per_instance", "device"}


def _placement_entry(placement: Placement) -> dict[str, Any]:
    return {
        "instance_count": placement.instance_count,
        "instances_per_server": placement.instances_per_server,
        "cores_per_instance": placement.cores_per_instance,
        "device": placement.device,
    }


def migrate_v2(document: dict[str, Any]) -> dict[str, Any]:
    """A version 2 plan.json as version 3, spread as version 2's distributed layout served it.

    Every shard instance on a server of its own; the router's and dense model's instances all on one front server.
    """
    migrated = {**document, "schema_version": PLAN_SCHEMA_VERSION}
    for key in ("router", "dense"):
        if isinstance(document.get(key), dict):
            migrated[key] = {
                "instances_per_server": document[key].get("instance_count"),
                "cores_per_instance": None,
                **document[key],
            }
    if isinstance(document.get("tables"), list):
        migrated["tables"] = [
            {
                **table,
                "shards": [
                    {"replicas_per_server": 1, "cores_per_replica": None, **shard} for shard in table.get("shards", [])
                ],
            }
            if isinstance(table, dict)
            else table
            for table in document["tables"]
        ]
    return migrated


def migrate_v1(document: dict[str, Any]) -> dict[str, Any]:
    """A version 1 plan.json as version 2 (which `migrate_v2` takes on).

    What the version 1 reader defaulted is filled in; the planner's `inputs` and `totals` move into `planner`.
    """
    migrated = {key: value for key, value in document.items() if key not in ("inputs", "totals")}
    defaults = {
        "group_by": "placement", "lookup_step": "separate", "lookup_engine": "python",
        "latency_slo_ms": queueing.DEFAULT_LATENCY_SLO_MS, "shedding": "router", "check_finite": True,
        "count_accesses": True, "generation": naming.FIRST_GENERATION, "features": [],
    }  # fmt: skip
    for key, value in defaults.items():
        migrated.setdefault(key, value)
    migrated["schema_version"] = 2
    totals = document.get("totals") or {}
    planner = {"inputs": document.get("inputs") or {}, "totals": {"servers": None, **totals}}  # no servers then
    migrated["planner"] = planner if totals else None
    tables = []
    for table in document.get("tables", []):
        table = {"side": "item", "permuted": False, "cached_rows": 0, **table}
        table["shards"] = [
            {"row_dtype": "fp32", "router_pooled": True, "resident": True, "access_share": None, **shard}
            for shard in table.get("shards", [])
        ]
        tables.append(table)
    migrated["tables"] = tables
    return migrated


def _row_orders(path: Path, document: dict[str, Any], fields: _Fields) -> dict[str, np.ndarray]:
    name = fields.get(document, "row_order_file", (str, type(None)), "the plan")
    digest = fields.get(document, "row_order_sha256", (str, type(None)), "the plan")
    if not name:
        return {}
    rows_path = path.with_name(name)
    if not rows_path.is_file():
        raise PlanError(f"plan `{path}` needs its row orders `{rows_path}`, which is missing")
    if _sha256(rows_path) != digest:
        raise PlanError(f"`{rows_path}` does not match plan `{path}` (sha256 differs); re-run `recgen plan`")
    with np.load(rows_path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _table_from_entry(entry: dict[str, Any], orders: dict[str, np.ndarray], fields: _Fields) -> TablePlan:
    where = f"table {entry.get('name')!r}" if isinstance(entry, dict) else "a table"
    fields.only(entry, _TABLE_FIELDS, where)
    spec = TableSpec(
        fields.get(entry, "name", str, where),
        fields.get(entry, "num_rows", int, where),
        fields.get(entry, "dim", int, where),
        fields.get(entry, "max_ids_per_sample", int, where),
        fields.get(entry, "side", str, where),
    )
    shards = fields.get(entry, "shards", list, where)
    if not shards:
        raise PlanError(f"plan `{fields.path}`: {where} has no shards")
    for number, shard in enumerate(shards):
        fields.only(shard, _SHARD_FIELDS, f"{where} shard {number}")
        integers = ("index", "row_start", "row_end", "replicas", "replicas_per_server", "bytes")
        for key in integers:
            fields.get(shard, key, int, f"{where} shard {number}")
        fields.get(shard, "access_share", (float, type(None)), f"{where} shard {number}")
        fields.get(shard, "cores_per_replica", (float, type(None)), f"{where} shard {number}")
    boundaries = [shards[0]["row_start"], *(shard["row_end"] for shard in shards)]
    placements = [
        Placement(
            shard["replicas"],
            fields.get(shard, "device", str, where),
            shard["replicas_per_server"],
            shard["cores_per_replica"],
        )
        for shard in shards
    ]
    permuted = fields.get(entry, "permuted", bool, where)
    order = orders.get(spec.name) if permuted else None
    if permuted and order is None:
        raise PlanError(f"plan `{fields.path}`: table {spec.name!r} is permuted but has no row order")
    dtypes = [
        check_row_dtype(fields.get(shard, "row_dtype", str, where), f"plan `{fields.path}` {where} shard `row_dtype`")
        for shard in shards
    ]
    cached_rows = fields.get(entry, "cached_rows", int, where)
    pooled = [fields.get(shard, "router_pooled", bool, f"{where} shard {n}") for n, shard in enumerate(shards)]
    resident = [fields.get(shard, "resident", bool, f"{where} shard {n}") for n, shard in enumerate(shards)]
    return table_plan(
        spec, boundaries, placements, row_order=order, cached_rows=cached_rows, row_dtypes=dtypes,
        router_pooled=pooled, resident=resident,
    )  # fmt: skip


def _document(path: Path) -> dict[str, Any]:
    """plan.json as a version 3 document (older versions migrated), its format and version checked."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PlanError(f"plan `{path}` cannot be read: {error}") from error
    if not isinstance(document, dict) or document.get("format") != PLAN_FORMAT:
        raise PlanError(f"`{path}` is not a recgen plan")
    version = document.get("schema_version")
    if version == 1:
        document, version = migrate_v1(document), 2
    if version == 2:
        return migrate_v2(document)
    if version != PLAN_SCHEMA_VERSION:
        raise PlanError(f"plan `{path}` has schema version {version!r}; this recgen reads 1 to {PLAN_SCHEMA_VERSION}")
    return document


def _placement(document: dict[str, Any], key: str, fields: _Fields) -> Placement:
    entry = fields.get(document, key, dict, "the plan")
    fields.only(entry, _PLACEMENT_FIELDS, f"`{key}`")
    return Placement(
        fields.get(entry, "instance_count", int, f"`{key}`"),
        fields.get(entry, "device", str, f"`{key}`"),
        fields.get(entry, "instances_per_server", int, f"`{key}`"),
        fields.get(entry, "cores_per_instance", (float, type(None)), f"`{key}`"),
    )


def load_plan(path: str | Path) -> Plan:
    """Read plan.json and its row orders; every field is checked as if the plan were built by hand."""
    path = Path(path)
    document = _document(path)
    fields = _Fields(path)
    fields.only(document, _TOP_FIELDS, "the plan")
    top = "the plan"
    features = fields.get(document, "features", list, top)
    try:
        feature_specs = tuple(FeatureSpec(**entry) for entry in features)
    except TypeError as error:
        raise PlanError(f"plan `{path}`: a feature has missing or unknown fields ({error})") from error
    fields.get(document, "planner", (dict, type(None)), top)
    return Plan(
        model_name=fields.get(document, "model_name", str, top),
        tables=tuple(
            _table_from_entry(entry, _row_orders(path, document, fields), fields)
            for entry in fields.get(document, "tables", list, top)
        ),
        router=_placement(document, "router", fields),
        dense=_placement(document, "dense", fields),
        max_batch_size=fields.get(document, "max_batch_size", int, top),
        group_by=fields.get(document, "group_by", str, top),
        lookup_step=fields.get(document, "lookup_step", str, top),
        lookup_engine=fields.get(document, "lookup_engine", str, top),
        latency_slo_ms=float(fields.get(document, "latency_slo_ms", float, top)),
        shedding=fields.get(document, "shedding", str, top),
        check_finite=fields.get(document, "check_finite", bool, top),
        count_accesses=fields.get(document, "count_accesses", bool, top),
        generation=fields.get(document, "generation", int, top),
        features=feature_specs,
    )


@dataclass(frozen=True)
class PlannerFigures:
    """What `recgen plan` wrote into plan.json besides the plan: the load, its totals, every shard's access share."""

    target_qps: float
    planned_memory_bytes: int
    expected_hit_rate: float
    capacity: dict[str, Any]
    access_shares: dict[tuple[str, int], float]
    #: Servers the plan was priced on (None: planned before plans had servers).
    planned_servers: int | None = None


def load_planner_figures(path: str | Path) -> PlannerFigures | None:
    """The planner's figures of plan.json, or None for a plan the planner did not make (uniform, by hand)."""
    path = Path(path)
    load_plan(path)  # the whole file is checked first
    document = _document(path)
    fields = _Fields(path)
    planner = document["planner"]
    if planner is None:
        return None
    inputs = fields.get(planner, "inputs", dict, "`planner`")
    totals = fields.get(planner, "totals", dict, "`planner`")
    planned = fields.get(totals, "planned", dict, "`planner.totals`")
    cache = fields.get(totals, "front_cache", dict, "`planner.totals`")
    fleet = fields.get(totals, "servers", (dict, type(None)), "`planner.totals`")
    return PlannerFigures(
        float(fields.get(inputs, "target_qps", float, "`planner.inputs`")),
        fields.get(planned, "memory_bytes", int, "`planner.totals.planned`"),
        float(fields.get(cache, "expected_hit_rate", float, "`planner.totals.front_cache`")),
        fields.get(inputs, "capacity", dict, "`planner.inputs`"),
        {
            (table["name"], shard["index"]): float(shard["access_share"])
            for table in document["tables"]
            for shard in table["shards"]
            if shard["access_share"] is not None
        },
        None if fleet is None else len(fields.get(fleet, "servers", list, "`planner.totals.servers`")),
    )
