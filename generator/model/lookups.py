"""Find a program's embedding-bag lookups: each one's table, feature, pooling and where its ids come from.

Every `aten.embedding_bag` node whose weight is a parameter (or buffer) is a lookup of that table. Its ids must
come straight from one of the module's inputs (an id tensor with offsets, a 2-D id tensor, or a
KeyedJaggedTensor's values): recgen routes request ids as sent. Max pooling, rows read outside a lookup and
per-sample weights that are neither a per-row parameter gathered with the lookup's own ids (folded into the rows)
nor a module input laid out as the ids (a request tensor) are refused, naming the module and the node.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from generator.errors import ModelImportError
from generator.model.features import Pooling
from generator.model.program import IdSource, Lookup, ProgramIndex, fail, module_of, sanitize

aten = torch.ops.aten
BAG_OPS = {
    aten.embedding_bag.default,
    aten.embedding_bag.padding_idx,
    aten._embedding_bag.default,
    aten._embedding_bag_forward_only.default,
}
_MODES: dict[int, Pooling | None] = {0: "sum", 1: "mean", 2: None}
#: Ops that pass ids through unchanged (a view, a copy, an integer cast).
_TRANSPARENT = {
    aten.view.default,
    aten.reshape.default,
    aten._to_copy.default,
    aten.to.dtype,
    aten.to.dtype_layout,
    aten.clone.default,
    aten.contiguous.default,
    aten.alias.default,
    aten.flatten.using_ints,
}
_SPLITS = {aten.split_with_sizes.default, aten.split.Tensor, aten.unbind.int}
#: Per-row weight tables that a lookup's per_sample_weights may gather with the lookup's own ids (folded in).
_GATHERS = {aten.gather.default, aten.index_select.default, aten.index.Tensor, aten.embedding.default}


def _trace_ids(node: fx.Node) -> tuple[fx.Node, list[tuple[str, int]]] | None:
    """Follow `node` back through views, casts, selects and splits to a placeholder: (placeholder, steps)."""
    steps: list[tuple[str, int]] = []
    while node.op != "placeholder":
        if node.op != "call_function":
            return None
        if node.target in _TRANSPARENT:
            node = node.args[0]  # type: ignore[assignment]
        elif node.target is aten.select.int and node.args[1] == 0:
            steps.append(("select", int(node.args[2])))  # type: ignore[arg-type]
            node = node.args[0]  # type: ignore[assignment]
        elif node.target is operator.getitem and getattr(node.args[0], "target", None) in _SPLITS:
            steps.append(("split", int(node.args[1])))  # type: ignore[arg-type]
            node = node.args[0].args[0]  # type: ignore[union-attr,assignment]
        else:
            return None
    return node, steps


#: What to pass instead of ids recgen cannot route (the refusals of `_source` end with it).
_PER_TABLE_IDS = (
    "pass each table's ids as a tensor of its own (a list of tensors, one per table, as DLRM_Net takes lS_i)"
)


def _source(program: ProgramIndex, bag: fx.Node, lookup_of: str) -> IdSource:
    ids, offsets = bag.args[1], bag.args[2] if len(bag.args) > 2 else None
    include_last = bool(bag.args[7]) if len(bag.args) > 7 else False
    traced = _trace_ids(ids)  # type: ignore[arg-type]
    if traced is None or program.leaf(traced[0]) is None:
        raise fail(bag, f"the ids of {lookup_of} are computed inside the module; recgen routes request ids as sent")
    placeholder, steps = traced
    leaf = program.leaf(placeholder)
    assert leaf is not None
    path = program.leaves[leaf]
    if path.container == "KeyedJaggedTensor" and path.field == "_values" and len(steps) == 1 and steps[0][0] == "split":
        return IdSource("kjt", leaf, steps[0][1], None, None, include_last)
    select = steps[0][1] if len(steps) == 1 and steps[0][0] == "select" else None
    if steps and select is None:
        raise fail(bag, f"the ids of {lookup_of} are sliced out of input {path.name!r} in a way recgen cannot route; "
                   f"{_PER_TABLE_IDS}")  # fmt: skip
    value = placeholder.meta.get("val")
    if offsets is None or (not steps and isinstance(value, torch.Tensor) and value.dim() == 2):
        return IdSource("ids_2d", leaf, select, None, None, False)  # nn.EmbeddingBag makes its own offsets
    if select is not None:  # a request's tables carry different numbers of ids: they cannot share one tensor
        raise fail(bag, f"the ids of {lookup_of} are a row of input {path.name!r}, which stacks every table's ids; "
                   f"{_PER_TABLE_IDS}")  # fmt: skip
    traced_offsets = _trace_ids(offsets)  # type: ignore[arg-type]
    offsets_leaf = None if traced_offsets is None else program.leaf(traced_offsets[0])
    if traced_offsets is None or offsets_leaf is None or len(traced_offsets[1]) > 1:
        raise fail(bag, f"the offsets of {lookup_of} are computed inside the module")
    offsets_steps = traced_offsets[1]
    return IdSource("offsets", leaf, select, offsets_leaf, offsets_steps[0][1] if offsets_steps else None, include_last)


def _feature_name(program: ProgramIndex, source: IdSource) -> str:
    path = program.leaves[source.ids_leaf]
    if source.form == "kjt":
        assert source.ids_select is not None
        return sanitize(path.keys[source.ids_select], "feature")
    return path.name if source.ids_select is None else f"{path.name}_{source.ids_select}"


def _per_sample_weights(
    program: ProgramIndex, bag: fx.Node, source: IdSource, lookup_of: str
) -> tuple[str | None, int | None, int | None]:
    """(folded per-row weight parameter, request weights leaf, its row or key) of a lookup's per_sample_weights.

    Per-row weights gathered with the lookup's own ids fold into the rows. Weights that come straight from a module
    input laid out as the ids (the same row of a stacked input, the same KJT key) become a request tensor.
    """
    weights = bag.args[6] if len(bag.args) > 6 else None
    if weights is None:
        return None, None, None
    assert isinstance(weights, fx.Node)
    if weights.target in _GATHERS:
        table, ids = (
            (weights.args[1], weights.args[0]) if weights.target is aten.embedding.default else weights.args[:2]
        )
        index = weights.args[2] if weights.target in (aten.gather.default, aten.index_select.default) else None
        if weights.target is aten.index.Tensor:
            index = weights.args[1][0] if len(weights.args[1]) == 1 else None  # type: ignore[index,arg-type]
        if weights.target is aten.embedding.default:
            index = ids
            table = weights.args[0]
        if (
            isinstance(table, fx.Node)
            and table.op == "placeholder"
            and table.name in program.constants_of
            and index is bag.args[1]
        ):
            return program.constants_of[table.name], None, None
    traced = _trace_ids(weights)
    leaf = None if traced is None else program.leaf(traced[0])
    if traced is not None and leaf is not None:
        path, steps = program.leaves[leaf], traced[1]
        if source.form == "kjt":
            if (
                path.container == "KeyedJaggedTensor"
                and path.field == "_weights"
                and steps == [("split", source.ids_select)]
            ):
                return None, leaf, source.ids_select
        elif steps == ([] if source.ids_select is None else [("select", source.ids_select)]):
            return None, leaf, source.ids_select
    raise fail(
        bag,
        f"the per-sample weights of {lookup_of} are neither a per-row parameter gathered with its ids nor a module "
        "input laid out as its ids",
    )


def _table_names(weights: list[str]) -> dict[str, str]:
    """A short, unique, valid table name per weight parameter (`emb_l.0.weight` -> `emb_l_0`)."""
    parts = {weight: weight.removesuffix(".weight").split(".") for weight in weights}
    names: dict[str, str] = {}
    for weight, components in parts.items():
        for length in range(1, len(components) + 1):
            candidate = sanitize("_".join(components[-length:]), "table")
            clash = [
                w for w, c in parts.items() if w != weight and sanitize("_".join(c[-length:]), "table") == candidate
            ]
            if not clash and components[-length][:1].isalpha():
                names[weight] = candidate
                break
        else:
            names[weight] = sanitize("_".join(components), "table")
    return names


def find_lookups(program: ProgramIndex, bags: list[fx.Node]) -> list[Lookup]:
    """One lookup per embedding-bag node, in graph order; refuses what recgen cannot route or pool."""
    weights: list[str] = []
    for bag in bags:
        weight = bag.args[0]
        if not isinstance(weight, fx.Node) or weight.name not in program.constants_of:
            raise fail(bag, "an embedding bag whose rows are computed inside the module cannot be sharded")
        weights.append(program.constants_of[weight.name])
    names = _table_names(list(dict.fromkeys(weights)))
    lookups = []
    for bag, weight in zip(bags, weights, strict=True):
        mode = int(bag.args[4]) if len(bag.args) > 4 else 0  # type: ignore[arg-type]
        pooling = _MODES.get(mode)
        what = f"the lookup of table {names[weight]!r}"
        if pooling is None:
            raise fail(bag, f"{what} uses max pooling, which cannot be computed from partial sums")
        padding = bag.args[8] if bag.target is aten.embedding_bag.padding_idx and len(bag.args) > 8 else None
        source = _source(program, bag, what)
        row_weights, weights_leaf, weights_select = _per_sample_weights(program, bag, source, what)
        rows, width = program.tensor(weight).shape
        lookups.append(
            Lookup(
                node=bag.name,
                module=module_of(bag),
                feature=_feature_name(program, source),
                table=names[weight],
                weight=weight,
                pooling=pooling,
                padding_idx=None if padding is None or int(padding) < 0 else int(padding),  # type: ignore[arg-type]
                row_weights=row_weights,
                source=source,
                num_rows=int(rows),
                width=int(width),
                weights_leaf=weights_leaf,
                weights_select=weights_select,
            )
        )
    offsets_of: dict[tuple[int, int | None], Lookup] = {}
    for lookup in lookups:
        key = (lookup.source.offsets_leaf, lookup.source.offsets_select)
        if lookup.source.offsets_leaf is None:
            continue
        if key in offsets_of:
            raise ModelImportError(
                f"the lookups of {offsets_of[key].module!r} and {lookup.module!r} read the same offsets input "
                f"{program.leaves[lookup.source.offsets_leaf].name!r}; recgen sends every feature's ids on their own, "
                "so each lookup needs its own offsets (export with a distinct tensor for each: the same tensor "
                "passed twice becomes one input)"
            )
        offsets_of[key] = lookup  # type: ignore[index]
    seen: dict[str, Lookup] = {}
    for lookup in lookups:
        if lookup.feature in seen:
            raise ModelImportError(
                f"input {lookup.feature!r} feeds two lookups ({seen[lookup.feature].module!r} and "
                f"{lookup.module!r}); recgen needs one id tensor per lookup"
            )
        seen[lookup.feature] = lookup
    return lookups


def check_tables_read_only_by_lookups(program: ProgramIndex, bags: list[fx.Node]) -> None:
    """Refuse a table that anything but its pooled lookups reads (max_norm's renorm, a plain embedding)."""
    tables = {bag.args[0] for bag in bags}
    for table in tables:
        assert isinstance(table, fx.Node)
        for user in table.users:
            if user not in bags:
                raise fail(
                    user,
                    f"table {program.constants_of[table.name]!r} is read outside its pooled lookups "
                    "(max_norm, a plain embedding or another op); recgen can only serve pooled partial sums",
                )


def served_rows(program: torch.export.ExportedProgram, lookup: Lookup) -> torch.Tensor:
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
