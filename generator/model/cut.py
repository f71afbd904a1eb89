"""Cut an exported program at its embedding-bag lookups: the tables and features, and the dense remainder.

Every `aten.embedding_bag` node whose weight is a parameter (or buffer) becomes a lookup of that table: its ids
must come straight from one of the module's inputs (an id tensor with offsets, a 2-D id tensor, or a
KeyedJaggedTensor's values), and its output becomes an input of the remainder, a `torch.fx.GraphModule` that
maps (dense inputs, one pooled [B, width] tensor per lookup) to the module's outputs. Whatever cannot be computed
from pooled partial sums (max pooling, rows read outside a lookup, a sparse input read outside the lookups) is a
`ModelImportError` naming the module and the graph node.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import fx
from torch.utils import _pytree as pytree

from generator.errors import ModelImportError
from generator.model.features import Pooling

aten = torch.ops.aten
_BAG_OPS = {
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

IdForm = Literal["offsets", "ids_2d", "kjt"]


@dataclass(frozen=True)
class LeafPath:
    """Where a flattened input sits in the module's arguments: a readable name and its container, if any."""

    name: str
    dtype: torch.dtype | None  # None for an input that is None (an absent KJT field)
    container: str  # "" for a plain tensor, "KeyedJaggedTensor" for a KJT field
    field: str  # the KJT field (`_values`, `_lengths`, ...) or ""
    keys: tuple[str, ...]  # the KJT's keys, or ()


@dataclass(frozen=True)
class IdSource:
    """Where one lookup's ids and offsets are in the module's flattened inputs."""

    form: IdForm
    ids_leaf: int
    ids_select: int | None  # row of a stacked [T, ...] id input, or the KJT key index
    offsets_leaf: int | None
    offsets_select: int | None
    include_last_offset: bool


@dataclass(frozen=True)
class Lookup:
    """One embedding-bag lookup: a feature pooled from a table."""

    node: str
    module: str
    feature: str
    table: str
    weight: str  # the table's parameter name in the program
    pooling: Pooling
    padding_idx: int | None
    row_weights: str | None  # learned per-row weights folded into the rows (parameter name)
    source: IdSource
    num_rows: int
    width: int


@dataclass(frozen=True)
class DenseInput:
    """A floating-point input of the module, sent as-is: [B, width]."""

    name: str
    leaf: int
    width: int


@dataclass
class Cut:
    """The lookups, the dense inputs, the outputs and the remainder of one exported program."""

    lookups: list[Lookup]
    dense_inputs: list[DenseInput]
    outputs: list[tuple[str, tuple[int, ...]]]  # name and per-sample dims
    remainder: fx.GraphModule
    leaves: list[LeafPath]
    in_spec: pytree.TreeSpec


def _sanitize(name: str, prefix: str) -> str:
    cleaned = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9]+", "_", name)).strip("_")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"{prefix}_{cleaned}".rstrip("_")
    return cleaned[:64].rstrip("_")


def leaf_paths(in_spec: pytree.TreeSpec) -> list[LeafPath]:
    """Every flattened input's name and container, walking the program's input tree spec."""
    paths: list[LeafPath] = []

    def walk(spec: pytree.TreeSpec, name: str, container: str, field: str, keys: tuple[str, ...]) -> None:
        if spec.is_leaf():
            paths.append(LeafPath(_sanitize(name, "input"), None, container, field, keys))
            return
        kind = getattr(spec.type, "__name__", str(spec.type))
        if kind == "KeyedJaggedTensor":
            fields = ("_values", "_weights", "_lengths", "_offsets", "_stride_per_key_per_rank", "_inverse_indices")
            for child, child_field in zip(spec.children(), fields, strict=False):
                walk(child, name, kind, child_field, tuple(spec.context))
            return
        context = spec.context if isinstance(spec.context, list) else None
        for index, child in enumerate(spec.children()):
            part = str(context[index]) if context is not None and index < len(context) else str(index)
            walk(child, f"{name}_{part}" if name else part, container, field, keys)

    args_spec, kwargs_spec = spec_children(in_spec)
    for index, child in enumerate(args_spec.children()):
        walk(child, f"arg{index}", "", "", ())
    for key, child in zip(kwargs_spec.context, kwargs_spec.children(), strict=True):
        walk(child, str(key), "", "", ())
    return paths


def spec_children(in_spec: pytree.TreeSpec) -> tuple[pytree.TreeSpec, pytree.TreeSpec]:
    """The (args, kwargs) halves of a program's input spec."""
    args_spec, kwargs_spec = in_spec.children()
    return args_spec, kwargs_spec


def _dtype_of(node: fx.Node) -> torch.dtype | None:
    value = node.meta.get("val")
    return value.dtype if isinstance(value, torch.Tensor) else None


def _fail(node: fx.Node, message: str) -> ModelImportError:
    return ModelImportError(f"{message} (module {_module_of(node)!r}, graph node {node.name!r}: {node.target})")


def _module_of(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<top level>"
    path, _ = list(stack.values())[-1]
    return str(path) or "<top level>"


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


class _Program:
    """Indexes of one exported program: its placeholders by kind and the parameter behind each."""

    def __init__(self, program: torch.export.ExportedProgram):
        self.program = program
        signature = program.graph_signature
        self.constants_of: dict[str, str] = {
            **signature.inputs_to_parameters,
            **signature.inputs_to_buffers,
            **signature.inputs_to_lifted_tensor_constants,
        }
        self.user_inputs = list(signature.user_inputs)
        self.leaf_of = {name: index for index, name in enumerate(self.user_inputs) if name is not None}
        paths = leaf_paths(program.call_spec.in_spec)
        if len(paths) != len(self.user_inputs):
            raise ModelImportError(
                f"the program has {len(self.user_inputs)} user inputs but its input spec {len(paths)} leaves"
            )
        nodes = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
        self.leaves = [
            path
            if name is None
            else dataclasses.replace(path, name=_sanitize(name, "input"), dtype=_dtype_of(nodes[name]))
            for path, name in zip(paths, self.user_inputs, strict=True)
        ]

    def tensor(self, name: str) -> torch.Tensor:
        """A parameter, buffer or constant by its name in the program."""
        if name in self.program.state_dict:
            return self.program.state_dict[name]
        return self.program.constants[name]  # type: ignore[return-value]

    def leaf(self, node: fx.Node) -> int | None:
        """The flattened-input position of a user-input placeholder (None for parameters and constants)."""
        return self.leaf_of.get(node.name)


def _source(program: _Program, bag: fx.Node, lookup_of: str) -> IdSource:
    ids, offsets = bag.args[1], bag.args[2] if len(bag.args) > 2 else None
    include_last = bool(bag.args[7]) if len(bag.args) > 7 else False
    traced = _trace_ids(ids)  # type: ignore[arg-type]
    if traced is None or program.leaf(traced[0]) is None:
        raise _fail(bag, f"the ids of {lookup_of} are computed inside the module; recgen routes request ids as sent")
    placeholder, steps = traced
    leaf = program.leaf(placeholder)
    assert leaf is not None
    path = program.leaves[leaf]
    if path.container == "KeyedJaggedTensor" and path.field == "_values" and len(steps) == 1 and steps[0][0] == "split":
        return IdSource("kjt", leaf, steps[0][1], None, None, include_last)
    select = steps[0][1] if len(steps) == 1 and steps[0][0] == "select" else None
    if steps and select is None:
        raise _fail(bag, f"the ids of {lookup_of} are sliced out of input {path.name!r} in a way recgen cannot route")
    if offsets is None:
        return IdSource("ids_2d", leaf, select, None, None, False)
    traced_offsets = _trace_ids(offsets)  # type: ignore[arg-type]
    offsets_leaf = None if traced_offsets is None else program.leaf(traced_offsets[0])
    if traced_offsets is None or offsets_leaf is None or len(traced_offsets[1]) > 1:
        raise _fail(bag, f"the offsets of {lookup_of} are computed inside the module")
    offsets_steps = traced_offsets[1]
    return IdSource("offsets", leaf, select, offsets_leaf, offsets_steps[0][1] if offsets_steps else None, include_last)


def _feature_name(program: _Program, source: IdSource) -> str:
    path = program.leaves[source.ids_leaf]
    if source.form == "kjt":
        assert source.ids_select is not None
        return _sanitize(path.keys[source.ids_select], "feature")
    return path.name if source.ids_select is None else f"{path.name}_{source.ids_select}"


def _row_weights(program: _Program, bag: fx.Node) -> str | None:
    """The per-row weight parameter that per_sample_weights gathers with the lookup's own ids (or None)."""
    weights = bag.args[6] if len(bag.args) > 6 else None
    if weights is None:
        return None
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
            return program.constants_of[table.name]
    raise _fail(
        bag,
        "per-sample weights that are not a per-row parameter gathered with the lookup's ids are not supported yet",
    )


def _table_names(weights: list[str]) -> dict[str, str]:
    """A short, unique, valid table name per weight parameter (`emb_l.0.weight` -> `emb_l_0`)."""
    parts = {weight: weight.removesuffix(".weight").split(".") for weight in weights}
    names: dict[str, str] = {}
    for weight, components in parts.items():
        for length in range(1, len(components) + 1):
            candidate = _sanitize("_".join(components[-length:]), "table")
            clash = [
                w for w, c in parts.items() if w != weight and _sanitize("_".join(c[-length:]), "table") == candidate
            ]
            if not clash and components[-length][:1].isalpha():
                names[weight] = candidate
                break
        else:
            names[weight] = _sanitize("_".join(components), "table")
    return names


def _lookups(program: _Program, bags: list[fx.Node]) -> list[Lookup]:
    weights: list[str] = []
    for bag in bags:
        weight = bag.args[0]
        if not isinstance(weight, fx.Node) or weight.name not in program.constants_of:
            raise _fail(bag, "an embedding bag whose rows are computed inside the module cannot be sharded")
        weights.append(program.constants_of[weight.name])
    names = _table_names(list(dict.fromkeys(weights)))
    lookups = []
    for bag, weight in zip(bags, weights, strict=True):
        mode = int(bag.args[4]) if len(bag.args) > 4 else 0  # type: ignore[arg-type]
        pooling = _MODES.get(mode)
        what = f"the lookup of table {names[weight]!r}"
        if pooling is None:
            raise _fail(bag, f"{what} uses max pooling, which cannot be computed from partial sums")
        padding = bag.args[8] if bag.target is aten.embedding_bag.padding_idx and len(bag.args) > 8 else None
        source = _source(program, bag, what)
        rows, width = program.tensor(weight).shape
        lookups.append(
            Lookup(
                node=bag.name,
                module=_module_of(bag),
                feature=_feature_name(program, source),
                table=names[weight],
                weight=weight,
                pooling=pooling,
                padding_idx=None if padding is None or int(padding) < 0 else int(padding),  # type: ignore[arg-type]
                row_weights=_row_weights(program, bag),
                source=source,
                num_rows=int(rows),
                width=int(width),
            )
        )
    seen: dict[str, Lookup] = {}
    for lookup in lookups:
        if lookup.feature in seen:
            raise ModelImportError(
                f"input {lookup.feature!r} feeds two lookups ({seen[lookup.feature].module!r} and "
                f"{lookup.module!r}); recgen needs one id tensor per lookup"
            )
        seen[lookup.feature] = lookup
    return lookups


def _check_tables_read_only_by_lookups(program: _Program, bags: list[fx.Node]) -> None:
    tables = {bag.args[0] for bag in bags}
    for table in tables:
        assert isinstance(table, fx.Node)
        for user in table.users:
            if user not in bags:
                raise _fail(
                    user,
                    f"table {program.constants_of[table.name]!r} is read outside its pooled lookups "
                    "(max_norm, a plain embedding or another op); recgen can only serve pooled partial sums",
                )


def cut_program(exported: torch.export.ExportedProgram) -> Cut:
    """Cut `exported` at its embedding bags; raises ModelImportError naming what cannot be served."""
    program = _Program(exported)
    graph = exported.graph_module.graph
    bags = [node for node in graph.nodes if node.op == "call_function" and node.target in _BAG_OPS]
    if not bags:
        raise ModelImportError("the program has no embedding-bag lookup (nn.EmbeddingBag or a TorchRec table)")
    _check_tables_read_only_by_lookups(program, bags)
    lookups = _lookups(program, bags)
    return _Remainder(program, bags, lookups).build()


class _Remainder:
    """Copies what the outputs need, with each lookup's pooled output as a new input."""

    def __init__(self, program: _Program, bags: list[fx.Node], lookups: list[Lookup]):
        self.program, self.bags, self.lookups = program, bags, lookups
        self.graph = fx.Graph()
        self.root = torch.nn.Module()
        self.env: dict[fx.Node, fx.Node] = {}
        self.dense: dict[fx.Node, DenseInput] = {}
        self.pooled: dict[fx.Node, fx.Node] = {}

    def build(self) -> Cut:
        """The remainder graph module and the cut's description."""
        source = self.program.program.graph_module.graph
        output = next(node for node in source.nodes if node.op == "output")
        needed = self._needed(output)
        dense_nodes = [node for node in source.nodes if node in needed and self.program.leaf(node) is not None]
        placeholders = {node: self.graph.placeholder(self._leaf_name(node)) for node in dense_nodes}
        pooled_of = {
            bag: self.graph.placeholder(f"pooled_{lookup.feature}")
            for bag, lookup in zip(self.bags, self.lookups, strict=True)
        }
        for node in source.nodes:
            if node not in needed or node.op == "output":
                continue
            self.env[node] = self._copy(node, placeholders, pooled_of)
        results = [self.env[leaf] if isinstance(leaf, fx.Node) else leaf for leaf in output.args[0]]  # type: ignore[union-attr]
        self.graph.output(tuple(results))
        remainder = fx.GraphModule(self.root, self.graph)
        return Cut(
            self.lookups,
            [self._dense_input(node) for node in dense_nodes],
            self._outputs(output),
            remainder,
            self.program.leaves,
            self.program.program.call_spec.in_spec,
        )

    def _needed(self, output: fx.Node) -> set[fx.Node]:
        needed: set[fx.Node] = set()
        stack: list[tuple[fx.Node, fx.Node]] = [(node, output) for node in output.all_input_nodes]
        bags = set(self.bags)
        while stack:
            node, consumer = stack.pop()
            if node in needed:
                continue
            if node in bags:
                raise _fail(consumer, "an output reads more of an embedding bag than its pooled result")
            if node.target is operator.getitem and node.args[0] in bags:
                if node.args[1] != 0:
                    raise _fail(consumer, "an output reads the offsets or bag sizes of an embedding bag")
                needed.add(node)
                continue
            if node.op == "placeholder" and self.program.leaf(node) is not None:
                value = node.meta.get("val")
                if not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point:
                    raise _fail(
                        consumer,
                        f"sparse input {self._leaf_name(node)!r} is read outside the embedding-bag lookups",
                    )
            needed.add(node)
            stack.extend((parent, node) for parent in node.all_input_nodes)
        return needed

    def _leaf_name(self, node: fx.Node) -> str:
        leaf = self.program.leaf(node)
        assert leaf is not None
        return self.program.leaves[leaf].name

    def _copy(self, node: fx.Node, placeholders: dict[fx.Node, fx.Node], pooled_of: dict[fx.Node, fx.Node]) -> fx.Node:
        if node.target is operator.getitem and node.args[0] in pooled_of:
            return pooled_of[node.args[0]]  # type: ignore[index]
        if node in placeholders:
            return placeholders[node]
        if node.op == "placeholder":
            name = f"_constant_{len(self.root._buffers)}"
            self.root.register_buffer(name, self.program.tensor(self.program.constants_of[node.name]).detach().clone())
            return self.graph.get_attr(name)
        return self.graph.node_copy(node, lambda parent: self.env[parent])

    def _dense_input(self, node: fx.Node) -> DenseInput:
        leaf = self.program.leaf(node)
        assert leaf is not None
        value = node.meta["val"]
        if value.dim() != 2:
            raise _fail(
                node, f"dense input {self.program.leaves[leaf].name!r} must be [batch, width], got {value.dim()}-D"
            )
        return DenseInput(self.program.leaves[leaf].name, leaf, int(value.shape[1]))

    def _outputs(self, output: fx.Node) -> list[tuple[str, tuple[int, ...]]]:
        out_spec = self.program.program.call_spec.out_spec
        leaves = list(output.args[0])  # type: ignore[arg-type]
        names = _output_names(out_spec, len(leaves))
        described = []
        for name, leaf in zip(names, leaves, strict=True):
            value = leaf.meta.get("val") if isinstance(leaf, fx.Node) else None
            if not isinstance(value, torch.Tensor) or value.dim() < 1:
                raise ModelImportError(f"output {name!r} is not a batched tensor")
            described.append((name, tuple(int(size) for size in value.shape[1:])))
        return described


def _output_names(out_spec: pytree.TreeSpec, count: int) -> list[str]:
    if out_spec.is_leaf():
        return ["output"]
    if isinstance(out_spec.context, list) and len(out_spec.context) == count:
        return [_sanitize(str(key), "output") for key in out_spec.context]
    return [f"output_{index}" for index in range(count)]
