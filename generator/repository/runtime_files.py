"""What a Python-backend model's version directory carries: its module as model.py and the helpers it imports.

The runtime modules in `generator.triton_models` are one package whose modules import each other relatively
(`from . import recgen_params`); the Python backend imports a version directory as a package (`<version>.model`),
so a model's directory holds exactly the modules its model imports, transitively, and nothing else.
"""

from __future__ import annotations

import ast
from importlib import resources
from pathlib import Path

from generator import naming

#: Model modules in `generator.triton_models`, by role.
ROUTER_MODULE = "router_model.py"
SHARD_MODULE = "shard_model.py"
DENSE_MODULE = "dense_model.py"
MONOLITHIC_MODULE = "monolithic_model.py"
ONNX_RUNNER_MODULE = "onnx_model.py"
REMOTE_GROUP_MODULE = "remote_group_model.py"
RANKING_DENSE_MODULE = "ranking_dense_model.py"
PROFILE_MODULE = "profile_model.py"


def runtime_modules(module: str) -> list[str]:
    """The model module and every helper it imports, transitively: the files its version directory needs.

    The runtime modules import each other relatively (`from . import recgen_params`), so a model's version
    directory, which the Python backend imports as a package (`<version>.model`), holds exactly these files.
    """
    package = resources.files("generator.triton_models")
    needed, pending = [module], [module]
    while pending:
        tree = ast.parse(package.joinpath(pending.pop()).read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level != 1:
                continue
            names = [node.module] if node.module else [alias.name for alias in node.names]
            for name in (f"{name}.py" for name in names):
                if name not in needed:
                    needed.append(name)
                    pending.append(name)
    return needed


def install_python_model(module: str, version_dir: Path) -> None:
    """Copy a model module from the package as model.py, with the helpers it imports (`runtime_modules`)."""
    package = resources.files("generator.triton_models")
    module_file, *helpers = runtime_modules(module)
    (version_dir / naming.PYTHON_MODEL_FILE).write_text(package.joinpath(module_file).read_text())
    for helper in helpers:
        (version_dir / helper).write_text(package.joinpath(helper).read_text())
