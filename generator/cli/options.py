"""What every `recgen` command shares: error reporting, the options that recur, and which options were given."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from generator.check.client import PROTOCOLS
from generator.errors import RecgenError
from generator.planning import queueing
from generator.planning.choices import DEVICES
from generator.planning.plan import DEFAULT_MAX_BATCH_SIZE, GROUP_BY, LOOKUP_ENGINES, LOOKUP_STEPS
from generator.repository.configs import BACKENDS, TARGETS

F = TypeVar("F", bound=Callable[..., Any])


#: Exit status of a command stopped with Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_EXIT_CODE = 130


def reports_errors(function: F) -> F:
    """Print `ErrorType: message` and exit 1 instead of a traceback for errors recgen raises on purpose.

    Ctrl-C prints one line and exits 130: every output is staged and published all or nothing, so an interrupted
    command has changed none.
    """

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except RecgenError as error:
            click.echo(f"{type(error).__name__}: {error}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: no output was changed (outputs are replaced all or nothing)", err=True)
            sys.exit(INTERRUPTED_EXIT_CODE)

    return wrapper  # type: ignore[return-value]


def given(context: click.Context, *names: str) -> list[str]:
    """Which of the named parameters the user set explicitly (not left at their defaults)."""
    return [name for name in names if context.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)]


def flag(name: str) -> str:
    """A parameter's flag as the user types it."""
    return "--" + name.replace("_", "-")


def model_file(
    *,
    required: bool = True,
    help_text: str = "recgen DLRM file (`recgen example`, DLRM.save) or a torch.export program (.pt2).",
) -> Any:
    """`--model PATH` of a model file (`generator.model.loading`)."""
    return click.option(
        "--model",
        "model_path",
        required=required,
        default=None,
        type=click.Path(dir_okay=False, path_type=Path),
        help=help_text,
    )


def _parse_max_ids(context: click.Context, parameter: click.Parameter, values: tuple[str, ...]) -> dict[str, int]:
    limits: dict[str, int] = {}
    for value in values:
        feature, _, count = value.rpartition("=")
        try:
            number = int(count)
        except ValueError:
            raise click.BadParameter(f"{value!r}: expected FEATURE=L or L (an integer)") from None
        if not 1 <= number <= 1 << 16:
            raise click.BadParameter(f"{value!r}: L must be in 1..{1 << 16}")
        limits[feature or "*"] = number
    return limits


def _parse_names(context: click.Context, parameter: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name.strip() for value in values for name in value.split(",") if name.strip())


user_features = click.option(
    "--user-features",
    multiple=True,
    callback=_parse_names,
    metavar="NAME[,NAME...]",
    help="Imported models: features and dense inputs that describe the user (sent once per `<name>_ranking` "
    "request; the user's rows are pooled once for all N candidates).",
)


max_ids = click.option(
    "--max-ids",
    multiple=True,
    callback=_parse_max_ids,
    metavar="[FEATURE=]L",
    help="Imported models: ids per sample of a feature's `sparse_<feature>` tensor (repeatable; a bare L sets the "
    "default, 32 unless given). Requests above it are refused.",
)


def out_file(*, help_text: str = "Where to write it.", default: Path | None = None) -> Any:
    """`-o/--out PATH` of an output file."""
    return click.option(
        "-o",
        "--out",
        "out_path",
        required=default is None,
        default=default,
        show_default=default is not None,
        type=click.Path(dir_okay=False, path_type=Path),
        help=help_text,
    )


def out_dir(*, default: Path | None = None, help_text: str = "Output directory.", dest: str = "out_path") -> Any:
    """`-o/--out DIR` of an output directory."""
    return click.option(
        "-o",
        "--out",
        dest,
        required=default is None,
        default=default,
        show_default=default is not None,
        type=click.Path(file_okay=False, path_type=Path),
        help=help_text,
    )


def directory(name: str, default: str | None, help_text: str, dest: str | None = None) -> Any:
    """A `--NAME DIR` option."""
    return click.option(
        f"--{name}",
        dest or name.replace("-", "_"),
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(default) if default else None,
        show_default=default is not None,
        help=help_text,
    )


force = click.option("--force", is_flag=True, help="Replace an existing output directory.")
seed = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
backend = click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="python",
    show_default=True,
    help="numpy models (python) or models exported with torch.onnx.export (onnx).",
)
target = click.option(
    "--target",
    type=click.Choice(TARGETS),
    default="embedded",
    show_default=True,
    help="embedded: the pytriton server (ONNX runs via ORT in a Python model); "
    "container: native onnxruntime configs for the NGC image.",
)
shards_per_table = click.option(
    "--shards-per-table",
    type=click.IntRange(1, 4096),
    default=2,
    show_default=True,
    help="Cut every table into up to K contiguous row ranges (without --plan).",
)
device = click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="cpu",
    show_default=True,
    help="Instance kind of shards and the dense model (the router always runs on CPU).",
)
instances = click.option(
    "--instances", type=click.IntRange(1, 256), default=1, show_default=True, help="Instances per model."
)
protocol = click.option("--protocol", type=click.Choice(PROTOCOLS), default="http", show_default=True)
ensemble_name = click.option(
    "--name", default="dlrm", show_default=True, help="Model name = the ensemble clients call."
)
group_by = click.option(
    "--group-by",
    type=click.Choice(GROUP_BY),
    default=None,
    help="Serve shards with the same placement as one model (fewer steps), or one model per shard "
    "[default: placement for one server, shard for the distributed layout].",
)
built_plan = click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The plan.json the repository was built from (its row dtypes and hotness order) [default: a uniform plan].",
)
row_dtype = click.option(
    "--row-dtype",
    "row_dtypes",
    multiple=True,
    metavar="[TABLE=]DTYPE",
    help="How embedding rows are stored: fp32, fp16, or int8 (row-wise: every row keeps its own FP32 scale and "
    "offset); DTYPE alone sets every table, TABLE=DTYPE one table. Repeatable [default: the plan's, else fp32].",
)
lookup_step = click.option(
    "--lookup-step",
    type=click.Choice(LOOKUP_STEPS),
    default=None,
    help="fused: the router pools the shard groups on its device in its own step (a two-step ensemble); "
    "separate: every shard group is its own step [default: the plan's; without a plan file fused, and separate "
    "for the distributed layout, whose fronts pool what the router pools and serve every other group apart].",
)
lookup_engine = click.option(
    "--lookup-engine",
    type=click.Choice(LOOKUP_ENGINES),
    default=None,
    help="What serves the routers and the CPU shard groups: native (recgen's C++ Triton backend, built by the set-up "
    "commands; docs/native.md) or python (the Python-backend models) [default: the plan's, else native where it is "
    "built and the target is embedded, else python, with a note saying why].",
)
max_batch_size = click.option(
    "--max-batch-size",
    type=click.IntRange(1, 1 << 20),
    default=DEFAULT_MAX_BATCH_SIZE,
    show_default=True,
    help="Largest number of candidates per request.",
)


latency_slo_ms = click.option(
    "--latency-slo-ms",
    type=click.FloatRange(*queueing.LATENCY_SLO_RANGE_MS),
    default=queueing.DEFAULT_LATENCY_SLO_MS,
    show_default=True,
    help="Latency target of a request: a request that would queue past half of it is shed at once (UNAVAILABLE, "
    "named) instead of waiting without bound; see --shedding.",
)


allow_non_finite = click.option(
    "--allow-non-finite",
    is_flag=True,
    help="Pass NaN and infinite dense features and weights on to the model, as PyTorch would (by default the "
    "router rejects such a request with an error naming the tensor).",
)
no_access_counts = click.option(
    "--no-access-counts",
    is_flag=True,
    help="The routers count no accesses (no per-row counters in their memory; `recgen profile --from-server` then "
    "has nothing to read).",
)
shedding = click.option(
    "--shedding",
    type=click.Choice(["router", "queue-policy"]),
    default=None,
    help="Who sheds requests that would queue past half the latency target. router (the plan's default): the "
    "router, from the server's metrics; no stalls, but each shed request costs a Python step, so goodput falls "
    "beyond about 2x capacity on a saturated server. queue-policy: Triton's queue policy on every step; cheap "
    "rejections under heavy overload, with Triton 2.51's ~0.5 s batcher stalls (docs/faults.md).",
)


def batch(default: int, help_text: str = "Candidates (samples) per request.") -> Any:
    """`--batch B`."""
    return click.option("--batch", type=click.IntRange(1), default=default, show_default=True, help=help_text)
