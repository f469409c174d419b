"""Fixtures for the deployment tests: real Orthanc / node / OHIF processes on 127.0.0.1.

Every stack runs from its own run folder (under pytest's tmp_path) on free ports, through the
same scripts as the demo (deploy_scripts/start_stack.sh ...), so the tests exercise them too.
Tests skip (with the reason) only when a binary is truly absent; CI installs everything with
deploy_scripts/install.sh, so there they run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy_scripts"
ORTHANC_BIN = Path(os.environ.get("ORTHANC_BIN", "/usr/sbin/Orthanc"))
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
OHIF_DIST = DEPLOY / "ohif" / "node_modules" / "@ohif" / "app" / "dist"


def require_binaries(*names: str) -> None:
    for name in names:
        if shutil.which(name) is None:
            pytest.skip(f"'{name}' is not installed (deploy_scripts/install.sh installs it)")


def require_orthanc() -> None:
    if not ORTHANC_BIN.exists():
        pytest.skip(f"{ORTHANC_BIN} is not installed (apt package orthanc; install.sh)")
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip(f"{DICOMWEB_PLUGIN} is not installed (apt package orthanc-dicomweb)")
    require_binaries("storescu", "echoscu", "curl")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Stack:
    """One stack's environment (ports, AE titles, run folder) and helpers around it."""

    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls, run_dir: Path, routing: str | None = None, route_series: str | None = None
    ) -> Stack:
        """``routing`` / ``route_series``: ORTHANC_ROUTING / HIPPO_ROUTE_SERIES ("": every
        image series); None keeps common.sh's defaults (per-instance routing of what the
        node's selection rules analyse), as the demo runs."""
        run_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if k not in ("ORTHANC_ROUTING", "HIPPO_ROUTE_SERIES")}  # fmt: skip
        env.update(
            HIPPO_RUN_DIR=str(run_dir),
            ORTHANC_DICOM_PORT=str(free_port()),
            ORTHANC_HTTP_PORT=str(free_port()),
            HIPPO_PORT=str(free_port()),
            OHIF_PORT=str(free_port()),
            ORTHANC_STABLE_AGE="2",
            HIPPO_SETTLE="3",
        )
        if routing is not None:
            env["ORTHANC_ROUTING"] = routing
        if route_series is not None:
            env["HIPPO_ROUTE_SERIES"] = route_series
        return cls(run_dir=run_dir, env=env)

    # -- processes --------------------------------------------------------------------------
    def script(self, name: str, *args: str, timeout: float = 300, check: bool = True):
        return subprocess.run(
            ["bash", str(DEPLOY / name), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def start(self, *args: str, timeout: float = 300) -> None:
        result = self.script("start_stack.sh", *args, timeout=timeout, check=False)
        if result.returncode != 0:
            logs = "\n".join(
                f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                for log in sorted(self.run_dir.glob("*.log"))
            )
            pytest.fail(f"start_stack.sh {' '.join(args)} failed:\n{result.stderr}\n{logs}")

    def stop(self) -> None:
        self.script("stop_stack.sh", timeout=120, check=False)

    def send(self, folder: Path, calling_aet: str | None = None) -> None:
        env = dict(self.env)
        if calling_aet:
            env["SCANNER_AET"] = calling_aet
        subprocess.run(
            ["bash", str(DEPLOY / "send_volume.sh"), str(folder)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )

    # -- Orthanc REST -----------------------------------------------------------------------
    @property
    def orthanc_url(self) -> str:
        return f"http://127.0.0.1:{self.env['ORTHANC_HTTP_PORT']}"

    @property
    def ohif_url(self) -> str:
        return f"http://127.0.0.1:{self.env['OHIF_PORT']}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.orthanc_url + path, timeout=30) as answer:
            return json.load(answer)

    def statistics(self) -> dict[str, Any]:
        return self.get("/statistics")

    def series_by_modality(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for series_id in self.get("/series"):
            modality = self.get(f"/series/{series_id}")["MainDicomTags"].get("Modality", "")
            counts[modality] = counts.get(modality, 0) + 1
        return counts

    def log(self, name: str) -> str:
        path = self.run_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Sink:
    """tests/deploy/dicom_sink.py playing the node (AE HIPPOAI) on the stack's HIPPO_PORT."""

    process: subprocess.Popen
    record: Path

    def associations(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def instance_count(self) -> int:
        return sum(len(a["instances"]) for a in self.associations())


def start_sink(stack: Stack) -> Sink:
    record = stack.run_dir / "sink.jsonl"
    log = (stack.run_dir / "sink.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("dicom_sink.py")),
            "--aet",
            stack.env.get("HIPPO_AET", "HIPPOAI"),
            "--port",
            stack.env["HIPPO_PORT"],
            "--record",
            str(record),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    port = int(stack.env["HIPPO_PORT"])

    def listening() -> bool:
        if process.poll() is not None:
            pytest.fail(f"dicom_sink.py exited: {(stack.run_dir / 'sink.log').read_text()}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, 30, "the DICOM sink to listen", interval=0.1)
    return Sink(process=process, record=record)


def stop_sink(sink: Sink) -> None:
    sink.process.terminate()
    try:
        sink.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        sink.process.kill()


@pytest.fixture
def sink_stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Stack, Sink]]:
    """Orthanc + a sink node. The test's param: the routing (default series), or a pair
    (routing, HIPPO_ROUTE_SERIES)."""
    require_orthanc()
    param = getattr(request, "param", "series")
    routing, route_series = param if isinstance(param, tuple) else (param, "")
    stack = Stack.create(tmp_path / "run", routing=routing, route_series=route_series)
    sink = start_sink(stack)
    try:
        stack.start("--no-node", "--no-ohif")
        yield stack, sink
    finally:
        stack.stop()
        stop_sink(sink)


# HIPPO_WEIGHTS (optional) points the node and `hippo-scp analyze` at other weights.
WEIGHTS = Path(os.environ.get("HIPPO_WEIGHTS") or REPO / "model_weights" / "hippo_unet.safetensors")


def require_node() -> None:
    if not (REPO / ".venv" / "bin" / "hippo-scp").exists():
        pytest.skip(".venv/bin/hippo-scp is not installed (deploy_scripts/install.sh)")
    if not WEIGHTS.exists():
        pytest.skip(f"{WEIGHTS} is not there yet (the model is not shipped)")


@pytest.fixture(scope="session")
def node_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole stack as the demo runs it -- Orthanc + hippo-scp + OHIF -- but with Orthanc
    routing every series per stable series (route_dicoms.lua): the routing that exercises
    the node hardest (five series per study, Orthanc a whole-series sender). The default,
    per-instance routing of HippoCrop only, runs in test_demo_script_end_to_end."""
    require_orthanc()
    require_node()
    stack = Stack.create(
        tmp_path_factory.mktemp("stack") / "run", routing="series", route_series=""
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


STUDIES = (1, 2, 3)
RESULT_WAIT_S = 300


def results(stack: Stack) -> list[dict]:
    answer = subprocess.run(
        [sys.executable, str(DEPLOY / "orthanc_results.py"), "--url", stack.orthanc_url, "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(answer.stdout)


def all_complete(stack: Stack, count: int) -> list[dict] | None:
    studies = [s for s in results(stack) if s["has_hippocrop"]]
    if len(studies) >= count and all(
        all(s["results"][kind] for kind in ("sr", "seg", "sc")) for s in studies
    ):
        return studies
    return None


@pytest.fixture(scope="session")
def processed(node_stack: Stack, data_dir: Path) -> list[dict]:
    """Send Study1..3 (every series) and wait until each study has its SR + SEG + SC."""
    started = time.monotonic()
    for n in STUDIES:
        node_stack.send(data_dir / "TestVolumes" / f"Study{n}")
    studies = wait_for(
        lambda: all_complete(node_stack, len(STUDIES)),
        RESULT_WAIT_S,
        "SR + SEG + SC of Study1..3 in Orthanc\n" + node_stack.log("hippo-scp")[-3000:],
        interval=1.0,
    )
    print(f"results of {len(STUDIES)} studies in Orthanc after {time.monotonic() - started:.1f} s")
    return studies
