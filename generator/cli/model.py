"""`recgen example`: the bundled example models."""

from __future__ import annotations

from pathlib import Path

import click

from generator.cli import options
from generator.model import dlrm


@click.command()
@options.out_file(help_text="Where to write the model file.", default=Path("example.pt"))
@click.option("--seed", type=int, default=0, show_default=True, help="Weight initialisation seed.")
@click.option("--tiny", is_flag=True, help="The tiny example (4 tables of 20 to 1,000 rows) the repository commits.")
@options.reports_errors
def example(out_path: Path, seed: int, tiny: bool) -> None:
    """Write the bundled example DLRM (8 tables of 1 to 200k rows), or the tiny one."""
    model = dlrm.tiny_example_model(seed) if tiny else dlrm.example_model(seed)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(out_path)
    click.echo(f"wrote {out_path}: {len(model.tables)} tables, {model.embedding_bytes():,} embedding bytes")
    for table in model.tables:
        click.echo(
            f"  {table.name:<16} rows {table.num_rows:>8}  dim {table.dim}  ids/sample {table.max_ids_per_sample}"
            f"  {table.side}-side"
        )
