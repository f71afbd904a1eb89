"""Switching a running server to a pending generation without failing a request (the server side of `recgen update`).

Measured on the embedded Triton 2.51 (explicit model control): reloading an ensemble whose config changed keeps
the old version serving until the new one is ready, then swaps them in one step; requests already inside the old
ensemble finish on its steps, and an unloaded model stays UNLOADING until the last of them is done. A failed
ensemble load, on the other hand, takes the ensemble down ("has no available versions"). Loading an ensemble also
reloads every step whose directory changed since it was loaded, and the Python backend writes `__pycache__` into a
model's directory when it first imports `model.py`, so a freshly loaded leaf would load twice. Hence the order:

1. `prepare`: byte-compile the new leaves (so their directories do not change at import), load each of them,
   then load each new ensemble config under a candidate name (`PendingGeneration.candidate`) that clients do not
   call. Everything the switch will load has now loaded once; nothing that serves has changed.
2. `commit`: drop the candidates, then give each ensemble its new config and a version directory named after the
   generation, and load it (the swap); then unload the old leaves, wait until the server has let them go, remove
   their directories and install the new manifest and READMEs.
3. `abort`: unload and remove whatever `prepare` added. The old generation never stopped serving.

Only the holder of the server's admin key can do this: `recgen serve` runs it for `recgen update` (`control`).
"""

from __future__ import annotations

import compileall
import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generator import naming
from generator.deploy.server import DEFAULT_READY_TIMEOUT_S, TritonServer
from generator.errors import RecgenError, UpdateError, UserInputError
from generator.repository import contents, validation
from generator.repository.build import write_ensemble_version
from generator.repository.generation import (
    PENDING_FILE,
    PendingGeneration,
    RunningGeneration,
    check_pending,
    discard,
    read_running,
    retire_groups,
    staging_prefix,
)
from generator.repository.params import RUNTIME_DIRECTORY
from generator.triton_models import recgen_access, recgen_runtime

#: New leaves loaded at once (Triton's default model-load thread count).
PARALLEL_LOADS = 4
#: Seconds at least that the old leaves get to finish their in-flight requests and unload.
MIN_DRAIN_S = 30.0
POLL_S = 0.05

Echo = Callable[[str], None]


@dataclass(frozen=True)
class SwitchTimes:
    """How long each phase of an update took on one server (seconds)."""

    load_s: float = 0.0
    switch_s: float = 0.0
    drain_s: float = 0.0
    #: Old leaves the server had not let go of within the drain bound (their directories are kept).
    lingering: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)


def _load(server: TritonServer, model: str) -> None:
    try:
        server.admin("load", model, timeout_s=DEFAULT_READY_TIMEOUT_S)
    except RecgenError as error:
        raise UpdateError(f"model {model!r} of the new generation failed to load: {error}") from error


def compile_sources(directories: Sequence[Path]) -> None:
    """Byte-compile the Python files of model directories for this interpreter, the one the stubs run."""
    for directory in directories:
        compileall.compile_dir(str(directory), quiet=2, workers=1)


def _candidate_dir(pending: PendingGeneration, ensemble: str) -> Path:
    return Path(pending.ensemble_repository) / pending.candidate(ensemble)


def write_candidate(pending: PendingGeneration, ensemble: str) -> str:
    """The new config of `ensemble` under its candidate name, in the ensemble repository; returns the name."""
    config = validation.parse_strict(pending.staged_ensemble(ensemble).read_text())
    config.name = pending.candidate(ensemble)
    directory = _candidate_dir(pending, ensemble)
    shutil.rmtree(directory, ignore_errors=True)
    write_ensemble_version(directory, int(naming.MODEL_VERSION))
    validation.write_config(config, directory)
    return config.name


def prepare(server: TritonServer, pending: PendingGeneration, echo: Echo) -> tuple[list[str], float]:
    """Load the new leaves and the candidate ensembles; returns the candidates and the seconds it took."""
    started = time.monotonic()
    leaf_repository = Path(pending.leaf_repository)
    compile_sources([leaf_repository / name for name in pending.new_leaves])
    # Triton loads up to --model-load-thread-count (4) models at once: ask for them together.
    with ThreadPoolExecutor(max_workers=PARALLEL_LOADS) as pool:
        for future in [pool.submit(_load, server, name) for name in pending.new_leaves]:
            future.result()
    echo(f"loaded {len(pending.new_leaves)} leaf models of generation {pending.generation} beside the running ones")
    candidates = []
    for ensemble in pending.ensembles:
        candidate = write_candidate(pending, ensemble)
        _load(server, candidate)
        candidates.append(candidate)
    echo(f"candidate ensembles {', '.join(candidates)} ready (the new configs, not yet called by clients)")
    return candidates, time.monotonic() - started


def _unload_quietly(server: TritonServer, models: Sequence[str]) -> None:
    for model in models:
        with contextlib.suppress(RecgenError):  # already gone, or the server is: nothing more to undo
            server.admin("unload", model)


def _drop_candidates(server: TritonServer, pending: PendingGeneration) -> None:
    _unload_quietly(server, [pending.candidate(ensemble) for ensemble in pending.ensembles])
    for ensemble in pending.ensembles:
        shutil.rmtree(_candidate_dir(pending, ensemble), ignore_errors=True)


def abort(server: TritonServer, pending: PendingGeneration, echo: Echo) -> None:
    """Undo `prepare`: unload the candidates and the new leaves, remove what the generation wrote."""
    _drop_candidates(server, pending)
    _unload_quietly(server, pending.new_leaves)
    discard(pending)
    echo(f"generation {pending.generation} removed; generation {pending.previous_generation} serves on")


def _replace_text(path: Path, text: str) -> None:
    """Write a file whole in one rename, so that a load never reads it half written."""
    staged = path.with_name(path.name + ".recgen-new")
    staged.write_text(text)
    os.replace(staged, path)


@dataclass
class _Swapped:
    ensemble_dir: Path
    old_config: str


def _write_switch(pending: PendingGeneration, ensemble: str) -> tuple[Path, str]:
    """Give one ensemble's files the new config and version directory; (its directory, its old config)."""
    ensemble_dir = Path(pending.ensemble_repository) / ensemble
    config_path = ensemble_dir / naming.CONFIG_FILE
    old_config = config_path.read_text()
    version_dir = ensemble_dir / str(pending.generation)
    shutil.rmtree(version_dir, ignore_errors=True)
    write_ensemble_version(ensemble_dir, pending.generation)
    _replace_text(config_path, pending.staged_ensemble(ensemble).read_text())
    return ensemble_dir, old_config


def _swap(server: TritonServer, pending: PendingGeneration, ensemble: str) -> _Swapped:
    """Give one ensemble its new config and version directory and load it; undo both if the load fails."""
    ensemble_dir, old_config = _write_switch(pending, ensemble)
    try:
        server.admin("load", ensemble, timeout_s=DEFAULT_READY_TIMEOUT_S)
    except RecgenError as error:
        _restore(server, _Swapped(ensemble_dir, old_config), pending.generation)
        raise UpdateError(
            f"ensemble {ensemble!r} did not switch to generation {pending.generation}: {error}"
        ) from error
    return _Swapped(ensemble_dir, old_config)


def _restore(server: TritonServer, swapped: _Swapped, generation: int) -> None:
    """Put an ensemble's old config back and load it again (its old steps are still loaded)."""
    _replace_text(swapped.ensemble_dir / naming.CONFIG_FILE, swapped.old_config)
    shutil.rmtree(swapped.ensemble_dir / str(generation), ignore_errors=True)
    # The caller reports the first error; the supervisor's next look finds what is still broken.
    with contextlib.suppress(RecgenError):
        server.admin("load", swapped.ensemble_dir.name, timeout_s=DEFAULT_READY_TIMEOUT_S)


def switch_ensembles(server: TritonServer, pending: PendingGeneration) -> float:
    """Swap every ensemble to the new generation, all or none; returns the seconds the swaps took."""
    started = time.monotonic()
    swapped: list[_Swapped] = []
    try:
        for ensemble in pending.ensembles:
            swapped.append(_swap(server, pending, ensemble))
    except BaseException:
        for done in reversed(swapped):
            _restore(server, done, pending.generation)
        raise
    return time.monotonic() - started


def drain(server: TritonServer, models: Sequence[str], timeout_s: float) -> tuple[float, tuple[str, ...]]:
    """Unload `models` and wait until the server has let every one go; returns the seconds and what lingers.

    Triton keeps an unloaded model UNLOADING until its in-flight requests are done, so this is also the wait for
    the requests that entered the old generation before the switch.
    """
    started = time.monotonic()
    _unload_quietly(server, models)
    deadline = started + timeout_s
    pending = list(models)
    while pending and time.monotonic() < deadline:
        states = server.model_states()
        pending = [model for model in pending if states.get(model, set()) & {"READY", "UNLOADING", "LOADING"}]
        if pending:
            time.sleep(POLL_S)
    return time.monotonic() - started, tuple(pending)


def _install(pending: PendingGeneration, lingering: Sequence[str], installed_ok: bool = False) -> None:
    """Remove the old leaves' directories (not those the server still holds) and old ensemble versions; install.

    `installed_ok`: a staged file already gone was installed before (a switch that stopped half way).
    """
    for name in pending.old_leaves:
        if name not in lingering:
            shutil.rmtree(Path(pending.leaf_repository) / name, ignore_errors=True)
    for ensemble in pending.ensembles:
        for version_dir in (Path(pending.ensemble_repository) / ensemble).iterdir():
            if version_dir.is_dir() and version_dir.name.isdigit() and version_dir.name != str(pending.generation):
                shutil.rmtree(version_dir, ignore_errors=True)
    for staged, final in pending.installs:
        if not (installed_ok and not Path(staged).exists()):
            os.replace(staged, final)
    for repository in {Path(pending.leaf_repository), Path(pending.ensemble_repository)}:
        contents.record(repository)  # what serves from now on, for the next start's check
    shutil.rmtree(pending.staging, ignore_errors=True)


def commit(server: TritonServer, pending: PendingGeneration, echo: Echo, load_s: float = 0.0) -> SwitchTimes:
    """Swap the ensembles to the prepared generation, drain and remove the old one (see the module docstring)."""
    _drop_candidates(server, pending)
    switch_s = switch_ensembles(server, pending)
    echo(f"ensembles {', '.join(pending.ensembles)} switched to generation {pending.generation} in {switch_s:.3f} s")
    drain_s, lingering = drain(server, pending.old_leaves, max(MIN_DRAIN_S, 4 * pending.latency_slo_ms / 1000))
    if lingering:
        echo(f"the server still holds {list(lingering)} after {drain_s:.1f} s; their directories are kept")
    else:
        echo(f"generation {pending.previous_generation} drained and unloaded in {drain_s:.3f} s")
    _install(pending, lingering)
    counters = recgen_runtime.user_folder(RUNTIME_DIRECTORY) / recgen_access.FOLDER_KIND / str(server.pid)
    if counters.is_dir():  # the old routers' counts stay in the window, their files go
        recgen_access.retire_gone_instances(counters)
    return SwitchTimes(load_s, switch_s, drain_s, lingering)


class SingleServer:
    """One supervised server, as the control channel switches it (`control.Deployment`)."""

    def __init__(self, server: TritonServer, leaf_repository: Path, ensemble_repository: Path):
        self.server = server
        self.leaf_repository = Path(leaf_repository).resolve()
        self.ensemble_repository = Path(ensemble_repository).resolve()
        self._load_s = 0.0

    def running(self) -> RunningGeneration:
        """What serves now."""
        return read_running(self.leaf_repository, self.ensemble_repository)

    def describe(self) -> dict[str, Any]:
        """Layout, model, generation, repositories and the URLs clients call."""
        running = self.running()
        return {
            "layout": "single",
            "model_name": running.model_name,
            "generation": running.generation,
            "leaf_repository": str(self.leaf_repository),
            "ensemble_repository": str(self.ensemble_repository),
            "http_url": self.server.http_url,
            "grpc_url": self.server.grpc_url,
        }

    def prepare(self, pending: PendingGeneration, echo: Echo) -> list[str]:
        """Check the pending generation is this deployment's next one, then load it beside the running one."""
        check_pending(pending, self.running(), self.leaf_repository, self.leaf_repository.parent)
        if Path(pending.ensemble_repository) != self.ensemble_repository:
            raise UserInputError(f"the pending generation switches {pending.ensemble_repository}, not this server's")
        candidates, self._load_s = prepare(self.server, pending, echo)
        return candidates

    def commit(self, pending: PendingGeneration, echo: Echo) -> dict[str, Any]:
        """Switch, drain, retire; the times of each phase."""
        return commit(self.server, pending, echo, self._load_s).to_dict()

    def abort(self, pending: PendingGeneration, echo: Echo) -> None:
        """Undo prepare."""
        abort(self.server, pending, echo)


def interrupted_updates(leaf_repository: Path) -> list[PendingGeneration]:
    """The generations that updates of this repository prepared and never finished (their staging is still there)."""
    leaf_repository = Path(leaf_repository).resolve()
    found = []
    for path in sorted(leaf_repository.parent.glob(f"{staging_prefix(leaf_repository)}*/{PENDING_FILE}")):
        pending = PendingGeneration.load(path)
        if Path(pending.leaf_repository) == leaf_repository:
            found.append(pending)
    return found


def recover_interrupted(leaf_repository: Path, ensemble_repository: Path) -> list[str]:
    """Before a server starts on a repository: finish or remove what an update left when `recgen serve` died.

    Every file involved is one the update wrote and listed in its staging's pending.json. An update that had
    switched an ensemble (its config names the new leaves) is finished: the other ensembles switch too, the old
    leaves go and the new manifest is installed. One that had not is removed: its leaves, candidate ensembles and
    staging. Returns one line per generation handled.
    """
    lines = []
    for pending in interrupted_updates(leaf_repository):
        for ensemble in pending.ensembles:
            shutil.rmtree(_candidate_dir(pending, ensemble), ignore_errors=True)
        running = read_running(Path(leaf_repository), Path(ensemble_repository))
        switched = bool(set(pending.new_leaves) & set(running.leaves))
        before = dataclasses.replace(
            running,
            generation=pending.previous_generation if running.generation == pending.generation else running.generation,
            leaves=pending.old_leaves if switched else running.leaves,
        )
        check_pending(pending, before, Path(leaf_repository), Path(leaf_repository).resolve().parent)
        if switched:
            for ensemble in pending.ensembles:
                if not set(pending.new_leaves) & set(_steps(pending, ensemble)):
                    _write_switch(pending, ensemble)
            _install(pending, lingering=(), installed_ok=True)
            retire_groups(pending)
            lines.append(
                f"finished the update to generation {pending.generation} that stopped after its switch (the old "
                f"generation's {len(pending.old_leaves)} leaf models removed)"
            )
        else:
            discard(pending)
            lines.append(
                f"removed generation {pending.generation}, which an update left before its switch: "
                f"{', '.join(pending.new_leaves)} from {pending.leaf_repository}"
            )
    return lines


def prepare_to_serve(
    leaf_repository: Path, ensemble_repository: Path, repositories: Sequence[Path], echo: Echo
) -> None:
    """Before `recgen serve` starts its servers: finish or remove an interrupted update, then check the files.

    Every repository is compared with what was built (`repository.contents`); one that differs is refused.
    """
    for line in recover_interrupted(leaf_repository, ensemble_repository):
        echo(line)
    for repository in repositories:
        contents.verify(repository)


def _steps(pending: PendingGeneration, ensemble: str) -> list[str]:
    path = Path(pending.ensemble_repository) / ensemble / naming.CONFIG_FILE
    return [step.model_name for step in validation.parse_strict(path.read_text(), str(path)).ensemble_scheduling.step]
