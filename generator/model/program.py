"""An exported program as recgen reads it: its flattened inputs, its parameters, and what a cut of it yields.

One owner for the value types the cut hands on (`Lookup`, `IdSource`, `DenseInput`, `Cut`) and for how the
module's inputs are named (`LeafPath`): `lookups` finds the embedding-bag lookups, `cut` builds the remainder,
`imported` feeds requests to the module in its own input form.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import fx
from torch.utils import _pytree as pytree

from generator.errors import ModelImportError
from generator.model.features import Pooling

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
    #: Request-time per-sample weights: the flattened input holding them (laid out as the ids) and its row or key.
    weights_leaf: int | None = None
    weights_select: int | None = None

    @property
    def weighted(self) -> bool:
        """Whether every id comes with a weight in the request (`weights_<feature>`)."""
        return self.weights_leaf is not None


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


def sanitize(name: str, prefix: str) -> str:
    """A valid recgen identifier from a parameter path or input name (`emb_l.0` -> `emb_l_0`)."""
    cleaned = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9]+", "_", name)).strip("_")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"{prefix}_{cleaned}".rstrip("_")
    return cleaned[:64].rstrip("_")


def leaf_paths(in_spec: pytree.TreeSpec) -> list[LeafPath]:
    """Every flattened input's name and container, walking the program's input tree spec."""
    paths: list[LeafPath] = []

    def walk(spec: pytree.TreeSpec, name: str, container: str, field: str, keys: tuple[str, ...]) -> None:
        if spec.is_leaf():
            paths.append(LeafPath(sanitize(name, "input"), None, container, field, keys))
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


def dtype_of(node: fx.Node) -> torch.dtype | None:
    """A placeholder's dtype (None for an input that is None)."""
    value = node.meta.get("val")
    return value.dtype if isinstance(value, torch.Tensor) else None


def fail(node: fx.Node, message: str) -> ModelImportError:
    """An import error naming the module, the line of the user's code and the graph node it is about."""
    source = source_of(node)
    at = f", at {source}" if source else ""
    return ModelImportError(f"{message} (module {module_of(node)!r}{at}, graph node {node.name!r}: {node.target})")


#: The module path torch.export gives a node it traced outside any module's forward (not a path of the user's).
_NO_MODULE = "_empty_nn_module_stack"


def module_of(node: fx.Node) -> str:
    """The module path a graph node was traced in (the innermost of the user's modules)."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [str(path) for path, _ in stack.values() if str(path) and not str(path).startswith(_NO_MODULE)]
    return paths[-1] if paths else "<top level>"


def source_of(node: fx.Node) -> str:
    """`file.py:line in function` of the user's code that traced the node ("" when only torch's code did)."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', str(node.meta.get("stack_trace") or ""))
    torch_dir = Path(torch.__file__).parent  # torch names its own frames relative ("torch/fx/...") or in full
    own = [f for f in frames if not (Path(f[0]).is_relative_to(torch_dir) or Path(f[0]).parts[:1] == ("torch",))]
    if not own:
        return ""
    path, line, function = own[-1]
    return f"{Path(path).name}:{line} in {function}"


class ProgramIndex:
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
            else dataclasses.replace(path, name=sanitize(name, "input"), dtype=dtype_of(nodes[name]))
            for path, name in zip(paths, self.user_inputs, strict=True)
        ]

    def tensor(self, name: str) -> torch.Tensor:
        """A parameter, buffer or constant by its name in the program."""
        if name in self.program.state_dict:
            return self.program.state_dict[name]
        return self.program.constants[name]

    def leaf(self, node: fx.Node) -> int | None:
        """The flattened-input position of a user-input placeholder (None for parameters and constants)."""
        return self.leaf_of.get(node.name)
