"""A small local server for the OHIF viewer test: the built OHIF app (the npm package @ohif/app's dist/), an
app-config.js pointing OHIF at this server's /dicom-web, and /dicom-web/* proxied to Orthanc's DICOMweb plugin
(one origin, so no CORS set-up in Orthanc). Standard library only; it runs in a thread of the test.
"""
from __future__ import annotations

import http.client
import http.server
import mimetypes
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Where `make ohif` (and .ci/run) unpack the npm package @ohif/app (gitignored).
OHIF_VERSION = "3.13.2"
OHIF_DIST = REPO / ".ohif" / "package" / "dist"

APP_CONFIG = """/* ercp-node viewer test: OHIF over the test's Orthanc (DICOMweb through /dicom-web on this origin) */
window.config = {
  name: 'ercp-node-test',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (ercp-node viewer test)',
        name: 'orthanc',
        wadoUriRoot: '%(root)s/dicom-web',
        qidoRoot: '%(root)s/dicom-web',
        wadoRoot: '%(root)s/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        dicomUploadEnabled: false,
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - quiet; the test keeps its own log
        self.server.requests.append(f"{self.command} {self.path} " + (format % args))

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/dicom-web/"):
            return self._proxy()
        path = self.path.split("?", 1)[0]
        if path == "/app-config.js":
            return self._send(200, self.server.app_config.encode(), "application/javascript")
        file = (self.server.dist / path.lstrip("/")).resolve()
        if not file.is_file() or self.server.dist not in file.parents:
            file = self.server.dist / "index.html"  # the app's own routes (/viewer?...)
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if file.suffix == ".wasm":
            ctype = "application/wasm"
        return self._send(200, file.read_bytes(), ctype)

    def do_POST(self):  # noqa: N802
        if self.path.startswith("/dicom-web/"):
            return self._proxy()
        return self._send(405, b"", "text/plain")

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "content-type")}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if resp.status >= 400:
            self.server.proxy_errors.append(f"{self.command} {self.path} -> {resp.status}")
        self._send(resp.status, data, resp.getheader("Content-Type") or "application/octet-stream")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class OhifServer:
    """Serves `dist` and proxies /dicom-web to Orthanc on `orthanc_port`; `url` once started."""

    def __init__(self, dist: Path, orthanc_port: int):
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.dist = Path(dist).resolve()
        self.httpd.orthanc_port = orthanc_port
        self.httpd.requests, self.httpd.proxy_errors = [], []
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.httpd.app_config = APP_CONFIG % {"root": self.url}
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def proxy_errors(self) -> list[str]:
        return self.httpd.proxy_errors

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
