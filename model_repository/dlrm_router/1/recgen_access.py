"""Traffic the routers count: every routed id per table and original row, and the front cache's hits.

Every router instance (a stub process) counts into its own files, memory-mapped under
`<directory>/recgen-<uid>/access/<server pid>/<key>.<model>.<pid>.*` (a private folder per user, `recgen_runtime`):
`counts.npy` (uint32, every table's rows one after the other; a count stops at 2**32 - 1), `samples.npy` (int64
per table) and `since.npy` (the Unix time the window began).
The server's profile model sums the files of its own server (`collect`); the stubs of one server share the
server's process as parent, so they agree on the directory without being told. /dev/shm is memory, so the files
cost what the touched pages cost and vanish with the machine; files of servers that are gone are removed by the
next router that starts. An instance that is gone while its server serves on (`recgen update` replaced it, or the
supervisor restored its model) keeps its counts in the window: they are added to one retired set per key
(`<key>.retired.*`) and its files removed, so a server holds at most its live instances' files plus that set.
Copied next to every model.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import recgen_compiled as compiled
from . import recgen_params as params
from . import recgen_runtime as runtime
from . import recgen_triton

pb_utils = recgen_triton.utils()  # Triton's utilities inside a stub, None in tooling and tests

COUNTS_SUFFIX = ".counts.npy"
#: The middle name of a key's retired set: the counts of the instances that are gone, added up.
RETIRED = "retired"
_LOCK_FILE = ".retire.lock"
#: Rows added at a time when an instance is retired (bounds the temporary memory).
_RETIRE_CHUNK = 1 << 20
SAMPLES_SUFFIX = ".samples.npy"
SINCE_SUFFIX = ".since.npy"
#: The files a counters folder may hold (what a gone server's folder must hold only, to be removed).
_OURS = (COUNTS_SUFFIX, SAMPLES_SUFFIX, SINCE_SUFFIX, _LOCK_FILE)
#: The largest count a row keeps.
MAX_COUNT = np.iinfo(np.uint32).max


@dataclass(frozen=True)
class AccessCounter:
    """One router instance's counters and where every id column of its requests lands in them."""

    counts: np.ndarray  # uint32 [sum of rows], memory-mapped
    samples: np.ndarray  # int64 [tables]
    since: np.ndarray  # float64 [1]
    column_base: np.ndarray  # int64 [C]: first counter of each id column's table
    user_tables: np.ndarray  # bool [tables]: the table's ids come once per ranking request


#: The folder kind of the counters (`recgen_runtime.server_folder`).
FOLDER_KIND = "access"


def server_directory(directory: str | Path) -> Path:
    """Where the stubs of this process's server keep their counters (created private; gone servers' removed)."""
    return runtime.server_folder(directory, FOLDER_KIND, _OURS)


def open_counter(
    spec: params.AccessCountsParams, model_name: str, feature_tables: list[str], ids_per_sample: list[int],
    sides: list[str], feature_rows: list[int] | None = None,
) -> AccessCounter:  # fmt: skip
    """Create this instance's zeroed counters (and remove the files of servers that are gone).

    `feature_rows`: the rows the router lets each feature's ids reach; the counters must hold as many (the compiled
    counting does not check its writes), else ParameterError.
    """
    for table, rows in zip(feature_tables, feature_rows or [], strict=False):
        if table not in spec.tables or spec.num_rows[spec.tables.index(table)] != rows:
            raise params.ParameterError(f"access_counts: table {table!r} does not count {rows} rows as routed")
    folder = server_directory(spec.directory)
    retire_gone_instances(folder)
    stem = folder / f"{spec.key}.{model_name}.{os.getpid()}"
    counts = np.lib.format.open_memmap(f"{stem}{COUNTS_SUFFIX}", "w+", np.uint32, (sum(spec.num_rows),))
    samples = np.lib.format.open_memmap(f"{stem}{SAMPLES_SUFFIX}", "w+", np.int64, (len(spec.tables),))
    since = np.lib.format.open_memmap(f"{stem}{SINCE_SUFFIX}", "w+", np.float64, (1,))
    since[0] = time.time()
    first = np.cumsum([0, *spec.num_rows])[:-1]
    table_of = [spec.tables.index(table) for table in feature_tables]
    column_base = np.concatenate(
        [np.full(width, first[table], np.int64) for table, width in zip(table_of, ids_per_sample, strict=True)]
    )
    user = np.zeros(len(spec.tables), dtype=bool)
    for table_index, side in zip(table_of, sides, strict=True):
        user[table_index] = side == "user"
    return AccessCounter(np.asarray(counts), np.asarray(samples), np.asarray(since), column_base, user)


def record(counter: AccessCounter, ids: np.ndarray, ranking: bool) -> None:
    """Count the ids of one routed batch ([B, C] original ids, -1 = none) and its samples.

    A ranking batch is one user row and N candidate rows: the user's tables see one sample, the others N.
    """
    compiled.count_ids(ids, counter.column_base, counter.counts)
    batch = ids.shape[0]
    counter.samples[:] += np.where(counter.user_tables, 1, batch - 1) if ranking else batch


@dataclass(frozen=True)
class CollectedCounts:
    """Every instance's counts of one key summed: per table [rows] int64, samples per table, the window's start."""

    counts: list[np.ndarray]
    samples: np.ndarray
    since_unix_s: float
    instances: int


def collect(spec: params.AccessCountsParams, reset: bool = False) -> CollectedCounts:
    """Sum the counters of every router instance of `spec.key` on this server; with `reset`, zero them after.

    Counts an instance adds between the read and the reset are lost (the reset is not atomic across processes).
    """
    total = np.zeros(sum(spec.num_rows), dtype=np.int64)
    samples = np.zeros(len(spec.tables), dtype=np.int64)
    since, instances = time.time(), 0
    folder = server_directory(spec.directory)
    if folder.is_dir():
        retire_gone_instances(folder)
    for counts_path in sorted(folder.glob(f"{spec.key}.*{COUNTS_SUFFIX}")):
        stem = str(counts_path)[: -len(COUNTS_SUFFIX)]
        try:
            counts = np.load(counts_path, mmap_mode="r+" if reset else "r")
            seen = np.load(f"{stem}{SAMPLES_SUFFIX}", mmap_mode="r+" if reset else "r")
            started = np.load(f"{stem}{SINCE_SUFFIX}", mmap_mode="r+" if reset else "r")
        except (OSError, ValueError):  # an instance starting right now: its files are not complete yet
            continue
        if counts.shape != total.shape or seen.shape != samples.shape:
            continue  # an instance of an older build of the same key
        total += counts
        samples += seen
        since = min(since, float(started[0]))
        instances += 0 if stem.endswith(f".{RETIRED}") else 1
        if reset:
            counts[:] = 0
            seen[:] = 0
            started[0] = time.time()
    edges = np.cumsum([0, *spec.num_rows])
    return CollectedCounts([total[a:b] for a, b in itertools.pairwise(edges)], samples, since, instances)


def _instance_pid(counts_path: Path) -> int | None:
    """The process of an instance's files (`<key>.<model>.<pid>.counts.npy`); None for a retired set."""
    pid = counts_path.name[: -len(COUNTS_SUFFIX)].rpartition(".")[2]
    return int(pid) if pid.isdigit() else None


def retire_gone_instances(folder: Path) -> int:
    """Add the counters of every instance whose process is gone to its key's retired set, then remove its files.

    Runs under a lock on the folder (the profile model, a starting router and `recgen serve` may all call it);
    returns how many instances it retired.
    """
    retired = 0
    with open(folder / _LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for counts_path in sorted(folder.glob(f"*{COUNTS_SUFFIX}")):
            pid = _instance_pid(counts_path)
            if pid is None or Path(f"/proc/{pid}").exists():
                continue
            stem = str(counts_path)[: -len(COUNTS_SUFFIX)]
            key = counts_path.name.split(".", 1)[0]
            with contextlib.suppress(OSError, ValueError):  # files of an instance that died while starting
                _add_to_retired(folder / f"{key}.{RETIRED}", stem)
            for suffix in (COUNTS_SUFFIX, SAMPLES_SUFFIX, SINCE_SUFFIX):
                Path(f"{stem}{suffix}").unlink(missing_ok=True)
            retired += 1
    return retired


def _add_to_retired(retired_stem: Path, stem: str) -> None:
    counts = np.load(f"{stem}{COUNTS_SUFFIX}", mmap_mode="r")
    samples = np.load(f"{stem}{SAMPLES_SUFFIX}", mmap_mode="r")
    since = np.load(f"{stem}{SINCE_SUFFIX}", mmap_mode="r")
    paths = [f"{retired_stem}{suffix}" for suffix in (COUNTS_SUFFIX, SAMPLES_SUFFIX, SINCE_SUFFIX)]
    if not Path(paths[0]).exists():
        np.lib.format.open_memmap(paths[0], "w+", np.uint32, counts.shape)
        np.lib.format.open_memmap(paths[1], "w+", np.int64, samples.shape)
        np.lib.format.open_memmap(paths[2], "w+", np.float64, (1,))[0] = float(since[0])
    total = np.load(paths[0], mmap_mode="r+")
    seen = np.load(paths[1], mmap_mode="r+")
    start = np.load(paths[2], mmap_mode="r+")
    if total.shape != counts.shape or seen.shape != samples.shape:
        return  # an instance of an older build of the same key: its counts do not fit this window
    for first in range(0, counts.size, _RETIRE_CHUNK):
        part = slice(first, first + _RETIRE_CHUNK)
        total[part] = np.minimum(total[part].astype(np.int64) + counts[part], MAX_COUNT)
    seen += samples
    start[0] = min(float(start[0]), float(since[0]))


@dataclass
class CacheCounts:
    """Ids of cached tables the router saw, and how many of them its front cache served."""

    lookups: int = 0
    hits: int = 0


#: Prometheus counters of the front cache (labelled with the router's model name) on the server's /metrics.
CACHE_LOOKUPS_METRIC = "recgen_front_cache_lookups_total"
CACHE_HITS_METRIC = "recgen_front_cache_hits_total"


def cache_metrics(model_name: str) -> tuple[Any, Any, list[Any]] | None:
    """(lookups, hits, their families) counters; None where the backend has no custom metrics.

    The families are returned too: the backend refuses to touch a metric whose family was garbage-collected.
    """
    try:
        families = [
            pb_utils.MetricFamily(name=name, description=text, kind=pb_utils.MetricFamily.COUNTER)
            for name, text in (
                (CACHE_LOOKUPS_METRIC, "ids of front-cached tables the router saw"),
                (CACHE_HITS_METRIC, "of those, ids the router's front cache pooled itself"),
            )
        ]
        lookups, hits = (family.Metric(labels={"model": model_name}) for family in families)
    except Exception as error:  # an older backend, or metrics disabled
        pb_utils.Logger.log_warn(f"front cache metrics unavailable ({error}); routing is unaffected")
        return None
    return lookups, hits, families
