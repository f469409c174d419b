"""Faults (issue #9): the node killed with SIGKILL mid-analysis, the outbox's disk full.

(Destination down and a clean restart are covered by ``tests/network``.)

* ``kill -9`` while a series is being analysed, with results of an earlier series waiting in
  the outbox (destination down) and a half-written result set on disk (what a crash in
  ``Outbox.put`` leaves): after a restart every complete result set is delivered exactly once,
  the half-written one never, and the series whose analysis was killed is analysed once when
  its sender sends it again.
* outbox on a 64 KiB tmpfs (skipped where mount is not permitted): the write fails, the node
  says so clearly (one line, no half-written set left), keeps receiving and answering C-ECHO,
  delivers again once there is room, and a re-send of the series that failed is analysed.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hardening.conftest import (
    HardNode,
    Sink,
    assert_sane_result_set,
    echo,
    for_study,
    free_port,
    kind,
    series_label,
    store,
    wait_until,
    write_node_config,
)

pytestmark = [pytest.mark.network, pytest.mark.timeout(240)]

SLICES = 12
B_SLICES = 16


def series(slices: int = SLICES, case: int = 1):
    from tests.dicom_factory import series_from_volume
    from tests.hardening.conftest import _nifti

    image, _ = _nifti(case)
    return series_from_volume(
        image[:, :, :slices], patient_name="Fault^Case", patient_id="FAULT-1", seed=case
    )


def outbox_sets(outbox: Path) -> list[Path]:
    return [p for p in outbox.glob("*/*") if p.is_dir() and not p.name.startswith(".")]


def outbox_partials(outbox: Path) -> list[Path]:
    return [p for p in outbox.glob("*/.*.tmp")]


# --------------------------------------------------------------------------- kill -9
def test_kill_9_mid_analysis_then_restart_delivers_outbox_once(
    tmp_path: Path, hardening_weights: Path
) -> None:
    sink = Sink(ae_title="FAULTSINK")  # not started: the PACS is down
    config = write_node_config(tmp_path / "ae_config.yaml", hardening_weights)
    outbox = tmp_path / "outbox"
    port = free_port()
    t0 = time.monotonic()

    def step(what: str) -> None:
        print(f"[kill -9] {time.monotonic() - t0:6.1f} s  {what}", flush=True)

    node = HardNode(config, port, sink.destination, settle=2).start()
    try:
        step("node started")
        a = series()
        assert set(store(port, a).statuses) == {0}
        assert wait_until(lambda: len(outbox_sets(outbox)) == 1, 90), node.output[-3000:]
        assert node.wait_log(r"delivery failed", 30)
        step("A in the outbox")

        # B: a bigger series whose analysis takes seconds; kill -9 while it runs.
        b = series(slices=B_SLICES, case=1)
        b_label = series_label(str(b[0].SeriesInstanceUID))
        mark = node.mark()
        assert set(store(port, b).statuses) == {0}
        assert node.wait_log(rf"series {b_label} selected", 5, mark)
        # Inside B's release grace (1 s): the worker analyses B during the grace and files
        # its results only once the grace is over, so B is analysed but not yet filed.
        time.sleep(0.4)
        node.kill9()
        assert not node.running
        # Killed mid-analysis: the worker had not filed B.
        assert f"series {b_label} analysed" not in node.log_since(mark)
        sets_after_kill = outbox_sets(outbox)
        assert len(sets_after_kill) == 1
        step("killed mid-analysis of B")

        # What a crash inside Outbox.put leaves behind: a half-written hidden .tmp set.
        destination_folder = sets_after_kill[0].parent
        partial = destination_folder / ".99999999999999999999-0001-s-crashed.tmp"
        partial.mkdir()
        shutil.copy(next(sets_after_kill[0].glob("00-*.dcm")), partial / "00-seg.dcm")

        sink.start()
        node = HardNode(config, port, sink.destination, settle=2).start()
        step("restarted")
        expected_objects = 3 * len(sets_after_kill)
        assert wait_until(lambda: len(sink.snapshot()) >= expected_objects, 60), node.output
        assert wait_until(lambda: not outbox_sets(outbox), 15)
        assert not partial.exists(), "half-written result set not removed at start-up"
        assert "removed an incomplete result set" in node.output

        received = sink.snapshot()
        a_results = for_study(received, str(a[0].StudyInstanceUID))
        assert_sane_result_set(a_results, SLICES)
        uids = [str(ds.SOPInstanceUID) for ds in received]
        assert len(uids) == len(set(uids)), "an outbox object was delivered twice"

        # The sender of B saw success before the crash (no spool): it resends; B is
        # analysed once.
        assert set(store(port, b).statuses) == {0}
        step("outbox delivered once; B resent")
        b_study = str(b[0].StudyInstanceUID)
        assert wait_until(lambda: len(for_study(sink.snapshot(), b_study)) >= 3, 120), node.output[
            -3000:
        ]
        time.sleep(2 + 1 + 2)  # settle + grace + margin
        assert_sane_result_set(for_study(sink.snapshot(), b_study), B_SLICES)
        assert len(for_study(sink.snapshot(), str(a[0].StudyInstanceUID))) == 3
        assert echo(port)
        assert node.terminate() == 0
        step("B analysed once; node stopped")
    finally:
        node.kill()
        sink.stop()


# --------------------------------------------------------------------------- disk full
def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        timeout=10,
    )
    return done.returncode == 0


def _remount(path: Path, size: str) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True
    )


@pytest.fixture(scope="module")
def disk_full(tmp_path_factory: pytest.TempPathFactory, hardening_weights: Path) -> Iterator[dict]:
    """The disk-full scenario, run once; the tests below assert on what it observed."""
    folder = tmp_path_factory.mktemp("disk_full")
    outbox = folder / "outbox"
    if shutil.which("mount") is None or not _mount_tmpfs(outbox, "64k"):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    sink = Sink(ae_title="FULLSINK").start()
    config = write_node_config(folder / "ae_config.yaml", hardening_weights)
    node = HardNode(config, free_port(), sink.destination, settle=2).start()
    seen: dict = {"node": node, "sink": sink, "outbox": outbox}
    try:
        c = series()
        c_label = series_label(str(c[0].SeriesInstanceUID))
        mark = node.mark()
        seen["c_statuses"] = set(store(node.port, c).statuses)
        # Bounded wait for the outcome of writing C's results (an error or a delivery).
        node.wait_log(
            rf"No space left on device|series {c_label}: results delivered|{c_label}.*failed",
            90,
            mark,
        )
        time.sleep(1)
        seen["log_c"] = node.log_since(mark)
        seen["partials"] = outbox_partials(outbox)
        seen["c_results"] = for_study(sink.snapshot(), str(c[0].StudyInstanceUID))

        # Still receiving while the disk is full.
        d = series(case=4)
        for ds in d:  # not selected: exercises reception without another analysis
            ds.SeriesDescription = "T1post"
        seen["echo_full"] = echo(node.port)
        seen["d_statuses"] = set(store(node.port, d).statuses)
        time.sleep(3)
        seen["running_full"] = node.running

        # Room again: a new study is delivered without a restart.
        _remount(outbox, "64m")
        e = series(case=3)
        mark = node.mark()
        seen["e_statuses"] = set(store(node.port, e).statuses)
        e_study = str(e[0].StudyInstanceUID)
        wait_until(lambda: len(for_study(sink.snapshot(), e_study)) >= 3, 90)
        seen["e_results"] = for_study(sink.snapshot(), e_study)
        seen["log_e"] = node.log_since(mark)

        # C's sender got 0x0000 but C has no results: re-sent, it is analysed (once).
        seen["c_resend_statuses"] = set(store(node.port, c).statuses)
        c_study = str(c[0].StudyInstanceUID)
        c_label_again = rf"series {c_label}: results delivered|{c_label} re-sent unchanged"
        node.wait_log(c_label_again, 45, mark)
        wait_until(lambda: len(for_study(sink.snapshot(), c_study)) >= 3, 5)
        time.sleep(2 + 1 + 1)  # settle + grace + margin: nothing more for C
        seen["c_results_after"] = for_study(sink.snapshot(), c_study)
        yield seen
    finally:
        node.kill()
        sink.stop()
        subprocess.run(["umount", "-l", str(outbox)], capture_output=True, timeout=10)
        (folder / "node.log").write_text(node.output, encoding="utf-8")  # for a post-mortem


def test_outbox_full_node_keeps_receiving_and_recovers(disk_full: dict) -> None:
    assert disk_full["c_statuses"] == {0}
    assert not disk_full["c_results"], "results sent although they could not be stored"
    assert disk_full["echo_full"]
    assert disk_full["d_statuses"] == {0}
    assert disk_full["running_full"], disk_full["node"].output[-3000:]
    assert disk_full["e_statuses"] == {0}
    assert_sane_result_set(disk_full["e_results"], SLICES)
    assert "No space left on device" in disk_full["log_c"], disk_full["log_c"][-3000:]


def test_outbox_full_error_is_one_clear_line(disk_full: dict) -> None:
    lines = disk_full["log_c"].splitlines()
    clear = [
        line
        for line in lines
        if ("ERROR" in line or "WARNING" in line)
        and "outbox" in line.lower()
        and ("No space left on device" in line or "disk full" in line.lower())
    ]
    assert clear, "\n".join(lines[-20:])
    assert not any("analysis failed" in line for line in lines), "misleading message"


def test_outbox_full_leaves_no_half_written_set(disk_full: dict) -> None:
    assert not disk_full["partials"], disk_full["partials"]


def test_outbox_full_nothing_lost_once_resent(disk_full: dict) -> None:
    """Once there is room: the series whose results could not be written is analysed when
    re-sent (as the worker's error line promises), exactly one result set."""
    assert Counter(kind(ds) for ds in disk_full["e_results"]) == Counter(SEG=1, SR=1, SC=1)
    assert disk_full["c_resend_statuses"] == {0}
    assert_sane_result_set(disk_full["c_results_after"], SLICES)
