"""`recgen` command line: a thin layer over the library, one module per pipeline stage.

Every command parses its options into library values (for `build`, also the choices a plan leaves open) and calls
the library; what it prints is the printable value the library returns. Errors recgen raises on purpose print as
`ErrorType: message` and exit 1.
"""

from __future__ import annotations

import click

from generator.cli import check, deploy, model, planning, repository, traffic


@click.group()
@click.version_option(package_name="recgen")
def main() -> None:
    """Turn a PyTorch DLRM into a sharded NVIDIA Triton model repository, serve it, and check it."""


for command in (
    model.example,
    model.import_dlrm,
    traffic.profile,
    check.calibrate,
    planning.plan,
    repository.build,
    deploy.serve,
    deploy.k8s,
    deploy.update,
    check.check,
    check.demo,
    check.loadtest,
    check.quality_command,
):
    main.add_command(command)

__all__ = ["main"]
