"""A distributed build served on this machine: one embedded server per shard-group replica, then the front.

Every server binds loopback ports of its own; the front learns its groups' endpoints through the environment
variables its remote steps read (`RECGEN_ENDPOINTS_<GROUP MODEL>`). This is what `recgen serve --distributed`
runs and what the distributed tests and benchmarks drill (`stop_replica`, `start_replica` on the same ports).
Under `recgen serve` every server is supervised (`watched`): a server that dies is started again on its own ports
with a backoff while the others keep serving, and a model whose stub breaks is reloaded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from generator import naming
from generator.deploy import control, switch
from generator.deploy.server import DEFAULT_READY_TIMEOUT_S, ServerConfig, TritonServer, free_ports
from generator.deploy.supervisor import Supervisor, Watched
from generator.deploy.topology import GroupDeployment, Topology
from generator.errors import UserInputError
from generator.repository import validation
from generator.repository.generation import PendingGeneration, check_pending, read_running, retire_groups
from generator.triton_models import recgen_params as params

#: Where `recgen serve --distributed DIR` keeps every server's log.
LOG_DIR = "logs"


class LocalTopology:
    """A distributed build on this machine: one tritonserver per shard-group replica, then the front server."""

    def __init__(self, root: Path, log_dir: Path | None = None, address: str = "127.0.0.1"):
        self.root = Path(root)
        self.topology = Topology.load(self.root)
        self.log_dir = log_dir
        if log_dir is not None:  # only for a valid topology
            log_dir.mkdir(parents=True, exist_ok=True)
        self.address = address
        count = sum(group.replica_servers for group in self.topology.groups) + 1
        # All ports in one call, so no two servers are handed the same free port.
        self._ports = iter(free_ports(3 * count, self._port_host))
        self.replicas: dict[str, list[TritonServer]] = self._group_servers(self.topology.groups)
        #: Replica servers of an update's new shard groups, between prepare and commit.
        self._pending: dict[str, list[TritonServer]] = {}
        self._pending_topology: Topology | None = None
        self._times: dict[str, Any] = {}
        environment = tuple(
            (group.endpoints_env, ",".join(server.grpc_url for server in self.replicas[group.model]))
            for group in self.topology.groups
        )
        self.front = self._server((self.root / self.topology.front.repository,), "front", environment)

    @property
    def _port_host(self) -> str:
        return self.address if self.address != "0.0.0.0" else "127.0.0.1"

    def _group_servers(self, groups: Sequence[GroupDeployment]) -> dict[str, list[TritonServer]]:
        """Server objects (not started) for every replica of `groups`."""
        return {
            group.model: [
                self._server((self.root / group.repository,), f"{group.model}-{i}")
                for i in range(group.replica_servers)
            ]
            for group in groups
        }

    def _server(
        self, repositories: tuple[Path, ...], label: str, environment: tuple[tuple[str, str], ...] = ()
    ) -> TritonServer:
        log_path = None if self.log_dir is None else self.log_dir / f"{label}.log"
        http, grpc, metrics = next(self._ports), next(self._ports), next(self._ports)
        config = ServerConfig(repositories, http, grpc, metrics, address=self.address, environment=environment)
        return TritonServer(config, log_path)

    def servers(self) -> list[TritonServer]:
        """Every replica server, then the front."""
        return [server for servers in self.replicas.values() for server in servers] + [self.front]

    def start(self, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> None:
        """Start every replica at once, wait for them within one deadline, then start the front and wait for it."""
        deadline = time.monotonic() + timeout_s
        try:
            for servers in self.replicas.values():
                for server in servers:
                    server.start()
            for servers in self.replicas.values():
                for server in servers:
                    server.wait_until_ready(timeout_s=max(1.0, deadline - time.monotonic()))
            self.front.start()
            self.front.wait_until_ready((self.topology.ensemble,), timeout_s=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def stop_replica(self, model: str, index: int) -> None:
        """Stop one replica server of a shard group (its ports stay reserved for `start_replica`)."""
        self.replicas[model][index].stop()

    def start_replica(self, model: str, index: int, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> None:
        """Start a stopped replica again on the same ports and wait until it is ready."""
        server = self._again(self.replicas[model][index])
        self.replicas[model][index] = server
        server.start()
        server.wait_until_ready(timeout_s=timeout_s)

    def start_front(self, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> None:
        """Start a stopped front again on the same ports and wait until its ensemble is ready."""
        self.front = self._again(self.front)
        self.front.start()
        self.front.wait_until_ready((self.topology.ensemble,), timeout_s=timeout_s)

    def _again(self, old: TritonServer) -> TritonServer:
        """A new server object for `old`'s ports and log (the old process must be gone)."""
        old.stop()
        config = dataclasses.replace(
            old.config, http_port=old.http_port, grpc_port=old.grpc_port, metrics_port=old.metrics_port
        )
        return TritonServer(config, None if self.log_dir is None else old.log_path)

    def watched(self) -> list[Watched]:
        """Every server for the supervisor, each restartable on its own ports."""
        watched = [
            Watched(
                f"{model}[{index}]",
                lambda model=model, index=index: self.replicas[model][index],  # type: ignore[misc]
                lambda model=model, index=index: self.start_replica(model, index),  # type: ignore[misc]
            )
            for model, servers in self.replicas.items()
            for index in range(len(servers))
        ]
        return [*watched, Watched("front", lambda: self.front, self.start_front)]

    def describe(self) -> dict[str, Any]:
        """Layout, model, generation and the front's URLs (`control.Deployment`)."""
        front = self.root / self.topology.front.repository
        running = read_running(front, front)
        return {
            "layout": "distributed",
            "root": str(self.root.resolve()),
            "model_name": running.model_name,
            "generation": running.generation,
            "http_url": self.front.http_url,
            "grpc_url": self.front.grpc_url,
        }

    def prepare(self, pending: PendingGeneration, echo: Callable[[str], None]) -> list[str]:
        """Start the new shard groups' servers, point the new remote steps at them, load the front's new models."""
        front = (self.root / self.topology.front.repository).resolve()
        check_pending(pending, read_running(front, front), front, self.root.resolve())
        new_topology = Topology.load(Path(pending.topology).parent)
        if new_topology.group_models() != list(pending.new_groups):
            raise UserInputError(f"{pending.topology} does not describe the groups the pending generation wrote")
        started = time.monotonic()
        self._ports = iter(free_ports(3 * sum(g.replica_servers for g in new_topology.groups), self._port_host))
        self._pending = self._group_servers(new_topology.groups)
        servers = [server for replicas in self._pending.values() for server in replicas]
        for server in servers:
            server.start()
        for server in servers:
            server.wait_until_ready(timeout_s=DEFAULT_READY_TIMEOUT_S)
        self._times = {"groups_started_s": time.monotonic() - started}
        echo(f"{len(servers)} replica server(s) of {len(self._pending)} new shard group(s) ready")
        for group, replicas in self._pending.items():
            point_remote_step(front / group, [server.grpc_url for server in replicas])
        self._pending_topology = new_topology
        candidates, self._times["load_s"] = switch.prepare(self.front, pending, echo)
        return candidates

    def commit(self, pending: PendingGeneration, echo: Callable[[str], None]) -> dict[str, Any]:
        """Switch the front, then stop the old groups' servers and remove their repositories."""
        times = switch.commit(self.front, pending, echo, self._times.get("load_s", 0.0)).to_dict()
        old = [server for model in pending.old_groups for server in self.replicas.pop(model, [])]
        for server in old:
            server.close()
        retire_groups(pending)
        echo(f"stopped {len(old)} replica server(s) of generation {pending.previous_generation}")
        self.replicas.update(self._pending)
        self._pending = {}
        if self._pending_topology is not None:
            self.topology = self._pending_topology
        return {**self._times, **times}

    def abort(self, pending: PendingGeneration, echo: Callable[[str], None]) -> None:
        """Undo prepare: the front's new models, then the new groups' servers and files."""
        switch.abort(self.front, pending, echo)
        for replicas in self._pending.values():
            for server in replicas:
                server.close()
        self._pending, self._pending_topology = {}, None

    def stop(self) -> None:
        """Stop the front first (no new remote calls), then every replica at once (each may wait its exit timeout)."""
        self.front.stop()
        replicas = [server for servers in self.replicas.values() for server in servers]
        with ThreadPoolExecutor(max_workers=max(1, len(replicas))) as pool:
            list(pool.map(TritonServer.stop, replicas))

    def close(self) -> None:
        """Stop everything and remove temporary logs."""
        self.stop()
        for server in [*self.servers(), *(s for replicas in self._pending.values() for s in replicas)]:
            server.close()

    def __enter__(self) -> LocalTopology:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __str__(self) -> str:
        lines = [
            f"front      {self.topology.ensemble!r}: http {self.front.http_url}, grpc {self.front.grpc_url}, "
            f"metrics {self.front.metrics_url}"
        ]
        for model, servers in self.replicas.items():
            for index, server in enumerate(servers):
                lines.append(f"{model}[{index}]: grpc {server.grpc_url}, metrics {server.metrics_url}")
        return "\n".join(lines)


def point_remote_step(model_dir: Path, endpoints: Sequence[str]) -> None:
    """Write the endpoints of a front's remote step into its config (servers started after the front was)."""
    config_path = model_dir / naming.CONFIG_FILE
    config = validation.parse_strict(config_path.read_text(), str(config_path))
    parameter = config.parameters[params.RemoteParams.PARAMETER]
    remote = params.RemoteParams.from_json(parameter.string_value)
    parameter.string_value = dataclasses.replace(remote, endpoints=tuple(endpoints)).to_json()
    validation.write_config(config, model_dir)


def serve_distributed(
    root: Path,
    *,
    address: str = "127.0.0.1",
    timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    echo: Callable[[str], None] = print,
) -> None:
    """`recgen serve --distributed`: start every replica and the front, print the endpoints, supervise, stop."""
    root = Path(root)
    log_dir = root / LOG_DIR
    front = root / naming.FRONT_DIR
    switch.prepare_to_serve(front, front, [front, *sorted((root / naming.GROUPS_DIR).glob("*"))], echo)
    with LocalTopology(root, log_dir=log_dir, address=address) as local:
        local.start(timeout_s=timeout_s)
        topology = local.topology
        echo(f"distributed topology of {topology.model_name!r} ready (logs: {log_dir})")
        echo(str(local))
        echo(f"  ensemble {topology.ensemble}: POST http://{local.front.http_url}/v2/models/{topology.ensemble}/infer")
        with control.listening(local, local.front.http_port, echo) as channel:
            echo("Supervised: a server that dies is restarted, a model whose stub breaks is reloaded. Ctrl-C to stop.")
            echo(f"`recgen update --http-port {local.front.http_port}` switches it to a new plan or new weights.")
            Supervisor(local.watched(), echo, control=channel, refresh=local.watched).run()
    echo("all servers stopped.")
