"""Fixtures for the network tests: a Storage SCP sink, the real node as a process, weights.

The node runs as ``hippo-scp serve`` in its own process on 127.0.0.1 and random free ports, and
is driven with the real dcmtk tools (echoscu, storescu): what a hospital would do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, Association, evt
from pynetdicom.sop_class import Verification

from hippo_scp.config import DEFAULT_WEIGHTS_PATH

REPO_ROOT = Path(__file__).resolve().parents[2]
HIPPO_SCP = Path(sys.executable).with_name("hippo-scp")
#: Optional override of the command that runs the node (space-separated), e.g. to test an
#: installed build: ``HIPPO_SCP_COMMAND="/opt/hippo/bin/hippo-scp"``.
NODE_COMMAND = os.environ.get("HIPPO_SCP_COMMAND", "").split() or [str(HIPPO_SCP)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float, step: float = 0.2) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


@contextlib.contextmanager
def verification_association(
    evt_handlers: list | None = None, dimse_timeout: float | None = None
) -> Iterator[Association]:
    """An established association (calling AE HIPPOAI) to a throwaway pynetdicom
    Verification SCP on loopback; released (if still up) and the SCP shut down afterwards."""
    scp = AE(ae_title="ECHOSCP")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    try:
        scu = AE(ae_title="HIPPOAI")
        scu.add_requested_context(Verification)
        if dimse_timeout is not None:
            scu.dimse_timeout = dimse_timeout
        assoc = scu.associate(
            "127.0.0.1", server.server_address[1], ae_title="ECHOSCP", evt_handlers=evt_handlers
        )
        assert assoc.is_established
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        server.shutdown()


def require_dcmtk() -> None:
    for tool in ("echoscu", "storescu"):
        if shutil.which(tool) is None:
            pytest.skip(f"dcmtk's {tool} is not installed (apt-get install dcmtk)")


@dataclass
class Sink:
    """A Storage SCP standing in for the PACS; records what it receives."""

    ae_title: str = "SINK"
    port: int = field(default_factory=free_port)
    received: list[Dataset] = field(default_factory=list)
    ssl_context: Any = None  # an ssl.SSLContext makes it a DICOM TLS receiver

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = None

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received.append(ds)
        return 0x0000

    def start(self) -> Sink:
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
            ssl_context=self.ssl_context,
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def snapshot(self) -> list[Dataset]:
        with self._lock:
            return list(self.received)

    def wait_for(self, count: int, timeout: float) -> list[Dataset]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.snapshot()
            if len(got) >= count:
                return got
            time.sleep(0.2)
        return self.snapshot()


class NodeProcess:
    """``hippo-scp serve`` as a child process, with its output collected."""

    def __init__(self, config: Path, port: int, destination: str, settle: float = 3.0):
        self.config = config
        self.port = port
        self.destination = destination
        self.settle = settle
        self.lines: list[str] = []
        self._proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 90.0) -> NodeProcess:
        command = [
            *NODE_COMMAND,
            "serve",
            "--config",
            str(self.config),
            "--ae-title",
            "HIPPOAI",
            "--port",
            str(self.port),
            "--destination",
            self.destination,
            "--settle",
            str(self.settle),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self._proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        ready = threading.Event()

        def pump() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            for line in self._proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if "listening on" in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError("node did not start:\n" + self.output)
        return self

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, as systemd / docker stop would; returns the exit status."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


def write_node_config(path: Path, weights: Path, **sections: dict) -> Path:
    """A node config in ``path``'s folder with a private outbox and audit log."""
    data: dict = {
        "node": {"bind_address": "127.0.0.1"},
        "outbox": {
            "directory": str(path.parent / "outbox"),
            "retry_initial_s": 0.5,
            "retry_max_s": 1.0,
        },
        "model": {"weights": str(weights), "threads": 1},
        "logging": {"audit_log": str(path.parent / "audit.jsonl")},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def network_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped weights when present, else a seeded random-initialised model.

    The network tests check transport, triggers and delivery, and compare the node's volumes
    with an in-process analysis using the *same* weights, so they do not need a trained model
    (and do not break while one is being trained).
    """
    if DEFAULT_WEIGHTS_PATH.is_file():
        return DEFAULT_WEIGHTS_PATH
    import torch

    from hippo_scp.model.network import UNet3D, UNetConfig
    from hippo_scp.model.weights import save_weights

    torch.manual_seed(7)
    config = UNetConfig(deep_supervision=False)
    path = tmp_path_factory.mktemp("weights") / "random.safetensors"
    save_weights(UNet3D(config).state_dict(), path, {"architecture": config.to_dict()})
    return path


@pytest.fixture
def sink() -> Iterator[Sink]:
    running = Sink().start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def test_volumes(data_dir: Path) -> Path:
    require_dcmtk()
    return data_dir / "TestVolumes"
