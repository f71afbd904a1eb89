"""The next generation of a running deployment, written beside the one that serves (what `recgen update` switches to).

A generation is one set of leaf models (router, shard groups, dense models, their ranking twins) and the ensemble
versions that run them. Triton keeps one config per model for all its versions, and a new plan changes configs
(other cuts, replicas, wire layout between router and groups), so generation g's leaves get names of their own
(`naming.leaf_stem`: `dlrm__g2_router`, ...) and are written into the same repository as the running ones, while
the ensembles, whose names clients call, keep them: their new configs wait in a staging directory beside the
repository until the switch, which gives each ensemble a new version numbered after the generation.

`PendingGeneration` is what this stage hands to the deploy stage (`deploy.switch`), as a JSON file in the staging
directory: which leaves to load, which to unload after the switch, the staged ensemble configs and the files that
replace the repository's manifest and READMEs. The profile model outlives generations (it counts by table and
original row, whatever the plan), and so does the request contract: an update that would change an ensemble's
inputs or outputs is refused before anything is written into the repository.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from generator import naming
from generator.errors import UserInputError
from generator.planning.plan import Model, Plan
from generator.repository import export, manifest, readme, validation
from generator.repository.build import BuildResult, BuiltModel, ModelWriter
from generator.repository.configs import LeafOptions

#: The pending generation's description inside its staging directory.
PENDING_FILE = "pending.json"
PENDING_FORMAT_VERSION = 1
#: Where the staged ensemble configs wait: STAGING/ensembles/<ensemble>/config.pbtxt.
STAGED_ENSEMBLES = "ensembles"
_STAGED_LEAVES = "leaves"


@dataclass(frozen=True)
class RunningGeneration:
    """What serves now, read from the repositories: the generation, its ensembles and the leaves they run."""

    model_name: str
    generation: int
    ensembles: tuple[str, ...]
    leaves: tuple[str, ...]


def read_running(leaf_repository: Path, ensemble_repository: Path) -> RunningGeneration:
    """The running generation: its number from the manifest, its leaves from the ensembles' steps."""
    manifest_path = Path(leaf_repository) / naming.MANIFEST_FILE
    try:
        recorded = json.loads(manifest_path.read_text())
        model_name = str(recorded["model_name"])
        generation = int(recorded.get("generation", naming.FIRST_GENERATION))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserInputError(
            f"{manifest_path} is missing or not a recgen manifest ({error}); update a repository `recgen build` wrote"
        ) from error
    ensembles, leaves = [], []
    for name in (naming.ensemble_model(model_name), naming.ranking_ensemble(model_name)):
        path = Path(ensemble_repository) / name / naming.CONFIG_FILE
        if not path.is_file():
            continue
        config = validation.parse_strict(path.read_text(), str(path))
        ensembles.append(name)
        leaves += [step.model_name for step in config.ensemble_scheduling.step if step.model_name not in leaves]
    if not ensembles:
        raise UserInputError(f"{ensemble_repository} holds no ensemble of {model_name!r}; nothing runs to update")
    return RunningGeneration(model_name, generation, tuple(ensembles), tuple(leaves))


@dataclass(frozen=True)
class PendingGeneration:
    """A generation written beside the running one and not yet switched to (see the module docstring).

    Paths are absolute. `installs` are (staged file, final path) pairs put in place by the switch. On the
    distributed layout, `new_groups` are the group models served from `<root>/groups/<model>` and `topology` the
    staged topology.json that describes them.
    """

    model_name: str
    generation: int
    previous_generation: int
    leaf_repository: str
    ensemble_repository: str
    staging: str
    new_leaves: tuple[str, ...]
    old_leaves: tuple[str, ...]
    ensembles: tuple[str, ...]
    installs: tuple[tuple[str, str], ...]
    #: How long an in-flight request may take at most (the plan's latency target): the drain bound.
    latency_slo_ms: float
    new_groups: tuple[str, ...] = ()
    old_groups: tuple[str, ...] = ()
    topology: str = ""

    def staged_ensemble(self, name: str) -> Path:
        """The staged config.pbtxt of one ensemble."""
        return Path(self.staging) / STAGED_ENSEMBLES / name / naming.CONFIG_FILE

    def candidate(self, name: str) -> str:
        """The name an ensemble's new config is tried under before the switch (its generation's stem)."""
        stem = naming.leaf_stem(self.model_name, self.generation)
        return stem if name == naming.ensemble_model(self.model_name) else naming.ranking_ensemble(stem)

    def save(self) -> Path:
        """Write STAGING/pending.json."""
        path = Path(self.staging) / PENDING_FILE
        document = {"format_version": PENDING_FORMAT_VERSION, **dataclasses.asdict(self)}
        path.write_text(json.dumps(document, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> PendingGeneration:
        """Read a pending.json; anything else is a UserInputError naming the file."""
        try:
            document = json.loads(Path(path).read_text())
            if document.pop("format_version") != PENDING_FORMAT_VERSION:
                raise ValueError(f"format version is not {PENDING_FORMAT_VERSION}")
            for key in ("new_leaves", "old_leaves", "ensembles", "new_groups", "old_groups"):
                document[key] = tuple(document[key])
            document["installs"] = tuple((str(a), str(b)) for a, b in document["installs"])
            return cls(**document)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise UserInputError(f"{path} is not a pending recgen generation ({error})") from error

    def __str__(self) -> str:
        return (
            f"generation {self.generation} of {self.model_name!r} (replaces {self.previous_generation}): "
            f"{len(self.new_leaves)} leaf models in {self.leaf_repository}"
            + (f", {len(self.new_groups)} shard-group services" if self.new_groups else "")
            + f"; ensembles {', '.join(self.ensembles)} switch to it"
        )


def ensemble_contract(config: mc.ModelConfig) -> list[tuple[str, str, int, tuple[int, ...]]]:
    """An ensemble's request contract: every input and output with its dtype and dims, in order."""
    return [
        (kind, tensor.name, tensor.data_type, tuple(tensor.dims))
        for kind, tensors in (("input", config.input), ("output", config.output))
        for tensor in tensors
    ] + [("max_batch_size", "", config.max_batch_size, ())]


def check_same_contract(running: mc.ModelConfig, new: mc.ModelConfig) -> None:
    """Refuse an update that would change what clients send or receive, naming the first difference."""
    before, after = ensemble_contract(running), ensemble_contract(new)
    if before == after:
        return
    gone = [entry for entry in before if entry not in after]
    added = [entry for entry in after if entry not in before]

    def describe(entries: list[tuple[str, str, int, tuple[int, ...]]]) -> str:
        return ", ".join(
            f"{kind} {name!r} {mc.DataType.Name(dtype)} {list(dims)}" if name else f"max_batch_size {dtype}"
            for kind, name, dtype, dims in entries
        )

    raise UserInputError(
        f"ensemble {running.name!r}: an update keeps the request contract, but the new build "
        f"{'drops ' + describe(gone) if gone else ''}{'; ' if gone and added else ''}"
        f"{'adds ' + describe(added) if added else ''}; serve a changed contract as a new build"
    )


def _running_config(ensemble_repository: Path, name: str) -> mc.ModelConfig:
    path = Path(ensemble_repository) / name / naming.CONFIG_FILE
    return validation.parse_strict(path.read_text(), str(path))


def check_ensembles(running: RunningGeneration, ensemble_repository: Path, staged_ensembles: Path) -> None:
    """The new build has the running ensembles, each with the running request contract."""
    written = sorted(path.parent.name for path in staged_ensembles.glob(f"*/{naming.CONFIG_FILE}"))
    if written != sorted(running.ensembles):
        raise UserInputError(
            f"the running deployment serves ensembles {sorted(running.ensembles)}, the new build {written}: an "
            "update keeps them (give the model and --user-features the running build was made with)"
        )
    for name in running.ensembles:
        staged = staged_ensembles / name / naming.CONFIG_FILE
        check_same_contract(
            _running_config(ensemble_repository, name), validation.parse_strict(staged.read_text(), str(staged))
        )


def next_plan(plan: Plan, running: RunningGeneration) -> Plan:
    """`plan` as the generation after the running one (same model name)."""
    if plan.model_name != running.model_name:
        raise UserInputError(
            f"the running deployment serves {running.model_name!r}, the plan names {plan.model_name!r}; "
            f"plan with --name {running.model_name}"
        )
    if running.generation >= naming.MAX_GENERATION:
        raise UserInputError(
            f"the running deployment is at generation {running.generation}, the last one; rebuild it afresh"
        )
    return dataclasses.replace(plan, generation=running.generation + 1)


def staging_prefix(beside: Path) -> str:
    """How the staging directories of updates of `beside` start (they sit in its parent)."""
    return f".{Path(beside).resolve().name}.recgen-update-g"


def new_staging_dir(beside: Path, generation: int) -> Path:
    """A fresh staging directory beside `beside` (same filesystem, so its contents rename into place)."""
    return Path(tempfile.mkdtemp(prefix=f"{staging_prefix(beside)}{generation}-", dir=Path(beside).resolve().parent))


def move_leaves(staged: Path, repository: Path, names: Sequence[str]) -> None:
    """Rename every staged leaf model into the repository, all or none; an existing name is refused."""
    taken = [name for name in names if (repository / name).exists()]
    if taken:
        raise UserInputError(
            f"{repository} already holds {', '.join(str(repository / name) for name in taken)}, the names of the "
            "generation this update writes: left by an update that was interrupted. `recgen serve` finishes or "
            "removes such a generation when it starts; or remove these directories and update again"
        )
    moved: list[Path] = []
    try:
        for name in names:
            (staged / name).rename(repository / name)
            moved.append(repository / name)
    except BaseException:
        for path in moved:
            shutil.rmtree(path, ignore_errors=True)
        raise


def profile_entry(repository: Path, model_name: str) -> BuiltModel | None:
    """The profile model a generation keeps, as the README lists it (None when the build counts nothing)."""
    directory = Path(repository) / naming.profile_model(model_name)
    if not (directory / naming.CONFIG_FILE).is_file():
        return None
    return BuiltModel(
        directory.name,
        "profile",
        "python",
        1,
        "cpu",
        export.directory_bytes(directory),
        "sums the routers' access counts (recgen profile --from-server)",
    )


def write_generation(
    model: Model,
    plan: Plan,
    leaf_repository: Path,
    ensemble_repository: Path,
    leaves: LeafOptions,
) -> PendingGeneration:
    """Write the generation after the running one of a single-server deployment; see the module docstring.

    The leaves land in `leaf_repository` under the generation's names; the ensembles' configs, the manifest and
    the READMEs wait in a staging directory. A failure removes everything it wrote.
    """
    leaf_repository, ensemble_repository = Path(leaf_repository).resolve(), Path(ensemble_repository).resolve()
    running = read_running(leaf_repository, ensemble_repository)
    plan = next_plan(plan, running)
    plan.check_matches(model)
    staging = new_staging_dir(leaf_repository, plan.generation)
    try:
        writer = ModelWriter(model, plan, leaves)
        staged_leaves, staged_ensembles = staging / _STAGED_LEAVES, staging / STAGED_ENSEMBLES
        writer.router(staged_leaves)
        for wired in writer.wire.steps:
            writer.shard_group(staged_leaves, wired)
        writer.dense(staged_leaves)
        writer.ensemble(staged_ensembles)
        writer.ranking(staged_leaves, staged_ensembles)
        check_ensembles(running, ensemble_repository, staged_ensembles)
        new_leaves = tuple(built.name for built in writer.built if built.role != "ensemble")
        kept = profile_entry(leaf_repository, plan.model_name)
        built = (*writer.built, *([kept] if kept else []))
        result = BuildResult(plan, leaves.backend, leaves.target, leaf_repository, ensemble_repository, built)
        manifest.write_manifest(plan, writer.wire, leaves, staging)
        installs = [(staging / naming.MANIFEST_FILE, leaf_repository / naming.MANIFEST_FILE)]
        for index, repository in enumerate((leaf_repository, ensemble_repository)):
            text = staging / f"{naming.README_FILE}.{index}"
            text.write_text(readme.render(model, result))
            installs.append((text, repository / naming.README_FILE))
        move_leaves(staged_leaves, leaf_repository, new_leaves)
        pending = save_pending(plan, running, (leaf_repository, ensemble_repository), staging, new_leaves, installs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return pending


def save_pending(
    plan: Plan,
    running: RunningGeneration,
    repositories: tuple[Path, Path],
    staging: Path,
    new_leaves: Sequence[str],
    installs: Sequence[tuple[Path, Path]],
    **distributed: Any,
) -> PendingGeneration:
    """The pending generation of `plan` after `running`, written into STAGING/pending.json.

    `repositories`: (leaf, ensemble) repository; `distributed`: the distributed layout's `new_groups`, `old_groups`
    and `topology`.
    """
    pending = PendingGeneration(
        model_name=plan.model_name,
        generation=plan.generation,
        previous_generation=running.generation,
        leaf_repository=str(repositories[0]),
        ensemble_repository=str(repositories[1]),
        staging=str(staging),
        new_leaves=tuple(new_leaves),
        old_leaves=running.leaves,
        ensembles=running.ensembles,
        installs=tuple((str(a), str(b)) for a, b in installs),
        latency_slo_ms=plan.latency_slo_ms,
        **distributed,
    )
    pending.save()
    return pending


def check_pending(pending: PendingGeneration, running: RunningGeneration, leaf_repository: Path, root: Path) -> None:
    """Refuse a pending generation that is not the next one of this deployment, or that reaches outside it.

    `root` is the directory every path of the deployment lies in (the leaf repository's parent, or the distributed
    build). What the switch loads, unloads, removes and installs must be this deployment's own.
    """
    leaf_repository, root = Path(leaf_repository).resolve(), Path(root).resolve()
    stem = naming.leaf_stem(running.model_name, running.generation + 1)
    staging = Path(pending.staging)
    problems = []
    if Path(pending.leaf_repository) != leaf_repository:
        problems.append(f"it writes into {pending.leaf_repository}, this deployment serves {leaf_repository}")
    if (pending.model_name, pending.previous_generation, pending.generation) != (
        running.model_name,
        running.generation,
        running.generation + 1,
    ):
        problems.append(
            f"it is generation {pending.generation} of {pending.model_name!r} after {pending.previous_generation}, "
            f"this deployment runs generation {running.generation} of {running.model_name!r}"
        )
    if sorted(pending.old_leaves) != sorted(running.leaves) or sorted(pending.ensembles) != sorted(running.ensembles):
        problems.append("its old leaves or ensembles are not the ones that serve")
    strays = [name for name in (*pending.new_leaves, *pending.new_groups) if not name.startswith(stem + "_")]
    if strays:
        problems.append(f"models {strays} are not named after generation {pending.generation} ({stem}_...)")
    if staging.parent != leaf_repository.parent or not staging.name.startswith(f".{leaf_repository.name}.recgen-"):
        problems.append(f"its staging directory {staging} is not one recgen made beside {leaf_repository}")
    for staged, final in pending.installs:
        if staging not in Path(staged).parents or root not in Path(final).parents:
            problems.append(f"it would install {staged} as {final}")
    if problems:
        raise UserInputError(f"refusing pending generation {staging / PENDING_FILE}: {'; '.join(problems)}")


def retire_groups(pending: PendingGeneration) -> None:
    """Remove the repositories of the shard groups a switched generation replaced (the distributed layout)."""
    for name in pending.old_groups:
        shutil.rmtree(Path(pending.leaf_repository).parent / naming.GROUPS_DIR / name, ignore_errors=True)


def discard(pending: PendingGeneration) -> None:
    """Remove everything a pending generation wrote (its leaves, groups and staging); the running one stays."""
    for name in pending.new_leaves:
        shutil.rmtree(Path(pending.leaf_repository) / name, ignore_errors=True)
    for name in pending.new_groups:  # the distributed layout: <root>/groups/<model> beside <root>/front
        shutil.rmtree(Path(pending.leaf_repository).parent / naming.GROUPS_DIR / name, ignore_errors=True)
    shutil.rmtree(pending.staging, ignore_errors=True)
