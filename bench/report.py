"""Where a benchmark's results go: the table it printed (`.md`), its figures (`.json`) and its plot (`.png`).

Every benchmark ends the same way, so that the three files of a run always sit side by side under one stem.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_report(out: Path, stem: str, table: str, figures: object, plot: Callable[[Path], None]) -> None:
    """Print `table`, then write `<out>/<stem>.md`, `.json` (`figures`) and `.png` (drawn by `plot`)."""
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(figures, indent=2) + "\n")
    (out / f"{stem}.md").write_text(table + "\n")
    plot(out / f"{stem}.png")
    print(f"wrote {out}/{stem}.json, {stem}.md, {stem}.png")


def save_figure(figure: Any, path: Path) -> None:
    """Lay out, write and close a matplotlib figure (every benchmark's plot ends so)."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
