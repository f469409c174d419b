"""``hippo-scp status``: is the node up, is anything stuck, what did it do lately.

For the administrator at a terminal and for a monitoring check alike: exit status 0 when
nothing needs a person, 1 when something does (no C-ECHO answer, results waiting longer than
``--stale-after``, files in quarantine), 2 for an invalid configuration. See
:mod:`hippo_scp.node_status`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import typer

from hippo_scp.cli.serve import build_serve_config
from hippo_scp.config import ConfigError


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(
        config: Path = typer.Option(
            Path("ae_config.yaml"),
            "--config",
            "-c",
            help="The node's configuration (outbox, audit log, AE title, port).",
            dir_okay=False,
        ),
        ae_title: str | None = typer.Option(
            None, "--ae-title", help="As given to serve: the node's AE title."
        ),
        port: int | None = typer.Option(None, "--port", help="As given to serve: its port."),
        bind: str | None = typer.Option(None, "--bind", help="As given to serve."),
        destination: list[str] | None = typer.Option(
            None, "--destination", help="As given to serve (AET@HOST:PORT, repeatable)."
        ),
        outbox: Path | None = typer.Option(None, "--outbox", help="As given to serve."),
        audit_log: Path | None = typer.Option(None, "--audit-log", help="As given to serve."),
        host: str | None = typer.Option(
            None, "--host", help="Where to send the C-ECHO (default: the bind address)."
        ),
        calling_ae_title: str = typer.Option(
            "HIPPOSTATUS",
            "--calling-ae",
            help="Calling AE title of the C-ECHO (must be allowed by access rules).",
        ),
        echo: bool = typer.Option(True, "--echo/--no-echo", help="Send a C-ECHO to the node."),
        hours: float = typer.Option(24.0, "--hours", help="Audit-log window, in hours.", min=0),
        stale_after_min: float = typer.Option(
            10.0,
            "--stale-after",
            help="Minutes a result set may wait in the outbox before it needs attention.",
            min=0,
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    ) -> None:
        """Report whether the node answers, what waits in its outbox, and its audit counts.

        Give it the configuration file and the flags the node was started with (serve's
        --ae-title, --port, --bind, --destination, --outbox, --audit-log). Exit code 0 when
        nothing needs attention, 1 when something does, 2 for an invalid configuration. Reads
        only: the outbox is listed, never changed.
        """
        from hippo_scp.node_status import format_status, node_status

        try:
            loaded = build_serve_config(
                config, ae_title, port, bind, destination, outbox=outbox, audit_log=audit_log
            )
        except ConfigError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        result = node_status(
            loaded,
            window=timedelta(hours=hours),
            stale_after_s=stale_after_min * 60,
            echo=echo,
            host=host,
            calling_ae_title=calling_ae_title,
        )
        if as_json:
            payload = asdict(result)
            payload["problems"] = result.problems
            typer.echo(json.dumps(payload, default=str, indent=1))
        else:
            typer.echo(format_status(result))
        raise typer.Exit(1 if result.problems else 0)
