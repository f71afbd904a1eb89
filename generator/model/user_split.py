"""The user/candidate split of an imported dense graph (RecServe's transformation, for any model).

A ranking request scores N candidates for one user. In the flattened request the user's inputs are the same row
repeated N times, so every node of the dense graph that reads only user-side values (the user's pools and dense
inputs, constants, the batch size) holds N equal rows: it can be computed once, at batch 1, and broadcast where it
meets the candidates. `split_user_side` finds those nodes and cuts the graph in two:

- the user graph: user-side inputs [1, ...] -> the boundary tensors [1, ...] the rest reads;
- the candidate graph: candidate-side inputs [N, ...] and the boundary tensors -> the outputs [N, ...]; each
  boundary tensor is expanded to N rows where a candidate-side node reads it, so every node sees what it saw in
  the flattened graph.

Which nodes qualify is decided on sample requests, not from a list of operators: a user-side node joins the user
graph when, with the user's rows repeated N times, its value is N copies of its value at batch 1. A node that fails
(a reduction over the batch, a value laid out with the batch elsewhere than first) stops the user side there; it and
everything after it run per candidate, and the split names it. The whole split is then compared with the flattened
graph on another sample; should it differ, the build falls back to broadcasting the user's inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import fx

from generator.model.column_split import split_concatenated_linears
from generator.model.program import source_of

#: A node's place in the split: computed once (user), per candidate (item), wherever it is read (const), or a
#: size that each graph recomputes from its own batch (batch).
Side = Literal["user", "item", "const", "batch"]

#: The split must reproduce the flattened graph this closely (absolute), as an import must reproduce the module.
SPLIT_ATOL = 1e-5
#: Candidates in the samples the split is decided and checked on (two sizes, neither 1).
_DECIDE_CANDIDATES, _CHECK_CANDIDATES = 7, 3

#: Flattened remainder inputs for a sample: `(candidates, seed) -> tensors`, the user-side rows all equal.
Samples = Callable[[int, int], list[torch.Tensor]]


@dataclass(frozen=True)
class Stop:
    """A user-side node that runs per candidate instead, and why (the user side stops growing there)."""

    node: str
    target: str
    source: str  # the user's line that made it, or ""
    reason: str

    def __str__(self) -> str:
        at = f" at {self.source}" if self.source else ""
        return f"{self.node} ({self.target}{at}): {self.reason}"


@dataclass(frozen=True)
class Boundary:
    """A user-side tensor the candidate graph reads: the node and its per-row dims."""

    node: str
    dims: tuple[int, ...]
    source: str = ""  # the user's line that made it, or ""

    def __str__(self) -> str:
        at = f" ({self.source})" if self.source else ""
        return f"{self.node} [1, {', '.join(map(str, self.dims))}]{at}"


@dataclass(frozen=True)
class UserSplit:
    """The two graphs and what the split did: how much runs once, what crosses, what stopped it."""

    user_graph: fx.GraphModule  # user-side inputs (remainder order) -> boundary tensors
    candidate_graph: fx.GraphModule  # candidate-side inputs (remainder order), boundary tensors -> outputs
    user_inputs: tuple[int, ...]  # positions in the remainder's inputs
    candidate_inputs: tuple[int, ...]
    user_ops: int  # operations computed once per ranking request
    total_ops: int
    boundaries: tuple[Boundary, ...]
    stops: tuple[Stop, ...]
    max_abs_diff: float  # the split against the flattened graph on the check sample
    #: Linear layers over user and item parts split by their weight's columns (`column_split`).
    split_linears: int = 0

    def __call__(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Outputs for the remainder's inputs: user-side ones [1, ...], candidate-side ones [N, ...]."""
        crossing = self.user_graph(*[inputs[i] for i in self.user_inputs])
        return tuple(self.candidate_graph(*[inputs[i] for i in self.candidate_inputs], *crossing))

    def __str__(self) -> str:
        crossing = ", ".join(map(str, self.boundaries)) or "none"
        line = f"user side once per request: {self.user_ops} of {self.total_ops} ops; to the candidates: {crossing}"
        if self.split_linears:
            line += f"; {self.split_linears} linear layer(s) over user and item parts split by columns"
        return "\n".join([line, *(f"  stopped at {stop}" for stop in self.stops)])


def split_user_side(remainder: fx.GraphModule, user_side: Sequence[bool], samples: Samples) -> UserSplit:
    """Split `remainder` (inputs marked user-side by `user_side`); see the module docstring.

    Raises ValueError when no input is candidate-side (N candidates would all score the same).
    """
    placeholders = [node for node in remainder.graph.nodes if node.op == "placeholder"]
    if len(placeholders) != len(user_side):
        raise ValueError(f"the graph has {len(placeholders)} inputs, sides name {len(user_side)}")
    if all(user_side):
        raise ValueError("every input is user-side: the candidates would all get the same scores")
    sample = samples(_DECIDE_CANDIDATES, 0)
    decision = _decide(remainder, dict(zip(placeholders, user_side, strict=True)), sample)
    user_nodes = {node: side == "user" for node, side in decision.sides.items()}
    rewritten, linears = split_concatenated_linears(remainder, user_nodes, decision.row_dims)
    if linears:  # decide again on the rewritten graph: each split layer's user half is now user-side
        copies = [node for node in rewritten.graph.nodes if node.op == "placeholder"]
        split = _Builder(rewritten, _decide(rewritten, dict(zip(copies, user_side, strict=True)), sample)).build()
    else:
        split = _Builder(remainder, decision).build()
    check = samples(_CHECK_CANDIDATES, 1)
    worst = _difference(remainder, split, check)
    if worst <= SPLIT_ATOL:
        return dataclasses.replace(split, max_abs_diff=worst, split_linears=linears)
    inputs_only = _Decision(
        {
            node: "item" if side == "user" and node.op != "placeholder" else side
            for node, side in decision.sides.items()
        },
        [Stop("-", "-", "", f"the split differed from the flattened graph by {worst:.3g}; user inputs broadcast")],
        decision.row_dims,
        decision.batch_reads,
    )
    fallback = _Builder(remainder, inputs_only).build()
    return dataclasses.replace(fallback, max_abs_diff=_difference(remainder, fallback, check))


@dataclass
class _Decision:
    """Each node's side, the user-side nodes that failed, tensors' per-row dims, and the nodes reading the batch."""

    sides: dict[fx.Node, Side]
    stops: list[Stop]
    row_dims: dict[fx.Node, tuple[int, ...]]  # every node whose value is one tensor
    batch_reads: set[fx.Node]


def _values(module: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> dict[fx.Node, Any]:
    """Every node's value for these inputs."""
    values: dict[fx.Node, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            values[n] = super().run_node(n)
            return values[n]

    with torch.no_grad():
        Recorder(module).run(*inputs)
    return values


def _decide(
    remainder: fx.GraphModule, user_inputs: dict[fx.Node, bool], flattened: Sequence[torch.Tensor]
) -> _Decision:
    """Each node's side, deciding user-side nodes on the sample (batch N) against its first row (batch 1)."""
    at_n = _values(remainder, flattened)
    at_1 = _values(remainder, [tensor[:1] for tensor in flattened])
    candidates = len(flattened[0])
    decision = _Decision({}, [], {}, set())
    for node in remainder.graph.nodes:
        if isinstance(at_1.get(node), torch.Tensor):
            decision.row_dims[node] = tuple(at_1[node].shape[1:])
        if node.op == "placeholder":
            decision.sides[node] = "user" if user_inputs[node] else "item"
        elif node.op == "get_attr":
            decision.sides[node] = "const"
        elif node.op == "call_function":
            decision.sides[node] = _side(node, decision, at_n, at_1, candidates)
    return decision


def _side(
    node: fx.Node, decision: _Decision, at_n: dict[fx.Node, Any], at_1: dict[fx.Node, Any], candidates: int
) -> Side:
    read = {decision.sides[parent] for parent in node.all_input_nodes}
    if not _holds_tensors(at_n[node]):  # a size or another Python value
        if _reads_batch(node, at_n, at_1, candidates):
            decision.batch_reads.add(node)
            return "batch"
        return "batch" if read <= {"batch", "const"} else "item"  # else: only the candidate graph computes it
    if "item" in read:
        return "item"
    if "user" not in read:
        return "const"
    reason = _rowwise_failure(at_n[node], at_1[node], candidates)
    if reason is None:
        return "user"
    decision.stops.append(Stop(node.name, str(node.target), source_of(node), reason))
    return "item"


def _holds_tensors(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (tuple, list)) and any(isinstance(item, torch.Tensor) for item in value)


def _reads_batch(node: fx.Node, at_n: dict[fx.Node, Any], at_1: dict[fx.Node, Any], candidates: int) -> bool:
    """Whether `node` is the batch size: dim 0 of a tensor with N rows at batch N and 1 at batch 1."""
    if node.target is not torch.ops.aten.sym_size.int or tuple(node.args[1:]) != (0,):
        return False
    return at_n[node] == candidates and at_1[node] == 1


def _rowwise_failure(at_n: Any, at_1: Any, candidates: int) -> str | None:
    """Why a value at batch N is not N copies of its value at batch 1 (None when it is)."""
    if isinstance(at_n, (tuple, list)):
        for part_n, part_1 in zip(at_n, at_1, strict=True):
            if not isinstance(part_n, torch.Tensor):
                if part_n != part_1:
                    return "one of its results depends on the batch size"
                continue
            reason = _rowwise_failure(part_n, part_1, candidates)
            if reason is not None:
                return reason
        return None
    if at_1.dim() == 0 or at_1.shape[0] != 1 or tuple(at_n.shape) != (candidates, *at_1.shape[1:]):
        return (
            f"its rows are not the batch's (shape {list(at_1.shape)} at batch 1, {list(at_n.shape)} at "
            f"batch {candidates})"
        )
    expected = at_1.expand_as(at_n)
    if at_n.dtype.is_floating_point:
        scale = max(1.0, float(expected.abs().max()))
        same = torch.allclose(at_n, expected, rtol=1e-4, atol=1e-6 * scale, equal_nan=True)
    else:
        same = torch.equal(at_n, expected)
    return None if same else "it mixes the batch's rows (with the user repeated, its rows differ from batch 1's)"


class _Builder:
    """Writes the user graph and the candidate graph of one decision."""

    def __init__(self, remainder: fx.GraphModule, decision: _Decision):
        self.remainder, self.decision, self.sides = remainder, decision, decision.sides
        self.placeholders = [node for node in remainder.graph.nodes if node.op == "placeholder"]

    def build(self) -> UserSplit:
        output = next(node for node in self.remainder.graph.nodes if node.op == "output")
        candidate_graph, boundaries = self._candidate_graph(output)
        operations = [node for node in self.remainder.graph.nodes if node.op == "call_function"]
        return UserSplit(
            user_graph=self._user_graph(boundaries),
            candidate_graph=candidate_graph,
            user_inputs=tuple(i for i, node in enumerate(self.placeholders) if self.sides[node] == "user"),
            candidate_inputs=tuple(i for i, node in enumerate(self.placeholders) if self.sides[node] != "user"),
            user_ops=sum(1 for node in operations if self.sides[node] == "user"),
            total_ops=len(operations),
            boundaries=tuple(Boundary(node.name, self.decision.row_dims[node], source_of(node)) for node in boundaries),
            stops=tuple(self.decision.stops),
            max_abs_diff=float("nan"),
        )

    def _candidate_graph(self, output: fx.Node) -> tuple[fx.GraphModule, list[fx.Node]]:
        """The candidate graph, and the user-side tensors it reads (in graph order)."""
        crossing: set[fx.Node] = set()
        needed: set[fx.Node] = set()
        stack = [node for node in output.all_input_nodes]
        while stack:
            node = stack.pop()
            if node in needed or node in crossing:
                continue
            if self.sides[node] == "user" and node in self.decision.row_dims:
                crossing.add(node)
                continue
            needed.add(node)
            if node not in self.decision.batch_reads:
                stack.extend(node.all_input_nodes)
        graph = fx.Graph()
        inputs = [node for node in self.placeholders if self.sides[node] != "user"]
        env = {node: graph.placeholder(node.name) for node in inputs}
        boundaries = [node for node in self.remainder.graph.nodes if node in crossing]
        received = [graph.placeholder(f"user_{node.name}") for node in boundaries]
        if boundaries:
            rows = graph.call_function(torch.ops.aten.sym_size.int, (env[inputs[0]], 0))
            for node, tensor in zip(boundaries, received, strict=True):
                keep = [-1] * len(self.decision.row_dims[node])
                env[node] = graph.call_function(torch.ops.aten.expand.default, (tensor, [rows, *keep]))
        self._copy(graph, needed, env, env[inputs[0]])
        graph.output(tuple(env[leaf] if isinstance(leaf, fx.Node) else leaf for leaf in output.args[0]))  # type: ignore[union-attr]
        return fx.GraphModule(self.remainder, graph), boundaries

    def _user_graph(self, boundaries: Sequence[fx.Node]) -> fx.GraphModule:
        needed: set[fx.Node] = set()
        stack = list(boundaries)
        while stack:
            node = stack.pop()
            if node not in needed:
                needed.add(node)
                if node not in self.decision.batch_reads:
                    stack.extend(node.all_input_nodes)
        graph = fx.Graph()
        inputs = [node for node in self.placeholders if self.sides[node] == "user"]
        env = {node: graph.placeholder(node.name) for node in inputs}
        self._copy(graph, needed, env, env[inputs[0]])
        graph.output(tuple(env[node] for node in boundaries))
        return fx.GraphModule(self.remainder, graph)

    def _copy(self, graph: fx.Graph, needed: set[fx.Node], env: dict[fx.Node, fx.Node], batch_source: fx.Node) -> None:
        """Copy the needed nodes in graph order; a batch-size read reads this graph's own batch."""
        for node in self.remainder.graph.nodes:
            if node not in needed or node in env:
                continue
            if node in self.decision.batch_reads:
                env[node] = graph.call_function(torch.ops.aten.sym_size.int, (batch_source, 0))
            else:
                env[node] = graph.node_copy(node, lambda parent: env[parent])


def _difference(remainder: fx.GraphModule, split: UserSplit, flattened: Sequence[torch.Tensor]) -> float:
    """Largest |split - flattened| on a sample (inputs cut to the user's one row where they are user-side)."""
    with torch.no_grad():
        expected = remainder(*flattened)
        inputs = [tensor[:1] if i in split.user_inputs else tensor for i, tensor in enumerate(flattened)]
        got = split(inputs)
    worst = 0.0
    for ours, theirs in zip(got, expected, strict=True):
        if ours.shape != theirs.shape:
            return float("inf")
        worst = max(worst, float((ours - theirs).abs().max()) if ours.numel() else 0.0)
    return worst
