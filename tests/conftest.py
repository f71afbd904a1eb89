"""Shared fixtures: small DLRM shapes, and real embedded servers that dump their log when a test fails."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from generator.deploy import server as serve
from generator.model.dlrm import DLRM, TableSpec
from generator.repository.build import BuildResult

#: One deadline for a server and all its models to become ready.
SERVER_READY_TIMEOUT_S = 240.0


def tiny_model() -> DLRM:
    """A 1-row table, a table smaller than the shard count, and single-id tables."""
    tables = [
        TableSpec("one_row", 1, 8, 1),
        TableSpec("small", 7, 8, 3),
        TableSpec("medium", 1000, 8, 1),
    ]
    return DLRM(num_dense_features=5, tables=tables, bottom_mlp=[16, 8], top_mlp=[8, 1], seed=1).eval()


def wide_model() -> DLRM:
    """Long multi-hot lists, narrow rows, one dense feature, a deeper top MLP."""
    tables = [TableSpec("history", 5000, 4, 12), TableSpec("tiny", 3, 4, 2)]
    return DLRM(num_dense_features=1, tables=tables, bottom_mlp=[4], top_mlp=[16, 4, 1], seed=2).eval()


def embedded_server_available() -> bool:
    try:
        serve.tritonserver_binary()
    except Exception:
        return False
    return True


requires_server = pytest.mark.skipif(not embedded_server_available(), reason="embedded tritonserver not installed")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _failed(node: pytest.Item) -> bool:
    return any(
        getattr(node, f"rep_{when}", None) is not None and getattr(node, f"rep_{when}").failed
        for when in ("setup", "call")
    )


@contextlib.contextmanager
def serving(repositories: Sequence[Path], log_path: Path) -> Iterator[serve.TritonServer]:
    """Serve repositories on free loopback ports until the block ends."""
    with serve.running_server(repositories, timeout_s=SERVER_READY_TIMEOUT_S, log_path=log_path) as server:
        yield server


@pytest.fixture
def server_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[BuildResult | Sequence[Path]], serve.TritonServer]]:
    """Start servers (of a build, or of repositories) for a test; always stopped, logs printed if the test failed."""
    stack = contextlib.ExitStack()
    logs: list[Path] = []

    def start(served: BuildResult | Sequence[Path]) -> serve.TritonServer:
        log_path = tmp_path / f"tritonserver-{len(logs)}.log"
        logs.append(log_path)
        repositories = served.repositories if isinstance(served, BuildResult) else served
        return stack.enter_context(serving(repositories, log_path))

    with stack:
        yield start
    if _failed(request.node):
        for log in logs:
            if log.exists():
                sys.stderr.write(f"\n===== {log} =====\n{log.read_text(errors='replace')[-20000:]}\n")
