"""A request in recgen's contract as the module's own inputs, and the axes of those inputs that vary per request.

recgen's contract is one [B, L] id tensor per feature, right-padded with -1, and a [B, L] weight tensor per weighted
feature. The module may read ids with offsets, as fixed [B, L] ids, or as a KeyedJaggedTensor's values (with its
weights): `module_leaves` builds its flattened inputs from a request, and `dynamic_leaf` says which axes of each
are the batch or an id count when the module is exported with a dynamic batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from generator import naming
from generator.errors import ModelImportError, UserInputError
from generator.model.dlrm import PADDING_ID
from generator.model.program import Cut, LeafPath

#: The batch axis of every exported input.
BATCH = torch.export.Dim("batch", min=1, max=1 << 20)


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


def _kjt_leaves(
    cut: Cut,
    leaves: list[Any],
    values_leaf: int,
    per_key: dict[int, np.ndarray],
    weights_per_key: dict[int, np.ndarray],
    batch: int,
) -> None:
    path = cut.leaves[values_leaf]
    arrays = [per_key.get(index, np.full((batch, 1), PADDING_ID)) for index in range(len(path.keys))]
    present = [ids >= 0 for ids in arrays]
    values = np.concatenate([ids[mask] for ids, mask in zip(arrays, present, strict=True)])
    lengths = np.concatenate([mask.sum(axis=1) for mask in present])
    fields = {"_values": values, "_lengths": lengths, "_offsets": np.concatenate([[0], np.cumsum(lengths)])}
    if weights_per_key:  # a weighted KJT: every key's weights, aligned with its values
        fields["_weights"] = np.concatenate(
            [weights_per_key.get(index, np.ones(mask.shape, np.float32))[mask] for index, mask in enumerate(present)]
        )
    for leaf in range(values_leaf, min(values_leaf + 6, len(cut.leaves))):
        other = cut.leaves[leaf]
        if other.container == path.container and other.field in fields and other.dtype is not None:
            leaves[leaf] = fields[other.field]


def module_leaves(cut: Cut, request: Mapping[str, np.ndarray]) -> list[Any]:
    """The module's flattened inputs (numpy arrays, None where the module takes None) for a request."""
    leaves: list[Any] = [None] * len(cut.leaves)
    stacked: dict[int, dict[int, np.ndarray]] = {}
    kjt: dict[int, dict[int, np.ndarray]] = {}
    kjt_weights: dict[int, dict[int, np.ndarray]] = {}
    batch = 0
    for dense in cut.dense_inputs:
        leaves[dense.leaf] = np.asarray(request[dense.name], dtype=np.float32)
        batch = leaves[dense.leaf].shape[0]
    for lookup in cut.lookups:
        ids = np.asarray(request[naming.sparse_input(lookup.feature)], dtype=np.int64)
        batch = ids.shape[0]
        present = ids >= 0
        source = lookup.source
        weights = (
            np.asarray(request[naming.weights_input(lookup.feature)], dtype=np.float32) if lookup.weighted else None
        )
        if source.form == "kjt":
            kjt.setdefault(source.ids_leaf, {})[source.ids_select] = ids  # type: ignore[index]
            if weights is not None:
                kjt_weights.setdefault(source.ids_leaf, {})[source.ids_select] = weights  # type: ignore[index]
            continue
        if weights is not None:  # laid out as the module reads the ids: [B, L] as sent, or flat like the ids
            assert lookup.weights_leaf is not None
            laid_out = weights if source.form == "ids_2d" else weights[present]
            _place(leaves, stacked, lookup.weights_leaf, lookup.weights_select, laid_out)
        if source.form == "ids_2d":
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
        _kjt_leaves(cut, leaves, leaf, per_key, kjt_weights.get(leaf, {}), batch)
    return [
        None if value is None or path.dtype is None else torch.from_numpy(np.ascontiguousarray(value)).to(path.dtype)
        for value, path in zip(leaves, cut.leaves, strict=True)
    ]


def module_inputs(cut: Cut, request: Mapping[str, np.ndarray]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The module's (args, kwargs) for a request in recgen's contract."""
    args, kwargs = pytree.tree_unflatten(module_leaves(cut, request), cut.in_spec)
    return tuple(args), dict(kwargs)


def dynamic_leaf(cut: Cut, leaf: int, path: LeafPath, keys: int, id_dims: dict[int, Any]) -> dict[int, Any] | None:
    """The dynamic axes of one flattened input; a weights input shares its ids' dimension (`id_dims`, by ids leaf)."""
    if path.dtype is None:
        return None

    def ids_dim(ids_leaf: int) -> Any:
        return id_dims.setdefault(ids_leaf, torch.export.Dim(f"ids_{ids_leaf}", min=2, max=1 << 30))

    if path.container == "KeyedJaggedTensor":
        values_leaf = max(  # a KJT's fields are consecutive leaves, `_values` first
            other for other in range(leaf + 1) if cut.leaves[other].field == "_values"
        )
        sizes = {"_values": ids_dim(values_leaf), "_weights": ids_dim(values_leaf), "_lengths": keys * BATCH}
        return {0: sizes.get(path.field, keys * BATCH + 1)}
    weighted = [lookup for lookup in cut.lookups if lookup.weights_leaf == leaf]
    if weighted:
        lookup = weighted[0]
        axis = 0 if lookup.weights_select is None else 1
        return {axis: BATCH if lookup.source.form == "ids_2d" else ids_dim(lookup.source.ids_leaf)}
    if path.dtype.is_floating_point:
        return {0: BATCH}
    roles = [
        (lookup, role)
        for lookup in cut.lookups
        for role in ("ids", "offsets")
        if getattr(lookup.source, f"{role}_leaf") == leaf
    ]
    if not roles:
        return None
    lookup, role = roles[0]
    axis = 0 if getattr(lookup.source, f"{role}_select") is None else 1
    if role == "ids":
        return {axis: BATCH if lookup.source.form == "ids_2d" else ids_dim(leaf)}
    return {axis: BATCH + 1 if lookup.source.include_last_offset else BATCH}


def restructure(spec: pytree.TreeSpec, flat: list[Any]) -> Any:
    """Per-leaf dynamic shapes in the nesting torch.export expects (a KJT's fields as a list)."""
    if spec.is_leaf():
        return flat.pop(0)
    children = [restructure(child, flat) for child in spec.children()]
    if spec.type is dict:
        return dict(zip(spec.context, children, strict=True))
    return (
        children if getattr(spec.type, "__name__", "") == "KeyedJaggedTensor" or spec.type is list else tuple(children)
    )


def by_parameter(forward: Any, per_argument: Sequence[Any]) -> tuple[Any, ...]:
    """Dynamic shapes per positional argument, nested as `forward` takes them: a `*args` parameter as one tuple."""
    parameters = list(inspect.signature(forward).parameters.values())
    variadic = next((i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    if variadic is None or variadic >= len(per_argument):
        return tuple(per_argument)
    return (*per_argument[:variadic], tuple(per_argument[variadic:]))
