"""The one owner of turning a command's flags into the plan it builds: `recgen build` and `recgen update` alike.

A plan comes from a plan file (`recgen plan`) or is uniform, from the flags. Some settings no plan file decides,
because `recgen plan` has no flag for them: the finite-value checks, the access counters, who sheds, the backend and
target. For each setting the rule is the same: a flag the command names wins; else, for `update`, what the running
deployment was built with (the `settings` its manifest records, `RunningSettings`); else, for a setting a plan file
decides, the plan file; else the default. So `recgen update --model new.pt` alone rebuilds what runs, with new
weights, and a setting changes only when the command says so.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generator import naming, native
from generator.errors import NativeUnavailableError, UserInputError
from generator.planning import precision, queueing
from generator.planning.plan import (
    DEFAULT_MAX_BATCH_SIZE,
    Device,
    GroupBy,
    LookupEngine,
    LookupStep,
    Model,
    Plan,
    uniform_plan,
)
from generator.planning.plan_file import load_plan
from generator.planning.queueing import Shedding
from generator.repository.configs import Backend, Target


@dataclass(frozen=True)
class UniformOptions:
    """The flags that make a uniform plan when no plan file is given."""

    name: str = "dlrm"
    shards_per_table: int = 2
    device: Device = "cpu"
    instances: int = 1
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    group_by: GroupBy = "placement"
    latency_slo_ms: float = queueing.DEFAULT_LATENCY_SLO_MS


@dataclass(frozen=True)
class DeploymentOptions:
    """Settings no plan file decides (`recgen plan` has no flag for them), and how the leaves are built."""

    check_finite: bool = True
    count_accesses: bool = True
    shedding: Shedding | None = None  # None: the plan's
    lookup_step: LookupStep | None = None  # None: the plan's
    lookup_engine: LookupEngine | None = None  # None: the plan's
    backend: Backend = "python"
    target: Target = "embedded"


#: The options a plan file decides (besides group_by, which a distributed build may still choose).
PLAN_DECIDES = ("shards_per_table", "device", "instances", "name", "max_batch_size", "latency_slo_ms")
#: The flags of every option above, as `options.given` names them.
ALL_OPTIONS = (*PLAN_DECIDES, "group_by", "lookup_step", "lookup_engine", "shedding", "allow_non_finite",
               "no_access_counts", "backend", "target")  # fmt: skip


@dataclass(frozen=True)
class RunningSettings:
    """What a running deployment was built with, from its manifest: every option above that it records."""

    uniform: Mapping[str, Any]
    deployment: Mapping[str, Any]

    @classmethod
    def read(cls, leaf_repository: Path) -> RunningSettings:
        """The settings recorded in `leaf_repository`'s manifest (none for a build before they were recorded)."""
        path = Path(leaf_repository) / naming.MANIFEST_FILE
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise UserInputError(f"{path} is missing or not a recgen manifest ({error})") from error
        settings = dict(recorded.get("settings", {}))

        def pick(options: type) -> dict[str, Any]:
            return {f.name: settings[f.name] for f in dataclasses.fields(options) if f.name in settings}

        return cls(pick(UniformOptions), pick(DeploymentOptions))


def settings_of(plan: Plan, backend: Backend, target: Target) -> dict[str, Any]:
    """What a manifest records of a build: every option it was built with (`RunningSettings` reads it back)."""
    shards = max((len(table.shards) for table in plan.tables), default=1)
    return {
        "name": plan.model_name,
        "shards_per_table": shards,
        "device": plan.dense.device,
        "instances": plan.router.instance_count,
        "max_batch_size": plan.max_batch_size,
        "group_by": plan.group_by,
        "latency_slo_ms": plan.latency_slo_ms,
        "check_finite": plan.check_finite,
        "count_accesses": plan.count_accesses,
        "shedding": plan.shedding,
        "lookup_step": plan.lookup_step,
        "lookup_engine": plan.lookup_engine,
        "backend": backend,
        "target": target,
    }


#: Flags whose option field is named otherwise (they turn a setting off).
_FIELD_OF_FLAG = {"allow_non_finite": "check_finite", "no_access_counts": "count_accesses"}


def inherit(named: Any, given: Collection[str], running: Mapping[str, Any]) -> Any:
    """`named` (a dataclass of flag values) with every field the command did not name taken from `running`."""
    fields = {_FIELD_OF_FLAG.get(flag, flag) for flag in given}
    return dataclasses.replace(named, **{k: v for k, v in running.items() if k not in fields})


def check_plan_flags(plan_path: Path | None, given: Collection[str], *, distributed: bool) -> None:
    """UserInputError naming the flags a plan file decides, when the command names them beside `--plan`."""
    decided = [*PLAN_DECIDES, *([] if distributed else ["group_by"])]
    clashes = [name for name in decided if name in given] if plan_path is not None else []
    if clashes:
        raise UserInputError(f"--plan sets {', '.join('--' + c.replace('_', '-') for c in clashes)}; drop them")


@dataclass(frozen=True)
class Resolved:
    """What a command builds: the plan, the backend and target of its leaves, and what the command should say."""

    plan: Plan
    backend: Backend
    target: Target
    #: Why a default was not followed (the native lookup engine, where this machine or target cannot serve it).
    notes: tuple[str, ...] = ()


def resolve_plan(
    model: Model,
    plan_path: Path | None,
    uniform: UniformOptions,
    deployment: DeploymentOptions,
    given: Collection[str],
    *,
    distributed: bool,
    row_dtypes: Sequence[str] = (),
    running: RunningSettings | None = None,
) -> Resolved:
    """The plan a command builds: the plan file or a uniform one, then the settings no plan file decides.

    `given` names the options set explicitly: with a plan file, an option the plan decides is an error (naming the
    flags), except `group_by` for a distributed build, which chooses how its shards are grouped into services.
    `running` (update) fills in every option the command did not name.
    """
    if running is not None:  # with a plan file, the plan decides the lookup step, as it decides its uniform options
        uniform = inherit(uniform, given, running.uniform)
        kept = {k: v for k, v in running.deployment.items() if plan_path is None or k != "lookup_step"}
        deployment = inherit(deployment, given, kept)
    if plan_path is None:
        base = uniform_plan(
            model,
            name=uniform.name,
            shards_per_table=uniform.shards_per_table,
            device=uniform.device,
            instance_count=uniform.instances,
            max_batch_size=uniform.max_batch_size,
            group_by=uniform.group_by,
            latency_slo_ms=uniform.latency_slo_ms,
        )
    else:
        check_plan_flags(plan_path, given, distributed=distributed)
        base = load_plan(plan_path)
    plan = precision.with_row_dtype_values(base, row_dtypes)
    plan = dataclasses.replace(
        plan,
        check_finite=plan.check_finite and deployment.check_finite,
        count_accesses=plan.count_accesses and deployment.count_accesses,
        shedding=deployment.shedding or plan.shedding,
        lookup_step=deployment.lookup_step or _default_lookup_step(plan, plan_path, distributed),
        lookup_engine=deployment.lookup_engine or plan.lookup_engine,
    )
    notes: tuple[str, ...] = ()
    if plan.lookup_engine == "native" and deployment.lookup_engine is None:  # the default: named nowhere
        plan, notes = with_default_engine(plan, deployment.target)
    return Resolved(plan, deployment.backend, deployment.target, notes)


def _default_lookup_step(plan: Plan, plan_path: Path | None, distributed: bool) -> LookupStep:
    """The plan's lookup step; a distributed build of no plan file serves every shard group as its own service."""
    return "separate" if distributed and plan_path is None else plan.lookup_step


def with_default_engine(plan: Plan, target: str) -> tuple[Plan, tuple[str, ...]]:
    """The plan with the native lookup engine where it can serve, else the Python models and a note saying why.

    Only for the default: a named `--lookup-engine native` that cannot serve is an error (build.check_options).
    """
    if target == "container":
        why = "the NGC image of the container target does not carry the native backend yet"
    else:
        try:
            native.library()
            return plan, ()
        except NativeUnavailableError as error:
            why = str(error)
    note = f"lookup engine: python (the Python-backend models), not the default native: {why}"
    return dataclasses.replace(plan, lookup_engine="python"), (note,)


def built_plan(model: Model, plan_path: Path | None, row_dtypes: Sequence[str] = ()) -> Plan:
    """The plan a repository was built from, as `check`, `quality` and the load test's spot checks need it.

    The plan file (else the default uniform plan) with the build's `--row-dtype`, resolved as `build` resolves it.
    Only each table's row dtype matters to them (a plan's cuts are row-wise, so they do not change any output).
    """
    plan = resolve_plan(model, plan_path, UniformOptions(), DeploymentOptions(), (), distributed=False,
                        row_dtypes=row_dtypes).plan  # fmt: skip
    plan.check_matches(model)
    return plan
