"""Shared fixtures: small DLRM shapes, and real embedded servers that dump their log when a test fails."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from generator.deploy import installation
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
        installation.tritonserver_binary()
    except Exception:
        return False
    return True


#: Marks a test that needs the embedded server: it is skipped without one and, by the hook below, marked `server`.
SERVER_REASON = "embedded tritonserver not installed"
requires_server = pytest.mark.skipif(not embedded_server_available(), reason=SERVER_REASON)
#: Fixtures that start real servers: a test using one is a `server` test whatever its marks say.
SERVER_FIXTURES = frozenset({"server_factory", "served", "supervised", "topology"})


def _starts_servers(item: pytest.Item) -> bool:
    needs = any(mark.kwargs.get("reason") == SERVER_REASON for mark in item.iter_markers("skipif"))
    return needs or bool(SERVER_FIXTURES & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every real-server test `server` from its marks and fixtures, and run the fast tier first.

    A unit failure then stops a `-x` run in seconds, and `-m "not server"` is the fast tier exactly.
    """
    for item in items:
        if _starts_servers(item) and item.get_closest_marker("server") is None:
            item.add_marker(pytest.mark.server)
    items.sort(key=lambda item: item.get_closest_marker("server") is not None)  # stable: file order within a tier


@pytest.fixture(autouse=True)
def _no_unmarked_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test not marked `server` that starts one fails, so the fast tier stays fast."""
    if request.node.get_closest_marker("server") is not None:
        return

    def refuse(self: serve.TritonServer) -> None:
        raise AssertionError(f"{request.node.nodeid} starts a tritonserver: mark it `server` (or use requires_server)")

    monkeypatch.setattr(serve.TritonServer, "start", refuse)


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
