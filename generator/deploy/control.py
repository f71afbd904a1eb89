"""The control channel between `recgen serve` and `recgen update`: a Unix socket only the user can open.

Model control on a served deployment belongs to the process that started it: `recgen serve` holds each server's
admin key (never written anywhere) and supervises the models, so it is also the one that switches them. It
listens on `socket_path(http_port)`, inside a directory of mode 0700 owned by the user (`$XDG_RUNTIME_DIR/recgen`
or `~/.cache/recgen/run`), named after the HTTP port clients call. `recgen update` connects, and the two exchange
one JSON object per line:

    -> {"command": "describe"}                      <- {"ok": true, "deployment": {...}}
    -> {"command": "prepare", "pending": PATH}      <- {"progress": "..."} ...  {"ok": true, "candidates": [...]}
    -> {"command": "commit"}                        <- {"progress": "..."} ...  {"ok": true, "times": {...}}
    -> {"command": "abort", "reason": "..."}        <- {"ok": true}
    -> {"command": "ping"}                          (no answer: the client is working, e.g. checking candidates)

A failed step answers {"ok": false, "error": "..."} after undoing itself. A session that ends, or says nothing for
`SESSION_IDLE_S` between two commands, is dropped, and a generation it prepared but did not switch to is removed:
the old generation keeps serving. Sessions run one at a time on a worker thread of their own, so the supervisor never
pauses: it leaves alone the models a session is changing (`changing`) and handles every other fault as usual; a
second `recgen update` meanwhile is refused. Closing the server ends the session at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from generator.cache import cache_dir
from generator.errors import RecgenError, ServerUnreachableError, UpdateError, UserInputError
from generator.repository.generation import PendingGeneration
from generator.triton_models import recgen_runtime

#: Seconds a session may say nothing between two commands (the client pings every PING_S while it works).
SESSION_IDLE_S = 20.0
PING_S = 5.0
#: How long a new session waits for the one that runs to end before it is refused (seconds).
HANDOFF_S = 5.0
#: Seconds the client waits for an answer (loading a generation's models may take minutes).
ANSWER_TIMEOUT_S = 600.0
#: Seconds closing the server waits for a session to undo what it prepared.
CLOSE_WAIT_S = 15.0
_SOCKET_NAME = "serve-{port}.sock"

Echo = Callable[[str], None]


class Deployment(Protocol):
    """What `recgen serve` runs, as the control channel switches it (a single server, or the local topology)."""

    def describe(self) -> dict[str, Any]:
        """Layout, model, generation, repositories and the URLs clients call."""

    def prepare(self, pending: PendingGeneration, echo: Echo) -> list[str]:
        """Bring the pending generation up beside the running one; returns the candidate ensembles."""

    def commit(self, pending: PendingGeneration, echo: Echo) -> dict[str, Any]:
        """Switch to the prepared generation and retire the old one; returns the times of each phase."""

    def abort(self, pending: PendingGeneration, echo: Echo) -> None:
        """Undo prepare."""


def runtime_dir() -> Path:
    """The user's private directory for control sockets: `$XDG_RUNTIME_DIR/recgen`, else in recgen's cache folder.

    Not a predictable name under /tmp, which another user could take first. Created 0700; refused, with what to do,
    if it is not the user's own and closed to others.
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    directory = Path(base) / "recgen" if base else cache_dir() / "run"
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        return recgen_runtime.private_folder(directory)
    except recgen_runtime.UnsafeFolderError as error:
        raise UserInputError(str(error)) from error


def socket_path(http_port: int) -> Path:
    """The control socket of the `recgen serve` whose clients call HTTP port `http_port` on this machine."""
    return runtime_dir() / _SOCKET_NAME.format(port=http_port)


def _send(stream: Any, message: Mapping[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


class ControlServer:
    """Accepts `recgen update` sessions and runs each on a thread of its own, one at a time."""

    def __init__(self, path: Path, deployment: Deployment, echo: Echo = print):
        self.path = Path(path)
        self.deployment = deployment
        self.echo = echo
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._sessions: queue.Queue[socket.socket | None] = queue.Queue()
        self._busy = False
        # One worker runs every session for serve's whole life: servers a session starts get PR_SET_PDEATHSIG,
        # which Linux ties to the thread that started them, so a thread per session would stop them as it ends.
        self._worker: threading.Thread | None = None
        self._connection: socket.socket | None = None
        self._changing: frozenset[str] = frozenset()
        self._changed = threading.Event()
        #: Sessions that ended (tests wait on it).
        self.sessions_done = 0

    def start(self) -> None:
        """Listen (a stale socket of a serve that is gone is replaced; a live one is an error)."""
        if self.path.exists():
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(str(self.path))
                raise UserInputError(f"another `recgen serve` already listens on {self.path}")
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        self.path.chmod(0o600)
        listener.listen(4)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, name="recgen-control", daemon=True)
        self._thread.start()
        self._worker = threading.Thread(target=self._work, name="recgen-update", daemon=True)
        self._worker.start()

    def _work(self) -> None:
        while (connection := self._sessions.get()) is not None:
            self._run_session(connection)

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None:
            try:
                connection, _ = listener.accept()
            except OSError:
                return  # closed
            if not self._admit(connection, wait_s=0.0):
                threading.Thread(target=self._admit_or_refuse, args=(connection,), daemon=True).start()

    def _admit(self, connection: socket.socket, wait_s: float) -> bool:
        """Make `connection` the session if none runs, waiting up to `wait_s` for the running one to end."""
        with self._freed:
            if self._busy:
                self._freed.wait_for(lambda: not self._busy, timeout=wait_s)
            if self._busy:
                return False
            self._busy, self._connection = True, connection
            self._sessions.put(connection)
            return True

    def _admit_or_refuse(self, connection: socket.socket) -> None:
        """A session that comes while another runs: admitted if that one ends within HANDOFF_S, refused otherwise.

        `recgen update` reads the running settings in one session and updates in the next: the first may still be
        ending on serve's side when the second connects. Two updates at once are still refused.
        """
        if self._admit(connection, wait_s=HANDOFF_S):
            return
        with connection, contextlib.suppress(OSError):
            connection.settimeout(SESSION_IDLE_S)
            stream = connection.makefile("rw", encoding="utf-8")
            stream.readline()
            _send(stream, {"ok": False, "error": "another `recgen update` is in progress; try again after it"})

    def _run_session(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(SESSION_IDLE_S)
            try:
                self._session(connection)
            finally:
                with self._freed:
                    self._connection, self._changing, self._busy = None, frozenset(), False
                    self.sessions_done += 1
                    self._freed.notify_all()
                self._changed.set()

    def changing(self) -> frozenset[str]:
        """The models a session is loading, switching or unloading now: the supervisor leaves them alone."""
        return self._changing

    def take_changed(self) -> bool:
        """Whether a session ended since the last call (the servers to watch may have changed)."""
        changed = self._changed.is_set()
        self._changed.clear()
        return changed

    def _in_flux(self, pending: PendingGeneration, *, switching: bool) -> None:
        names = {*pending.new_leaves, *(pending.candidate(name) for name in pending.ensembles)}
        if switching:
            names |= {*pending.ensembles, *pending.old_leaves}
        self._changing = frozenset(names)

    def _session(self, connection: socket.socket) -> None:
        stream = connection.makefile("rw", encoding="utf-8")
        prepared: PendingGeneration | None = None

        def progress(line: str) -> None:
            self.echo(f"update: {line}")
            with contextlib.suppress(OSError):
                _send(stream, {"progress": line})

        try:
            for line in stream:
                request = json.loads(line)
                command = request.get("command") if isinstance(request, dict) else None
                try:
                    if command == "ping":
                        continue
                    if command == "describe":
                        _send(stream, {"ok": True, "deployment": self.deployment.describe()})
                    elif command == "prepare" and prepared is None:
                        pending = PendingGeneration.load(Path(str(request.get("pending"))))
                        self._in_flux(pending, switching=False)
                        candidates = self._prepare(pending, progress)
                        prepared = pending
                        _send(stream, {"ok": True, "candidates": candidates})
                    elif command == "commit" and prepared is not None:
                        pending, prepared = prepared, None
                        self._in_flux(pending, switching=True)
                        _send(stream, {"ok": True, "times": self.deployment.commit(pending, progress)})
                    elif command == "abort" and prepared is not None:
                        pending, prepared = prepared, None
                        progress(f"aborted by recgen update: {request.get('reason', 'no reason given')}")
                        self.deployment.abort(pending, progress)
                        _send(stream, {"ok": True})
                    else:
                        _send(stream, {"ok": False, "error": f"unexpected command {command!r} at this point"})
                except RecgenError as error:
                    _send(stream, {"ok": False, "error": str(error)})
        except (OSError, ValueError) as error:
            self.echo(f"update: the session ended ({type(error).__name__}: {error})")
        finally:
            if prepared is not None:
                self.echo(f"update: the session ended before the switch; removing generation {prepared.generation}")
                self.deployment.abort(prepared, self.echo)
            with contextlib.suppress(OSError):
                stream.close()

    def _prepare(self, pending: PendingGeneration, progress: Echo) -> list[str]:
        try:
            return self.deployment.prepare(pending, progress)
        except BaseException:
            self.deployment.abort(pending, progress)
            raise

    def close(self) -> None:
        """Stop listening, remove the socket, and end a running session at once (it removes what it prepared)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
            self.path.unlink(missing_ok=True)
        with self._lock:
            connection, worker = self._connection, self._worker
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._sessions.put(None)
        if worker is not None:
            worker.join(timeout=CLOSE_WAIT_S)


class ControlClient:
    """`recgen update`'s end of the channel."""

    def __init__(self, path: Path, echo: Echo = print, timeout_s: float = ANSWER_TIMEOUT_S):
        self.path = Path(path)
        self.echo = echo
        self._write_lock = threading.Lock()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.settimeout(timeout_s)
        try:
            self._socket.connect(str(self.path))
        except OSError as error:
            self._socket.close()
            raise ServerUnreachableError(
                f"no `recgen serve` listens on {self.path} ({error.strerror or error}): `recgen update` switches a "
                "deployment that `recgen serve` runs on this machine; pass its --http-port"
            ) from error
        self._stream = self._socket.makefile("rw", encoding="utf-8")

    def request(self, command: str, **fields: Any) -> dict[str, Any]:
        """Send one command, echo its progress, return its answer; a refusal raises UpdateError."""
        try:
            with self._write_lock:
                _send(self._stream, {"command": command, **fields})
            for line in self._stream:
                answer = json.loads(line)
                if "progress" in answer:
                    self.echo(str(answer["progress"]))
                    continue
                if not answer.get("ok"):
                    raise UpdateError(str(answer.get("error", "refused")))
                return dict(answer)
        except OSError as error:
            reason = f" ({error})"
        else:
            reason = ""
        raise UpdateError(
            f"`recgen serve` closed the control channel during {command!r}{reason}: it stopped, or its server died "
            "(its output says which)"
        )

    @contextlib.contextmanager
    def keepalive(self) -> Iterator[None]:
        """Ping every PING_S while the block works, so that serve does not drop the session as silent."""
        done = threading.Event()

        def ping() -> None:
            while not done.wait(PING_S):
                with self._write_lock, contextlib.suppress(OSError, ValueError):
                    _send(self._stream, {"command": "ping"})

        thread = threading.Thread(target=ping, name="recgen-update-ping", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=PING_S + 1)

    def close(self) -> None:
        """End the session (a prepared, uncommitted generation is then removed by serve)."""
        with contextlib.suppress(OSError):
            self._stream.close()
        self._socket.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def listening(deployment: Deployment, http_port: int, echo: Echo = print) -> Iterator[ControlServer]:
    """A started ControlServer on the socket of `http_port`, closed when the block ends."""
    server = ControlServer(socket_path(http_port), deployment, echo)
    server.start()
    try:
        yield server
    finally:
        server.close()
