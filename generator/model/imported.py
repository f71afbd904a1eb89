"""Bring your own model: a module (with example inputs) or a `torch.export` program, cut at its embedding bags.

`import_module` exports the module twice: once as given, to learn which inputs are ids, offsets, KJT fields and
dense features, then with a dynamic batch (and dynamic id counts) from inputs recgen makes itself, so no batch size
is baked into the graph. `import_program` takes a program exported elsewhere (it must have a dynamic batch).
The result, `ImportedModel`, holds the tables (their rows, with learned per-row weights folded in), the features,
the dense inputs and outputs, the dense remainder, and the original program as the reference that
`recgen check` compares with, fed each request in the module's own input form (`module_inputs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from generator import naming
from generator.errors import ModelImportError, UserInputError
from generator.model.cut import cut_program
from generator.model.dlrm import PADDING_ID, Side, TableSpec
from generator.model.features import FeatureSpec
from generator.model.import_settings import IMPORT_SETTINGS_FILE, ImportSettings
from generator.model.input_form import by_parameter, dynamic_leaf, module_inputs, restructure
from generator.model.lookups import served_rows
from generator.model.program import Cut, Lookup, spec_children
from generator.model.pt2_files import quiet_tracing, tensors_written_in_place
from generator.model.user_split import UserSplit, split_user_side

#: Ids per sample of a feature unless `max_ids` says otherwise.
DEFAULT_MAX_IDS = 32
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
    #: Dense inputs that describe the user, not the candidate (sent once per ranking request).
    user_inputs: frozenset[str] = frozenset()
    #: Rows replaced (`with_rows`): the reference is then the remainder over them, not the original program.
    rows_replaced: bool = False

    def with_user_side(self, names: Iterable[str]) -> ImportedModel:
        """The same model with these features and dense inputs on the user side (the ranking ensemble's contract).

        Raises UserInputError naming what the model has when a name is neither, or when every input is named.
        """
        chosen = set(names)
        features = {f.name for f in self.features}
        dense = {name for name, _ in self.dense_inputs}
        unknown = sorted(chosen - features - dense)
        if unknown:
            raise UserInputError(
                f"`user_features` names {unknown}, which are neither features ({sorted(features)}) nor dense inputs "
                f"({sorted(dense)}) of the model"
            )
        if chosen >= features | dense:
            raise UserInputError("`user_features` names every input: the candidates of a request would score the same")
        sided = [replace(f, side="user" if f.name in chosen else "item") for f in self.features]
        return replace(self, features=sided, user_inputs=frozenset(chosen & dense))

    def side_of(self, dense_input: str) -> str:
        """The side ("user" or "item") of a dense input."""
        return "user" if dense_input in self.user_inputs else "item"

    @property
    def supports_ranking_requests(self) -> bool:
        """Whether something is user-side: only then does a ranking request compute anything once."""
        return bool(self.user_inputs) or any(f.side == "user" for f in self.features)

    def random_ranking_request(
        self, candidates: int, seed: int = 0
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """A ranking request and the same request flattened (the user's rows repeated N times), to compare.

        The ranking request names every tensor `<side>_<tensor>`: the user's [1, ...], the candidates' [N, ...].
        """
        flattened = self.random_request(candidates, seed)
        user = {name for name, _ in self.dense_inputs if name in self.user_inputs}
        for feature in self.features:
            if feature.side == "user":
                user.add(naming.sparse_input(feature.name))
                user |= {naming.weights_input(feature.name)} if feature.weighted else set()
        ranking = {}
        for name, array in flattened.items():
            if name in user:
                flattened[name] = np.repeat(array[:1], candidates, axis=0)
                ranking[naming.side_input(name, "user")] = array[:1].copy()
            else:
                ranking[naming.side_input(name, "item")] = array
        return ranking, flattened

    # -- the model protocol (generator.model.protocol.ServedModel) ------------------------------------------------

    @property
    def plan_features(self) -> tuple[FeatureSpec, ...]:
        """Every feature: a plan records the model's own."""
        return tuple(self.features)

    @property
    def dense_signature(self) -> list[tuple[str, int]]:
        """The module's dense inputs by name."""
        return self.dense_inputs

    def ranking_dense_tensors(self) -> list[tuple[str, Side, int]]:
        """Each dense input as `user_<name>` [1, width] or `item_<name>` [N, width]."""
        sides: dict[bool, Side] = {True: "user", False: "item"}
        return [
            (naming.side_input(name, sides[name in self.user_inputs]), sides[name in self.user_inputs], width)
            for name, width in self.dense_inputs
        ]

    @property
    def dense_graph(self) -> nn.Module:
        """The cut remainder: (dense inputs, one pool per feature) -> outputs."""
        return self.cut.remainder

    @property
    def numpy_dense(self) -> bool:
        """False: an imported dense graph is served by ONNX Runtime."""
        return False

    def numpy_tower(self) -> None:
        """None (see `numpy_dense`)."""
        return None

    @property
    def dense_parameter_bytes(self) -> int:
        """Bytes of the remainder's constants (its weights)."""
        return sum(t.numel() * t.element_size() for t in self.cut.remainder.buffers())

    @property
    def dense_description(self) -> str:
        """Its dense graph's size."""
        nodes = sum(1 for node in self.cut.remainder.graph.nodes if node.op == "call_function")
        return f"the model's dense graph, {nodes} ops"

    def user_split(self) -> UserSplit | None:
        """The remainder split between its user side (once per ranking request) and the candidates."""
        if not self.supports_ranking_requests:
            return None
        user_dense = [name in self.user_inputs for name, _ in self.dense_inputs]
        user_side = [*user_dense, *(feature.side == "user" for feature in self.features)]

        def samples(candidates: int, seed: int) -> list[torch.Tensor]:
            _, flattened = self.random_ranking_request(candidates, seed)
            return [*(torch.from_numpy(flattened[name]) for name, _ in self.dense_inputs), *self.pooled(flattened)]

        return split_user_side(self.cut.remainder, user_side, samples)

    def with_rows(self, rows: Mapping[str, torch.Tensor]) -> ImportedModel:
        """The same model serving these rows (read back from a reduced precision).

        The original program holds its own FP32 tables, so the reference becomes the remainder over these rows
        (the fp32 build checks that remainder against the whole program).
        """
        return replace(self, embeddings={**self.embeddings, **rows}, rows_replaced=True)

    def rows_of(self, table: str) -> torch.Tensor:
        """A table's served rows."""
        return self.embeddings[table]

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
        """Write the program (`.pt2`, dynamic batch) and how it was imported (`import_settings`) for load_model."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = ImportSettings.of(self.features, sorted(self.user_inputs)).to_json()
        with quiet_tracing(), tensors_written_in_place():
            torch.export.save(self.program, path, extra_files={IMPORT_SETTINGS_FILE: record})
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
            notes: list[str] = [feature.pooling]
            notes += ["per-row weights folded"] if lookup.row_weights else []
            notes += [f"weighted by {naming.weights_input(feature.name)}"] if feature.weighted else []
            lines.append(
                f"  feature {naming.sparse_input(feature.name)} [B, {feature.max_ids_per_sample}] -> {feature.table} "
                f"({', '.join(notes)}; {lookup.module})"
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
        """What the original program returns for a request, one array per output (see `with_rows`)."""
        if self.rows_replaced:
            return self.served_outputs(request)
        with torch.no_grad(), quiet_tracing():
            args, kwargs = self.module_inputs(request)
            result = self.reference(*args, **kwargs)
        return [np.asarray(t.detach().cpu().numpy(), dtype=np.float32) for t in pytree.tree_leaves(result)]

    def pooled(self, request: Mapping[str, np.ndarray]) -> list[torch.Tensor]:
        """Each feature's pool from the served rows, as the shard steps and the dense step compute it."""
        pools = []
        for feature in self.features:
            ids = torch.from_numpy(np.asarray(request[naming.sparse_input(feature.name)], dtype=np.int64))
            present = (ids >= 0) & (ids != feature.padding_id)  # the router drops the padding id like -1
            rows = nn.functional.embedding(torch.where(present, ids, 0), self.embeddings[feature.table])
            scale = present.to(torch.float32)
            if feature.weighted:
                scale = scale * torch.from_numpy(np.asarray(request[naming.weights_input(feature.name)], np.float32))
            total = (rows * scale.unsqueeze(-1)).sum(dim=1)
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
            if lookup.padding_idx is not None:  # the module's padding id, sent now and then: it pools nothing
                ids[:, 0] = np.where(generator.random(batch) < 0.3, lookup.padding_idx, ids[:, 0])
            lengths = generator.integers(0 if lookup.source.form != "ids_2d" else width, width + 1, batch)
            if lookup.source.form == "ids_2d" and lookup.padding_idx is not None:
                lengths = generator.integers(0, width + 1, batch)
            ids[np.arange(width)[None, :] >= lengths[:, None]] = PADDING_ID
            request[naming.sparse_input(feature.name)] = ids.astype(np.int64)
            if feature.weighted:
                request[naming.weights_input(feature.name)] = generator.uniform(0.0, 2.0, (batch, width)).astype(
                    np.float32
                )
        return request


def _export(module: nn.Module, args: tuple[Any, ...], dynamic_shapes: Any = None) -> torch.export.ExportedProgram:
    try:
        with quiet_tracing():
            return torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
    except ModelImportError:
        raise
    except Exception as error:  # torch.export raises many types; all mean "this module does not trace"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        data_dependent = "datadependent" in type(error).__name__.lower() or "data-dependent" in str(error).lower()
        hint = "; data-dependent branches on ids or values cannot be served as a fixed graph" if data_dependent else ""
        what = f"torch.export could not trace the module ({type(error).__name__}: {first_line}){hint}"
        raise ModelImportError(what) from error


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
    id_dims: dict[int, Any] = {}
    flat = [dynamic_leaf(first, leaf, path, keys[leaf], id_dims) for leaf, path in enumerate(first.leaves)]
    args_spec, _ = spec_children(first.in_spec)
    dynamic_shapes = restructure(args_spec, flat[: args_spec.num_leaves])
    program = _export(module, args, by_parameter(module.forward, dynamic_shapes))
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
            weighted=lookup.weighted,
            padding_id=-1 if lookup.padding_idx is None else lookup.padding_idx,
        )
        for lookup in cut.lookups
    ]
    embeddings: dict[str, torch.Tensor] = {}
    tables: dict[str, TableSpec] = {}
    for lookup, feature in zip(cut.lookups, features, strict=True):
        rows = served_rows(program, lookup)
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
