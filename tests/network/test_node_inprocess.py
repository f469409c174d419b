"""The node in-process with a fake analyzer (no model): TLS, own outputs, peer hosts, SIGTERM-like
stop. Fast: no torch, one short-lived node per test."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.dataset import Dataset

from hippo_scp import MANUFACTURER
from hippo_scp.config import load_config
from hippo_scp.node import Node
from tests.network.conftest import Sink, free_port, require_dcmtk
from tests.network.test_outbox_worker import sc_dataset

pytestmark = [pytest.mark.network, pytest.mark.timeout(120)]


def fake_result(datasets) -> SimpleNamespace:
    outputs = []
    for _ in range(3):
        ds = sc_dataset(str(datasets[0].StudyInstanceUID))
        ds.Manufacturer = MANUFACTURER
        outputs.append(ds)
    return SimpleNamespace(
        seg=outputs[0], sr=outputs[1], report=outputs[2], model_version="fake",
        timings_ms={"load": 1.0, "infer": 1.0, "encode": 1.0},
        volumes=SimpleNamespace(anterior_mm3=1.0, posterior_mm3=2.0, total_mm3=3.0),
    )  # fmt: skip


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator:
    nodes: list[Node] = []

    def start(**overrides) -> Node:
        base = {
            "node": {"bind_address": "127.0.0.1", "port": free_port()},
            "outbox": {"directory": str(tmp_path / "outbox"), "retry_initial_s": 0.2},
            "logging": {"audit_log": None},
            "triggers": {"settle_seconds": 1.0},
        }
        for key, value in overrides.items():
            if isinstance(value, dict):
                base.setdefault(key, {}).update(value)
            else:
                base[key] = value
        node = Node(load_config(None, base), fake_result)
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def echo(port: int, *extra: str, calling: str = "ECHOSCU") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["echoscu", "-aet", calling, "-aec", "HIPPOAI", *extra, "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_tls_echo(start_node, tmp_path: Path) -> None:
    require_dcmtk()
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    node = start_node(tls={"enabled": True, "certificate": str(cert), "private_key": str(key)})
    port = node.address.port
    secure = echo(port, "+tls", str(key), str(cert), "+cf", str(cert))
    assert secure.returncode == 0, secure.stderr
    plain = echo(port)
    assert plain.returncode != 0


def test_peer_host_allow_list(start_node) -> None:
    require_dcmtk()
    node = start_node(
        access={
            "allowed_peers": [
                {"ae_title": "LOCALPACS", "hosts": ["127.0.0.1"]},
                {"ae_title": "FARPACS", "hosts": ["10.255.255.1"]},
            ]
        }
    )
    port = node.address.port
    assert echo(port, calling="LOCALPACS").returncode == 0
    far = echo(port, calling="FARPACS")
    assert far.returncode != 0 and "Calling AE Title Not Recognized" in far.stderr
    assert echo(port, calling="NOBODY").returncode != 0


def test_own_outputs_are_acknowledged_and_ignored(start_node, tmp_path: Path) -> None:
    require_dcmtk()
    sink = Sink(ae_title="PACS").start()
    try:
        node = start_node(
            destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": sink.port}]
        )
        own: Dataset = fake_result([sc_dataset()]).seg
        own.SOPClassUID = pydicom.uid.MRImageStorage  # even if it looked analysable
        own.SeriesDescription = "HippoCrop"
        own.save_as(tmp_path / "own.dcm", enforce_file_format=True)
        result = subprocess.run(
            ["storescu", "-aec", "HIPPOAI", "127.0.0.1", str(node.address.port),
             str(tmp_path / "own.dcm")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert len(node.store) == 0 and node.store.total_bytes == 0
        threading.Event().wait(2.5)  # settle + grace
        assert sink.snapshot() == []
    finally:
        sink.stop()
