"""What reduced-precision rows cost in outputs and rankings, before deploying: `recgen quality`.

The served model equals the model whose rows went through its shards' quantize and dequantize (`recgen check`
verifies that within 1e-5 against a server), so the cost is measured offline: the same profile-shaped requests go
through the model with FP32 rows and through the rounded one. Every request is one ranking request of N
candidates (one user, N items; the user-side inputs are shared): the outputs' absolute change over all
candidates, and inside each request the agreement of the two orders of the first output (Kendall tau-b and the
overlap of the top k).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from generator import naming
from generator.errors import UserInputError
from generator.model.dlrm import DLRM
from generator.model.imported import ImportedModel
from generator.planning.plan import Model, Plan
from generator.planning.precision import dtype_summary, with_rounded_rows
from generator.traffic.profile import AccessProfile
from generator.traffic.requests import RankingRequest, reference_scores
from generator.traffic.sampler import TableTraffic, table_traffic

#: The ranking-agreement defaults: candidates per request and the top of the order compared.
DEFAULT_CANDIDATES = 256
DEFAULT_TOP_K = 10


def kendall_tau_b(first: np.ndarray, second: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors (1: same order, -1: reversed); ties in either count as tau-b says.

    O(N^2) over all pairs, exact. Two constant vectors agree (1.0); one constant against a varying one gives 0.0.
    """
    a, b = np.asarray(first, np.float64).ravel(), np.asarray(second, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"score vectors differ in length: {a.size} and {b.size}")
    upper = np.triu_indices(a.size, k=1)
    sign_a = np.sign(a[:, None] - a[None, :])[upper]
    sign_b = np.sign(b[:, None] - b[None, :])[upper]
    untied_a, untied_b = np.count_nonzero(sign_a), np.count_nonzero(sign_b)
    if untied_a == 0 and untied_b == 0:
        return 1.0
    if untied_a == 0 or untied_b == 0:
        return 0.0
    return float((sign_a * sign_b).sum() / np.sqrt(float(untied_a) * float(untied_b)))


def top_k_overlap(first: np.ndarray, second: np.ndarray, k: int) -> float:
    """Share of the top `k` of `first` that is also in the top `k` of `second` (ties broken by position)."""
    k = min(k, np.asarray(first).size)
    if k < 1:
        raise ValueError("top-k overlap needs k >= 1 and at least one score")
    top_first = np.argsort(-np.asarray(first, np.float64).ravel(), kind="stable")[:k]
    top_second = np.argsort(-np.asarray(second, np.float64).ravel(), kind="stable")[:k]
    return len(np.intersect1d(top_first, top_second)) / k


@dataclass(frozen=True)
class OutputChange:
    """How much one output moves over every candidate: the largest and the 99th-percentile absolute change."""

    name: str
    max_abs: float
    p99_abs: float


@dataclass(frozen=True)
class QualityReport:
    """What a plan's row dtypes cost: output changes, ranking agreement per request, and the bytes saved."""

    row_dtypes: str
    requests: int
    candidates: int
    top_k: int
    outputs: tuple[OutputChange, ...]
    kendall_tau: tuple[float, ...]  # per request
    top_k_overlaps: tuple[float, ...]  # per request
    fp32_bytes: int
    stored_bytes: int

    @property
    def memory_ratio(self) -> float:
        """Embedding bytes in fp32 / as stored (higher saves more)."""
        return self.fp32_bytes / self.stored_bytes if self.stored_bytes else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able figures."""
        return {
            "row_dtypes": self.row_dtypes,
            "requests": self.requests,
            "candidates": self.candidates,
            "top_k": self.top_k,
            "outputs": [vars(change) for change in self.outputs],
            "kendall_tau_mean": float(np.mean(self.kendall_tau)),
            "kendall_tau_min": float(np.min(self.kendall_tau)),
            "top_k_overlap_mean": float(np.mean(self.top_k_overlaps)),
            "top_k_overlap_min": float(np.min(self.top_k_overlaps)),
            "fp32_bytes": self.fp32_bytes,
            "stored_bytes": self.stored_bytes,
            "memory_ratio": self.memory_ratio,
        }

    def __str__(self) -> str:
        lines = [
            f"quality of {self.row_dtypes}: {self.requests} ranking requests x {self.candidates} candidates",
            f"  {'output':<24} {'max |change|':>13} {'p99 |change|':>13}",
        ]
        lines += [f"  {c.name:<24} {c.max_abs:>13.3g} {c.p99_abs:>13.3g}" for c in self.outputs]
        lines += [
            f"  ranking inside each request: Kendall tau mean {np.mean(self.kendall_tau):.4f} "
            f"(min {np.min(self.kendall_tau):.4f}); top-{self.top_k} overlap mean "
            f"{np.mean(self.top_k_overlaps):.3f} (min {np.min(self.top_k_overlaps):.3f})",
            f"  embedding rows: {self.stored_bytes / 1e6:.3f} MB as stored, {self.fp32_bytes / 1e6:.3f} MB in fp32 "
            f"-> {self.memory_ratio:.2f}x less",
        ]
        return "\n".join(lines)


def measure_quality(
    model: Model,
    plan: Plan,
    *,
    profile: AccessProfile | None = None,
    requests: int = 32,
    candidates: int = DEFAULT_CANDIDATES,
    top_k: int = DEFAULT_TOP_K,
    seed: int = 0,
) -> QualityReport:
    """Send the same `requests` ranking requests of `candidates` items through the FP32 and the rounded model.

    Ids follow `profile` (uniform over each table without one); dense features are standard normal.
    """
    if requests < 1 or candidates < 2 or top_k < 1:
        raise UserInputError(
            f"`requests` must be >= 1, `candidates` >= 2 and `top_k` >= 1; got {requests}, {candidates}, {top_k}"
        )
    plan.check_matches(model)
    rounded = with_rounded_rows(model, plan)
    draw, outputs_of = _request_source(model, profile), _outputs_function(model)
    rng = np.random.default_rng(seed)
    changes: list[list[np.ndarray]] = []
    taus, overlaps = [], []
    names: list[str] = []
    for _ in range(requests):
        tensors = draw(candidates, rng)
        names, exact = outputs_of(model, tensors)
        _, served = outputs_of(rounded, tensors)
        changes.append([np.abs(s - e).ravel() for s, e in zip(served, exact, strict=True)])
        first_exact, first_served = exact[0].reshape(candidates, -1)[:, 0], served[0].reshape(candidates, -1)[:, 0]
        taus.append(kendall_tau_b(first_exact, first_served))
        overlaps.append(top_k_overlap(first_exact, first_served, top_k))
    per_output = [np.concatenate([request[i] for request in changes]) for i in range(len(names))]
    return QualityReport(
        dtype_summary(plan),
        requests,
        candidates,
        top_k,
        tuple(
            OutputChange(name, float(c.max(initial=0.0)), float(np.percentile(c, 99)) if c.size else 0.0)
            for name, c in zip(names, per_output, strict=True)
        ),
        tuple(taus),
        tuple(overlaps),
        sum(t.spec.num_rows * t.spec.bytes_per_row for t in plan.tables),
        sum(t.embedding_bytes for t in plan.tables),
    )


Draw = Callable[[int, np.random.Generator], dict[str, np.ndarray]]


def _request_source(model: Model, profile: AccessProfile | None) -> Draw:
    """A function drawing one ranking request of N candidates as flattened tensors, user-side inputs shared."""
    if isinstance(model, ImportedModel):
        features = [
            (naming.sparse_input(f.name), naming.weights_input(f.name) if f.weighted else "", f, f.side)
            for f in model.features
        ]
        rows = {t.name: t.num_rows for t in model.tables}
        traffic = [
            (table_traffic(f.table, rows[f.table], f.max_ids_per_sample, profile), ids, weights, side)
            for ids, weights, f, side in features
        ]
        dense = [(name, width, model.side_of(name)) for name, width in model.dense_inputs]
    else:
        traffic = [
            (table_traffic(t.name, t.num_rows, t.max_ids_per_sample, profile), naming.sparse_input(t.name), "", t.side)
            for t in model.tables
        ]
        dense = [(naming.DENSE_FEATURES, model.num_dense_features, "item")]
        user_columns = model.dense_indices("user")

    def draw(count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tensors: dict[str, np.ndarray] = {}
        for name, width, side in dense:
            values = rng.standard_normal((count, width)).astype(np.float32)
            tensors[name] = np.repeat(values[:1], count, axis=0) if side == "user" else values
        if not isinstance(model, ImportedModel) and len(user_columns):
            tensors[naming.DENSE_FEATURES][:, user_columns] = tensors[naming.DENSE_FEATURES][:1, user_columns]
        for source, ids_name, weights_name, side in traffic:
            ids = _shared(source, count, side, rng)
            tensors[ids_name] = ids
            if weights_name:
                weights = rng.uniform(0.0, 2.0, ids.shape).astype(np.float32)
                tensors[weights_name] = np.repeat(weights[:1], count, axis=0) if side == "user" else weights
        return tensors

    return draw


def _shared(source: TableTraffic, count: int, side: str, rng: np.random.Generator) -> np.ndarray:
    """N candidates' ids of one feature; a user-side feature's row is drawn once and shared."""
    if side == "user":
        return np.repeat(source.sample_ids(1, rng), count, axis=0)
    return source.sample_ids(count, rng)


Outputs = Callable[[Model, dict[str, np.ndarray]], tuple[list[str], list[np.ndarray]]]


def _outputs_function(model: Model) -> Outputs:
    """How to compute a model's outputs for flattened tensors: names and arrays."""
    if isinstance(model, ImportedModel):
        names = [name for name, _ in model.outputs]

        def imported(which: Model, tensors: dict[str, np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
            assert isinstance(which, ImportedModel)
            return names, [np.asarray(a, np.float32) for a in which.served_outputs(tensors)]

        return imported

    def own(which: Model, tensors: dict[str, np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
        assert isinstance(which, DLRM)
        sparse = {t.name: tensors[naming.sparse_input(t.name)] for t in which.tables}
        return [naming.SCORE], [reference_scores(which, RankingRequest(tensors[naming.DENSE_FEATURES], sparse))]

    return own
