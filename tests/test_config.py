"""ae_config.yaml is validated at start-up: good files load, bad ones name the key (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hippo_scp.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Destination,
    NodeConfig,
    load_config,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "ae_config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def shipped_config() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))


def test_shipped_config_loads_with_documented_defaults() -> None:
    config = load_config(DEFAULT_CONFIG_PATH)
    assert config.node.ae_title == "HIPPOAI"
    assert config.node.port == 11112
    assert [str(d) for d in config.destinations] == ["ORTHANC@127.0.0.1:4242"]
    assert config.triggers.settle_seconds == 3
    assert config.selection.rules[0].conditions[0].attribute == "SeriesDescription"


def test_shipped_config_spells_out_every_default() -> None:
    """The shipped file documents the whole configuration: it equals the built-in defaults."""
    from_file = load_config(DEFAULT_CONFIG_PATH).model_dump(mode="json")
    defaults = load_config(None).model_dump(mode="json")
    assert from_file == defaults


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"outbox": {"directory": "spool/out"}})
    config = load_config(path)
    assert config.outbox.directory == (tmp_path / "spool" / "out").resolve()


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"node": {"ae_title": "FROMFILE", "port": 104}})
    config = load_config(path, {"node": {"port": 11113}})
    assert config.node.ae_title == "FROMFILE"
    assert config.node.port == 11113


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"node": {"ae_titel": "X"}}, "node.ae_titel", "unknown key"),
        ({"nodes": {}}, "nodes", "unknown key"),
        ({"node": {"port": "eleven"}}, "node.port", "integer"),
        ({"node": {"port": 70000}}, "node.port", "65535"),
        ({"node": {"ae_title": "A" * 17}}, "node.ae_title", "longer than 16"),
        ({"node": {"ae_title": "HIP\\PO"}}, "node.ae_title", "backslash"),
        ({"node": {"ae_title": "   "}}, "node.ae_title", "empty"),
        (
            {"destinations": [{"ae_title": "", "host": "h", "port": 1}]},
            "destinations.0.ae_title",
            "empty",
        ),
        ({"triggers": {"settle_seconds": -1}}, "triggers.settle_seconds", "greater than or equal"),
        ({"logging": {"format": "xml"}}, "logging.format", "'text' or 'json'"),
        ({"tls": {"enabled": True}}, "tls", "needs tls.certificate"),
        (
            {"triggers": {"whole_series_senders": ["ORTHANC", "HIP\\PO"]}},
            "triggers.whole_series_senders.1",
            "backslash",
        ),
        (
            {"access": {"allowed_calling_ae_titles": ["OK", "B" * 20]}},
            "access.allowed_calling_ae_titles.1",
            "longer than 16",
        ),
        ({"priors": {"timeout_s": 0}}, "priors.timeout_s", "greater than 0"),
        ({"priors": {"source": {"ae_title": "PACS"}}}, "priors.source.host", "required"),
        (
            {"priors": {"enabled": True}, "destinations": []},
            "(top level)",
            "priors.enabled needs priors.source",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, data: dict, key: str, fragment: str) -> None:
    path = write_config(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert f"'{key}'" in message
    assert fragment in message


def test_not_yaml_and_not_a_mapping_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("node: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(path)
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ORTHANC@127.0.0.1:4242", ("ORTHANC", "127.0.0.1", 4242)),
        ("PACS@pacs.example.org:104", ("PACS", "pacs.example.org", 104)),
        ("V6@[::1]:11112", ("V6", "::1", 11112)),
    ],
)
def test_destination_parses_command_line_form(text: str, expected: tuple) -> None:
    destination = Destination.parse(text)
    assert (destination.ae_title, destination.host, destination.port) == expected


@pytest.mark.parametrize("text", ["ORTHANC", "ORTHANC@host", "@host:1", "A@h:99999"])
def test_destination_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError):
        Destination.parse(text)


def test_selection_rules_are_validated_with_the_config(tmp_path: Path) -> None:
    data = shipped_config()
    data["selection"]["rules"][0]["conditions"][0]["attribute"] = "NotADicomKeyword"
    with pytest.raises(ConfigError, match="selection.rules.0.conditions.0"):
        load_config(write_config(tmp_path, data))


def test_check_config_command_exit_codes(tmp_path: Path) -> None:
    good = subprocess.run(
        [sys.executable, "-m", "hippo_scp", "check-config", "--config", str(DEFAULT_CONFIG_PATH)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert good.returncode == 0, good.stderr
    assert NodeConfig.model_validate(yaml.safe_load(good.stdout)).node.ae_title == "HIPPOAI"

    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "hippo_scp",
            "check-config",
            "--config",
            str(write_config(tmp_path, {"node": {"ae_title": "X" * 20}})),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0
    assert "'node.ae_title'" in bad.stderr


def test_prior_comparison_asks_the_first_destination_unless_a_source_is_given(
    tmp_path: Path,
) -> None:
    assert load_config(None).prior_source is None  # off by default: the PACS must allow it
    on = load_config(None, {"priors": {"enabled": True}})
    assert str(on.prior_source) == "ORTHANC@127.0.0.1:4242"
    source = {"ae_title": "ARCHIVE", "host": "10.0.0.9", "port": 104}
    path = write_config(tmp_path, {"priors": {"enabled": True, "source": source}})
    assert str(load_config(path).prior_source) == "ARCHIVE@10.0.0.9:104"
