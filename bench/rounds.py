"""Rounds of a benchmark: an odd number of them, and the median round by one figure.

With an even number of rounds there is no middle round, and taking `sorted(runs)[len // 2]` reports the faster
of the two middle ones, so every benchmark takes an odd `--rounds` and reports the middle round.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TypeVar

Run = TypeVar("Run")


def odd_rounds(text: str) -> int:
    """argparse type of `--rounds`: an odd integer >= 1."""
    try:
        rounds = int(text)
    except ValueError:
        rounds = 0
    if rounds < 1 or rounds % 2 == 0:
        raise argparse.ArgumentTypeError(f"--rounds must be an odd integer >= 1 (1, 3, 5, ...), got {text!r}")
    return rounds


def median_round(runs: Sequence[Run], key: Callable[[Run], float]) -> Run:
    """The middle run by `key`; of an even number (which `odd_rounds` refuses), the lower of the two middle ones."""
    if not runs:
        raise ValueError("no runs to take the median of")
    ordered = sorted(runs, key=key)
    return ordered[(len(ordered) - 1) // 2]
