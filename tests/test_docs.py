"""The README and docs/usage.md say what is true of the code: links, commands and module lists."""

from __future__ import annotations

import re
from pathlib import Path

from generator.cli import main as cli
from generator.repository import runtime_files

ROOT = Path(__file__).resolve().parents[1]


def test_every_link_of_the_readme_and_the_docs_leads_to_a_file() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_every_recgen_command_the_readme_runs_exists() -> None:
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL))
    commands = set(re.findall(r"^recgen ([a-z0-9-]+)", blocks, re.MULTILINE))
    assert {"build", "serve", "check", "plan", "update", "loadtest", "k8s"} <= commands
    assert commands <= set(cli.commands), commands - set(cli.commands)


def test_the_module_list_names_every_helper_copied_beside_a_model() -> None:
    usage = (ROOT / "docs" / "usage.md").read_text()
    helpers = {path.name for path in (ROOT / "generator" / "triton_models").glob("recgen_*.py")}
    assert all(helper in usage for helper in helpers), [h for h in helpers if h not in usage]
    models = [path.name for path in (ROOT / "generator" / "triton_models").glob("*_model.py")]
    copied = {helper for model in models for helper in runtime_files.runtime_modules(model)[1:]}
    assert copied == helpers  # every helper is imported by some model, and nothing else is copied
