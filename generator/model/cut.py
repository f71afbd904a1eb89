"""Cut an exported program at its embedding-bag lookups: the tables and features, and the dense remainder.

The remainder is a `torch.fx.GraphModule` that maps (dense inputs, one pooled [B, width] tensor per lookup) to
the module's outputs: everything the outputs need, with each lookup's result replaced by an input. A sparse input
read outside the lookups, or a lookup's offsets read by the outputs, is a `ModelImportError` naming the node; only
its batch size may be read (a shape: the remainder takes it from a pooled input).
"""

from __future__ import annotations

import functools
import operator

import torch
from torch import fx
from torch.utils import _pytree as pytree

from generator.errors import ModelImportError
from generator.model.lookups import BAG_OPS, check_tables_read_only_by_lookups, find_lookups
from generator.model.program import Cut, DenseInput, Lookup, ProgramIndex, fail, sanitize


def cut_program(exported: torch.export.ExportedProgram) -> Cut:
    """Cut `exported` at its embedding bags; raises ModelImportError naming what cannot be served."""
    program = ProgramIndex(exported)
    graph = exported.graph_module.graph
    bags = [node for node in graph.nodes if node.op == "call_function" and node.target in BAG_OPS]
    if not bags:
        raise ModelImportError("the program has no embedding-bag lookup (nn.EmbeddingBag or a TorchRec table)")
    check_tables_read_only_by_lookups(program, bags)
    lookups = find_lookups(program, bags)
    return _Remainder(program, bags, lookups).build()


class _Remainder:
    """Copies what the outputs need, with each lookup's pooled output as a new input."""

    def __init__(self, program: ProgramIndex, bags: list[fx.Node], lookups: list[Lookup]):
        self.program, self.bags, self.lookups = program, bags, lookups
        self.graph = fx.Graph()
        self.root = torch.nn.Module()
        self.env: dict[fx.Node, fx.Node] = {}
        self.dense: dict[fx.Node, DenseInput] = {}
        self.pooled: dict[fx.Node, fx.Node] = {}
        #: `sym_size` nodes that read a sparse input's batch dimension (recomputed from a pooled input).
        self.batch_reads: set[fx.Node] = set()

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
        results = [self.env[leaf] if isinstance(leaf, fx.Node) else leaf for leaf in output.args[0]]
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
                raise fail(consumer, "an output reads more of an embedding bag than its pooled result")
            if node.target is operator.getitem and node.args[0] in bags:
                if node.args[1] != 0:
                    raise fail(consumer, "an output reads the offsets or bag sizes of an embedding bag")
                needed.add(node)
                continue
            if node.op == "placeholder" and self.program.leaf(node) is not None:
                value = node.meta.get("val")
                if self._reads_batch_size(consumer):  # a shape, not a value: the remainder takes it elsewhere
                    self.batch_reads.add(consumer)
                    continue
                if not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point:
                    raise fail(
                        consumer,
                        f"sparse input {self._leaf_name(node)!r} is read outside the embedding-bag lookups",
                    )
            needed.add(node)
            stack.extend((parent, node) for parent in node.all_input_nodes)
        return needed

    def _reads_batch_size(self, consumer: fx.Node) -> bool:
        """Whether `consumer` only reads the batch size (dim 0 of a tensor whose dim 0 is the lookups' batch)."""
        if consumer.target is not torch.ops.aten.sym_size.int or consumer.args[1:] != (0,):
            return False
        batch = self._batch_size
        return batch is not None and _same_size(consumer.meta.get("val"), batch)

    @functools.cached_property
    def _batch_size(self) -> object:
        """The lookups' batch size as the program knows it (a symbol with a dynamic batch): a pool's dim 0."""
        for bag in self.bags:
            for user in bag.users:
                value = user.meta.get("val") if user.target is operator.getitem and user.args[1] == 0 else None
                if isinstance(value, torch.Tensor) and value.dim() >= 1:
                    return value.shape[0]
        return None

    def _leaf_name(self, node: fx.Node) -> str:
        leaf = self.program.leaf(node)
        assert leaf is not None
        return self.program.leaves[leaf].name

    def _copy(self, node: fx.Node, placeholders: dict[fx.Node, fx.Node], pooled_of: dict[fx.Node, fx.Node]) -> fx.Node:
        if node in self.batch_reads:  # the batch size, read from the first pooled input instead of a sparse one
            return self.graph.call_function(torch.ops.aten.sym_size.int, (next(iter(pooled_of.values())), 0))
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
            raise fail(
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
        return [sanitize(str(key), "output") for key in out_spec.context]
    return [f"output_{index}" for index in range(count)]


def _same_size(value: object, batch: object) -> bool:
    """Whether two sizes are the same (the same symbol of a dynamic batch, or the same number)."""
    if isinstance(value, torch.SymInt) and isinstance(batch, torch.SymInt):
        return bool(value.node.expr == batch.node.expr)
    return isinstance(value, int) and isinstance(batch, int) and value == batch
