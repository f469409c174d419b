#!/usr/bin/env python3
"""Serve the prebuilt OHIF viewer and proxy Orthanc's DICOMweb API on the same origin.

Standard library only (runs with the system python3 or the venv):

* ``/dicom-web/...`` and ``/wado...`` are forwarded to Orthanc (``--orthanc``), streaming the
  answers (WADO-RS multipart bodies can be large) -- so the browser sees one origin, no CORS;
* ``/app-config.js`` is our configuration (``--app-config``), not the demo one shipped in dist/;
* WADO-RS frames of 1-bit (BINARY) SEG instances, which Orthanc 1.10's DICOMweb plugin
  refuses when a frame is not a whole number of bytes ("Bad number of columns for a
  black-and-white image"), are cut from the instance here instead (needs pydicom + numpy,
  i.e. run it with the project's venv python; without them Orthanc's answer is passed on);
* every other path is a file of ``@ohif/app``'s ``dist/`` (``--dist``); paths that are not
  files (app routes such as ``/viewer?StudyInstanceUIDs=...``) get ``index.html``, because
  OHIF is a single-page app whose ``index.html`` uses absolute paths.

Usage: ohif_server.py --dist DIR --app-config FILE --orthanc http://127.0.0.1:8042 --port 3000
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import io
import json
import logging
import mimetypes
import posixpath
import re
import shutil
import sys
import urllib.parse
import uuid
from pathlib import Path

PROXIED_PREFIXES = ("/dicom-web/", "/dicom-web?", "/wado")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
}
EXTRA_TYPES = {
    ".wasm": "application/wasm",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json",
}

FRAMES_PATH = re.compile(
    r"^/dicom-web/studies/[^/?]+/series/[^/?]+/instances/(?P<sop>[^/?]+)/frames/(?P<frames>[0-9,]+)$"
)

log = logging.getLogger("ohif_server")


def bitpacked_frames(dicom: bytes, numbers: list[int]) -> list[bytes] | None:
    """Frames (1-based ``numbers``) of an uncompressed 1-bit multi-frame instance, each
    re-packed from its first bit (the DICOM pixel data packs frames back to back, so a frame
    of e.g. 51 x 35 pixels does not start on a byte boundary). None when not applicable."""
    try:
        import numpy as np
        import pydicom
    except ImportError:
        return None
    ds = pydicom.dcmread(io.BytesIO(dicom))
    if int(ds.get("BitsAllocated", 0)) != 1 or ds.file_meta.TransferSyntaxUID.is_compressed:
        return None
    count = int(ds.get("NumberOfFrames", 1))
    if any(n < 1 or n > count for n in numbers):
        return None
    size = int(ds.Rows) * int(ds.Columns)
    bits = np.unpackbits(np.frombuffer(ds.PixelData, dtype=np.uint8), bitorder="little")
    return [
        np.packbits(bits[(n - 1) * size : n * size], bitorder="little").tobytes() for n in numbers
    ]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hippo-scp-ohif/1"
    dist: Path
    app_config: Path
    orthanc: urllib.parse.SplitResult

    # -- dispatch ---------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._dispatch(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(head=True)

    def do_POST(self) -> None:  # noqa: N802
        if self._is_proxied():
            self._proxy()
        else:
            self.send_error(405)

    def do_OPTIONS(self) -> None:  # noqa: N802
        if self._is_proxied():
            self._proxy()
        else:
            self.send_response(204)
            self.send_header("Allow", "GET, HEAD, OPTIONS")
            self.send_header("Content-Length", "0")
            self.end_headers()

    def _is_proxied(self) -> bool:
        return self.path.startswith(PROXIED_PREFIXES) or self.path == "/dicom-web"

    def _dispatch(self, head: bool) -> None:
        if self._is_proxied():
            self._proxy()
        else:
            self._static(head)

    # -- reverse proxy ----------------------------------------------------------------------
    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = self.orthanc.netloc
        headers["X-Forwarded-Host"] = self.headers.get("Host", "")
        headers["X-Forwarded-Proto"] = "http"
        connection = http.client.HTTPConnection(
            self.orthanc.hostname, self.orthanc.port or 80, timeout=120
        )
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            answer = connection.getresponse()
        except OSError as error:
            connection.close()
            self.send_error(502, f"Orthanc unreachable: {error}")
            return
        if answer.status >= 400 and self.command == "GET":
            match = FRAMES_PATH.match(self.path)
            if match and self._send_bitpacked_frames(match["sop"], match["frames"]):
                connection.close()
                return
        try:
            self.send_response(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            declared = answer.getheader("Content-Length")
            if self.command == "HEAD" or answer.status in (204, 304):
                self.send_header("Content-Length", declared or "0")
                self.end_headers()
                return
            if declared is not None:
                self.send_header("Content-Length", declared)
                self.end_headers()
                shutil.copyfileobj(answer, self.wfile, 256 * 1024)
            else:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while chunk := answer.read1(256 * 1024):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            connection.close()

    def _orthanc_request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        connection = http.client.HTTPConnection(
            self.orthanc.hostname, self.orthanc.port or 80, timeout=60
        )
        try:
            connection.request(method, path, body=body)
            answer = connection.getresponse()
            data = answer.read()
            if answer.status != 200:
                raise OSError(f"Orthanc {method} {path}: HTTP {answer.status}")
            return data
        finally:
            connection.close()

    def _send_bitpacked_frames(self, sop_uid: str, frame_list: str) -> bool:
        """Answer a WADO-RS frames request from the whole instance; False if not possible."""
        try:
            query = json.dumps({"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}})
            ids = json.loads(self._orthanc_request("POST", "/tools/find", query.encode()))
            if len(ids) != 1:
                return False
            dicom = self._orthanc_request("GET", f"/instances/{ids[0]}/file")
            frames = bitpacked_frames(dicom, [int(n) for n in frame_list.split(",")])
        except (OSError, ValueError) as error:
            log.warning("frames fallback for %s failed: %s", sop_uid, error)
            return False
        if frames is None:
            return False
        boundary = uuid.uuid4().hex
        parts = [
            b"--%s\r\nContent-Type: application/octet-stream\r\n\r\n%s\r\n"
            % (boundary.encode(), frame)
            for frame in frames
        ]
        body = b"".join(parts) + b"--%s--\r\n" % boundary.encode()
        self.send_response(200)
        self.send_header(
            "Content-Type",
            f'multipart/related; type="application/octet-stream"; boundary={boundary}',
        )
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return True

    # -- static files -----------------------------------------------------------------------
    def _resolve(self, url_path: str) -> Path | None:
        path = posixpath.normpath(urllib.parse.unquote(url_path))
        parts = [p for p in path.split("/") if p and p not in (".", "..")]
        candidate = self.dist.joinpath(*parts) if parts else self.dist / "index.html"
        try:
            candidate.resolve().relative_to(self.dist.resolve())
        except ValueError:
            return None
        return candidate if candidate.is_file() else None

    def _static(self, head: bool) -> None:
        url_path = urllib.parse.urlsplit(self.path).path
        if url_path == "/app-config.js":
            file = self.app_config
        else:
            file = self._resolve(url_path)
            if file is None:
                last = url_path.rsplit("/", 1)[-1]
                if "." in last:  # a missing asset: a real 404, not the app
                    self.send_error(404)
                    return
                file = self.dist / "index.html"  # an app route such as /viewer
        suffix = file.suffix.lower()
        ctype = EXTRA_TYPES.get(suffix) or mimetypes.guess_type(file.name)[0]
        ctype = ctype or "application/octet-stream"
        data_size = file.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(data_size))
        # index.html and the config must never be cached (they change per deployment);
        # the hashed bundles may be.
        if file.name in ("index.html", "app-config.js"):
            self.send_header("Cache-Control", "no-cache")
        else:
            self.send_header("Cache-Control", "public, max-age=3600")
        # Cross-origin isolation lets OHIF use SharedArrayBuffer (faster volume loading);
        # everything it loads is same-origin, so this costs nothing.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.end_headers()
        if head:
            return
        try:
            with file.open("rb") as stream:
                shutil.copyfileobj(stream, self.wfile, 256 * 1024)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.info("%s %s", self.address_string(), format % args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, required=True, help="@ohif/app's dist/ folder")
    parser.add_argument("--app-config", type=Path, required=True, help="app-config.js to serve")
    parser.add_argument("--orthanc", default="http://127.0.0.1:8042", help="Orthanc base URL")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    if not (args.dist / "index.html").is_file():
        print(
            f"error: {args.dist}/index.html not found; run deploy_scripts/install.sh",
            file=sys.stderr,
        )
        return 2
    if not args.app_config.is_file():
        print(f"error: {args.app_config} not found", file=sys.stderr)
        return 2

    Handler.dist = args.dist.resolve()
    Handler.app_config = args.app_config.resolve()
    Handler.orthanc = urllib.parse.urlsplit(args.orthanc)
    server = http.server.ThreadingHTTPServer((args.bind, args.port), Handler)
    server.daemon_threads = True
    log.info(
        "OHIF on http://%s:%d/ (dist %s), /dicom-web -> %s",
        args.bind,
        args.port,
        Handler.dist,
        args.orthanc,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
