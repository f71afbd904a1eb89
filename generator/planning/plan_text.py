"""A plan as printed: every shard with its rows, instances, device and dtype, then the steps and the latency target."""

from __future__ import annotations

from typing import TYPE_CHECKING

from generator.planning import queueing

if TYPE_CHECKING:
    from generator.planning.plan import Placement, Plan


def describe(plan: Plan) -> str:
    """The lines `print(plan)` shows."""
    lines = [f"plan for {plan.model_name!r}: {len(plan.tables)} tables, {len(plan.shards)} shards"]
    lines.append(f"  {'table':<16} {'shard':>5} {'rows':>21} {'instances':>9} {'device':>6} {'dtype':>5} {'MB':>9}")
    for table in plan.tables:
        for shard in table.shards:
            rows = f"[{shard.row_start}, {shard.row_end})"
            own_step = plan.lookup_step == "fused" and not shard.router_pooled
            lines.append(
                f"  {table.spec.name:<16} {shard.index:>5} {rows:>21} {shard.placement.instance_count:>9} "
                f"{shard.placement.device:>6} {shard.row_dtype:>5} {table.shard_bytes(shard) / 1e6:>9.3f}"
                + ("  own step" if own_step else "")
                + ("  paged" if not shard.resident else "")
                + _spread(shard.placement)
            )
    full = sum(table.spec.num_rows * table.spec.bytes_per_row for table in plan.tables)
    stored = sum(table.embedding_bytes for table in plan.tables)
    if stored != full:
        lines.append(f"  embedding rows: {stored / 1e6:.3f} MB as stored, {full / 1e6:.3f} MB in fp32")
    pooled = len(plan.router_pooled_groups())
    lines.append(
        f"  {len(plan.step_groups())} shard models (grouped by {plan.group_by})"
        + (f"; the router pools {pooled} group(s) itself (fused lookup step)" if pooled else "")
    )
    lines.append(
        f"  router: {plan.router.instance_count} x {plan.router.device}{_spread(plan.router)}; "
        f"dense: {plan.dense.instance_count} x {plan.dense.device}{_spread(plan.dense)}"
    )
    who = "the router sheds" if plan.shedding == "router" else "Triton's queue policy (stalls ~0.5 s) rejects"
    budget_ms = queueing.queue_budget_us(plan.latency_slo_ms) / 1000
    lines.append(f"  latency target {plan.latency_slo_ms:g} ms: {who} requests queued over {budget_ms:g} ms")
    return "\n".join(lines)


def _spread(placement: Placement) -> str:
    """How the distributed layout spreads the instances over servers, where it takes more than one."""
    if placement.servers == 1:
        return ""
    return f"  ({placement.servers} server(s) of {placement.instances_per_server})"
