"""The bundled example models: the example the demo and the benchmarks serve, and the tiny one the project commits."""

from __future__ import annotations

from generator.model.dlrm import DLRM, Side, TableSpec


def _sides(*, user: int, item: int) -> list[Side]:
    """The first `user` dense features user-side, the next `item` item-side."""
    sides: list[Side] = ["user"] * user
    return sides + ["item"] * item


def example_model(seed: int = 0) -> DLRM:
    """The bundled example: 8 tables of very different row counts (1 to 200k), dim 16.

    The user, the query and the context (5 tables, the first 6 dense features) are user-side: one value per
    ranking request; the candidate item (3 tables, 7 dense features) is item-side.
    """
    dim = 16
    tables = [
        TableSpec("user_id", 200_000, dim, 1, "user"),
        TableSpec("item_id", 100_000, dim, 1),
        TableSpec("item_category", 1_000, dim, 3),
        TableSpec("user_history", 50_000, dim, 20, "user"),
        TableSpec("query_terms", 20_000, dim, 8, "user"),
        TableSpec("device", 12, dim, 1, "user"),
        TableSpec("country", 200, dim, 1, "user"),
        TableSpec("bias", 1, dim, 1),
    ]
    return DLRM(
        num_dense_features=13,
        tables=tables,
        bottom_mlp=[64, 32, dim],
        top_mlp=[64, 32, 1],
        seed=seed,
        dense_sides=_sides(user=6, item=7),
    ).eval()


def tiny_example_model(seed: int = 0) -> DLRM:
    """A tiny example (4 tables of 20 to 1,000 rows, dim 8) whose generated repository the project commits.

    It has user- and item-side features, so its repository holds the ranking ensemble too, in well under 1 MB.
    """
    dim = 8
    tables = [
        TableSpec("user_id", 500, dim, 1, "user"),
        TableSpec("user_history", 300, dim, 4, "user"),
        TableSpec("item_id", 1_000, dim, 1),
        TableSpec("item_category", 20, dim, 2),
    ]
    return DLRM(
        num_dense_features=4,
        tables=tables,
        bottom_mlp=[16, dim],
        top_mlp=[16, 1],
        seed=seed,
        dense_sides=_sides(user=2, item=2),
    ).eval()
