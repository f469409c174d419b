"""``hippo-scp check-config``: validate ``ae_config.yaml`` without starting the node."""

from __future__ import annotations

from pathlib import Path

import typer

from hippo_scp.config import ConfigError, NodeConfig, load_config


def load_config_or_exit(path: Path) -> NodeConfig:
    """Load ``path``; when invalid, print the one-line reason and exit 2 (the CLI contract)."""
    try:
        return load_config(path)
    except ConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    @app.command("check-config")
    def check_config(
        config: Path = typer.Option(
            Path("ae_config.yaml"),
            "--config",
            "-c",
            help="Configuration file to validate.",
            dir_okay=False,
        ),
    ) -> None:
        """Validate a configuration file and print the effective settings as YAML.

        Exit code 0 when valid, 2 with one line naming the offending key when not.
        """
        import yaml

        loaded = load_config_or_exit(config)
        typer.echo(yaml.safe_dump(loaded.model_dump(mode="json"), sort_keys=False))
