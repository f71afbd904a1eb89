"""How recgen runs Triton: one description for the embedded server, the `docker run` line and the Deployments.

It holds the image the generated repositories are written for (Triton 2.51 = NGC 24.10), the flags every server
gets, the environment of every Python-backend stub, the shared memory the Python backend uses and the tritonclient
pin a front server's remote steps need. Each place that starts a server adds only what is its own (ports and the
backend directory of the embedded server; model control and API restrictions of a pod).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath

from generator.triton_models import recgen_admission as admission

#: Image the `container` target and the Deployments are written for.
NGC_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
#: What a front server's image adds to the Triton image: its remote steps are gRPC clients.
TRITONCLIENT_REQUIREMENT = "tritonclient[grpc]==2.51.0"
NUMPY_REQUIREMENT = "numpy<2"
#: What the compiled per-request kernels (recgen_compiled.py) need in an image; without it they run on numpy.
NUMBA_REQUIREMENT = "numba==0.68.1"
#: Where numba keeps the compiled kernels between starts (`/tmp` is an emptyDir on Kubernetes; the repository
#: itself may be read-only). The embedded server uses a directory of the user's own instead.
NUMBA_CACHE_DIR = "/tmp/recgen-numba"
#: Ports every server listens on inside a container or pod (Triton's defaults).
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002

#: Environment of every server (and so of every Python-backend stub it starts). Every instance is a process:
#: BLAS/OpenMP pools of one thread per core in each oversubscribe the cores many times over, so one thread each.
#: glibc returns freed blocks over 128 KB to the kernel at once, so every batch's arrays came back as fresh pages
#: (a quarter of the dense step's CPU went to page faults): keep up to 32 MB blocks on the heap, trim at 256 MB.
SERVING_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
    # Each of tritonserver's many threads gets a malloc arena that keeps what it freed: an oversized request that
    # was rejected still left its buffers behind in some arena. Two arenas bound that (measured: +160 MB after 12
    # rejected 104 MB gRPC requests, flat from the 3rd, against +570 MB and growing).
    "MALLOC_ARENA_MAX": "2",
    "NUMBA_CACHE_DIR": NUMBA_CACHE_DIR,
}
#: Python-backend shared memory per instance (bytes); it grows on demand by the growth size.
SHM_DEFAULT_BYTES = 4 * 1024 * 1024
SHM_GROWTH_BYTES = 1024 * 1024
#: Header that unlocks the restricted APIs; its value is a key only recgen holds (per run, or from a Secret).
ADMIN_HEADER = "recgen-admin-key"
#: APIs no client needs at serving time: model control, shared-memory registration (a client could point the
#: server at a stub's own region and crash it), log settings and tracing. Statistics, metadata and health stay open.
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
#: What a shed request is answered (UNAVAILABLE): the router's admission control, and Triton's own queue policy
#: (which recgen no longer writes, but a hand-edited config may have). A client may retry these later; they are
#: load shed on purpose, not failures.
REJECTION_MESSAGES = (admission.SHED_MESSAGE, "Request timeout expired", "Exceeds maximum queue size")
#: `/dev/shm` of a container (`docker run --shm-size`); Docker's 64 MB default is too small for many instances.
CONTAINER_SHM_SIZE = "1g"


def server_flags(*, gpu: bool) -> list[str]:
    """Flags of every recgen server, whatever starts it.

    Configs are complete, so the server must not change them behind our back; readiness counts every model; a model
    that fails to load stops the server; no request's buffers outlive it. Without a GPU the pinned-memory pool is
    only a cost.
    """
    flags = [
        "--disable-auto-complete-config",
        # Pooled gRPC request objects keep the buffers of the largest requests they carried, rejected ones included.
        "--grpc-infer-allocation-pool-size=0",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
        f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
    ]
    if not gpu:
        flags.append("--pinned-memory-pool-byte-size=0")
    return flags


def restricted_api_flags(key: str) -> list[str]:
    """Flags that put RESTRICTED_APIS behind `ADMIN_HEADER: key` over HTTP and gRPC alike."""
    restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={key}"
    return [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]


def supervised_flags(key: str) -> list[str]:
    """Flags of a server that `recgen serve` supervises: every model loaded, reloads through the restricted API.

    Explicit model control is what lets the supervisor unload and load again a model whose stub broke; only the
    holder of `key` may use it. A model whose stub died never finishes unloading in 2.51, so the server would wait
    its whole 30 s exit timeout on it at shutdown: 10 s is enough for in-flight requests here.
    """
    return [
        "--model-control-mode=explicit",
        "--load-model=*",
        "--exit-timeout-secs=10",
        *restricted_api_flags(key),
    ]


def docker_run_command(repositories: Sequence[tuple[str | PurePath, str]], *, gpu: bool, image: str = NGC_IMAGE) -> str:
    """`docker run` serving host directories (host path, container path) in the Triton image."""
    volumes = " ".join(f"-v {host}:{inside}" for host, inside in repositories)
    environment = " ".join(f"-e {name}={value}" for name, value in SERVING_ENV.items())
    ports = f"-p {HTTP_PORT}:{HTTP_PORT} -p {GRPC_PORT}:{GRPC_PORT} -p {METRICS_PORT}:{METRICS_PORT}"
    # The restricted APIs behind a key drawn at each start that nobody holds: closed (no model control here).
    nobody_holds = "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n')"
    arguments = " ".join(
        [
            *(f"--model-repository={inside}" for _, inside in repositories),
            *server_flags(gpu=gpu),
            *(f'"{flag}"' for flag in restricted_api_flags(nobody_holds)),
        ]
    )
    gpus = "--gpus=all " if gpu else ""
    return (
        f"docker run --rm {gpus}--shm-size={CONTAINER_SHM_SIZE} {ports} {environment} {volumes} "
        f"{image} tritonserver {arguments}"
    )
