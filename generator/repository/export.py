"""Writes the model files of every generated model into its version directory.

Python-backend models get a real module from `generator.triton_models` (copied as model.py, with the helpers it
imports beside it) plus their data as .npy/.npz; ONNX models are exported with `torch.onnx.export`
(dynamic batch axis only, so ORT's exact output-shape check passes) and checked against PyTorch with ONNX Runtime
before the build goes on.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from generator import naming
from generator.errors import ExportError
from generator.model.dlrm import DLRM, NumpyTower, pool_rows
from generator.planning.choices import serves_natively
from generator.planning.plan import Model, Plan, ShardPlan, TablePlan
from generator.planning.precision import rounded_rank_rows, rounded_table_rows, with_rounded_rows
from generator.repository import native_models
from generator.repository.configs import LeafOptions
from generator.repository.layout import ensemble_inputs
from generator.repository.runtime_files import (
    MONOLITHIC_MODULE,
    ONNX_RUNNER_MODULE,
    ROUTER_MODULE,
    SHARD_MODULE,
    install_python_model,
)
from generator.repository.wiring import GroupWire, WireLayout
from generator.triton_models import recgen_rows

#: Exported ONNX graphs must match PyTorch this closely on a random batch.
ONNX_CHECK_ATOL = 1e-6
EXPORT_EXAMPLE_BATCH = 3
_BATCH_DIM = torch.export.Dim("batch", min=1, max=1 << 20)


#: Timestamp of every member of the .npz files a build writes, so the same model and plan give the same bytes.
_NPZ_DATE_TIME = (1980, 1, 1, 0, 0, 0)


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays as an uncompressed .npz (np.load reads it) whose bytes depend on the arrays only.

    `np.savez` stamps every member with the current time; a build is reproducible when its files are, which is
    what lets the repository commit a generated example and test that it does not drift.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=_NPZ_DATE_TIME)
            with archive.open(member, "w", force_zip64=True) as file:
                np.lib.format.write_array(file, np.asanyarray(array), allow_pickle=False)


def export_router(model: Model, plan: Plan, wire: WireLayout, version_dir: Path, *, pooled_rows: bool = True) -> None:
    """The router's code (or the native library), the rank maps of permuted tables, the front cache's rows.

    With a fused lookup step, also the stacked rows of the groups the router pools (`pooled_rows`: the flattened
    router holds them; the ranking router maps the same files).
    """
    if serves_natively(plan.lookup_engine, plan.router.device):
        native_models.install_library(version_dir.parent)
    else:
        install_python_model(ROUTER_MODULE, version_dir)
    for table in plan.tables:
        if (rank := table.rank_of_row()) is not None:
            np.save(version_dir / naming.router_ranks_file(table.spec.name), rank)
        if table.cached_rows:  # FP32, as the shards holding these ranks read them back
            cached = rounded_rank_rows(model, table, 0, table.cached_rows).astype(np.float32, copy=False)
            np.save(version_dir / naming.router_front_cache_file(table.spec.name), cached)
    tables = {table.spec.name: table for table in plan.tables}
    for wired in wire.pooled if pooled_rows else []:  # stacked, with the padding row, to be mapped
        group = wired.group
        stored = [stored_rows(model, tables[s.table], s) for s in group.shards]
        values, pairs = group_stacks(wired, stored)[:2]
        for index, stack in enumerate(values):
            np.save(version_dir / naming.router_rows_file(group.index, index), _with_padding_row(stack))
        for index, stack in enumerate(pairs):
            np.save(version_dir / naming.router_scales_file(group.index, index), _with_padding_row(stack))


def _with_padding_row(stack: np.ndarray) -> np.ndarray:
    """A stack and its trailing zero row (the row -1 ids gather; an int8 pair (0, 0) reads back as zeros)."""
    return np.concatenate([stack, np.zeros((1, stack.shape[1]), dtype=stack.dtype)])


StoredRows = tuple[np.ndarray, np.ndarray | None]


def stored_rows(model: Model, table: TablePlan, shard: ShardPlan) -> StoredRows:
    """One shard's rows as its row dtype stores them: (values, None), or int8's (codes, scale_offset)."""
    try:
        return recgen_rows.encode(shard_rows(model, table, shard), shard.row_dtype)
    except ValueError as error:
        raise ExportError(f"table {table.spec.name!r} shard {shard.index} as {shard.row_dtype}: {error}") from error


def shard_rows(model: Model, table: TablePlan, shard: ShardPlan) -> np.ndarray:
    """The rows one shard holds, in hotness-rank order."""
    weight = model.rows_of(table.spec.name).detach().cpu().numpy()
    if table.row_order is None:  # identity order: a view, so writing a shard copies nothing
        return np.ascontiguousarray(weight[shard.row_start : shard.row_end], dtype=np.float32)
    original = table.original_rows()[shard.row_start : shard.row_end]
    return np.ascontiguousarray(weight[original], dtype=np.float32)


def pool_stored_rows(
    values: torch.Tensor, scale_offset: torch.Tensor | None, ids: torch.Tensor, id_weights: torch.Tensor | None
) -> torch.Tensor:
    """`pool_rows` over fp16 rows or int8 row-wise codes: Gather, Cast to FP32, (Mul, Add by the row's pair), sum."""
    present = ids >= 0
    safe = torch.where(present, ids, torch.zeros_like(ids))
    rows = nn.functional.embedding(safe, values).to(torch.float32)
    if scale_offset is not None:
        pairs = nn.functional.embedding(safe, scale_offset)
        rows = rows * pairs[..., 0:1] + pairs[..., 1:2]
    scale = present.to(torch.float32) if id_weights is None else torch.where(present, id_weights, 0.0)
    return (rows * scale.unsqueeze(-1)).sum(dim=1)


class ShardGroupGraph(nn.Module):
    """The ONNX graph of a shard group: packed row ids in, per slot the pool of its block out.

    FP32 rows pool as `pool_rows`; fp16 rows and int8 codes (with `scale_offsets`) are read back in the graph.
    """

    def __init__(
        self,
        stacks: Sequence[np.ndarray],
        slot_columns: Sequence[tuple[int, int]],
        slot_stacks: Sequence[int],
        scale_offsets: Sequence[np.ndarray] = (),
    ):
        super().__init__()
        self.stacks = nn.ParameterList([nn.Parameter(torch.from_numpy(rows), requires_grad=False) for rows in stacks])
        self.pairs = nn.ParameterList(
            [nn.Parameter(torch.from_numpy(pairs), requires_grad=False) for pairs in scale_offsets]
        )
        self.slots = list(zip(slot_columns, slot_stacks, strict=True))

    def _pool(self, stack: int, ids: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        values = self.stacks[stack]
        if values.dtype == torch.float32:
            return pool_rows(values, ids, weights)
        return pool_stored_rows(values, self.pairs[stack] if len(self.pairs) else None, ids, weights)

    def forward(self, packed_ids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """[B, width] int32 row ids into the stacked rows (-1 skipped) -> [B, sum of slot widths] partial sums.

        `weights` [B, width]: every id's weight, given when the group pools a weighted feature.
        """
        ids = packed_ids.to(torch.int64)
        pools = [
            self._pool(stack, ids[:, first:last], None if weights is None else weights[:, first:last])
            for (first, last), stack in self.slots
        ]
        return torch.cat(pools, 1)


def group_stacks(
    wired: GroupWire, stored: Sequence[StoredRows]
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """The members' stored rows stacked per row width (as the group's wire numbers them), and every slot's stack.

    The int8 (scale, offset) pairs are stacked the same way ([] unless the group is int8).
    """
    group, group_layout = wired.group, wired.columns
    widths = group_layout.stack_widths
    values = [np.concatenate([v for v, _ in stored if v.shape[1] == width]) for width in widths]
    pairs = [
        np.concatenate([p for v, p in stored if p is not None and v.shape[1] == width])
        for width in widths
        if group.row_dtype == "int8"
    ]
    return values, pairs, group_layout.slot_stacks


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[io.StringIO]:
    """Capture the exporter's progress prints, warnings and log lines (about internals, not the user's model)."""
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as progress:
            warnings.simplefilter("ignore")
            yield progress
    finally:
        onnx_logger.setLevel(level)


def export_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    names: Sequence[str],
    output_names: str | Sequence[str],
    path: Path,
    *,
    varargs_after: int | None = None,
    dynamic_shapes: Any = None,
) -> None:
    """Export with a dynamic batch axis on every input, then check ORT against PyTorch on the example.

    `varargs_after`: the forward takes `*args` from this position on (their dynamic shapes nest as one tuple).
    `dynamic_shapes`: torch.export's own, instead of a batch axis on every input.
    """
    if dynamic_shapes is None:
        per_input: list[object] = [{0: _BATCH_DIM} for _ in example]
        dynamic_shapes = (
            tuple(per_input)
            if varargs_after is None
            else (*per_input[:varargs_after], tuple(per_input[varargs_after:]))
        )
    # The exporter prints progress and warns about internals that are not the user's business.
    with _quiet_exporter() as progress:
        try:
            torch.onnx.export(
                module,
                example,
                str(path),
                input_names=list(names),
                output_names=[output_names] if isinstance(output_names, str) else list(output_names),
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                external_data=False,
            )
        except Exception as error:  # the exporter raises many types; all mean "this graph did not export"
            raise ExportError(
                f"torch.onnx.export failed for {path.parent.parent.name}: {error}\n{progress.getvalue()}"
            ) from error
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: tensor.numpy() for name, tensor in zip(names, example, strict=True)})
    with torch.no_grad():
        result = module(*example)
    expected = [t.numpy() for t in (result if isinstance(result, tuple) else (result,))]
    for got_array, expected_array in zip(got, expected, strict=True):
        if got_array.shape != expected_array.shape or not np.allclose(
            got_array, expected_array, atol=ONNX_CHECK_ATOL, rtol=0
        ):
            difference = np.abs(got_array - expected_array).max()
            raise ExportError(f"exported {path} differs from PyTorch (max |diff| {difference:.3g})")


def export_shard_group(model: Model, plan: Plan, wired: GroupWire, leaves: LeafOptions, version_dir: Path) -> None:
    """A shard group's rows, as one .npy per shard (python, or the native engine) or one model.onnx (onnx)."""
    group, tables = wired.group, {table.spec.name: table for table in plan.tables}
    stored = [stored_rows(model, tables[s.table], s) for s in group.shards]
    native = serves_natively(plan.lookup_engine, group.placement.device)
    if leaves.backend == "python" or native:
        if native:  # the same rows files, read by recgen's backend
            native_models.install_library(version_dir.parent)
        else:
            install_python_model(SHARD_MODULE, version_dir)
        for shard, (values, scale_offset) in zip(group.shards, stored, strict=True):
            np.save(version_dir / naming.shard_rows_file(shard.table, shard.index), values)
            if scale_offset is not None:
                np.save(version_dir / naming.shard_scales_file(shard.table, shard.index), scale_offset)
        return
    group_layout = wired.columns
    stacks, pairs, slot_stacks = group_stacks(wired, stored)
    generator = torch.Generator().manual_seed(0)
    example = torch.cat(
        [
            torch.randint(-1, len(stacks[stack]), (EXPORT_EXAMPLE_BATCH, last - first), generator=generator)
            for (first, last), stack in zip(group_layout.columns, slot_stacks, strict=True)
        ],
        dim=1,
    ).to(torch.int32)
    inputs, output = wired.inputs, wired.partial_sums
    examples = (example,) if len(inputs) == 1 else (example, torch.rand(example.shape, generator=generator) * 2)
    export_onnx(
        ShardGroupGraph(stacks, group_layout.columns, slot_stacks, pairs).eval(),
        examples,
        [spec.name for spec in inputs],
        output.name,
        version_dir / naming.ONNX_MODEL_FILE,
    )
    if leaves.target == "embedded":
        install_python_model(ONNX_RUNNER_MODULE, version_dir)


def export_dense_weights(tower: NumpyTower, module: str, version_dir: Path) -> None:
    """A numpy dense model: its module and the tower's weights as dense.npz."""
    install_python_model(module, version_dir)
    save_npz(version_dir / naming.DENSE_WEIGHTS_FILE, dict(tower.weights))


class MonolithicGraph(nn.Module):
    """The ONNX graph of the whole DLRM: dense features and one id tensor per table in, score out."""

    def __init__(self, model: DLRM):
        super().__init__()
        self.model = model

    def forward(self, dense_features: torch.Tensor, *sparse: torch.Tensor) -> torch.Tensor:
        """Score [B, 1] from dense features [B, D] and ids [B, L] per table (model order)."""
        return self.model.dense(
            dense_features,
            [pool_rows(self.model.embeddings[t.name], ids) for t, ids in zip(self.model.tables, sparse, strict=True)],
        )


def export_monolithic(model: DLRM, plan: Plan, leaves: LeafOptions, version_dir: Path) -> None:
    """The whole model: every table's rows and the dense weights (python), or one ONNX graph (onnx)."""
    if leaves.backend == "python":
        export_dense_weights(model.numpy_tower(), MONOLITHIC_MODULE, version_dir)
        for table in plan.tables:  # FP32, each row as its shard reads it back (the model the ensemble serves)
            np.save(version_dir / naming.table_rows_file(table.spec.name), rounded_table_rows(model, table))
        return
    generator = torch.Generator().manual_seed(0)
    inputs = ensemble_inputs(plan, model.num_dense_features)
    example = [torch.randn(EXPORT_EXAMPLE_BATCH, model.num_dense_features, generator=generator)]
    example += [
        torch.randint(-1, t.spec.num_rows, (EXPORT_EXAMPLE_BATCH, t.spec.max_ids_per_sample), generator=generator)
        for t in plan.tables
    ]
    export_onnx(
        MonolithicGraph(cast(DLRM, with_rounded_rows(model, plan))).eval(),
        tuple(example),
        [spec.name for spec in inputs],
        naming.SCORE,
        version_dir / naming.ONNX_MODEL_FILE,
        varargs_after=1,
    )
    if leaves.target == "embedded":
        install_python_model(ONNX_RUNNER_MODULE, version_dir)


def directory_bytes(path: Path) -> int:
    """Total size of the files under `path`."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
