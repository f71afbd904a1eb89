"""The package keeps the shape its layout promises: stages import only earlier stages, and pieces stay small."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "generator"
#: The pipeline, earliest first. A module may import its own stage and earlier ones, never a later one.
STAGES = [
    ["generator.triton_models"],
    [
        "generator",
        "generator.errors",
        "generator.naming",
        "generator.triton_runtime",
        "generator.cache",
        "generator.native",
    ],
    ["generator.model"],
    ["generator.traffic"],
    ["generator.planning"],
    ["generator.repository"],
    ["generator.deploy"],
    ["generator.check"],
    ["generator.cli", "generator.__main__"],
]
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def _stage(module: str) -> int:
    matches = [(len(prefix), index) for index, prefixes in enumerate(STAGES) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]  # fmt: skip
    assert matches, f"{module} belongs to no stage; add it to STAGES"
    return max(matches)[1]


def _modules() -> list[tuple[str, Path]]:
    result = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        result.append((name, path))
    return result


def _imported(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [name for name in names if name == "generator" or name.startswith("generator.")]


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[name for name, _ in _modules()])
def test_no_module_imports_a_later_stage(module: str, path: Path) -> None:
    known = {name for name, _ in _modules()}
    own = _stage(module)
    for name in _imported(ast.parse(path.read_text())):
        target = name if name in known else name.rsplit(".", 1)[0]  # `from pkg import module` or a name in it
        assert _stage(target) <= own, f"{module} (stage {own}) imports {name} (stage {_stage(target)})"


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[name for name, _ in _modules()])
def test_functions_and_modules_stay_small(module: str, path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{module} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{module}.{node.name} has {length} lines"
