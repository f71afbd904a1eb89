"""The images `recgen k8s` writes: a Dockerfile per built component and the script that builds and pushes them.

Each image is FROM the Triton image, with numba, the front's gRPC client, the baked-in repository (`--source
image`), and recgen's native backend compiled from source in the image (see `dockerfile`).
"""

from __future__ import annotations

import shlex

from generator import native, triton_runtime
from generator.deploy.k8s_objects import (
    IMAGE_REPOSITORY_PATH,
    TRITON_USER_ID,
    Component,
    K8sOptions,
    image_name,
)

#: Where an image's native-backend sources come from: a named build context (`build.sh` passes it), so the image
#: compiles the library the native models name instead of carrying one built on another machine.
NATIVE_SOURCES_DIR = "native-backend"
NATIVE_SOURCES_CONTEXT = "recgen-native-sources"
#: Where Triton finds a backend named `recgen` in the NGC image (`<backend-dir>/recgen/`).
IMAGE_NATIVE_LIBRARY = f"/opt/tritonserver/backends/{native.BACKEND_NAME}/{native.LIBRARY_NAME}"


def dockerfile(options: K8sOptions, component: Component) -> str:
    """The Dockerfile of a built image: FROM the Triton image, numba, the front's client, the baked-in repository.

    A first stage compiles recgen's native backend from the sources beside the Dockerfile with the image's own
    compiler (so the library matches the image's C and C++ runtimes), and the image carries it in Triton's backend
    directory; a baked-in repository's native models get that build in place of the copies they carry.
    """
    build_dir = "/tmp/recgen-native-build"
    configure, compile_ = native.cmake_commands("cmake", "/src/recgen-native", build_dir, warnings_are_errors=False)
    lines = [f"# {component.name}: built from the distributed build directory (docker build -f THIS BUILD_DIR)"]
    lines.append(f"FROM {options.image} AS recgen-native-build")
    lines.append(
        "RUN apt-get update && apt-get install -y --no-install-recommends cmake g++ make rapidjson-dev"
        " && rm -rf /var/lib/apt/lists/*"
    )
    lines.append(f"COPY --from={NATIVE_SOURCES_CONTEXT} . /src/recgen-native")
    lines.append(
        f"RUN {shlex.join(configure)} && {shlex.join(compile_)}"
        f" && install -D -m 0644 {build_dir}/{native.LIBRARY_NAME} /opt/recgen-native/{native.LIBRARY_NAME}"
    )
    lines.append("")
    lines.append(f"FROM {options.image}")
    packages = [triton_runtime.NUMPY_REQUIREMENT, triton_runtime.NUMBA_REQUIREMENT]
    if component.role == "front":
        packages.insert(0, triton_runtime.TRITONCLIENT_REQUIREMENT)
    lines.append("RUN pip install --no-cache-dir " + " ".join(f'"{package}"' for package in packages))
    lines.append(f"COPY --from=recgen-native-build /opt/recgen-native/{native.LIBRARY_NAME} {IMAGE_NATIVE_LIBRARY}")
    if options.source == "image":
        lines.append(f"COPY --chown={TRITON_USER_ID}:{TRITON_USER_ID} {component.repository} {IMAGE_REPOSITORY_PATH}")
        lines.append(
            f"RUN find {IMAGE_REPOSITORY_PATH} -name {native.LIBRARY_NAME} -exec cp {IMAGE_NATIVE_LIBRARY} {{}} \\;"
        )
    return "\n".join(lines) + "\n"


def build_script(options: K8sOptions, built: list[Component]) -> str:
    """images/build.sh: builds and pushes every image the manifests name."""
    lines = [
        "#!/usr/bin/env bash",
        "# Build and push the images the manifests name. Usage: images/build.sh BUILD_DIR",
        "# (BUILD_DIR = the output of `recgen build --layout distributed`). Needs BuildKit (Docker 23 or later):",
        "# every image compiles recgen's native backend from images/native-backend/.",
        "set -euo pipefail",
        'build_dir="${1:?usage: $0 BUILD_DIR}"',
        'here="$(cd "$(dirname "$0")" && pwd)"',
    ]
    for component in built:
        tag = image_name(options, component)
        lines.append(
            f'docker build --build-context {NATIVE_SOURCES_CONTEXT}="$here/{NATIVE_SOURCES_DIR}" '
            f'-f "$here/{component.name}.Dockerfile" -t {tag} "$build_dir"'
        )
        lines.append(f"docker push {tag}")
    return "\n".join(lines) + "\n"
