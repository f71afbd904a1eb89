"""Bring your own model: a module (with example inputs) or a `torch.export` program, cut at its embedding bags.

`import_module` exports the module twice: once as given, to learn which inputs are ids, offsets, KJT fields and
dense features, then with a dynamic batch (and dynamic id counts) from inputs recgen makes itself, so no batch size
is baked into the graph. `import_program` takes a program exported elsewhere (it must have a dynamic batch).
The result, `ImportedModel`, holds the tables (their rows, with learned per-row weights folded in), the features,
the dense inputs and outputs, the dense remainder, and the original program as the reference that
`recgen check` compares with, fed each request in the module's own input form (`module_inputs`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from generator import naming
from generator.errors import ModelImportError, UserInputError
from generator.model.cut import cut_program
from generator.model.dlrm import PADDING_ID, TableSpec
from generator.model.features import FeatureSpec
from generator.model.program import Cut, LeafPath, Lookup, spec_children

#: Ids per sample of a feature unless `max_ids` says otherwise.
DEFAULT_MAX_IDS = 32
_BATCH = torch.export.Dim("batch", min=1, max=1 << 20)
_EXPORT_BATCH = 4


@dataclass
class ImportedModel:
    """A model cut at its lookups: what the repository serves, and the program it must agree with."""

    cut: Cut
    program: torch.export.ExportedProgram
    features: list[FeatureSpec]
    tables: list[TableSpec]
    embeddings: dict[str, torch.Tensor]  # served rows per table (per-row weights folded in, padding row zeroed)
    reference: nn.Module = field(repr=False)

    @property
    def lookups(self) -> list[Lookup]:
        """One per feature, in the remainder's input order."""
        return self.cut.lookups

    @property
    def dense_inputs(self) -> list[tuple[str, int]]:
        """The request's dense tensors: (name, width)."""
        return [(dense.name, dense.width) for dense in self.cut.dense_inputs]

    @property
    def outputs(self) -> list[tuple[str, tuple[int, ...]]]:
        """The model's outputs: (name, per-sample dims)."""
        return self.cut.outputs

    def save(self, path: str | Path) -> Path:
        """Write the program (`.pt2`, dynamic batch) that `recgen build --model` and `load_model` read."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with quiet_tracing():
            torch.export.save(self.program, path)
        return path

    def embedding_bytes(self) -> int:
        """Bytes of all served rows (fp32)."""
        return sum(table.num_rows * table.bytes_per_row for table in self.tables)

    def __str__(self) -> str:
        lines = [f"imported model: {len(self.tables)} tables, {len(self.features)} sparse features"]
        for table in self.tables:
            readers = [f.name for f in self.features if f.table == table.name]
            lines.append(f"  table {table.name}: {table.num_rows:,} rows x {table.dim}, features {', '.join(readers)}")
        for feature, lookup in zip(self.features, self.lookups, strict=True):
            lines.append(
                f"  feature {naming.sparse_input(feature.name)} [B, {feature.max_ids_per_sample}] -> {feature.table} "
                f"({feature.pooling}{', per-row weights folded' if lookup.row_weights else ''}; {lookup.module})"
            )
        lines.append("  dense inputs: " + ", ".join(f"{name} [B, {width}]" for name, width in self.dense_inputs))
        lines.append(
            "  outputs: " + ", ".join(f"{name} [B, {', '.join(map(str, dims))}]" for name, dims in self.outputs)
        )
        return "\n".join(lines)

    def module_inputs(self, request: Mapping[str, np.ndarray]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The module's own (args, kwargs) for a request in recgen's contract."""
        return module_inputs(self.cut, request)

    def reference_outputs(self, request: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """What the original program returns for a request, one array per output."""
        with torch.no_grad(), quiet_tracing():
            args, kwargs = self.module_inputs(request)
            result = self.reference(*args, **kwargs)
        return [np.asarray(t.detach().cpu().numpy(), dtype=np.float32) for t in pytree.tree_leaves(result)]

    def pooled(self, request: Mapping[str, np.ndarray]) -> list[torch.Tensor]:
        """Each feature's pool from the served rows, as the shard steps and the dense step compute it."""
        pools = []
        for feature in self.features:
            ids = torch.from_numpy(np.asarray(request[naming.sparse_input(feature.name)], dtype=np.int64))
            present = ids >= 0
            rows = nn.functional.embedding(torch.where(present, ids, 0), self.embeddings[feature.table])
            total = (rows * present.unsqueeze(-1)).sum(dim=1)
            if feature.pooling == "mean":
                total = total / present.sum(dim=1, keepdim=True).clamp(min=1)
            pools.append(total)
        return pools

    def served_outputs(self, request: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The remainder applied to the served rows' pools: what the repository computes."""
        dense = [torch.from_numpy(np.asarray(request[name], dtype=np.float32)) for name, _ in self.dense_inputs]
        with torch.no_grad():
            result = self.cut.remainder(*dense, *self.pooled(request))
        return [t.numpy() for t in result]

    def random_request(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """A valid request: random dense features and ids, some -1 padding, some empty bags."""
        generator = np.random.default_rng(seed)
        request: dict[str, np.ndarray] = {
            name: generator.standard_normal((batch, width)).astype(np.float32) for name, width in self.dense_inputs
        }
        rows = {table.name: table.num_rows for table in self.tables}
        for feature, lookup in zip(self.features, self.lookups, strict=True):
            width = feature.max_ids_per_sample
            ids = generator.integers(0, rows[feature.table], (batch, width))
            if lookup.padding_idx is not None:  # the module's padding row is recgen's -1, never sent as an id
                ids[ids == lookup.padding_idx] = (lookup.padding_idx + 1) % rows[feature.table]
            lengths = generator.integers(0 if lookup.source.form != "ids_2d" else width, width + 1, batch)
            if lookup.source.form == "ids_2d" and lookup.padding_idx is not None:
                lengths = generator.integers(0, width + 1, batch)
            ids[np.arange(width)[None, :] >= lengths[:, None]] = PADDING_ID
            request[naming.sparse_input(feature.name)] = ids.astype(np.int64)
        return request


# -- the module's own input form -------------------------------------------------------------------------------------


def _place(
    leaves: list[Any], stacked: dict[int, dict[int, np.ndarray]], leaf: int, row: int | None, value: np.ndarray
) -> None:
    if row is None:
        leaves[leaf] = value
    else:
        stacked.setdefault(leaf, {})[row] = value


def _offsets(counts: np.ndarray, include_last: bool) -> np.ndarray:
    ends = np.cumsum(counts)
    return np.concatenate([[0], ends]) if include_last else np.concatenate([[0], ends[:-1]])


def _kjt_leaves(cut: Cut, leaves: list[Any], values_leaf: int, per_key: dict[int, np.ndarray], batch: int) -> None:
    path = cut.leaves[values_leaf]
    arrays = [per_key.get(index, np.full((batch, 1), PADDING_ID)) for index in range(len(path.keys))]
    present = [ids >= 0 for ids in arrays]
    values = np.concatenate([ids[mask] for ids, mask in zip(arrays, present, strict=True)])
    lengths = np.concatenate([mask.sum(axis=1) for mask in present])
    fields = {"_values": values, "_lengths": lengths, "_offsets": np.concatenate([[0], np.cumsum(lengths)])}
    for leaf in range(values_leaf, min(values_leaf + 6, len(cut.leaves))):
        other = cut.leaves[leaf]
        if other.container == path.container and other.field in fields and other.dtype is not None:
            leaves[leaf] = fields[other.field]


def module_leaves(cut: Cut, request: Mapping[str, np.ndarray]) -> list[Any]:
    """The module's flattened inputs (numpy arrays, None where the module takes None) for a request."""
    leaves: list[Any] = [None] * len(cut.leaves)
    stacked: dict[int, dict[int, np.ndarray]] = {}
    kjt: dict[int, dict[int, np.ndarray]] = {}
    batch = 0
    for dense in cut.dense_inputs:
        leaves[dense.leaf] = np.asarray(request[dense.name], dtype=np.float32)
        batch = leaves[dense.leaf].shape[0]
    for lookup in cut.lookups:
        ids = np.asarray(request[naming.sparse_input(lookup.feature)], dtype=np.int64)
        batch = ids.shape[0]
        present = ids >= 0
        source = lookup.source
        if source.form == "kjt":
            kjt.setdefault(source.ids_leaf, {})[source.ids_select] = ids  # type: ignore[index]
        elif source.form == "ids_2d":
            if lookup.padding_idx is None and not present.all():
                raise UserInputError(
                    f"feature {lookup.feature!r}: the module reads fixed [B, L] ids without a padding_idx, so every "
                    "id must be present (no -1)"
                )
            _place(leaves, stacked, source.ids_leaf, source.ids_select, np.where(present, ids, lookup.padding_idx or 0))
        else:
            _place(leaves, stacked, source.ids_leaf, source.ids_select, ids[present])
            offsets = _offsets(present.sum(axis=1), source.include_last_offset)
            assert source.offsets_leaf is not None
            _place(leaves, stacked, source.offsets_leaf, source.offsets_select, offsets)
    for leaf, rows in stacked.items():
        if sorted(rows) != list(range(len(rows))):
            raise ModelImportError(f"input {cut.leaves[leaf].name!r} stacks lookups {sorted(rows)}; expected 0..n-1")
        leaves[leaf] = np.stack([rows[index] for index in range(len(rows))])
    for leaf, per_key in kjt.items():
        _kjt_leaves(cut, leaves, leaf, per_key, batch)
    return [
        None if value is None or path.dtype is None else torch.from_numpy(np.ascontiguousarray(value)).to(path.dtype)
        for value, path in zip(leaves, cut.leaves, strict=True)
    ]


def module_inputs(cut: Cut, request: Mapping[str, np.ndarray]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The module's (args, kwargs) for a request in recgen's contract."""
    args, kwargs = pytree.tree_unflatten(module_leaves(cut, request), cut.in_spec)
    return tuple(args), dict(kwargs)


def _dynamic_leaf(cut: Cut, leaf: int, path: LeafPath, keys: int) -> dict[int, Any] | None:
    if path.dtype is None:
        return None
    if path.dtype.is_floating_point:
        return {0: _BATCH}
    roles = [
        (lookup, role)
        for lookup in cut.lookups
        for role in ("ids", "offsets")
        if getattr(lookup.source, f"{role}_leaf") == leaf
    ]
    if path.container == "KeyedJaggedTensor":
        sizes = {"_values": torch.export.Dim(f"ids_{leaf}", min=2, max=1 << 30), "_lengths": keys * _BATCH}
        return {0: sizes.get(path.field, keys * _BATCH + 1)}
    if not roles:
        return None
    lookup, role = roles[0]
    axis = 0 if getattr(lookup.source, f"{role}_select") is None else 1
    if role == "ids":
        return {axis: _BATCH if lookup.source.form == "ids_2d" else torch.export.Dim(f"ids_{leaf}", min=2, max=1 << 30)}
    return {axis: _BATCH + 1 if lookup.source.include_last_offset else _BATCH}


def _restructure(spec: pytree.TreeSpec, flat: list[Any]) -> Any:
    """Per-leaf dynamic shapes in the nesting torch.export expects (a KJT's fields as a list)."""
    if spec.is_leaf():
        return flat.pop(0)
    children = [_restructure(child, flat) for child in spec.children()]
    if spec.type is dict:
        return dict(zip(spec.context, children, strict=True))
    return (
        children if getattr(spec.type, "__name__", "") == "KeyedJaggedTensor" or spec.type is list else tuple(children)
    )


@contextlib.contextmanager
def quiet_tracing() -> Iterator[None]:
    """Hide torch's and TorchRec's notes about tracing internals (not about the user's model)."""
    loggers = [logging.getLogger(name) for name in ("torch.fx._symbolic_trace", "torch._export", "root")]
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export(module: nn.Module, args: tuple[Any, ...], dynamic_shapes: Any = None) -> torch.export.ExportedProgram:
    try:
        with quiet_tracing():
            return torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
    except ModelImportError:
        raise
    except Exception as error:  # torch.export raises many types; all mean "this module does not trace"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelImportError(
            f"torch.export could not trace the module ({type(error).__name__}: {first_line}); data-dependent "
            "branches on ids or values cannot be served as a fixed graph"
        ) from error


def import_module(
    module: nn.Module, example_args: Sequence[Any], *, max_ids: Mapping[str, int] | None = None
) -> ImportedModel:
    """Cut a module at its embedding bags, from one example of its positional inputs."""
    module = module.eval()
    static = _export(module, tuple(example_args))
    first = cut_program(static)
    draft = _assemble(first, static, module, max_ids, check=False)
    request = draft.random_request(_EXPORT_BATCH, seed=1)
    for feature, lookup in zip(draft.features, draft.lookups, strict=True):
        if lookup.source.form != "ids_2d":  # one id per sample but none in the first: 3 ids, never the batch size
            ids = request[naming.sparse_input(feature.name)]
            ids[:, 1:] = PADDING_ID
            ids[1:, 0] = np.abs(ids[1:, 0])
            ids[0, 0] = PADDING_ID
    args, _ = module_inputs(first, request)
    keys = {leaf: len(path.keys) for leaf, path in enumerate(first.leaves)}
    flat = [_dynamic_leaf(first, leaf, path, keys[leaf]) for leaf, path in enumerate(first.leaves)]
    args_spec, _ = spec_children(first.in_spec)
    dynamic_shapes = _restructure(args_spec, flat[: args_spec.num_leaves])
    program = _export(module, args, tuple(dynamic_shapes))
    return _assemble(cut_program(program), program, module, max_ids, check=True)


def import_program(program: torch.export.ExportedProgram, *, max_ids: Mapping[str, int] | None = None) -> ImportedModel:
    """Cut a program exported with a dynamic batch (`torch.export.export(..., dynamic_shapes=...)`)."""
    cut = cut_program(program)
    for dense in cut.dense_inputs:
        node = next(
            n
            for n in program.graph.nodes
            if n.op == "placeholder" and n.name == program.graph_signature.user_inputs[dense.leaf]
        )
        if not isinstance(node.meta["val"].shape[0], torch.SymInt):
            raise ModelImportError(
                f"the program was exported with a static batch ({node.meta['val'].shape[0]} rows of "
                f"{dense.name!r}); export it with dynamic_shapes marking dim 0 of every input, or pass the module to "
                "recgen's import_module"
            )
    return _assemble(cut, program, program.module(), max_ids, check=True)


def _assemble(
    cut: Cut,
    program: torch.export.ExportedProgram,
    reference: nn.Module,
    max_ids: Mapping[str, int] | None,
    *,
    check: bool,
) -> ImportedModel:
    limits = dict(max_ids or {})
    names = [lookup.feature for lookup in cut.lookups]
    unknown = sorted(set(limits) - set(names) - {"*"})
    if unknown:
        raise UserInputError(f"`max_ids` names features {unknown}; the model's features are {names}")
    features = [
        FeatureSpec(
            lookup.feature,
            lookup.table,
            int(limits.get(lookup.feature, limits.get("*", DEFAULT_MAX_IDS))),
            lookup.pooling,
        )
        for lookup in cut.lookups
    ]
    embeddings: dict[str, torch.Tensor] = {}
    tables: dict[str, TableSpec] = {}
    for lookup, feature in zip(cut.lookups, features, strict=True):
        rows = _served_rows(program, lookup)
        known = embeddings.get(lookup.table)
        if known is not None and known.data_ptr() != rows.data_ptr() and not torch.equal(known, rows):
            raise ModelImportError(f"table {lookup.table!r} is read with different per-row weights by two lookups")
        embeddings[lookup.table] = rows
        ids = tables[lookup.table].max_ids_per_sample if lookup.table in tables else 0
        tables[lookup.table] = TableSpec(lookup.table, lookup.num_rows, lookup.width, ids + feature.max_ids_per_sample)
    model = ImportedModel(cut, program, features, list(tables.values()), embeddings, reference)
    if check:
        verify(model)
    return model


def _served_rows(program: torch.export.ExportedProgram, lookup: Lookup) -> torch.Tensor:
    """The rows the shards serve: the program's own tensor, copied only to fold weights or zero a padding row."""
    state = {**program.state_dict, **program.constants}
    rows = state[lookup.weight].detach()
    if lookup.row_weights is None and lookup.padding_idx is None and rows.dtype == torch.float32:
        return rows
    rows = rows.to(torch.float32).clone()
    if lookup.row_weights is not None:
        rows *= state[lookup.row_weights].detach().to(torch.float32).reshape(-1, 1)
    if lookup.padding_idx is not None:
        rows[lookup.padding_idx] = 0.0  # the module skips it; a request that sends it pools nothing
    return rows


#: The cut must reproduce the module this closely before anything is built.
VERIFY_ATOL = 1e-5


def verify(model: ImportedModel, *, batch: int = 7, seed: int = 0) -> float:
    """Largest |served - original| on a random request; raises ModelImportError above VERIFY_ATOL."""
    request = model.random_request(batch, seed)
    expected = model.reference_outputs(request)
    got = model.served_outputs(request)
    if len(got) != len(expected):
        raise ModelImportError(f"the cut returns {len(got)} outputs, the module {len(expected)}")
    worst = 0.0
    for (name, _), ours, theirs in zip(model.outputs, got, expected, strict=True):
        if ours.shape != theirs.shape:
            raise ModelImportError(f"output {name!r}: the cut gives {ours.shape}, the module {theirs.shape}")
        worst = max(worst, float(np.abs(ours - theirs).max(initial=0.0)))
    if worst > VERIFY_ATOL:
        raise ModelImportError(
            f"the cut model differs from the module by {worst:.3g} (> {VERIFY_ATOL}): a lookup's ids or pooling "
            "is not what recgen routes"
        )
    return worst
