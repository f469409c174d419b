"""Start and stop what the benchmarks talk to, with readiness waits and free ports.

- :func:`start_storescp`: dcmtk ``storescp`` writing to disk (the baseline receiver);
- :func:`start_node`: the hippo-scp node exactly as a user runs it (``hippo-scp serve`` with a
  config file), as a subprocess;
- :func:`start_bare_scp`: a bare pynetdicom SCP (:mod:`benchmarks.bare_scp`);
- :func:`start_orthanc`: Orthanc with the project's config template and routing script;
- :class:`ResultSink`: a pynetdicom Storage SCP in a thread of the benchmark process, the
  node's destination, recording when each result arrives.

Everything runs on 127.0.0.1; every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
VENV_PY = REPO / ".venv" / "bin" / "python"
DEPLOY = REPO / "deploy_scripts"
# dcmtk's tools, by absolute path: the venv also has pynetdicom's "storescp"/"storescu" scripts.
DCMTK_BIN = Path(os.environ.get("DCMTK_BIN", "/usr/bin"))
ORTHANC_BIN = Path(os.environ.get("ORTHANC_BIN", "/usr/sbin/Orthanc"))
ORTHANC_PLUGIN_DIR = Path(os.environ.get("ORTHANC_PLUGIN_DIR", "/usr/share/orthanc/plugins"))
HOST = "127.0.0.1"
#: SIGTERM, then SIGKILL after this long (the node needs ~10-15 s for a graceful stop)
STOP_TIMEOUT_S = float(os.environ.get("HIPPO_BENCH_STOP_TIMEOUT", "30"))
SCANNER_AET = "STORESCU"


def python() -> str:
    return str(VENV_PY if VENV_PY.exists() else Path(sys.executable))


def dcmtk(tool: str) -> str:
    path = DCMTK_BIN / tool
    if not path.exists():
        found = shutil.which(tool, path="/usr/bin:/bin:/usr/local/bin")
        if not found:
            raise FileNotFoundError(f"dcmtk {tool} not found (apt install dcmtk)")
        return found
    return str(path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def env_with(nodelay: bool | None, base: dict | None = None) -> dict:
    """The environment for a dcmtk process: TCP_NODELAY=1, or without it (dcmtk's default)."""
    env = dict(base if base is not None else os.environ)
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


def echo(port: int, called_aet: str, timeout: float = 5) -> bool:
    """C-ECHO with dcmtk ``echoscu``."""
    try:
        result = subprocess.run(
            [dcmtk("echoscu"), "-aec", called_aet, "-to", "3", HOST, str(port)],
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


@dataclass
class Proc:
    """A started subprocess with its log file; stop() is idempotent."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    port: int
    aet: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}"
                )
            if check():
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float | None = None) -> int | None:
        if timeout is None:
            timeout = STOP_TIMEOUT_S
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_all(procs, timeout: float | None = None) -> None:
    """SIGTERM every process at once, then wait (a node takes ~10-15 s to stop)."""
    procs = [p for p in procs if p is not None]
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.stop(timeout)


def _spawn(name: str, argv: list[str], log_dir: Path, env: dict | None, port: int, aet: str):
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    popen = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=str(log_dir),
    )
    log.close()
    return Proc(name, popen, log_path, port, aet)


# --------------------------------------------------------------------------- dcmtk storescp


def start_storescp(
    work: Path,
    nodelay: bool,
    port: int | None = None,
    aet: str = "STORESCP",
    extra_args: list[str] | None = None,
    timeout: float = 20,
) -> Proc:
    """dcmtk storescp writing every received instance to ``work/out`` (as installed)."""
    port = port or free_port()
    out = work / "storescp-out"
    out.mkdir(parents=True, exist_ok=True)
    argv = [dcmtk("storescp"), "-aet", aet, "-od", str(out), *(extra_args or []), str(port)]
    proc = _spawn(f"storescp-{port}", argv, work, env_with(nodelay), port, aet)
    proc.extra["out"] = out
    proc.wait_ready(timeout, lambda: echo(port, aet))
    return proc


def clear_folder(folder: Path) -> int:
    """Delete the files storescp wrote (between runs, outside the timing); returns the count."""
    count = 0
    for entry in os.scandir(folder):
        if entry.is_file():
            os.unlink(entry.path)
            count += 1
        elif entry.is_dir():
            count += sum(len(files) for _, _, files in os.walk(entry.path))
            shutil.rmtree(entry.path)
    return count


# --------------------------------------------------------------------------- the node


_LAUNCHER: list[str] | None = None


def node_command() -> list[str]:
    """How a user starts the node: the ``hippo-scp`` console script (or ``python -m hippo_scp``)."""
    global _LAUNCHER
    if _LAUNCHER is None:
        script = VENV_PY.parent / "hippo-scp"
        _LAUNCHER = [str(script)] if script.exists() else [python(), "-m", "hippo_scp"]
    return list(_LAUNCHER)


def node_launcher() -> str:
    return " ".join(Path(a).name for a in node_command())


def write_node_config(work: Path, overrides: dict | None = None) -> Path:
    """ae_config.yaml of the repo with run paths under ``work`` and ``overrides`` merged in."""
    base = yaml.safe_load((REPO / "ae_config.yaml").read_text()) or {}
    base.setdefault("node", {})["bind_address"] = HOST
    base.setdefault("outbox", {})["directory"] = str(work / "outbox")
    base.setdefault("spool", {})["directory"] = str(work / "spool")
    base.setdefault("logging", {})["audit_log"] = str(work / "audit.jsonl")
    weights = base.get("model", {}).get("weights")
    if weights and not Path(weights).is_absolute():
        base["model"]["weights"] = str((REPO / weights).resolve())
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            base.setdefault(section, {}).update(values)
        else:
            base[section] = values
    path = work / "ae_config.yaml"
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path


def node_weights() -> tuple[Path | None, str]:
    """The weights the node loads: the shipped file, else placeholder random weights.

    Placeholder weights (same architecture, random values, in the cache outside the repo) let
    the harness run before the trained model exists; compute cost is the same, outputs are
    meaningless. Returns (path to pass as --weights or None for the shipped, description).
    """
    shipped = REPO / "model_weights" / "hippo_unet.safetensors"
    if shipped.exists() and not os.environ.get("HIPPO_BENCH_PLACEHOLDER_WEIGHTS"):
        return None, f"shipped {shipped.relative_to(REPO)}"
    from benchmarks.study_factory import cache_root

    path = cache_root() / "placeholder-weights" / "hippo_unet.safetensors"
    if not path.exists():
        code = (
            "import sys, torch; from pathlib import Path;"
            "from hippo_scp.model.network import UNet3D, UNetConfig;"
            "from hippo_scp.model.weights import save_weights;"
            "torch.manual_seed(0); c = UNetConfig(deep_supervision=False);"
            "save_weights(UNet3D(c).eval().state_dict(), Path(sys.argv[1]),"
            " {'architecture': c.to_dict(), 'fused_batchnorm': False, 'placeholder': True})"
        )
        subprocess.run([python(), "-c", code, str(path)], check=True, cwd=REPO, timeout=300)
    return path, "placeholder (random, same architecture; shipped weights missing)"


def start_node(
    work: Path,
    destination: str,
    settle: float = 3,
    nodelay: bool = False,
    port: int | None = None,
    aet: str = "HIPPOAI",
    config_overrides: dict | None = None,
    log_format: str = "json",
    timeout: float = 120,
    extra_env: dict | None = None,
    whole_series_senders: tuple[str, ...] = (),
) -> Proc:
    """``hippo-scp serve --config ... --ae-title --port --destination --settle`` as a user would.

    ``whole_series_senders``: ``--whole-series-sender`` flags, as deploy_scripts/start_listener.sh
    passes Orthanc's AE title when Orthanc routes whole stable series.

    ``nodelay`` puts ``TCP_NODELAY=1`` in the node's environment (as for dcmtk); whether the
    node honours it is the node's business. Ready = it answers C-ECHO (no bare TCP probe: a
    connection that never sends an A-ASSOCIATE-RQ holds up the node's shutdown by ~10 s).
    """
    port = port or free_port()
    work.mkdir(parents=True, exist_ok=True)
    config = write_node_config(work, config_overrides)
    weights, weights_note = node_weights()
    serve_args = [
        "serve",
        "--config",
        str(config),
        "--ae-title",
        aet,
        "--port",
        str(port),
        "--destination",
        destination,
        "--settle",
        str(settle),
        "--log-format",
        log_format,
        *(["--weights", str(weights)] if weights else []),
    ]
    for sender in whole_series_senders:
        serve_args += ["--whole-series-sender", sender]
    argv = [*node_command(), *serve_args]
    env = env_with(nodelay)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra_env or {})
    env.setdefault("PYTHONUNBUFFERED", "1")
    proc = _spawn(f"node-{port}", argv, work, env, port, aet)
    proc.wait_ready(timeout, lambda: echo(port, aet))
    proc.extra["config"] = config
    proc.extra["weights"] = weights_note
    proc.extra["launcher"] = node_launcher()
    return proc


def node_available() -> tuple[bool, str]:
    """Can the node be started at all (is ``hippo_scp.node`` there)? (ok, reason)."""
    if (
        not (REPO / "hippo_scp" / "node.py").exists()
        and not (REPO / "hippo_scp" / "node" / "__init__.py").exists()
    ):
        return False, "hippo_scp/node.py does not exist yet"
    return True, ""


def start_bare_scp(
    work: Path, port: int | None = None, args: list[str] | None = None, timeout: float = 30
) -> Proc:
    port = port or free_port()
    argv = [python(), "-m", "benchmarks.bare_scp", "--port", str(port), *(args or [])]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = _spawn(f"bare-{port}", argv, work, env, port, "BARESCP")
    proc.popen.args = argv
    proc.wait_ready(timeout, lambda: echo(port, "BARESCP"))
    return proc


# --------------------------------------------------------------------------- storescu


def storescu(
    port: int,
    called_aet: str,
    folder: Path,
    nodelay: bool,
    calling_aet: str = SCANNER_AET,
    timeout: float = 600,
    extra_args: list[str] | None = None,
) -> float:
    """Send every file under ``folder`` in one association; returns the wall time in seconds."""
    argv = [
        dcmtk("storescu"),
        "-aet",
        calling_aet,
        "-aec",
        called_aet,
        "+sd",
        "+r",
        "+sp",
        "*.dcm",
        *(extra_args or []),
        HOST,
        str(port),
        str(folder),
    ]
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, timeout=timeout, env=env_with(nodelay))
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(
            f"storescu to {called_aet}:{port} failed ({result.returncode}): "
            f"{result.stderr.decode(errors='replace')[-2000:]}"
        )
    return wall


# --------------------------------------------------------------------------- results sink


@dataclass
class Received:
    t: float  # time.perf_counter() at arrival
    wall: float  # time.time() at arrival
    sop_class: str
    modality: str
    study_uid: str
    series_uid: str
    calling_aet: str


class ResultSink:
    """A pynetdicom Storage SCP in a thread: the node's destination; records every arrival."""

    def __init__(self, aet: str = "SINK", port: int | None = None):
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        self.aet = aet
        self.port = port or free_port()
        self.items: list[Received] = []
        self._cond = threading.Condition()
        ae = AE(ae_title=aet)
        ae.maximum_pdu_size = 0
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, _ALL_TS)
        ae.add_supported_context(Verification)
        ae.maximum_associations = 64

        def on_store(event) -> int:
            now, wall = time.perf_counter(), time.time()
            ds = event.dataset
            item = Received(
                now,
                wall,
                str(ds.get("SOPClassUID", "")),
                str(ds.get("Modality", "")),
                str(ds.get("StudyInstanceUID", "")),
                str(ds.get("SeriesInstanceUID", "")),
                event.assoc.requestor.ae_title,
            )
            with self._cond:
                self.items.append(item)
                self._cond.notify_all()
            return 0x0000

        self._server = ae.start_server(
            (HOST, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )

    @property
    def destination(self) -> str:
        return f"{self.aet}@{HOST}:{self.port}"

    def clear(self) -> None:
        with self._cond:
            self.items.clear()

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.items)

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.items):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def results_for(self, study_uid: str, modality: str | None = None) -> list[Received]:
        return [
            r
            for r in self.snapshot()
            if r.study_uid == study_uid and (modality is None or r.modality == modality)
        ]

    def close(self) -> None:
        self._server.shutdown()

    def __enter__(self) -> ResultSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_ALL_TS = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
]


# --------------------------------------------------------------------------- Orthanc


class Orthanc:
    """Orthanc started from ``deploy_scripts/orthanc.json.template`` on free ports."""

    def __init__(self, proc: Proc, http_port: int):
        self.proc = proc
        self.http_port = http_port
        self.url = f"http://{HOST}:{http_port}"

    @property
    def dicom_port(self) -> int:
        return self.proc.port

    def rest(self, method: str, path: str, body: object = None, timeout: float = 600):
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            text = answer.read()
        try:
            return json.loads(text) if text else None
        except ValueError:
            return text

    def add_modality(self, name: str, aet: str, port: int) -> None:
        self.rest(
            "PUT",
            f"/modalities/{name}",
            {"AET": aet, "Host": HOST, "Port": port, "AllowEcho": True, "AllowStore": True},
        )

    def find(self, level: str, query: dict) -> list[str]:
        return self.rest("POST", "/tools/find", {"Level": level, "Query": query}, timeout=10)

    def study_id(self, study_uid: str) -> str | None:
        found = self.find("Study", {"StudyInstanceUID": study_uid})
        return found[0] if found else None

    def delete_all(self) -> None:
        for study in self.rest("GET", "/studies") or []:
            self.rest("DELETE", f"/studies/{study}")

    def stop(self) -> None:
        self.proc.stop(30)

    def __enter__(self) -> Orthanc:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_orthanc(
    work: Path,
    node_port: int,
    node_aet: str = "HIPPOAI",
    routing: bool = False,
    stable_age: int = 2,
    nodelay: bool = True,
    timeout: float = 60,
    route_series: list[str] | None = None,
    routing_script: str = "route_dicoms.lua",
    association_close_delay: int = 1,
) -> Orthanc:
    """Orthanc with the project's template: ``hippoai`` -> the node, ``scanner`` = STORESCU.

    ``routing``: load ``deploy_scripts/<routing_script>`` (``route_dicoms.lua``: OnStableSeries
    -> node; ``route_dicoms_per_instance.lua``: OnStoredInstance -> node); ``route_series``:
    ``HippoScp.RouteSeriesDescriptions`` (None: every image series);
    ``association_close_delay``: ``DicomAssociationCloseDelay`` (1: common.sh's default).
    Started with ``TCP_NODELAY=1`` unless ``nodelay`` is False.
    """
    http_port, dicom_port = free_port(), free_port()
    storage = work / "orthanc-storage"
    storage.mkdir(parents=True, exist_ok=True)
    lua = DEPLOY / routing_script
    values = {
        "ORTHANC_STORAGE_DIR": str(storage),
        "ORTHANC_PLUGIN_DIR": str(ORTHANC_PLUGIN_DIR),
        "ORTHANC_LUA_SCRIPTS": json.dumps(
            [str(DEPLOY / "route_common.lua"), str(lua)] if routing else []
        ),
        "ORTHANC_HTTP_PORT": str(http_port),
        "ORTHANC_REMOTE_ACCESS": "false",
        "ORTHANC_AET": "ORTHANC",
        "ORTHANC_DICOM_PORT": str(dicom_port),
        "HIPPO_AET": node_aet,
        "HIPPO_HOST": HOST,
        "HIPPO_PORT": str(node_port),
        "SCANNER_AET": SCANNER_AET,
        "ORTHANC_STABLE_AGE": str(stable_age),
        "ORTHANC_ALLOW_MOVE": "false",
        "ORTHANC_ASSOCIATION_CLOSE_DELAY": str(association_close_delay),
        "HIPPO_ROUTE_SERIES_JSON": json.dumps(route_series or []),
    }
    template = DEPLOY / "orthanc.json.template"
    config = json.loads(string.Template(template.read_text()).substitute(values))
    if not (ORTHANC_PLUGIN_DIR / "libOrthancDicomWeb.so").exists():
        config["Plugins"] = []
    config["DicomModalities"]["scanner"]["Port"] = free_port()
    path = work / "orthanc.json"
    path.write_text(json.dumps(config, indent=1))
    proc = _spawn(
        f"orthanc-{dicom_port}",
        [str(ORTHANC_BIN), str(path)],
        work,
        env_with(nodelay),
        dicom_port,
        "ORTHANC",
    )
    orthanc = Orthanc(proc, http_port)

    def ready() -> bool:
        try:
            orthanc.rest("GET", "/system", timeout=2)
        except (urllib.error.URLError, OSError):
            return False
        return port_open(dicom_port)

    proc.wait_ready(timeout, ready)
    return orthanc


# --------------------------------------------------------------------------- process metrics


def process_tree(pid: int):
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process and its children so far."""
    total = 0.0
    for proc in process_tree(pid):
        with contextlib.suppress(Exception):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) from /proc, summed over the process tree, in KiB."""
    out = {"rss_kib": 0, "hwm_kib": 0}
    for proc in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out["rss_kib"] += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    out["hwm_kib"] += int(line.split()[1])
    return out


#: the node's triggers.release_grace_seconds default: a series released by its association is
#: analysed this long after the release
NODE_RELEASE_GRACE_S = 1.0


def wait_node_quiet(proc: Proc, timeout: float = 300) -> float:
    """After sending to the node: wait out its release grace, then until it is idle."""
    time.sleep(NODE_RELEASE_GRACE_S + 0.3)
    return NODE_RELEASE_GRACE_S + 0.3 + wait_idle(proc.pid, timeout, cpu_fraction=0.1)


def wait_idle(pid: int, timeout: float, cpu_fraction: float = 0.05, window: float = 0.5) -> float:
    """Wait until the process uses < ``cpu_fraction`` of a core over ``window`` s (bounded)."""
    start = time.monotonic()
    last = cpu_seconds(pid)
    while time.monotonic() - start < timeout:
        time.sleep(window)
        now = cpu_seconds(pid)
        if now - last < cpu_fraction * window:
            return time.monotonic() - start
        last = now
    return time.monotonic() - start
