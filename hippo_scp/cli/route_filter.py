"""``hippo-scp route-filter``: which series a PACS router needs to send the node.

The deploy scripts fill Orthanc's ``HippoScp.RouteSeriesDescriptions`` from it, so that the
router's filter follows the node's selection rules instead of being a second list to keep in
step by hand (a filter narrower than the rules would silently starve the node).
"""

from __future__ import annotations

from pathlib import Path

import typer

from hippo_scp.assembly.selection import routed_series_descriptions
from hippo_scp.cli.check_config import load_config_or_exit


def register(app: typer.Typer) -> None:
    @app.command("route-filter")
    def route_filter(
        config: Path = typer.Option(
            Path("ae_config.yaml"),
            "--config",
            "-c",
            help="Node configuration whose selection rules decide.",
            dir_okay=False,
        ),
    ) -> None:
        """Print the SeriesDescriptions to route to the node, comma-separated.

        An empty line means "route every image series": the rules do not name their series
        descriptions literally, so the node has to see everything to select. Exit code 2 for
        an invalid configuration.
        """
        descriptions = routed_series_descriptions(load_config_or_exit(config).selection)
        if descriptions is None:
            typer.echo(
                "note: an analyze rule does not name its SeriesDescription literally; "
                "route every image series",
                err=True,
            )
            typer.echo("")
        else:
            typer.echo(",".join(descriptions))
