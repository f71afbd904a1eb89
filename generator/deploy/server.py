"""Run the embedded tritonserver 2.51 (from the nvidia-pytriton wheel) on a generated repository.

Where the server and its backend come from, and the environment it runs with, is `installation`'s business. The
server gets free loopback ports unless told otherwise, one readiness deadline shared by server and models, its
whole log in a file, and a SIGINT-then-SIGKILL stop; with PR_SET_PDEATHSIG it dies with its parent. Model control
is explicit and, with the shared-memory, logging and trace APIs, behind a key drawn for each server (`admin_key`):
only recgen's supervisor (`supervisor`) may unload and load models.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from generator import triton_runtime
from generator.cache import private_cache_dir
from generator.deploy import admin_key
from generator.deploy.installation import (
    prepare_backend_dir,
    server_environment,
    tritonserver_binary,
)
from generator.errors import ModelLoadError, ServerError
from generator.triton_models import recgen_admission as admission

#: Seconds the server gets to load every model and report ready.
DEFAULT_READY_TIMEOUT_S = 180.0
#: Seconds between SIGINT and SIGKILL when stopping.
STOP_GRACE_S = 30.0
_PR_SET_PDEATHSIG = 1
_ERROR_LINE = re.compile(r"^E\d{4} |error: |failed to load|Internal - ")
#: Error lines every GPU-less start prints; they say nothing about why a server failed.
_NO_GPU_NOISE = re.compile(r"CUDA driver version is insufficient|CudaDriverHelper|NVML|DCGM|pinned memory")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports nothing listens on right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_answers(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass(frozen=True)
class ServerConfig:
    """How to start the embedded server; ports of 0 are replaced by free ones."""

    repositories: tuple[Path, ...]
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    address: str = "127.0.0.1"
    log_verbose: int = 0
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    #: Extra environment variables of the server and its model stubs (e.g. a front server's shard endpoints).
    environment: tuple[tuple[str, str], ...] = ()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # Whatever the server and its stubs create (the Python backend's shared-memory regions, the routers' files)
    # is private to this user.
    os.umask(0o077)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class TritonServer:
    """One embedded tritonserver process: start(), wait_until_ready(), stop().

    Example:
        >>> server = TritonServer(ServerConfig((Path("model_repository"), Path("ensembles"))))  # doctest: +SKIP
        >>> server.start(); server.wait_until_ready(); print(server.http_url); server.stop()  # doctest: +SKIP

    `running_server` wraps the same steps in a context manager.

    """

    def __init__(self, config: ServerConfig, log_path: Path | None = None):
        self.config = config
        self._own_log = log_path is None
        # Named now, created by start(): a server that never starts leaves no file behind.
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"tritonserver-{uuid.uuid4().hex[:12]}.log"
        self.process: subprocess.Popen[bytes] | None = None
        ports = free_ports(3, config.address if config.address != "0.0.0.0" else "127.0.0.1")
        self.http_port = config.http_port or ports[0]
        self.grpc_port = config.grpc_port or ports[1]
        self.metrics_port = config.metrics_port or ports[2]
        #: Unlocks the restricted APIs of this server only; never printed, written anywhere or put on its command
        #: line (`admin_key`: the flags carry a placeholder, the environment the key).
        self.admin_key = secrets.token_urlsafe(24)
        self._key_argument: str = self.admin_key
        self._key_environment: dict[str, str] = {}

    @property
    def client_host(self) -> str:
        """Host a local client connects to."""
        return "127.0.0.1" if self.config.address in ("0.0.0.0", "") else self.config.address

    @property
    def http_url(self) -> str:
        """host:port of the HTTP endpoint."""
        return f"{self.client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """host:port of the gRPC endpoint."""
        return f"{self.client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """URL of the Prometheus metrics."""
        return f"http://{self.client_host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        """The full tritonserver command line."""
        args = [str(tritonserver_binary())]
        args += [f"--model-repository={path.resolve()}" for path in self.config.repositories]
        args += [
            f"--backend-directory={prepare_backend_dir()}",
            f"--http-address={self.config.address}",
            f"--grpc-address={self.config.address}",
            f"--metrics-address={self.config.address}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            *triton_runtime.server_flags(gpu=False),
            *triton_runtime.supervised_flags(self._key_argument),
            # No GPU here by default: skip the DCGM probes that only print noise.
            "--allow-gpu-metrics=false",
            f"--log-verbose={self.config.log_verbose}",
            *self.config.extra_args,
        ]
        return args

    def start(self) -> None:
        """Start the process (does not wait for readiness; see wait_until_ready)."""
        for repository in self.config.repositories:
            if not repository.is_dir():
                raise ServerError(f"model repository {repository} does not exist; run `recgen build` first")
        busy = [
            port for port in (self.http_port, self.grpc_port, self.metrics_port) if port_answers(self.client_host, port)
        ]
        if busy:
            raise ServerError(f"port(s) {busy} on {self.client_host} already answer; is another server running?")
        self._key_argument, self._key_environment = admin_key.hidden_key_environment(
            self.admin_key, private_cache_dir()
        )
        log = os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**server_environment(), **self.own_environment(), **dict(self.config.environment)},
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()

    def own_environment(self) -> dict[str, str]:
        """What this server's stubs must know of it: where its metrics are (the routers shed load by them)."""
        return {admission.METRICS_URL_ENV: self.metrics_url, **self._key_environment}

    def logs(self) -> str:
        """Everything the server printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def error_lines(self) -> list[str]:
        """The server's own error lines (Triton prefixes them with E<date>)."""
        return [
            line for line in self.logs().splitlines() if _ERROR_LINE.search(line) and not _NO_GPU_NOISE.search(line)
        ]

    def _get(self, path: str, timeout_s: float = 1.0) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=timeout_s) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except (urllib.error.URLError, OSError):
            return 0

    def model_ready(self, model: str) -> bool:
        """Whether the server says `model` is ready."""
        return self._get(f"/v2/models/{model}/ready") == 200

    def _admin_post(self, path: str, timeout_s: float, body: bytes = b"{}") -> bytes:
        request = urllib.request.Request(
            f"http://{self.http_url}{path}",
            data=body,
            method="POST",
            headers={triton_runtime.ADMIN_HEADER: self.admin_key},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return bytes(response.read())

    def admin(self, action: str, model: str, timeout_s: float = 60.0, *, config_override: str | None = None) -> None:
        """`load` or `unload` a model through the restricted model-repository API; ServerError if refused.

        With `config_override` (the model's config as Triton's JSON) a load reloads a model whose files did not
        change: Triton skips a plain load of an unchanged model, and keeps the loaded version serving until the new
        one is ready.
        """
        body = b"{}" if config_override is None else json.dumps({"parameters": {"config": config_override}}).encode()
        try:
            self._admin_post(f"/v2/repository/models/{model}/{action}", timeout_s, body)
            return
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as error:
            detail = str(error)
        raise ServerError(f"tritonserver at {self.http_url} refused to {action} {model!r}: {detail}")

    def model_states(self, timeout_s: float = 10.0) -> dict[str, set[str]]:
        """Every model the repositories hold and the states of its versions (READY, UNLOADING, UNAVAILABLE...)."""
        try:
            index = json.loads(self._admin_post("/v2/repository/index", timeout_s))
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise ServerError(f"tritonserver at {self.http_url} did not list its models: {error}") from error
        states: dict[str, set[str]] = {}
        for entry in index:
            states.setdefault(str(entry["name"]), set()).add(str(entry.get("state", "")))
        return states

    def ready_models(self, timeout_s: float = 10.0) -> set[str]:
        """The models with a version that is ready now."""
        return {name for name, states in self.model_states(timeout_s).items() if "READY" in states}

    def model_config_json(self, model: str, timeout_s: float = 10.0) -> str:
        """The config a loaded model runs with, as Triton's JSON (what a load's config override takes)."""
        url = f"http://{self.http_url}/v2/models/{model}/config"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as answer:
                return str(answer.read().decode())
        except (urllib.error.URLError, OSError) as error:
            raise ServerError(f"tritonserver at {self.http_url} gave no config of {model!r}: {error}") from error

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return None if self.exited or self.process is None else self.process.pid

    @property
    def exited(self) -> bool:
        """Whether the process is gone (never started, stopped, or died)."""
        return self.process is None or self.process.poll() is not None

    def exit_report(self, when: str) -> str:
        """Why the server is gone: its exit code and its own error lines (its last words if a signal killed it)."""
        code = None if self.process is None else self.process.returncode
        lines = "\n".join(self.error_lines()[-20:])
        how = f"with code {code}"
        if code is not None and code < 0:  # killed by a signal: name it, and its own last words matter more
            how = f"on signal {_signal_name(-code)}"
            last = "\n".join(line for line in self.logs()[-3000:].splitlines() if not _NO_GPU_NOISE.search(line))
            lines = f"{lines}\n--- last lines of {self.log_path} ---\n{last}"
        return f"tritonserver exited {how} {when} (log: {self.log_path}):\n{lines or self.logs()[-4000:]}"

    def wait_until_ready(self, models: Sequence[str] = (), timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> None:
        """Block until the server and every named model are ready, all within one deadline."""
        deadline = time.monotonic() + timeout_s
        pending = ["/v2/health/ready", *(f"/v2/models/{model}/ready" for model in models)]
        while pending:
            if self.exited:
                raise ModelLoadError(self.exit_report("before it was ready"))
            if self._get(pending[0]) == 200:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise ServerError(
                    f"tritonserver was not ready within {timeout_s:.0f} s (waiting for {pending[0]}); "
                    f"log: {self.log_path}"
                )
            time.sleep(0.1)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGINT, wait up to `grace_s`, then SIGKILL; returns the exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def close(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the server and remove the log if we created it."""
        self.stop(grace_s)
        if self._own_log:
            self.log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def running_server(
    repositories: Sequence[Path],
    *,
    models: Sequence[str] = (),
    timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    log_path: Path | None = None,
    environment: Mapping[str, str] | None = None,
    stop_grace_s: float = STOP_GRACE_S,
) -> Iterator[TritonServer]:
    """Start a server on free loopback ports, wait until `models` are ready, always stop it.

    Without `log_path` the log goes to a temporary file, removed after a clean run and kept when the server failed
    to come up (the raised error quotes it). `environment` adds variables for the server and its stubs;
    `stop_grace_s` is how long the stop waits after SIGINT before SIGKILL.
    """
    config = ServerConfig(tuple(Path(path) for path in repositories), environment=tuple((environment or {}).items()))
    server = TritonServer(config, log_path=log_path)
    server.start()
    try:
        server.wait_until_ready(models, timeout_s)
    except BaseException:
        server.stop()  # keep the log for the post-mortem; its path is in the error
        raise
    try:
        yield server
    finally:
        server.close(stop_grace_s)
