"""Checks of a whole plan: that it is a plan of this model, and that its paged shards can be served paged."""

from __future__ import annotations

from typing import TYPE_CHECKING

from generator.errors import PlanError

if TYPE_CHECKING:
    from generator.model.protocol import Model
    from generator.planning.plan import Plan


def check_matches(plan: Plan, model: Model) -> None:
    """Raise PlanError unless the plan's tables are exactly the model's tables, in order; name what differs."""
    planned = [table.spec for table in plan.tables]
    features = list(model.plan_features)
    if planned == list(model.tables) and list(plan.features) == features:
        return
    if planned == list(model.tables):
        raise PlanError(
            f"the plan's features {[f.name for f in plan.sparse_features]} differ from the model's "
            f"{[f.name for f in features] or [t.name for t in model.tables]} "
            "(their tables, ids per sample or pooling)"
        )
    differences = []
    names = [t.name for t in model.tables]
    if [t.name for t in planned] != names:
        differences.append(f"tables {[t.name for t in planned]} in the plan, {names} in the model")
    else:
        for plan_spec, model_spec in zip(planned, model.tables, strict=True):
            for field_name in ("num_rows", "dim", "max_ids_per_sample", "side"):
                ours, theirs = getattr(plan_spec, field_name), getattr(model_spec, field_name)
                if ours != theirs:
                    differences.append(
                        f"table {plan_spec.name!r}: `{field_name}` {ours} in the plan, {theirs} in the model"
                    )
    raise PlanError("the plan does not match the model: " + "; ".join(differences))


def check_paged(plan: Plan) -> None:
    """A paged shard (`resident` false) is served by the router's mapped stacks or by a native CPU shard group.

    A Python shard model stacks its rows in memory and a GPU one copies them to the device, so neither can leave
    pages on disk; such a plan is refused rather than served resident without saying so.
    """
    refused = [
        group
        for group in plan.step_groups()
        if not group.resident and (plan.lookup_engine != "native" or group.placement.device != "cpu")
    ]
    if refused:
        shards = ", ".join(f"{s.table}/{s.index}" for group in refused for s in group.shards)
        raise PlanError(
            f"shards {shards} are paged (`resident` false), but their shard model would hold their rows in memory "
            f"(lookup engine {plan.lookup_engine}, device {refused[0].placement.device}): serve them with the "
            "native lookup engine on CPU, let the router pool them, or make them resident"
        )
