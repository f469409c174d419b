"""The ``hippo-scp`` command line: one Typer app, one module per subcommand.

Subcommands follow the product's jobs: ``serve`` (the DICOM node), ``analyze`` (the same
pipeline on files, for validation and scripting), ``train`` and ``evaluate`` (the model),
``check-config`` (check a configuration file without starting anything), ``route-filter``
(the series a PACS router must send, from the selection rules), ``status`` (is the node up,
is anything stuck in its outbox, what its audit log counted).
"""

from __future__ import annotations

import importlib

import typer

from hippo_scp import __version__

app = typer.Typer(
    name="hippo-scp",
    help=(
        "A DICOM Storage SCP that measures the hippocampus: it receives MR studies, segments "
        "the anterior and posterior hippocampus, and sends a TID 1500 SR, a DICOM SEG and a "
        "Secondary Capture report back to the PACS."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_SUBCOMMAND_MODULES = (
    "serve",
    "analyze",
    "train",
    "evaluate",
    "calibrate",
    "check_config",
    "route_filter",
    "status",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"hippo-scp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        help="Print the version and exit.",
        callback=_version_callback,
        is_eager=True,
    ),
) -> None:
    """hippo-scp: hippocampus volumetry as a DICOM node."""


for _name in _SUBCOMMAND_MODULES:
    importlib.import_module(f"hippo_scp.cli.{_name}").register(app)


def main() -> None:
    """Console-script entry point (``[project.scripts] hippo-scp``)."""
    app()
