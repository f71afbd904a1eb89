"""recgen_manifest.json: a versioned record of what a build wrote, at the root of its leaf repository.

Tools read it to find which model serves each shard (a shard group's, or the router's with a fused lookup step);
Triton ignores plain files at a repository's root.
"""

from __future__ import annotations

import json
from pathlib import Path

from generator import __version__, naming, native
from generator.planning.plan import Plan
from generator.repository import settings
from generator.repository.configs import LeafOptions
from generator.repository.wiring import WireLayout

MANIFEST_FORMAT_VERSION = 1


def write_manifest(plan: Plan, wire: WireLayout, leaves: LeafOptions, repository: Path) -> None:
    """A versioned record of what was built (Triton ignores plain files at the repository root)."""
    group_of = {
        (shard.table, shard.index): naming.router_model(plan.leaf_stem) if wired.pooled_by_router else wired.model_name
        for wired in wire.groups
        for shard in wired.group.shards
    }
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "recgen_version": __version__,
        "model_name": plan.model_name,
        "generation": plan.generation,
        "backend": leaves.backend,
        "target": leaves.target,
        "max_batch_size": plan.max_batch_size,
        "group_by": plan.group_by,
        "lookup_step": plan.lookup_step,
        "lookup_engine": plan.lookup_engine,
        # The native backend build the native models' configs name (`recgen_native_version`); None without them.
        "native_backend_version": native.version() if plan.lookup_engine == "native" else None,
        "settings": settings.settings_of(plan, leaves.backend, leaves.target),
        "tables": [
            {
                "table": table.spec.name,
                "num_rows": table.spec.num_rows,
                "dim": table.spec.dim,
                "max_ids_per_sample": table.spec.max_ids_per_sample,
                "permuted": table.row_order is not None,
                "shards": [
                    {
                        "model": group_of[(table.spec.name, shard.index)],
                        "row_start": shard.row_start,
                        "row_end": shard.row_end,
                        "instance_count": shard.placement.instance_count,
                        "device": shard.placement.device,
                        "row_dtype": shard.row_dtype,
                    }
                    for shard in table.shards
                ],
            }
            for table in plan.tables
        ],
    }
    (repository / naming.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
