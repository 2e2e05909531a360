"""DICOMweb STOW-RS export (the `dicomweb-client` library) for `kind = "dicomweb"` destinations.

The secret (basic password or bearer token) is read from its file at each send, so a rotated token is picked up
without a restart; it never reaches a log line or the database. https certificates are verified (against the
destination's tls_ca, else the system store). The library's own HTTP retries are off: the exporter's backoff and
dead-letter apply, as for C-STORE."""

from __future__ import annotations

import pydicom
import requests


def session_for(d) -> requests.Session:
    s = requests.Session()
    if d.tls_ca:
        # Session.verify alone loses to REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment (requests merges the
        # environment's bundle per request over the session's): the destination's CA is passed with every request.
        request = s.request
        s.request = lambda method, url, **kw: request(method, url, **{**kw, "verify": d.tls_ca})
    if d.auth == "basic":
        s.auth = (d.username, d.secret())
    elif d.auth == "bearer":
        s.headers["Authorization"] = f"Bearer {d.secret()}"
    return s


def stow(d, path: str) -> str | None:
    """STOW-RS of one stored output; None on success, else the reason (HTTP errors raise)."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=d.url.rstrip("/"), session=session_for(d), timeout=d.timeout_s)
    client.set_http_retry_params(retry=False)
    ds = pydicom.dcmread(path)
    resp = client.store_instances(datasets=[ds])
    failed = resp.get("FailedSOPSequence") if resp is not None else None
    if failed:
        reasons = sorted({f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed})
        return f"STOW-RS refused the instance (FailureReason {', '.join(reasons)})"
    return None
