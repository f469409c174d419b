"""``hippo-scp serve``: run the DICOM node (Storage SCP + analysis worker + result sender)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from hippo_scp.config import ConfigError, Destination, NodeConfig, load_config


def build_serve_config(
    config: Path | None,
    ae_title: str | None = None,
    port: int | None = None,
    bind: str | None = None,
    destinations: list[str] | None = None,
    settle: float | None = None,
    outbox: Path | None = None,
    audit_log: Path | None = None,
    weights: Path | None = None,
    log_level: str | None = None,
    log_format: str | None = None,
    whole_series_senders: list[str] | None = None,
    priors: bool | None = None,
) -> NodeConfig:
    """Merge command-line flags over the configuration file; flags win.

    Raises :class:`ConfigError` (one line naming the key) for anything invalid, including a
    malformed ``--destination``.
    """
    overrides: dict[str, Any] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            overrides.setdefault(section, {})[key] = value

    put("node", "ae_title", ae_title)
    put("node", "port", port)
    put("node", "bind_address", bind)
    put("triggers", "settle_seconds", settle)
    put("outbox", "directory", str(outbox.resolve()) if outbox else None)
    put("logging", "audit_log", str(audit_log.resolve()) if audit_log else None)
    put("model", "weights", str(weights.resolve()) if weights else None)
    put("logging", "level", log_level.upper() if log_level else None)
    put("logging", "format", log_format)
    put("triggers", "whole_series_senders", whole_series_senders or None)
    put("priors", "enabled", priors)
    if destinations:
        parsed = []
        for text in destinations:
            try:
                parsed.append(Destination.parse(text).model_dump())
            except ValueError as error:
                raise ConfigError(f"--destination: {error}") from None
        overrides["destinations"] = parsed
    return load_config(config, overrides)


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        config: Path | None = typer.Option(
            None,
            "--config",
            "-c",
            help="ae_config.yaml to load (defaults are used when omitted). Flags override it.",
            dir_okay=False,
        ),
        ae_title: str | None = typer.Option(
            None, "--ae-title", help="The node's own AE title (called AE title). Default HIPPOAI."
        ),
        port: int | None = typer.Option(
            None, "--port", help="TCP port to listen on for DICOM associations. Default 11112."
        ),
        bind: str | None = typer.Option(
            None, "--bind", help="Address to bind, e.g. 0.0.0.0 or 127.0.0.1."
        ),
        destination: list[str] | None = typer.Option(
            None,
            "--destination",
            "-d",
            help=(
                "Where results are sent, as AET@HOST:PORT (repeatable; replaces the "
                "destinations of the config file). Default ORTHANC@127.0.0.1:4242."
            ),
        ),
        settle: float | None = typer.Option(
            None,
            "--settle",
            help=(
                "Seconds a series must be quiet before it is analysed when it arrived over "
                "several associations. Default 3."
            ),
        ),
        whole_series_sender: list[str] | None = typer.Option(
            None,
            "--whole-series-sender",
            help=(
                "Calling AE title that always sends each series whole in one association "
                "(e.g. Orthanc routing stable series): its releases skip the release grace "
                "(repeatable; replaces triggers.whole_series_senders of the config file)."
            ),
        ),
        priors: bool | None = typer.Option(
            None,
            "--priors/--no-priors",
            help=(
                "Compare each result with the patient's earlier hippo-scp results, asked from "
                "the PACS by C-FIND / C-GET (priors.source, else the first destination). "
                "Overrides priors.enabled."
            ),
        ),
        outbox: Path | None = typer.Option(
            None, "--outbox", help="Folder holding results until every destination has them."
        ),
        audit_log: Path | None = typer.Option(
            None, "--audit-log", help="Audit log file (JSON lines); overrides logging.audit_log."
        ),
        weights: Path | None = typer.Option(
            None, "--weights", help="Model weights (.safetensors) to load instead of the shipped."
        ),
        log_level: str | None = typer.Option(
            None, "--log-level", help="DEBUG, INFO, WARNING or ERROR."
        ),
        log_format: str | None = typer.Option(
            None, "--log-format", help="'text' (default) or 'json' (one JSON object per line)."
        ),
    ) -> None:
        """Run the DICOM node until SIGTERM / Ctrl-C.

        It answers C-ECHO, accepts C-STORE of any storage SOP class, analyses each selected
        series when its association is released (or after --settle seconds of quiet), and
        sends the SR, SEG and Secondary Capture report to every destination.
        """
        try:
            node_config = build_serve_config(
                config,
                ae_title=ae_title,
                port=port,
                bind=bind,
                destinations=destination,
                settle=settle,
                outbox=outbox,
                audit_log=audit_log,
                weights=weights,
                log_level=log_level,
                log_format=log_format,
                whole_series_senders=whole_series_sender,
                priors=priors,
            )
        except ConfigError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None

        from hippo_scp.node import run_node

        raise typer.Exit(run_node(node_config))
