"""Load tests: profile-shaped ranking requests, and `recgen loadtest` around headless locust.

This module never imports locust (importing it monkey-patches the process for gevent); the locust users live in
`generator.check.locust_users` and run in a locust subprocess. What a request looks like is learned from the
server (`traffic.sampler`), so a load test needs only a URL (a profile makes ids and pooling lengths follow
recorded traffic).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from generator import naming, triton_runtime
from generator.check.client import Protocol, RankingClient
from generator.errors import RecgenError, UserInputError
from generator.model.features import max_ids_items
from generator.traffic.profile import AccessProfile
from generator.traffic.sampler import RequestSampler, sampler_from_metadata

#: Name prefix of the locust CSV files written under the output directory.
CSV_PREFIX = "locust"
LOCUSTFILE = "locust_users.py"
#: Per-second history the locust users write (`--history-csv`).
HISTORY_FILE = "history.csv"
HISTORY_COLUMNS = ("second", "requests", "failures", "p50_ms", "p95_ms", "p99_ms")


def sampler_from_server(client: RankingClient, profile: AccessProfile | None = None) -> RequestSampler:
    """Learn the request shape from the served ensemble (either protocol) and optionally a profile."""
    try:
        metadata = client.metadata()
        router_config = client.model_config(client.router_model())
    except Exception as error:  # tritonclient raises its own exception types per protocol
        raise RecgenError(f"cannot read the metadata of {client.model_name!r}: {error}") from error
    try:  # the ranking ensemble exists only for models with user-side features
        ranking: dict[str, Any] | None = client.metadata(naming.ranking_ensemble(client.model_name))
    except Exception:  # tritonclient raises its own "not found" per protocol
        ranking = None
    return sampler_from_metadata(client.model_name, metadata, router_config, ranking, profile)


@dataclass(frozen=True)
class LoadTestSummary:
    """What a load test achieved."""

    url: str
    protocol: str
    ensemble: str
    users: int
    batch_size: int
    duration_s: float
    requests: int
    failures: int
    requests_per_s: float
    samples_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    #: Failures that were the server shedding load (counted in `failures` too).
    rejections: int = 0

    @property
    def errors(self) -> int:
        """Failures that were not rejections: wrong scores, request errors, broken connections."""
        return self.failures - self.rejections

    def to_markdown(self) -> str:
        """A one-row markdown table."""
        return (
            "| url | protocol | users | batch | requests | rejected | errors | requests/s | samples/s | p50 ms | "
            "p95 ms | p99 ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
            f"| {self.url} | {self.protocol} | {self.users} | {self.batch_size} | {self.requests} | "
            f"{self.rejections} | {self.errors} | {self.requests_per_s:.1f} | {self.samples_per_s:,.0f} | "
            f"{self.p50_ms:.1f} | {self.p95_ms:.1f} | {self.p99_ms:.1f} |\n"
        )

    def __str__(self) -> str:
        return (
            f"{self.requests} requests ({self.rejections} shed by the server, {self.errors} errors) in "
            f"{self.duration_s:.0f} s to {self.ensemble!r} over "
            f"{self.protocol}: {self.requests_per_s:.1f} requests/s, {self.samples_per_s:,.0f} samples/s, "
            f"p50 {self.p50_ms:.1f} ms, p95 {self.p95_ms:.1f} ms, p99 {self.p99_ms:.1f} ms"
        )


def locustfile_path() -> Path:
    """The locust file shipped in the package (loadtest/locustfile.py re-exports the same users)."""
    return Path(str(resources.files("generator.check").joinpath(LOCUSTFILE)))


def _spot_check_options(
    model_path: Path,
    every: int,
    max_ids: Mapping[str, int] | None,
    plan_path: Path | None,
    row_dtypes: Sequence[str],
) -> list[str]:
    """The locust options that spot-check responses against the model (its rows rounded as the build rounded them)."""
    options = ["--model", str(model_path), "--spot-check-every", str(every or 50)]
    options += ["--max-ids", _max_ids_option(max_ids)] if max_ids else []
    options += ["--plan", str(plan_path)] if plan_path is not None else []
    return options + (["--row-dtype", ",".join(row_dtypes)] if row_dtypes else [])


def run_loadtest(
    url: str,
    out_dir: Path,
    *,
    protocol: Protocol = "http",
    ensemble: str = "dlrm",
    users: int = 4,
    spawn_rate: float = 4.0,
    run_time: str = "60s",
    batch_size: int = 64,
    profile_path: Path | None = None,
    model_path: Path | None = None,
    spot_check_every: int = 0,
    timeout_s: float | None = None,
    structured: bool = False,
    max_ids: Mapping[str, int] | None = None,
    plan_path: Path | None = None,
    row_dtypes: Sequence[str] = (),
) -> LoadTestSummary:
    """Run headless locust against `url` (host:port of the protocol) and summarise its CSV output into `out_dir`.

    `structured`: send ranking requests (one user, `batch_size` candidates) to `<ensemble>_ranking`. `plan_path`
    and `row_dtypes`: the build's, so that spot checks compare with the model whose rows it rounded.
    """
    if users < 1 or spawn_rate <= 0 or batch_size < 1:
        raise UserInputError("`users` and `batch` must be >= 1 and `spawn_rate` > 0")
    out_dir.mkdir(parents=True, exist_ok=True)
    locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or shutil.which("locust")
    if locust is None:
        raise RecgenError("locust is not installed (pip install locust)")
    command = [
        locust, "-f", str(locustfile_path()), "--headless",
        "-u", str(users), "-r", str(spawn_rate), "-t", run_time, "--stop-timeout", "10",
        "--host", url, "--csv", str(out_dir / CSV_PREFIX), "--html", str(out_dir / "report.html"),
        "--history-csv", str(out_dir / HISTORY_FILE),
        "--ensemble", ensemble, "--protocol", protocol, "--batch", str(batch_size),
    ]  # fmt: skip
    if profile_path is not None:
        command += ["--profile", str(profile_path)]
    if model_path is not None:
        command += _spot_check_options(model_path, spot_check_every, max_ids, plan_path, row_dtypes)
    if structured:
        command += ["--structured"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    (out_dir / "locust.log").write_text(completed.stdout + completed.stderr)
    stats_path = out_dir / f"{CSV_PREFIX}_stats.csv"
    if not stats_path.exists():
        raise RecgenError(f"locust wrote no statistics (exit {completed.returncode}):\n{completed.stderr[-3000:]}")
    called = naming.ranking_ensemble(ensemble) if structured else ensemble
    summary = summarise(out_dir, url=url, protocol=protocol, ensemble=called, users=users, batch_size=batch_size)
    if summary.requests == 0:
        raise RecgenError(
            f"locust sent no request; its log ({out_dir / 'locust.log'}) ends with:\n"
            f"{(completed.stdout + completed.stderr)[-3000:]}"
        )
    (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    (out_dir / "summary.md").write_text(summary.to_markdown())
    plot_history(out_dir / HISTORY_FILE, out_dir / "throughput_latency.png", batch_size)
    return summary


def _max_ids_option(max_ids: Mapping[str, int]) -> str:
    """`--max-ids` for the locust users: FEATURE=L items and a bare default L, comma-separated."""
    return ",".join(max_ids_items(max_ids))


def _aggregated_row(stats_path: Path) -> dict[str, str]:
    with stats_path.open() as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        if row["Name"] == "Aggregated":
            return row
    raise RecgenError(f"{stats_path} has no Aggregated row")


def count_rejections(failures_path: Path) -> int:
    """Occurrences in locust's `<prefix>_failures.csv` whose error is a queue-policy rejection."""
    if not failures_path.exists():
        return 0
    with failures_path.open() as file:
        return sum(
            int(row["Occurrences"])
            for row in csv.DictReader(file)
            if any(message in row["Error"] for message in triton_runtime.REJECTION_MESSAGES)
        )


def _number(text: str) -> float:
    return float("nan") if text in ("", "N/A") else float(text)


def summarise(out_dir: Path, *, url: str, protocol: str, ensemble: str, users: int, batch_size: int) -> LoadTestSummary:
    """Read locust's `<prefix>_stats.csv` (totals, percentiles) and our per-second history (duration)."""
    row = _aggregated_row(out_dir / f"{CSV_PREFIX}_stats.csv")
    history = _read_history(out_dir / HISTORY_FILE)
    duration_s = float(history[-1]["second"]) - float(history[0]["second"]) + 1 if history else 0.0
    requests_per_s = _number(row["Requests/s"])
    return LoadTestSummary(
        url=url,
        protocol=protocol,
        ensemble=ensemble,
        users=users,
        batch_size=batch_size,
        duration_s=duration_s,
        requests=int(row["Request Count"]),
        failures=int(row["Failure Count"]),
        requests_per_s=requests_per_s,
        samples_per_s=requests_per_s * batch_size,
        p50_ms=_number(row["50%"]),
        p95_ms=_number(row["95%"]),
        p99_ms=_number(row["99%"]),
        mean_ms=_number(row["Average Response Time"]),
        rejections=count_rejections(out_dir / f"{CSV_PREFIX}_failures.csv"),
    )


def _read_history(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open() as file:
        return list(csv.DictReader(file))


def plot_history(history_path: Path, png_path: Path, batch_size: int) -> Path:
    """PNG of throughput (samples/s) and p50/p95/p99 latency per second of the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_history(history_path)
    # The first and last seconds are partial; drop them when there is more to show.
    rows = rows[1:-1] if len(rows) > 4 else rows

    def column(name: str) -> np.ndarray:
        return np.array([_number(row[name]) for row in rows])

    seconds = column("second") - (column("second")[0] if rows else 0)
    figure, (throughput, latency) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    throughput.plot(seconds, column("requests") * batch_size, color="tab:blue", marker=".")
    throughput.set_ylabel("samples/s")
    throughput.set_title(f"throughput and latency per second ({batch_size} candidates per request)")
    for name, color in (("p50_ms", "tab:green"), ("p95_ms", "tab:orange"), ("p99_ms", "tab:red")):
        latency.plot(seconds, column(name), label=name.split("_")[0], color=color, marker=".")
    latency.set_ylabel("latency, ms")
    latency.set_xlabel("seconds")
    latency.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return png_path
