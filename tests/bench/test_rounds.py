import argparse

import pytest

from bench.rounds import median_round, odd_rounds


def test_rounds_must_be_odd_and_positive() -> None:
    assert odd_rounds("3") == 3
    for bad in ("2", "0", "-1", "three"):
        with pytest.raises(argparse.ArgumentTypeError, match="odd integer"):
            odd_rounds(bad)


def test_median_round_is_the_middle_run_not_the_faster_of_two() -> None:
    runs = [{"r": 5.0}, {"r": 1.0}, {"r": 3.0}]
    assert median_round(runs, key=lambda run: run["r"]) == {"r": 3.0}
    assert median_round([{"r": 4.0}, {"r": 1.0}, {"r": 2.0}, {"r": 3.0}], key=lambda run: run["r"]) == {"r": 2.0}
    with pytest.raises(ValueError, match="no runs"):
        median_round([], key=lambda run: run["r"])
