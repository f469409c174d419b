"""The durable spool end to end (issue #9, faults): ``kill -9`` and restart, aborted and open
associations, spool off, an unwritable spool.

The node runs as a process (``kill -9`` needs one) with a fake analyzer instead of the model:
this module is its own launcher (``python test_spool.py serve ...``, same flags as
``hippo-scp serve``), so a start costs no torch import and an analysis can be made slow on
purpose (``SPOOL_TEST_DELAY``) to kill the node in the middle of it. ``SPOOL_TEST_LOG`` gets a
line when an analysis starts and when it ends.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # launched as the node: make `tests` and `hippo_scp` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification

import tests.network.conftest as network_conftest
from hippo_scp.network.response_guard import keep_responses_for_caller
from tests.network.conftest import NodeProcess, Sink, free_port, wait_until, write_node_config
from tests.network.test_node_inprocess import fake_result, start_node  # noqa: F401 - fixture
from tests.network.test_node_network import outbox_sets, storescu

pytestmark = [pytest.mark.network, pytest.mark.timeout(180)]

CROP = ("Study3", "11_HCropVolume")  # 40 instances, one selected series
OTHER_CROP = ("Study2", "14_HCropVolume")
#: In-process nodes deliver to a port nobody listens on: results stay in their outbox (and
#: never reach a real PACS that may listen on the default destination's port).
NO_PACS = {"destinations": [{"ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()}]}


# --------------------------------------------------------------------------- launcher
def _slow_fake_analyzer(datasets):
    log = Path(os.environ["SPOOL_TEST_LOG"])
    with log.open("a") as handle:
        handle.write(f"start {len(datasets)}\n")
    time.sleep(float(os.environ.get("SPOOL_TEST_DELAY", "0")))
    with log.open("a") as handle:
        handle.write(f"done {len(datasets)}\n")
    return fake_result(datasets)


def _serve(argv: list[str]) -> int:
    from hippo_scp.cli.serve import build_serve_config
    from hippo_scp.node import run_node

    assert argv[0] == "serve"
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    config = build_serve_config(
        Path(flags["--config"]),
        ae_title=flags["--ae-title"],
        port=int(flags["--port"]),
        destinations=[flags["--destination"]],
        settle=float(flags["--settle"]),
    )
    return run_node(config, analyze=_slow_fake_analyzer)


# --------------------------------------------------------------------------- helpers
@pytest.fixture
def fake_node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_dir: Path):
    """Start fake-analyzer nodes sharing one config (spool, outbox) in ``tmp_path``."""
    network_conftest.require_dcmtk()
    monkeypatch.setattr(network_conftest, "NODE_COMMAND", [sys.executable, __file__])
    monkeypatch.setenv("SPOOL_TEST_LOG", str(tmp_path / "analyses.log"))
    nodes: list[NodeProcess] = []
    port = free_port()

    def start(sink: Sink, *, spool: bool, settle: float, delay: float = 0) -> NodeProcess:
        monkeypatch.setenv("SPOOL_TEST_DELAY", str(delay))
        config = write_node_config(
            tmp_path / "ae_config.yaml",
            tmp_path / "unused.safetensors",
            spool={"enabled": spool, "directory": str(tmp_path / "spool")},
        )
        node = NodeProcess(config, port, sink.destination, settle=settle).start(timeout=60)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.kill()


def analyses(tmp_path: Path) -> list[str]:
    log = tmp_path / "analyses.log"
    return log.read_text().splitlines() if log.exists() else []


def committed_series(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "spool" / "series"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def crop_files(data_dir: Path, which: tuple[str, str] = CROP) -> list[Path]:
    return sorted((data_dir / "TestVolumes" / which[0] / which[1]).glob("*.dcm"))


# --------------------------------------------------------------------------- tests
def test_kill_9_then_restart_analyses_released_series_exactly_once(
    fake_node, tmp_path: Path, data_dir: Path
) -> None:
    """At the kill: series A is being analysed (released), series B came over an association
    that aborted, series C over one still open. After the restart: A once, never B or C."""
    sink = Sink(ae_title="PACS").start()
    try:
        node = fake_node(sink, spool=True, settle=2, delay=120)
        scu = AE(ae_title="STORESCU")
        scu.add_requested_context(MRImageStorage)
        aborted = scu.associate("127.0.0.1", node.port, ae_title="HIPPOAI")
        keep_responses_for_caller(aborted)
        for path in crop_files(data_dir, OTHER_CROP)[:5]:
            assert aborted.send_c_store(pydicom.dcmread(path)).Status == 0
        aborted.abort()
        incoming = tmp_path / "spool" / "incoming"
        assert wait_until(lambda: not any(incoming.iterdir()), 10)  # deleted on abort

        assert storescu(node.port, *crop_files(data_dir)).returncode == 0  # series A
        still_open = scu.associate("127.0.0.1", node.port, ae_title="HIPPOAI")
        keep_responses_for_caller(still_open)
        for path in crop_files(data_dir, OTHER_CROP)[:6]:  # series B again, as series C
            assert still_open.send_c_store(pydicom.dcmread(path)).Status == 0
        assert wait_until(lambda: analyses(tmp_path) == ["start 40"], 30), node.output
        assert len(committed_series(tmp_path)) == 1  # A only
        assert len(list(incoming.rglob("*.dcm"))) == 6  # C, pending
        node.kill()  # SIGKILL in the middle of A's analysis, C's association open
        still_open.abort()

        node = fake_node(sink, spool=True, settle=1)
        assert "discarded 6 instance(s) from 1 association(s)" in node.output
        assert "1 series recovered" in node.output
        received = sink.wait_for(3, timeout=30)
        assert len(received) == 3, node.output
        time.sleep(2.5)  # longer than settle + a poll: nothing more may arrive
        assert len(sink.snapshot()) == 3
        assert analyses(tmp_path) == ["start 40", "start 40", "done 40"]
        assert committed_series(tmp_path) == []  # retired once the results were in the outbox
        assert not any(incoming.iterdir())
        assert wait_until(lambda: not outbox_sets(tmp_path / "outbox"), 10)
        assert node.terminate() == 0
    finally:
        sink.stop()


@pytest.mark.parametrize("spool", [False, True], ids=["spool-off", "spool-on"])
def test_series_waiting_for_settle_across_a_stop(
    start_node,  # noqa: F811 - fixture
    tmp_path: Path,
    data_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    spool: bool,
) -> None:
    """The SIGTERM path (``Node.stop``). Spool off: the documented loss (WARNING, nothing
    analysed after the restart). Spool on: the series survives and is analysed once."""
    caplog.set_level(logging.INFO, logger="hippo_scp")
    from hippo_scp.assembly.spool import Spool

    sync = Spool.sync_pending

    def slow_sync(self, association_id: int) -> None:  # a slow disk: the commit must still
        time.sleep(0.5)  # be done before the sender gets its A-RELEASE-RP
        sync(self, association_id)

    monkeypatch.setattr(Spool, "sync_pending", slow_sync)
    sections = {"spool": {"enabled": spool, "directory": str(tmp_path / "spool")}, **NO_PACS}
    first = start_node(**sections, triggers={"settle_seconds": 60})
    files = crop_files(data_dir)
    # Two associations: the settle rule (60 s) applies, so the series is still waiting.
    assert storescu(first.address.port, *files[:20]).returncode == 0
    assert storescu(first.address.port, *files[20:]).returncode == 0
    if spool:  # committed before the A-RELEASE-RP: durable as soon as the sender is told
        assert len(committed_series(tmp_path)) == 1
        assert len(list((tmp_path / "spool" / "series").rglob("*.dcm"))) == 40
    first.stop()
    if spool:
        assert "1 series still waiting for their settle window are kept in the spool" in (
            caplog.text
        )
    else:
        assert "not analysed (no spool: the sender must resend them)" in caplog.text

    calls: list[int] = []

    def analyze(datasets):
        calls.append(len(datasets))
        return fake_result(datasets)

    second = start_node(analyze, **sections)  # settle 1 s
    if spool:
        assert wait_until(lambda: calls, 10)
    time.sleep(2.5)  # settle + a poll: nothing (more) may be analysed
    assert calls == ([40] if spool else [])
    assert second.outbox.count() == len(calls)
    if not spool:
        assert "spool disabled" in caplog.text


def test_unwritable_spool_answers_0xA700_and_the_node_keeps_serving(
    start_node,  # noqa: F811 - fixture
    tmp_path: Path,
    data_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = tmp_path / "spool"
    node = start_node(spool={"enabled": True, "directory": str(spool)}, **NO_PACS)
    (spool / "incoming").rmdir()
    (spool / "incoming").write_text("disk full stand-in")  # every write fails, even as root
    scu = AE(ae_title="STORESCU")
    scu.add_requested_context(MRImageStorage)
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", node.address.port, ae_title="HIPPOAI")
    keep_responses_for_caller(assoc)
    datasets = [pydicom.dcmread(p) for p in crop_files(data_dir)[:3]]
    assert [assoc.send_c_store(ds).Status for ds in datasets] == [0xA700] * 3
    assert assoc.send_c_echo().Status == 0  # still serving
    assoc.release()
    assert "C-STORE refused with 0xA700: the spool copy cannot be written" in caplog.text
    time.sleep(2)  # settle 1 s + grace: nothing is analysed
    assert len(node.store) == 0 and node.store.total_bytes == 0


def test_results_already_in_the_outbox_are_not_produced_twice(
    start_node,  # noqa: F811 - fixture
    tmp_path: Path,
    data_dir: Path,
) -> None:
    """Crash window between 'results written to the outbox' and 'spool deleted'."""
    from hippo_scp.assembly.spool import Spool
    from hippo_scp.network.outbox import Outbox
    from hippo_scp.pipeline.worker import fingerprint
    from tests.network.test_outbox_worker import sc_dataset

    spool_dir, calls = tmp_path / "spool", []
    sections = {"spool": {"enabled": True, "directory": str(spool_dir)}, **NO_PACS}
    first = start_node(**sections, triggers={"settle_seconds": 60})
    assert storescu(first.address.port, *crop_files(data_dir)[:20]).returncode == 0
    assert storescu(first.address.port, *crop_files(data_dir)[20:]).returncode == 0
    first.stop()
    (series,) = Spool(spool_dir).recover()
    outbox = Outbox(first.outbox.directory, first.outbox.destinations)  # the "crashed" put
    outbox.put(series.label, [sc_dataset()], {"content": fingerprint(series.instances)})

    def analyze(datasets):
        calls.append(len(datasets))
        return fake_result(datasets)

    second = start_node(analyze, **sections)
    time.sleep(2)
    assert calls == []
    assert not any((spool_dir / "series").iterdir())
    assert second.outbox.count() == 1


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1:]))
