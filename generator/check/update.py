"""`recgen update`: switch what `recgen serve` runs to a new plan or new weights, dropping no request.

The steps, each a stage's own work: ask the serving process what it runs (`control`), write the next generation
beside it (`repository.generation`, or `deploy.distributed` for the local topology), have the serving process
load it beside the running one (`switch.prepare`), check the candidate ensembles against the new model within the
request contract's tolerance, then have it switch and retire the old generation (`switch.commit`). A failure at
any step leaves the old generation serving and says why; the new one's files are removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generator import naming
from generator.check.client import CheckReport, check
from generator.deploy import control
from generator.errors import CheckFailedError, RecgenError, UpdateError
from generator.planning import precision
from generator.planning.plan import Model, Plan
from generator.repository import settings
from generator.repository.configs import LeafOptions
from generator.repository.generation import PENDING_FILE, PendingGeneration, discard, write_generation

#: Requests (of this many samples) sent to every candidate ensemble before the switch.
VERIFY_REQUESTS = 4
VERIFY_BATCH = 32

Echo = Callable[[str], None]


@dataclass(frozen=True)
class UpdateReport:
    """What an update did: the generations, the candidates' check, and how long each phase took on the server."""

    model_name: str
    previous_generation: int
    generation: int
    checks: tuple[CheckReport, ...]
    times: dict[str, Any]

    def __str__(self) -> str:
        lines = [
            f"{self.model_name!r} now serves generation {self.generation} (was {self.previous_generation})",
            f"  new models loaded beside the old ones in {self.times.get('load_s', 0.0):.2f} s",
            f"  ensembles switched in {self.times.get('switch_s', 0.0) * 1000:.0f} ms",
            f"  old generation drained and unloaded in {self.times.get('drain_s', 0.0):.2f} s",
        ]
        if self.times.get("groups_started_s"):
            lines.append(f"  new shard-group servers ready in {self.times['groups_started_s']:.2f} s")
        lines += [f"  checked before the switch: {report}" for report in self.checks]
        if self.times.get("lingering"):
            lines.append(f"  still held by the server (their files are kept): {self.times['lingering']}")
        return "\n".join(lines)


def verify(model: Model, plan: Plan, pending: PendingGeneration, url: str) -> tuple[CheckReport, ...]:
    """Check every candidate ensemble against the new model (rows rounded as the plan stores them)."""
    reference = precision.with_rounded_rows(model, plan)
    reports = []
    for ensemble in pending.ensembles:
        report = check(
            reference,
            url,
            protocol="grpc",
            model_name=pending.candidate(ensemble),
            requests=VERIFY_REQUESTS,
            batch_size=VERIFY_BATCH,
            structured=ensemble == naming.ranking_ensemble(pending.model_name),
        )
        reports.append(report)
        if not report.passed:
            raise CheckFailedError(f"the new generation does not compute the new model: {report}")
    return tuple(reports)


def _write(model: Model, plan: Plan, deployment: dict[str, Any], leaves: LeafOptions) -> PendingGeneration:
    if deployment["layout"] == "distributed":
        from generator.deploy.distributed import write_distributed_generation

        return write_distributed_generation(model, plan, Path(deployment["root"]), leaves)
    return write_generation(
        model, plan, Path(deployment["leaf_repository"]), Path(deployment["ensemble_repository"]), leaves
    )


def running_settings(http_port: int) -> settings.RunningSettings:
    """What the deployment `recgen serve` runs behind HTTP port `http_port` was built with (its manifest)."""
    with control.ControlClient(control.socket_path(http_port)) as channel:
        deployment = channel.request("describe")["deployment"]
    if deployment["layout"] == "distributed":
        return settings.RunningSettings.read(Path(deployment["root"]) / naming.FRONT_DIR)
    return settings.RunningSettings.read(Path(deployment["leaf_repository"]))


def update(
    model: Model,
    plan: Plan,
    *,
    http_port: int,
    leaves: LeafOptions | None = None,
    verify_first: bool = True,
    echo: Echo = print,
) -> UpdateReport:
    """Switch the deployment `recgen serve` runs behind HTTP port `http_port` to `model` served as `plan`.

    The plan's model name must be the running one's; its generation number is set here. With `verify_first`, the
    new ensembles are checked against `model` before clients reach them, and a mismatch aborts the update.
    """
    leaves = leaves or LeafOptions()
    with control.ControlClient(control.socket_path(http_port), echo) as channel:
        deployment = channel.request("describe")["deployment"]
        pending = _write(model, plan, deployment, leaves)
        echo(f"wrote {pending}")
        try:
            channel.request("prepare", pending=str(Path(pending.staging) / PENDING_FILE))
        except RecgenError:
            discard(pending)  # serve removed what it had loaded; make sure nothing of it is left
            raise
        checks: tuple[CheckReport, ...] = ()
        if verify_first:
            next_plan = dataclasses.replace(plan, generation=pending.generation)
            try:
                with channel.keepalive():  # serve drops a session that says nothing for a few seconds
                    checks = verify(model, next_plan, pending, deployment["grpc_url"])
            except RecgenError as error:
                channel.request("abort", reason=str(error).splitlines()[0])
                raise UpdateError(f"generation {pending.generation} was not switched to: {error}") from error
            for report in checks:
                echo(str(report))
        times = dict(channel.request("commit")["times"])
    return UpdateReport(pending.model_name, pending.previous_generation, pending.generation, checks, times)
