"""Fallback launcher: ``hippo-scp serve`` alone, for when the full CLI does not import yet.

The benchmarks start the node with the ``hippo-scp`` console script. While another subcommand
of the CLI is still being written (an import error in ``hippo_scp.cli``), this registers only
the ``serve`` subcommand on a Typer app, so the same options and the same ``run_node`` run.
Results record which launcher was used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer

import hippo_scp


def _load_serve_module():
    # hippo_scp/cli/serve.py by path: importing the package hippo_scp.cli would import every
    # subcommand, which is what fails.
    path = Path(hippo_scp.__file__).parent / "cli" / "serve.py"
    spec = importlib.util.spec_from_file_location("_hippo_serve_command", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    _load_serve_module().register(app)

    @app.callback()
    def _root() -> None:
        """hippo-scp (serve only)."""

    app()


if __name__ == "__main__":
    main()
