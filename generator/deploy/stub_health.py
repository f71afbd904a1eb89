"""Whether every Python-backend stub of a Triton server is alive: the check Triton 2.51 does not make itself.

A Python-backend instance is a stub process. In Triton 2.51 a stub that dies or is paused breaks its model for
good: every later request fails with "Stub process '<instance>' is not healthy", the backend never restarts it
(the restart path of older releases is gone), and health and model readiness still answer 200. A stub paused and
then continued can even abort the whole server on its next request. So a broken stub must be found from outside:
this module reads `/proc` for the stubs of a server and compares them with the instances the server's model
configs ask for.

It uses the standard library only: `recgen serve` imports it to supervise its servers, and the Kubernetes
manifests run this same file (from a ConfigMap) as the exec readiness and liveness probe inside the Triton image,
`python3 stub_health.py --port 8000`, which exits 1 naming every broken model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: File name of the Python-backend stub executable.
STUB_EXECUTABLE = "triton_python_backend_stub"
#: /proc states of a stub that will never answer again: zombie, dead, stopped (SIGSTOP) or traced.
BROKEN_STATES = {"Z": "dead", "X": "dead", "T": "paused", "t": "paused"}
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class StubProcess:
    """One stub process: its pid, the model whose `model.py` it runs, and its /proc state letter.

    `parent` is its parent now, `server` the server that started it (from its arguments), `region` its
    shared-memory region in /dev/shm: a stub whose parent is no longer its server is an orphan (its server died).
    """

    pid: int
    model: str
    state: str
    parent: int = 0
    server: int = 0
    region: str = ""

    @property
    def orphaned(self) -> bool:
        """Whether the server that started it is gone (the stub was handed to another parent)."""
        return self.server != 0 and self.parent != self.server

    @property
    def broken(self) -> bool:
        """Whether this stub can no longer serve (dead or paused)."""
        return self.state in BROKEN_STATES


def stat_fields(stat: str) -> list[str]:
    """The fields of /proc/PID/stat after the command name, which sits in parentheses and may hold spaces.

    [0] is the state letter, [1] the parent pid, [11] and [12] user and system CPU in clock ticks.
    """
    return stat[stat.rindex(")") + 2 :].split()


def stub_processes(parent_pid: int | None = None, proc: Path = Path("/proc")) -> list[StubProcess]:
    """Every Python-backend stub on this machine (or only the children of `parent_pid`, one server's)."""
    stubs = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            fields = stat_fields((entry / "stat").read_text())
            state, ppid = fields[0], int(fields[1])
        except (OSError, ValueError):  # gone meanwhile, or not ours to read
            continue
        if not argv[0].endswith(STUB_EXECUTABLE.encode()) or len(argv) < 2:
            continue
        if parent_pid is not None and ppid != parent_pid:
            continue
        # argv: stub, <repository>/<model>/<version>/model.py, shm region, shm size, growth, server pid, ...
        model = Path(argv[1].decode(errors="replace")).parent.parent.name
        server = int(argv[5]) if len(argv) > 5 and argv[5].isdigit() else 0
        region = argv[2].decode(errors="replace") if len(argv) > 2 else ""
        stubs.append(StubProcess(int(entry.name), model, state, ppid, server, region))
    return stubs


def remove_orphans(proc: Path = Path("/proc"), shm: Path = Path("/dev/shm")) -> list[StubProcess]:
    """Kill this user's stubs whose server died, and remove their shared-memory regions; returns them.

    Such a stub ignores SIGTERM and keeps its region (4 MB or more) and the dead server's listening sockets.
    """
    orphans = [stub for stub in stub_processes(proc=proc) if stub.orphaned]
    removed = []
    for stub in orphans:
        try:
            if (proc / str(stub.pid)).stat().st_uid != os.geteuid():
                continue
            os.kill(stub.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
        if stub.region and "/" not in stub.region:
            with contextlib.suppress(OSError):
                region = shm / stub.region
                if region.stat().st_uid == os.geteuid():
                    region.unlink()
        removed.append(stub)
    return removed


def broken_models(expected: Mapping[str, int], stubs: Sequence[StubProcess]) -> dict[str, str]:
    """Models whose stubs are not all alive, each with the reason (dead, paused, or missing stubs)."""
    broken: dict[str, str] = {}
    for stub in stubs:
        if stub.broken and stub.model in expected:
            broken[stub.model] = f"stub pid {stub.pid} is {BROKEN_STATES[stub.state]}"
    for model, count in expected.items():
        alive = sum(1 for stub in stubs if stub.model == model and not stub.broken)
        if model not in broken and alive < count:
            broken[model] = f"{alive} of its {count} stub(s) alive"
    return broken


def _get_json(url: str, timeout_s: float) -> object:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def expected_stubs(http_url: str, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, int]:
    """Stub processes each loaded Python-backend model should have, from the server's own configs.

    `http_url` is host:port. Only ready models count (statistics list them); ensembles and models of other
    backends have no stubs.
    """
    stats = _get_json(f"http://{http_url}/v2/models/stats", timeout_s)
    entries = stats.get("model_stats", []) if isinstance(stats, dict) else []
    names = sorted({str(entry["name"]) for entry in entries})
    expected = {}
    for name in names:
        config = _get_json(f"http://{http_url}/v2/models/{name}/config", timeout_s)
        if not isinstance(config, dict) or config.get("backend") != "python":
            continue
        expected[name] = sum(int(group.get("count", 1)) for group in config.get("instance_group", []))
    return expected


def _answers_200(url: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def server_ready(http_url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the server answers 200 on its readiness endpoint."""
    return _answers_200(f"http://{http_url}/v2/health/ready", timeout_s)


def model_ready(http_url: str, model: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the server answers 200 on `model`'s readiness endpoint (404 when it is not loaded)."""
    return _answers_200(f"http://{http_url}/v2/models/{model}/ready", timeout_s)


def probe(http_url: str, parent_pid: int | None = None, models: Sequence[str] = ()) -> list[str]:
    """What is wrong with the server at `http_url` and its stubs; empty when it is ready and every stub is alive.

    `models` must be loaded and ready too: Triton's own readiness still answers 200 after a model was unloaded.
    """
    if not server_ready(http_url):
        return [f"the server at {http_url} is not ready"]
    unloaded = [model for model in models if not model_ready(http_url, model)]
    if unloaded:
        return [f"model {model!r} is not loaded and ready" for model in unloaded]
    try:
        expected = expected_stubs(http_url)
    except (urllib.error.URLError, OSError, ValueError) as error:
        return [f"cannot read the models of {http_url}: {error}"]
    broken = broken_models(expected, stub_processes(parent_pid))
    return [f"model {model!r}: {reason}" for model, reason in sorted(broken.items())]


def _listening_inodes(port: int, proc: Path) -> set[str]:
    """Socket inodes listening on TCP `port` (IPv4 and IPv6), from /proc/net/tcp*."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (proc / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "0A":  # 0A: LISTEN
                    inodes.add(fields[9])
    return inodes


def listening_pid(port: int, proc: Path = Path("/proc")) -> int | None:
    """The process of this user that listens on TCP `port`, or None when none of ours does.

    The probe then looks only at that server's stubs: another server on the host may run stubs of models with
    the same names, alive while this one's are dead.
    """
    sockets = {f"socket:[{inode}]" for inode in _listening_inodes(port, proc)}
    if not sockets:
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for descriptor in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(descriptor) in sockets:
                        return int(entry.name)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Exec probe: exit 0 when the local server is ready and every stub is alive, else print why and exit 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8000, help="the server's HTTP port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", action="append", default=[], help="a model that must be ready (repeatable)")
    args = parser.parse_args(argv)
    problems = probe(f"{args.host}:{args.port}", listening_pid(args.port), models=args.model)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
