"""deploy_scripts/ohif_server.py against a fake dist/ and a fake Orthanc (no binaries needed)."""

from __future__ import annotations

import http.server
import io
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import DEPLOY, free_port, wait_for

pytestmark = pytest.mark.network


class FakeOrthanc(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = f"orthanc saw {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ohif(tmp_path: Path) -> Iterator[str]:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<html>OHIF index</html>")
    (dist / "app.bundle.js").write_text("console.log('bundle')")
    (dist / "app-config.js").write_text("window.config = {demo: 'cloudfront'}")
    (dist / "codec.wasm").write_bytes(b"\0asm")
    config = tmp_path / "app-config.js"
    config.write_text("window.config = {ours: true}")

    orthanc = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeOrthanc)
    threading.Thread(target=orthanc.serve_forever, daemon=True).start()
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(DEPLOY / "ohif_server.py"),
            "--dist",
            str(dist),
            "--app-config",
            str(config),
            "--orthanc",
            f"http://127.0.0.1:{orthanc.server_address[1]}",
            "--port",
            str(port),
        ],
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            urllib.request.urlopen(url + "/app-config.js", timeout=2)
            return True
        except OSError:
            return False

    try:
        wait_for(up, 20, "ohif_server.py", interval=0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        orthanc.shutdown()


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, "", ""


def test_serves_our_config_not_the_demo_one(ohif: str):
    assert fetch(ohif + "/app-config.js")[2] == "window.config = {ours: true}"


def test_app_routes_fall_back_to_index(ohif: str):
    for path in ("/", "/viewer?StudyInstanceUIDs=1.2.3", "/viewer/dicomweb", "/segmentation"):
        assert fetch(ohif + path)[2] == "<html>OHIF index</html>", path


def test_assets_and_missing_assets(ohif: str):
    status, ctype, body = fetch(ohif + "/app.bundle.js")
    assert (status, ctype, body) == (200, "text/javascript", "console.log('bundle')")
    assert fetch(ohif + "/codec.wasm")[1] == "application/wasm"
    assert fetch(ohif + "/missing.bundle.js")[0] == 404
    assert fetch(ohif + "/../../etc/passwd")[2] in ("<html>OHIF index</html>", "")


def test_dicomweb_is_proxied_with_its_query(ohif: str):
    status, ctype, body = fetch(ohif + "/dicom-web/studies?limit=25&offset=0")
    assert status == 200 and ctype == "application/dicom+json"
    assert body == "orthanc saw /dicom-web/studies?limit=25&offset=0"
    assert fetch(ohif + "/wado?requestType=WADO")[2] == "orthanc saw /wado?requestType=WADO"


def test_bitpacked_frames_are_cut_on_bit_boundaries():
    np = pytest.importorskip("numpy")
    pydicom = pytest.importorskip("pydicom")
    sys.path.insert(0, str(DEPLOY))
    from ohif_server import bitpacked_frames

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 2, size=(3, 5, 7), dtype=np.uint8)  # 35 bits: not byte-aligned
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.NumberOfFrames = 5, 7, 3
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.packbits(frames.ravel(), bitorder="little").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)

    cut = bitpacked_frames(buffer.getvalue(), [1, 2, 3])
    assert cut is not None and len(cut) == 3
    for k, data in enumerate(cut):
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[:35]
        assert (bits.reshape(5, 7) == frames[k]).all()
    assert bitpacked_frames(buffer.getvalue(), [4]) is None
