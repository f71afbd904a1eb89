"""Benchmark: how long each model of a build takes to load, native lookup step against the Python models.

A new generation's load time (`bench.update`) is the slowest of its models' loads, measured under the clients' load.
This starts the embedded server on the example model's repositories built with each lookup engine, with nothing
else running, and reads every model's load from the server's own log (from `loading: <model>:1` to `successfully
loaded '<model>'`, Triton's timestamps), engines interleaved, the median of the rounds.

    python -m bench.load_times [--rounds 3] [--out runs/bench/load_times]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import re
import statistics
import tempfile
from pathlib import Path

from bench.report import write_report
from generator.deploy import server as serve
from generator.model.examples import example_model
from generator.planning import plan
from generator.repository import build

ENGINES: tuple[plan.LookupEngine, ...] = ("native", "python")
#: A Triton log line's timestamp (`I1207 06:20:00.123456 ...`); the day is the same within one start.
_STAMP = re.compile(r"^[IWE]\d{4} (\d\d):(\d\d):(\d\d\.\d+)")
_LOADING = re.compile(r"loading: (\S+):\d+")
_LOADED = re.compile(r"successfully loaded '([^']+)'")


def load_seconds(log_text: str) -> dict[str, float]:
    """Every model's load time in a server log: from its `loading:` line to its `successfully loaded` line."""
    started: dict[str, float] = {}
    took: dict[str, float] = {}
    for line in log_text.splitlines():
        stamp = _STAMP.match(line)
        if stamp is None:
            continue
        seconds = int(stamp.group(1)) * 3600 + int(stamp.group(2)) * 60 + float(stamp.group(3))
        if (loading := _LOADING.search(line)) is not None:
            started.setdefault(loading.group(1), seconds)
        elif (loaded := _LOADED.search(line)) is not None and loaded.group(1) in started:
            took[loaded.group(1)] = seconds - started[loaded.group(1)]
    return took


def run(rounds: int, workdir: Path) -> list[dict]:
    """Per engine and model, the median load seconds over `rounds` server starts (engines interleaved)."""
    model = example_model()
    repositories = {}
    for engine in ENGINES:
        the_plan = dataclasses.replace(plan.uniform_plan(model), lookup_engine=engine)
        repositories[engine] = build.build(model, the_plan, workdir / engine / "r", workdir / engine / "e").repositories
    measured: dict[tuple[str, str], list[float]] = {}
    for index in range(rounds):
        for engine in ENGINES:
            log = workdir / f"{engine}-{index}.log"
            with serve.running_server(repositories[engine], log_path=log):
                pass
            for name, seconds in load_seconds(log.read_text()).items():
                measured.setdefault((engine, name), []).append(seconds)
    return [
        {"engine": engine, "model": name, "load_s": statistics.median(values), "rounds": len(values)}
        for (engine, name), values in sorted(measured.items())
    ]


def markdown(cells: list[dict]) -> str:
    lines = ["| engine | model | load s (median) |", "|---|---|---|"]
    lines += [f"| {c['engine']} | {c['model']} | {c['load_s']:.3f} |" for c in cells]
    return "\n".join(lines)


def plot(cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.barh([f"{c['engine']}: {c['model']}" for c in cells], [c["load_s"] for c in cells])
    axis.set_xlabel("load time (s, median)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/load_times"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recgen-load-times-") as workdir:
        cells = run(args.rounds, Path(workdir))
    figures = {"date": datetime.date.today().isoformat(), "cells": cells}
    write_report(args.out, "load_times", markdown(cells), figures, lambda path: plot(cells, path))


if __name__ == "__main__":
    main()
