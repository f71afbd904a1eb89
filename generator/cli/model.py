"""`recgen example` (the bundled example models) and `recgen import-dlrm` (a facebookresearch/dlrm checkpoint)."""

from __future__ import annotations

from pathlib import Path

import click

from generator.cli import options
from generator.model import dlrm_net, examples


@click.command()
@options.out_file(help_text="Where to write the model file.", default=Path("example.pt"))
@click.option("--seed", type=int, default=0, show_default=True, help="Weight initialisation seed.")
@click.option("--tiny", is_flag=True, help="The tiny example (4 tables of 20 to 1,000 rows) the repository commits.")
@options.reports_errors
def example(out_path: Path, seed: int, tiny: bool) -> None:
    """Write the bundled example DLRM (8 tables of 1 to 200k rows), or the tiny one."""
    model = examples.tiny_example_model(seed) if tiny else examples.example_model(seed)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(out_path)
    click.echo(f"wrote {out_path}: {len(model.tables)} tables, {model.embedding_bytes():,} embedding bytes")
    for table in model.tables:
        click.echo(
            f"  {table.name:<16} rows {table.num_rows:>8}  dim {table.dim}  ids/sample {table.max_ids_per_sample}"
            f"  {table.side}-side"
        )


@click.command("import-dlrm")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--arch-sparse-feature-size", type=click.IntRange(1), required=True, help="Embedding width (all tables).")
@click.option("--arch-embedding-size", required=True, help='Rows per table, e.g. "1460-583-10131227".')
@click.option("--arch-mlp-bot", required=True, help='Bottom MLP widths with the input, e.g. "13-512-256-64".')
@click.option("--arch-mlp-top", required=True, help='Top MLP widths without the interaction, e.g. "512-256-1".')
@click.option("--arch-interaction-op", type=click.Choice(dlrm_net.INTERACTIONS), default="dot", show_default=True)
@click.option("--arch-interaction-itself", is_flag=True, help="The dot interaction keeps the gram matrix's diagonal.")
@click.option("--weighted-pooling", is_flag=True, help="The checkpoint has learned per-row weights (v_W_l).")
@click.option("--loss-threshold", type=float, default=0.0, show_default=True, help="Output clamp, as in training.")
@click.option(
    "--sigmoid-top",
    type=int,
    default=None,
    help="DLRM_Net's sigmoid_top: the top MLP layer (from 0) a sigmoid follows, -1 for none (DLRM_Net's own "
    "default) [default: the last layer, as dlrm_s_pytorch.py builds it].",
)
@options.max_ids
@options.out_file(help_text="Where to write the program (.pt2) that build, plan and check take.")
@options.reports_errors
def import_dlrm(
    checkpoint: Path,
    arch_sparse_feature_size: int,
    arch_embedding_size: str,
    arch_mlp_bot: str,
    arch_mlp_top: str,
    arch_interaction_op: str,
    arch_interaction_itself: bool,
    weighted_pooling: bool,
    loss_threshold: float,
    sigmoid_top: int | None,
    max_ids: dict[str, int],
    out_path: Path,
) -> None:
    """Turn a facebookresearch/dlrm checkpoint into a program file, with dlrm_s_pytorch.py's architecture flags."""
    arch = dlrm_net.DlrmNetArchitecture.from_flags(
        arch_sparse_feature_size=arch_sparse_feature_size,
        arch_embedding_size=arch_embedding_size,
        arch_mlp_bot=arch_mlp_bot,
        arch_mlp_top=arch_mlp_top,
        arch_interaction_op=arch_interaction_op,
        arch_interaction_itself=arch_interaction_itself,
        weighted_pooling=weighted_pooling,
        loss_threshold=loss_threshold,
        sigmoid_top=sigmoid_top,
    )
    imported = dlrm_net.import_dlrm_checkpoint(checkpoint, arch, max_ids=max_ids)
    imported.save(out_path)
    click.echo(str(imported))
    click.echo(f"wrote {out_path}: build it with `recgen build --model {out_path}`")
