"""The ``hippo-scp`` command line contract: help, version, flags, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import hippo_scp
from hippo_scp.cli.serve import build_serve_config
from hippo_scp.config import DEFAULT_CONFIG_PATH, ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hippo_scp", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


def test_help_lists_every_subcommand() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in (
        "serve",
        "analyze",
        "train",
        "evaluate",
        "calibrate",
        "check-config",
        "route-filter",
        "status",
    ):
        assert command in result.stdout


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"hippo-scp {hippo_scp.__version__}"


def test_serve_help_with_config_explains_the_contract_flags() -> None:
    result = run_cli("serve", "--config", str(DEFAULT_CONFIG_PATH), "--help")
    assert result.returncode == 0
    for flag in ("--config", "--ae-title", "--port", "--destination", "--settle"):
        assert flag in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("serve", "--no-such-flag"),
        ("serve", "--port", "not-a-number"),
        ("no-such-command",),
        ("serve", "--destination", "ORTHANC-without-host"),
        ("serve", "--ae-title", "THIS-TITLE-IS-WAY-TOO-LONG"),
        ("serve", "--settle", "-5"),
        ("train", "--out", "unused", "--rotation-axes", "0,3"),
        ("train", "--out", "unused", "--rotation-axes", "x"),
        ("train", "--out", "unused", "--fold", "10"),
        ("train", "--out", "unused", "--fold", "-1"),
    ],
)
def test_bad_flags_exit_with_code_2(args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stdout + result.stderr


def test_flags_override_the_config_file() -> None:
    config = build_serve_config(
        DEFAULT_CONFIG_PATH,
        ae_title="OTHERAI",
        port=11999,
        destinations=["PACS1@10.1.2.3:104", "PACS2@localhost:4242"],
        settle=7.5,
        whole_series_senders=["ORTHANC"],
    )
    assert config.node.ae_title == "OTHERAI"
    assert config.triggers.whole_series_senders == ["ORTHANC"]
    assert config.node.port == 11999
    assert [str(d) for d in config.destinations] == ["PACS1@10.1.2.3:104", "PACS2@localhost:4242"]
    assert config.triggers.settle_seconds == 7.5
    # Untouched keys keep the file's values.
    assert config.node.max_pdu_bytes == 131072
    assert build_serve_config(DEFAULT_CONFIG_PATH).triggers.whole_series_senders == []
    assert config.priors.enabled is False
    assert build_serve_config(DEFAULT_CONFIG_PATH, priors=True).priors.enabled is True


def test_bad_destination_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--destination"):
        build_serve_config(None, destinations=["nonsense"])


def test_route_filter_prints_what_the_router_must_send(tmp_path: Path) -> None:
    result = run_cli("route-filter", "--config", str(DEFAULT_CONFIG_PATH))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().lower() == "hippocrop"
    catch_all = tmp_path / "all.yaml"
    catch_all.write_text("selection:\n  rules:\n    - name: everything\n      action: analyze\n")
    result = run_cli("route-filter", "--config", str(catch_all))
    assert result.returncode == 0 and result.stdout.strip() == ""
    assert "route every image series" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("selection:\n  rules: 7\n")
    assert run_cli("route-filter", "--config", str(broken)).returncode == 2
