"""Deployment files checked without starting the stack: lint, templates, consistency."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hippo_scp.assembly.selection import routed_series_descriptions
from hippo_scp.config import load_config

from .conftest import DEPLOY, REPO

SHELL_SCRIPTS = sorted([*DEPLOY.glob("*.sh"), *DEPLOY.glob("docker/*.sh")])
DOCKERFILES = [REPO / "Dockerfile", *sorted(DEPLOY.glob("docker/*.Dockerfile"))]


def _tool(name: str) -> str:
    venv_tool = Path(sys.executable).parent / name
    found = str(venv_tool) if venv_tool.exists() else shutil.which(name)
    if found is None:
        pytest.skip(
            f"'{name}' is not installed (deploy_scripts/install.sh / pip install -e .[dev])"
        )
    return found


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse_and_are_strict(script: Path):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    if script.name != "common.sh":  # sourced, not run
        assert "set -euo pipefail" in text
        assert os.access(script, os.X_OK), f"{script} is not executable"


def test_shellcheck_clean():
    shellcheck = _tool("shellcheck")
    result = subprocess.run(
        [shellcheck, "-x", *map(str, SHELL_SCRIPTS)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path):
    hadolint = _tool("hadolint")
    result = subprocess.run(
        [hadolint, str(dockerfile)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _render(tmp_path: Path, **env: str) -> dict:
    script = f'source "{DEPLOY}/common.sh"; render_orthanc_config "$HIPPO_RUN_DIR/orthanc.json"'
    full_env = {**os.environ, "HIPPO_RUN_DIR": str(tmp_path), **env}
    subprocess.run(["bash", "-c", script], env=full_env, check=True)
    return json.loads((tmp_path / "orthanc.json").read_text())


def test_orthanc_config_defaults(tmp_path: Path):
    config = _render(tmp_path)
    assert config["DicomAet"] == "ORTHANC"
    assert config["DicomPort"] == 4242
    assert config["HttpPort"] == 8042
    assert config["DicomWeb"]["Enable"] is True
    assert config["DicomWeb"]["Root"] == "/dicom-web/"
    assert config["Plugins"][0].endswith("libOrthancDicomWeb.so")
    # Only known modalities may store; the node is registered as "hippoai".
    assert config["DicomAlwaysAllowStore"] is False
    assert config["DicomCheckCalledAet"] is True
    assert config["DicomModalities"]["hippoai"]["AET"] == "HIPPOAI"
    assert config["DicomModalities"]["hippoai"]["Port"] == 11112
    assert config["DicomModalities"]["scanner"]["AET"] == "SCANNER"
    # Per-instance routing of what the node's selection rules analyse (route-filter).
    assert config["LuaScripts"] == [
        str(DEPLOY / "route_common.lua"),
        str(DEPLOY / "route_dicoms_per_instance.lua"),
    ]
    assert config["HippoScp"]["RouteSeriesDescriptions"] == ["hippocrop"]
    assert config["DicomAssociationCloseDelay"] == 1
    assert 0 < config["StableAge"] <= 5
    assert config["StorageDirectory"] == str(tmp_path / "orthanc-storage")
    assert config["RemoteAccessAllowed"] is False


def test_route_filter_follows_the_node_config(tmp_path: Path):
    """HIPPO_ROUTE_SERIES=auto (the default) derives Orthanc's filter from HIPPO_CONFIG's
    selection rules; rules that name no description route everything; a list is kept."""
    catch_all = tmp_path / "all.yaml"
    catch_all.write_text("selection:\n  rules:\n    - name: everything\n      action: analyze\n")
    routed = _render(tmp_path, HIPPO_CONFIG=str(catch_all))["HippoScp"]["RouteSeriesDescriptions"]
    assert routed == []
    two = tmp_path / "two.yaml"
    two.write_text(
        "selection:\n  rules:\n    - name: two\n      conditions:\n"
        "        - {attribute: SeriesDescription, one_of: [Hippo T1, Cor T2]}\n"
    )
    routed = _render(tmp_path, HIPPO_CONFIG=str(two))["HippoScp"]["RouteSeriesDescriptions"]
    assert routed == ["Cor T2", "Hippo T1"]
    explicit = _render(tmp_path, HIPPO_ROUTE_SERIES=" A , b")["HippoScp"]
    assert explicit["RouteSeriesDescriptions"] == ["A", "b"]
    assert _render(tmp_path, HIPPO_ROUTE_SERIES="")["HippoScp"]["RouteSeriesDescriptions"] == []
    series = _render(tmp_path, ORTHANC_ROUTING="series")
    routers = [str(DEPLOY / "route_common.lua"), str(DEPLOY / "route_dicoms.lua")]
    assert series["LuaScripts"] == routers


def test_orthanc_config_follows_environment(tmp_path: Path):
    config = _render(
        tmp_path,
        ORTHANC_DICOM_PORT="14242",
        ORTHANC_HTTP_PORT="18042",
        HIPPO_PORT="21112",
        HIPPO_AET="NODE2",
        ORTHANC_ROUTING="instance",
    )
    assert (config["DicomPort"], config["HttpPort"]) == (14242, 18042)
    assert config["DicomModalities"]["hippoai"]["AET"] == "NODE2"
    assert config["DicomModalities"]["hippoai"]["Port"] == 21112
    assert config["LuaScripts"][-1] == str(DEPLOY / "route_dicoms_per_instance.lua")
    assert _render(tmp_path, ORTHANC_ROUTING="none")["LuaScripts"] == []
    # the node may query and C-GET its earlier results; C-MOVE only when asked for
    node = config["DicomModalities"]["hippoai"]
    assert (node["AllowFind"], node["AllowGet"], node["AllowMove"]) == (True, True, False)
    moving = _render(tmp_path, ORTHANC_ALLOW_MOVE="true")["DicomModalities"]["hippoai"]
    assert moving["AllowMove"] is True


def test_lua_routing_uses_one_store_job_per_series():
    lua = (DEPLOY / "route_dicoms.lua").read_text()
    assert "function OnStableSeries(" in lua
    assert "'/modalities/' .. HippoRoute.TARGET .. '/store'" in lua
    assert '"Asynchronous": true' in lua  # the Lua thread never waits for a transfer
    code = "\n".join(line for line in lua.splitlines() if not line.lstrip().startswith("--"))
    assert "SendToModality" not in code  # takes instance IDs only
    common = (DEPLOY / "route_common.lua").read_text()
    assert "OWN_MANUFACTURER = 'hippo-scp'" in common  # the marker every result carries
    for lua_file in ("route_dicoms.lua", "route_dicoms_per_instance.lua"):
        text = (DEPLOY / lua_file).read_text()
        assert "HippoRoute.OWN_MANUFACTURER" in text and "RemoteA" in text  # marker + origin


def _entrypoint_and_cmd(dockerfile: Path) -> tuple[list[str], list[str]]:
    text = dockerfile.read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    return entry, cmd


def test_node_image_runs_the_tested_command():
    entry, cmd = _entrypoint_and_cmd(REPO / "Dockerfile")
    assert entry == ["hippo-scp", "serve", "--config", "/etc/hippo-scp/ae_config.yaml"]
    text = (REPO / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert "download.pytorch.org/whl/cpu" in text
    assert "-r requirements.lock" in text
    assert re.search(r"^USER \d+", text, re.M), "the node image must not run as root"
    assert "HEALTHCHECK" in text and "echoscu" in text
    assert "COPY model_weights" in text
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    node = compose["services"]["hippo-scp"]
    assert node["command"] == cmd
    assert (
        "./deploy_scripts/docker/ae_config.yaml:/etc/hippo-scp/ae_config.yaml:ro"
        in (node["volumes"])
    )
    # The graceful stop (associations in progress, released series, results) outlasts
    # docker's default 10 s before SIGKILL.
    assert int(str(node["stop_grace_period"]).rstrip("s")) >= 30


def test_compose_is_consistent_with_the_configs():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"orthanc", "hippo-scp", "ohif"}
    orthanc_env = compose["services"]["orthanc"]["environment"]
    node_cmd = compose["services"]["hippo-scp"]["command"]
    destination = node_cmd[node_cmd.index("--destination") + 1]
    assert destination == (
        f"{orthanc_env['ORTHANC_AET']}@orthanc:{orthanc_env['ORTHANC_DICOM_PORT']}"
    )
    assert node_cmd[node_cmd.index("--ae-title") + 1] == orthanc_env["HIPPO_AET"]
    assert node_cmd[node_cmd.index("--port") + 1] == orthanc_env["HIPPO_PORT"]
    assert orthanc_env["HIPPO_HOST"] == "hippo-scp"
    # Skipping the release grace is safe only while Orthanc routes each stable series whole.
    if orthanc_env["ORTHANC_ROUTING"] == "series":
        trusted = node_cmd[node_cmd.index("--whole-series-sender") + 1]
        assert trusted == orthanc_env["ORTHANC_AET"]
    else:
        assert orthanc_env["ORTHANC_ROUTING"] == "instance"
        assert "--whole-series-sender" not in node_cmd
    # Orthanc's series filter must let through every series the node's rules analyse.
    docker_rules = load_config(DEPLOY / "docker" / "ae_config.yaml").selection
    derived = routed_series_descriptions(docker_rules)
    listed = [s.strip() for s in orthanc_env["HIPPO_ROUTE_SERIES"].split(",") if s.strip()]
    if derived is None:
        assert listed == []
    else:
        assert {s.casefold() for s in listed} == {s.casefold() for s in derived}

    ohif_cmd = re.search(
        r"^CMD (\[.*\])$", (DEPLOY / "docker" / "ohif.Dockerfile").read_text(), re.M
    )
    assert "http://orthanc:8042" in json.loads(ohif_cmd.group(1))


def test_image_config_differs_from_ae_config_only_in_paths_and_host():
    repo = load_config(REPO / "ae_config.yaml").model_dump(mode="json")
    image = load_config(DEPLOY / "docker" / "ae_config.yaml").model_dump(mode="json")
    assert image["outbox"]["directory"] == "/var/lib/hippo-scp/outbox"
    assert image["model"]["weights"] == "/opt/hippo-scp/model_weights/hippo_unet.safetensors"
    assert image["destinations"][0]["host"] == "orthanc"
    for section, key in [
        ("outbox", "directory"),
        ("spool", "directory"),
        ("model", "weights"),
        ("logging", "audit_log"),
    ]:
        repo[section].pop(key)
        image[section].pop(key)
    repo["destinations"][0].pop("host")
    image["destinations"][0].pop("host")
    assert image == repo


def test_ohif_pin_and_config():
    package = json.loads((DEPLOY / "ohif" / "package.json").read_text())
    lock = json.loads((DEPLOY / "ohif" / "package-lock.json").read_text())
    pinned = package["dependencies"]["@ohif/app"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), "pin an exact version"
    assert lock["packages"]["node_modules/@ohif/app"]["version"] == pinned
    assert lock["packages"]["node_modules/@ohif/app"]["integrity"].startswith("sha512-")
    config = (DEPLOY / "ohif" / "app-config.js").read_text()
    assert "qidoRoot: '/dicom-web'" in config and "wadoRoot: '/dicom-web'" in config
    assert "cloudfront" not in config  # the shipped demo data source is replaced
    ignored = (REPO / ".gitignore").read_text()
    assert "deploy_scripts/ohif/node_modules/" in ignored and "/run/" in ignored


def test_install_is_fast_and_idempotent_when_everything_is_there():
    """tests/run_all.sh runs install.sh first; a second run must be a no-op."""
    if not (REPO / ".venv" / ".hippo-install-stamp").exists():
        pytest.skip("deploy_scripts/install.sh has not run on this machine")
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(DEPLOY / "install.sh"), "--no-apt"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "python: " in result.stderr and "up to date" in result.stderr, result.stderr
    assert "@ohif/app" in result.stderr and "present" in result.stderr, result.stderr
    assert time.monotonic() - started < 30
