"""Keep what `recgen serve` started serving: restore a model whose stub broke, restart a server that died.

Triton 2.51 does neither (see `stub_health`). Every `POLL_S` the supervisor compares each server's stub processes
with the instances its models ask for, and its ready models with those that were ready before. A model with a dead
or paused stub is restored: its paused stubs are killed (a paused stub that is continued later can abort the
server), then the model is loaded again through the restricted model-repository API with its own config as an
override. Triton skips a plain load of a model whose files did not change; with the override it loads new instances
while the old version, and the ensembles that use it, keep serving, then swaps them, so the ensemble never
disappears (an unload first would answer NOT_FOUND "has no available versions" meanwhile). A model that is no
longer loaded at all (an ensemble unloaded through the admin API) is loaded again the same way. A server that may be
restarted (a replica of the local distributed topology) is started again on its own ports, with a backoff between
failed attempts; the others keep serving meanwhile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
import urllib.error
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from generator import naming
from generator.deploy import control, stub_health, switch
from generator.deploy.control import ControlServer
from generator.deploy.server import DEFAULT_READY_TIMEOUT_S, ServerConfig, TritonServer
from generator.errors import RecgenError, ServerError
from generator.repository import validation

#: Seconds between two looks at every server and stub.
POLL_S = 0.25
#: Seconds to wait before restart attempt 1, 2, ... (the last one repeats).
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
#: A server that stays up this long starts its backoff from the beginning again.
STABLE_AFTER_S = 60.0
#: Seconds a restored model and its ensembles get to be ready again.
RESTORE_TIMEOUT_S = 60.0
#: Seconds between two attempts to reload a model that failed to load again.
RELOAD_RETRY_S = 2.0
#: A config parameter no model reads: the supervisor changes it to make Triton reload a model whose files did not.
RELOAD_PARAMETER = "recgen_reloaded_at"

Echo = Callable[[str], None]


@dataclass
class Watched:
    """One server under supervision.

    `server` returns the current process object (a restart replaces it); `restart` starts it again and waits
    until it is ready, or is None when its exit ends serving.
    """

    label: str
    server: Callable[[], TritonServer]
    restart: Callable[[], None] | None = None
    expected_stubs: dict[str, int] = field(default_factory=dict)
    armed_for: int | None = None  # id() of the server object `expected_stubs` describes
    #: The models that were ready once on the current server (what must stay loaded), and the server they describe.
    expected_models: frozenset[str] = frozenset()
    models_for: int | None = None
    #: Stubs of the versions a restore replaced: not counted again.
    handled_stubs: set[int] = field(default_factory=set)
    #: Models whose reload failed: why they were broken, and when to try again.
    unrestored: dict[str, tuple[str, float]] = field(default_factory=dict)
    failed_restarts: int = 0
    next_restart_s: float | None = None
    up_since_s: float = field(default_factory=time.monotonic)


class Supervisor:
    """The one watch loop of `recgen serve`, for a single server and a local distributed topology alike.

    With a `control` channel, `recgen update` sessions run on their own threads (`control`) and the loop never
    pauses: while a session runs, the models it is changing are left alone and every server's expected stubs are
    read afresh at each look; after one, `refresh` gives the servers to watch from then on (an update may start and
    stop servers).
    """

    def __init__(
        self,
        watched: Sequence[Watched],
        echo: Echo = print,
        poll_s: float = POLL_S,
        control: ControlServer | None = None,
        refresh: Callable[[], Sequence[Watched]] | None = None,
    ):
        self.watched = list(watched)
        self.echo = echo
        self.poll_s = poll_s
        self.control = control
        self.refresh = refresh

    def run(self) -> None:
        """Block until SIGTERM or SIGINT (Ctrl-C); a server without `restart` that exits raises ServerError.

        Both are handled here, so a serve started in the background by a script (which starts it with SIGINT
        ignored) still stops on SIGINT.
        """
        stop_requested: list[bool] = []
        stops = (signal.SIGTERM, signal.SIGINT)
        previous = {stop: signal.signal(stop, lambda *_: stop_requested.append(True)) for stop in stops}
        try:
            while not stop_requested:
                if self.control is not None and self.control.take_changed():  # before looking: servers may be gone
                    self.watched = list(self.refresh()) if self.refresh is not None else self.watched
                    for watched in self.watched:
                        watched.armed_for = watched.models_for = None
                self.check_once()
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            pass
        finally:
            for stop, handler in previous.items():
                signal.signal(stop, handler)

    def check_once(self) -> None:
        """One look at every server: restart the dead ones that may be, restore models with broken stubs."""
        changing = frozenset() if self.control is None else self.control.changing()
        for watched in self.watched:
            try:
                server = watched.server()
            except (KeyError, IndexError):  # an update took it out of the topology; the next refresh drops it
                continue
            if server.exited and changing and watched.restart is not None:
                continue  # an update may be stopping it on purpose: decide once the session is over (refresh)
            if server.exited:
                self._handle_exit(watched, server)
                continue
            if time.monotonic() - watched.up_since_s > STABLE_AFTER_S:
                watched.failed_restarts = 0
            self._check_stubs(watched, server, changing)

    def _handle_exit(self, watched: Watched, server: TritonServer) -> None:
        for stub in stub_health.remove_orphans():  # they would hold the dead server's memory and ports
            self.echo(f"{watched.label}: killed stub {stub.pid} of {stub.model!r}, left by the dead server")
        if watched.restart is None:
            raise ServerError(server.exit_report("while serving"))
        now = time.monotonic()
        if watched.next_restart_s is None:
            delay = RESTART_BACKOFF_S[min(watched.failed_restarts, len(RESTART_BACKOFF_S) - 1)]
            watched.next_restart_s = now + delay
            first_line = server.exit_report("while serving").splitlines()[0].rstrip(":")
            self.echo(f"{watched.label}: {first_line}; restarting it in {delay:g} s")
            return
        if now < watched.next_restart_s:
            return
        watched.next_restart_s = None
        try:
            watched.restart()
        except RecgenError as error:
            watched.failed_restarts += 1
            reason = str(error).splitlines()[0]
            self.echo(f"{watched.label}: restart attempt {watched.failed_restarts} failed: {reason}")
            return
        watched.up_since_s = time.monotonic()
        self.echo(f"{watched.label}: restarted, ready again {watched.up_since_s - now:.1f} s after the attempt began")

    def _check_stubs(self, watched: Watched, server: TritonServer, changing: frozenset[str] = frozenset()) -> None:
        if changing:  # an update is loading and unloading models: what the server expects changes under us
            watched.armed_for = watched.models_for = None
        try:
            ready = server.ready_models()
            if watched.armed_for != id(server):
                watched.expected_stubs = stub_health.expected_stubs(server.http_url)
                watched.armed_for = id(server)
        except (urllib.error.URLError, OSError, ValueError, ServerError):
            return  # not answering yet; look again next time
        if watched.models_for != id(server):  # kept across restores: a model missing now must come back
            watched.expected_models, watched.models_for = frozenset(ready), id(server)
        pid = server.pid
        if pid is None:
            return
        stubs = [stub for stub in stub_health.stub_processes(pid) if stub.pid not in watched.handled_stubs]
        now = time.monotonic()
        broken = {model: reason for model, (reason, retry_s) in watched.unrestored.items() if now >= retry_s}
        broken.update(stub_health.broken_models(watched.expected_stubs, stubs))
        missing = {model: "no longer loaded" for model in watched.expected_models - ready if model not in broken}
        for model, reason in {**broken, **missing}.items():
            if model in changing or (model in missing and server.model_ready(model)):
                continue  # being changed by an update, or loaded again with an ensemble restored just before
            model_stubs = [stub for stub in stubs if stub.model == model]
            self._restore(watched, server, model, reason, model_stubs, loaded=model in ready)

    def _restore(
        self,
        watched: Watched,
        server: TritonServer,
        model: str,
        reason: str,
        stubs: list[stub_health.StubProcess],
        *,
        loaded: bool,
    ) -> None:
        """Reload `model`: with a config override while it is loaded (see the module docstring), else from its files."""
        started = time.monotonic()
        self.echo(f"{watched.label}: model {model!r} is broken ({reason}); reloading it")
        for stub in stubs:  # the healthy ones keep serving the old version until the new one is ready
            watched.handled_stubs.add(stub.pid)  # the old version's dead stub may linger as a zombie for a while
            if stub_health.BROKEN_STATES.get(stub.state) == "paused":
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(stub.pid, signal.SIGKILL)
        try:
            override = _reload_override(server.model_config_json(model)) if loaded else None
            server.admin("load", model, timeout_s=RESTORE_TIMEOUT_S, config_override=override)
            server.wait_until_ready((model,), timeout_s=RESTORE_TIMEOUT_S)
        except RecgenError as error:
            watched.unrestored[model] = (reason, time.monotonic() + RELOAD_RETRY_S)
            self.echo(
                f"{watched.label}: reloading {model!r} failed, trying again in {RELOAD_RETRY_S:g} s: "
                f"{str(error).splitlines()[0]}"
            )
            return
        finally:
            watched.armed_for = None  # the instances changed: read what the server expects again
        watched.unrestored.pop(model, None)
        self.echo(f"{watched.label}: model {model!r} restored in {time.monotonic() - started:.1f} s")


def _reload_override(config_json: str) -> str:
    """The model's own config with RELOAD_PARAMETER set to now: a change Triton must reload for.

    Triton applies an override that differs only in instances or versions in place, keeping the instance whose stub
    is dead; any other change loads a new model in the background while the old one serves.
    """
    config = json.loads(config_json)
    config.setdefault("parameters", {})[RELOAD_PARAMETER] = {"string_value": f"{time.time():.6f}"}
    return json.dumps(config)


def _single_repositories(repositories: Sequence[Path]) -> tuple[Path, Path]:
    """(leaf repository, ensemble repository) of a served build: the one holding the manifest, then the other."""
    leaves = [path for path in repositories if (Path(path) / naming.MANIFEST_FILE).is_file()]
    leaf = Path(leaves[0] if leaves else repositories[0])
    others = [Path(path) for path in repositories if Path(path) != leaf]
    return leaf, others[0] if others else leaf


def serve_until_stopped(
    config: ServerConfig,
    *,
    timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    log_path: Path | None = None,
    echo: Echo = print,
) -> int | None:
    """`recgen serve`: start the server, wait until every model is ready, print the endpoints, supervise, stop.

    Returns the server's exit code; a model that fails to load raises ModelLoadError with the server's lines.
    """
    for stub in stub_health.remove_orphans():  # left by a server that died before (this user's only)
        echo(f"killed stub {stub.pid} of {stub.model!r}, left by a tritonserver that is gone")
    leaf_repository, ensemble_repository = _single_repositories(config.repositories)
    switch.prepare_to_serve(leaf_repository, ensemble_repository, config.repositories, echo)
    server = TritonServer(config, log_path=log_path)
    deployment = switch.SingleServer(server, leaf_repository, ensemble_repository)  # its server: the current one
    server.start()
    try:
        server.wait_until_ready(timeout_s=timeout_s)
        echo(f"tritonserver ready (log: {server.log_path})")
        echo(f"  HTTP     {server.http_url}\n  gRPC     {server.grpc_url}\n  metrics  {server.metrics_url}")
        for ensemble in ensemble_names(config.repositories):
            echo(f"  ensemble {ensemble}: POST http://{server.http_url}/v2/models/{ensemble}/infer")

        with control.listening(deployment, server.http_port, echo) as channel:
            echo("Supervised: a model whose stub dies or pauses is reloaded, a server that dies is restarted. "
                 "Ctrl-C to stop.")  # fmt: skip
            echo(f"`recgen update --http-port {server.http_port}` switches it to a new plan or new weights.")
            watched = Watched(
                "tritonserver", lambda: deployment.server, lambda: restart_single_server(deployment, timeout_s, echo)
            )
            Supervisor([watched], echo, control=channel).run()
    finally:
        server = deployment.server
        code = server.stop()
    if code:  # after a stub died, its instance never finishes unloading: tritonserver then exits 1 at its timeout
        echo(f"tritonserver stopped; it exited {code} as some model did not finish unloading (log: {server.log_path}).")
    else:
        server.close()  # a log of our own is removed after a clean stop
        echo("tritonserver stopped.")
    return code


def restart_single_server(deployment: switch.SingleServer, timeout_s: float, echo: Echo) -> None:
    """Start a server that died (a crash in a native step takes tritonserver with it) again, on the same ports.

    The dead server's log stays where it was, for the post-mortem; the new server writes a log of its own.
    """
    dead = deployment.server
    config = dataclasses.replace(
        dead.config, http_port=dead.http_port, grpc_port=dead.grpc_port, metrics_port=dead.metrics_port
    )
    deployment.server = TritonServer(config, log_path=None)
    echo(f"tritonserver: the dead server's log stays at {dead.log_path}; the new one logs to "
         f"{deployment.server.log_path}")  # fmt: skip
    deployment.server.start()
    deployment.server.wait_until_ready(timeout_s=timeout_s)


def ensemble_names(repositories: Sequence[Path]) -> list[str]:
    """The ensembles among the models of these repositories (what clients call)."""
    names = []
    for repository in repositories:
        for path in sorted(Path(repository).glob(f"*/{naming.CONFIG_FILE}")):
            if validation.parse_strict(path.read_text(), str(path)).platform == "ensemble":
                names.append(path.parent.name)
    return names
