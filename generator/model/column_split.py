"""Linear layers over a concatenation of user and item parts, split by their weight's columns.

`linear(cat([u, i], 1), W, b)` equals `linear(u, W[:, :k]) + linear(i, W[:, k:], b)`. The first term reads only
user-side values, so the user/candidate split computes it once per ranking request; without this rewrite the
whole layer runs per candidate as soon as its input mixes the two sides. This is how recgen's own DLRM ranking
model treats its top MLP's first layer; here it applies to any `aten.linear` whose input is such a `cat`
(a TorchRec over-arch, a top MLP over user and item towers, a cross layer's projection of x0).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import fx


def split_concatenated_linears(
    remainder: fx.GraphModule, user_side: Mapping[fx.Node, bool], row_dims: Mapping[fx.Node, tuple[int, ...]]
) -> tuple[fx.GraphModule, int]:
    """A copy of `remainder` with every qualifying linear layer split in two, and how many were split.

    `user_side`: whether a node of `remainder` was decided user-side; `row_dims`: each tensor node's per-row dims.
    A layer qualifies when its input is a `cat` along dim 1 of 2-D parts, some user-side and some not, and its
    weight (and bias) are constants of the graph.
    """
    sites = [node for node in remainder.graph.nodes if _qualifies(node, user_side, row_dims)]
    if not sites:
        return remainder, 0
    copied = copy.deepcopy(remainder)
    by_name = {node.name: node for node in copied.graph.nodes}
    for index, site in enumerate(sites):
        parts = _parts(site)
        user_parts = [user_side.get(part, False) for part in parts]
        _split(copied, by_name[site.name], user_parts, [row_dims[part][0] for part in parts], index)
    copied.graph.eliminate_dead_code()
    copied.recompile()
    return copied, len(sites)


def _parts(linear: fx.Node) -> list[fx.Node]:
    """The concatenated parts of a qualifying linear layer's input."""
    source = linear.args[0]
    assert isinstance(source, fx.Node) and isinstance(source.args[0], (list, tuple))
    return [part for part in source.args[0] if isinstance(part, fx.Node)]


def _qualifies(node: fx.Node, user_side: Mapping[fx.Node, bool], row_dims: Mapping[fx.Node, tuple[int, ...]]) -> bool:
    if node.op != "call_function" or node.target is not torch.ops.aten.linear.default or user_side.get(node, False):
        return False
    source, weight = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else None
    if not isinstance(source, fx.Node) or source.target is not torch.ops.aten.cat.default:
        return False
    if not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return False
    if bias is not None and not (isinstance(bias, fx.Node) and bias.op == "get_attr"):
        return False
    parts = source.args[0]
    dim = source.args[1] if len(source.args) > 1 else 0
    if dim not in (1, -1) or not isinstance(parts, (list, tuple)) or not parts:
        return False
    if not all(isinstance(part, fx.Node) and len(row_dims.get(part, ())) == 1 for part in parts):
        return False
    sides = {user_side.get(part, False) for part in parts}  # type: ignore[arg-type]
    return sides == {True, False}


def _split(module: fx.GraphModule, node: fx.Node, user_parts: list[bool], widths: list[int], index: int) -> None:
    """Replace `node` (linear over a cat) by the sum of a user-side and a candidate-side linear."""
    graph = module.graph
    weight_node = node.args[1]
    bias = node.args[2] if len(node.args) > 2 else None
    parts = _parts(node)
    weight = getattr(module, str(weight_node.target))  # type: ignore[union-attr]
    starts = [sum(widths[:i]) for i in range(len(widths))]
    columns = {
        side: torch.cat([torch.arange(start, start + width) for start, width, user in zip(starts, widths, user_parts,
                                                                                          strict=True) if user == side])
        for side in (True, False)
    }  # fmt: skip
    names = {side: f"_split_linear_{index}_{'user' if side else 'item'}" for side in (True, False)}
    for side in (True, False):
        module.register_buffer(names[side], weight.detach()[:, columns[side]].contiguous())
    with graph.inserting_before(node):
        halves = {}
        for side in (True, False):
            chosen = [part for part, user in zip(parts, user_parts, strict=True) if user == side]
            joined = chosen[0] if len(chosen) == 1 else graph.call_function(torch.ops.aten.cat.default, (chosen, 1))
            arguments = (joined, graph.get_attr(names[side]), *((bias,) if bias is not None and not side else ()))
            name = f"{node.name}_{'user' if side else 'item'}_columns"
            halves[side] = graph.create_node("call_function", torch.ops.aten.linear.default, arguments, name=name)
        total = graph.call_function(torch.ops.aten.add.Tensor, (halves[False], halves[True]))
    for made in (*halves.values(), total):  # the user's line that made the layer, for what the build reports
        made.meta["stack_trace"] = node.meta.get("stack_trace")
    node.replace_all_uses_with(total)
    graph.erase_node(node)
