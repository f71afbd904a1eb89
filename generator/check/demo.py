"""The end-to-end demo behind the README's first command: example model to served, checked scores."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from generator import naming
from generator.check import client
from generator.deploy import server as serve
from generator.model import examples
from generator.planning import plan
from generator.repository import build, settings
from generator.repository.configs import Backend


@dataclass(frozen=True)
class DemoReport:
    """The checks the demo ran, one per ensemble and protocol."""

    checks: tuple[client.CheckReport, ...]

    @property
    def passed(self) -> bool:
        """Whether every protocol returned scores within tolerance."""
        return all(report.passed for report in self.checks)


def run_demo(
    workdir: Path,
    *,
    backend: Backend = "python",
    shards_per_table: int = 2,
    requests: int = 5,
    batch_size: int = 256,
    echo: Callable[[str], None] = print,
) -> DemoReport:
    """Write the example model, build its repository, serve it, check both ensembles over HTTP and gRPC, stop."""
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    model_path = workdir / "example.pt"
    model = examples.example_model()
    model.save(model_path)
    echo(
        f"[1/4] wrote the example model {model_path} ({len(model.tables)} tables, "
        f"{model.embedding_bytes():,} embedding bytes)"
    )
    uniform = plan.uniform_plan(model, shards_per_table=shards_per_table)
    the_plan, notes = settings.with_default_engine(uniform, "embedded")  # native where it was built
    for note in notes:
        echo(f"note: {note}")
    result = build.build(
        model, the_plan, workdir / "model_repository", workdir / "ensembles", backend=backend, force=True
    )
    echo(f"[2/4] built the repository\n{result}")
    with serve.running_server(result.repositories, log_path=workdir / "tritonserver.log") as server:
        echo(f"[3/4] tritonserver ready: HTTP {server.http_url}, gRPC {server.grpc_url} (log: {server.log_path})")
        ensembles = [(result.ensemble_name, False)]
        if model.supports_ranking_requests:  # one user + N candidates, user features sent and computed once
            ensembles.append((naming.ranking_ensemble(the_plan.model_name), True))
        endpoints: tuple[tuple[client.Protocol, str], ...] = (("http", server.http_url), ("grpc", server.grpc_url))
        checks = tuple(
            client.check(
                model,
                url,
                protocol=protocol,
                model_name=name,
                requests=requests,
                batch_size=batch_size,
                structured=structured,
            )
            for name, structured in ensembles
            for protocol, url in endpoints
        )
        for report in checks:
            echo(f"[4/4] {report}")
    echo(f"server stopped; demo took {time.monotonic() - started:.1f} s")
    return DemoReport(checks)
