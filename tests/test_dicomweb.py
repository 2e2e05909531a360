"""DICOMweb STOW-RS export (dicomweb-client) to a real Orthanc with the Debian DICOMweb plugin, over HTTPS with a
test CA (socat terminates TLS in front of Orthanc: Debian's Orthanc 1.10.1 segfaults on its own HTTPS port here): basic auth (Orthanc's registered users) and bearer auth (Orthanc's Python plugin filters every request on
the token), the same UIDs on a resend (Orthanc keeps one instance), a wrong secret recorded as a failure without
the secret, and nothing sent before the certificate is verified."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
import ssl
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from helpers import Orthanc, free_port, wait_until
from ercp_node.cli import main
from ercp_node.config.settings import Destination, Settings, validate
from ercp_node.node.service import Node
from ercp_node.storage.models import Export, ExportAttempt, Output

DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
TOKEN = "bearer-token-for-tests-0123456789"


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    _openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=ercp-test-ca")
    _openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "pacs.key", "-out", "pacs.csr", "-subj", "/CN=pacs")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(d, "x509", "-req", "-in", "pacs.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "pacs.pem", "-days", "2", "-extfile", "ext")
    (d / "pacs-bundle.pem").write_text((d / "pacs.pem").read_text() + (d / "pacs.key").read_text())
    _openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.pem",
             "-days", "2", "-subj", "/CN=other-ca")
    return d


class OrthancWeb:
    """helpers.Orthanc with the DICOMweb plugin behind a TLS front (socat); `auth` basic (registered users) or
    bearer (a Python filter on every request)."""

    def __init__(self, root: Path, pki: Path, auth: str):
        if auth == "basic":
            config = {"AuthenticationEnabled": True, "RegisteredUsers": {"ercp": "correct horse"}}
            headers = {"Authorization": "Basic " + __import__("base64").b64encode(b"ercp:correct horse").decode()}
        else:
            root.mkdir(parents=True)
            script = root / "bearer.py"
            script.write_text(
                "import orthanc\n"
                "def Filter(uri, **request):\n"
                f"    return request['headers'].get('authorization') == 'Bearer {TOKEN}'\n"
                "orthanc.RegisterIncomingHttpRequestFilter(Filter)\n")
            config = {"AuthenticationEnabled": False, "PythonScript": str(script),
                      "Plugins": [str(DICOMWEB), str(PYTHON_PLUGIN)]}
            headers = {"Authorization": f"Bearer {TOKEN}"}
        self.orthanc = Orthanc(root, dicomweb=True, config=config, headers=headers)
        self.headers, self.port = headers, free_port()
        self.tls = subprocess.Popen([shutil.which("socat"), f"OPENSSL-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork,"
                                     f"cert={pki / 'pacs-bundle.pem'},verify=0",
                                     f"TCP:127.0.0.1:{self.orthanc.http_port}"],
                                    stdout=self.orthanc.log, stderr=subprocess.STDOUT)
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        if not wait_until(self._up, 30):
            raise RuntimeError(f"the TLS front did not start; see {root / 'orthanc.log'}")

    def _up(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dicom-web"

    def get(self, path: str):
        req = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", headers=self.headers)
        with urllib.request.urlopen(req, timeout=10, context=self.ctx) as r:
            return json.loads(r.read())

    def sop_uids(self) -> list[str]:
        return [self.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in self.get("/instances")]

    def stop(self):
        self.tls.terminate()
        self.tls.wait(20)
        self.orthanc.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("carm")
    assert main(["synth", "--count", "2", "--seed", "73", "--size", "512", "--out", str(root),
                 "--workers", "1"]) == 0  # no fork of a process whose threads (nodes, TensorFlow) may hold locks
    return sorted((root / "dicom").glob("*.dcm"))


def _node(tmp_path, model, dest: Destination, **export) -> Node:
    s = Settings()
    s.node.bind, s.node.port, s.node.data_dir = "127.0.0.1", free_port(), str(tmp_path / "node")
    s.node.ae_title, s.model.path = "ERCPNODE", str(model)
    s.export.retry_initial_s, s.export.retry_max_s = 0.2, 0.4
    for k, v in export.items():
        setattr(s.export, k, v)
    s.destinations = [dest]
    validate(s)  # the secret file is readable, the URL https
    return Node(s).start()


def _push(node, *files):
    r = subprocess.run(["storescu", "-aet", "CARM", "-aec", "ERCPNODE", "127.0.0.1", str(node.settings.node.port),
                        *map(str, files)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _states(node) -> dict:
    with node.sessions() as s:
        return dict(s.execute(select(Export.state, func.count()).group_by(Export.state)).all())


def _require(path: Path):
    if not path.exists():
        pytest.fail(f"{path} missing (apt-get install orthanc-dicomweb orthanc-python socat); .ci/run installs it")


def test_stow_rs_with_basic_auth_over_https_and_resend_keeps_one_instance(tmp_path, pki, tiny_model, images):
    _require(DICOMWEB)
    _require(Path("/usr/bin/socat"))
    pacs = OrthancWeb(tmp_path / "orthanc", pki, "basic")
    (tmp_path / "pw").write_text("correct horse\n")
    dest = Destination(name="WEBPACS", kind="dicomweb", url=pacs.url, auth="basic", username="ercp",
                       password_file=str(tmp_path / "pw"), tls_ca=str(pki / "ca.pem"), objects=("SEG", "SR", "GSPS"))
    node = _node(tmp_path, tiny_model, dest)
    try:
        _push(node, *images)
        assert wait_until(lambda: _states(node) == {"sent": 3 * len(images)}), _states(node)
        with node.sessions() as s:
            uids = sorted(s.scalars(select(Output.sop_instance_uid)))
        assert sorted(pacs.sop_uids()) == uids
        # sent again (as after a crash between the PACS's answer and the commit, or a resend): same objects
        with node.sessions.begin() as s:
            s.execute(update(Export).values(state="pending", attempts=0))
        assert wait_until(lambda: _states(node) == {"sent": 3 * len(images)})
        with node.sessions() as s:
            assert s.scalar(select(func.count()).select_from(ExportAttempt)) == 6 * len(images)
        assert sorted(pacs.sop_uids()) == uids  # one instance per UID
    finally:
        node.stop()
        pacs.stop()


def test_stow_rs_with_bearer_token_and_failures(tmp_path, pki, tiny_model, images):
    _require(DICOMWEB)
    _require(PYTHON_PLUGIN)
    _require(Path("/usr/bin/socat"))
    pacs = OrthancWeb(tmp_path / "orthanc", pki, "bearer")
    token = tmp_path / "token"
    token.write_text("not-the-token-" + "y" * 20 + "\n")
    dest = Destination(name="CLOUD", kind="dicomweb", url=pacs.url, auth="bearer", token_file=str(token),
                       tls_ca=str(pki / "ca.pem"), objects=("SEG",))
    node = _node(tmp_path, tiny_model, dest, max_attempts=0)
    try:
        _push(node, images[0])
        assert wait_until(lambda: _states(node).get("pending") == 1 and _attempts(node) >= 2)
        with node.sessions() as s:
            err = s.scalars(select(Export.last_error)).one()
        assert "403" in err or "401" in err, err
        assert "not-the-token" not in err and pacs.sop_uids() == []
        token.write_text(TOKEN + "\n")  # rotated: read at the next send, no restart
        assert wait_until(lambda: _states(node) == {"sent": 1})
        with node.sessions() as s:
            uid = s.scalars(select(Output.sop_instance_uid).where(Output.kind == "SEG")).one()
        assert pacs.sop_uids() == [uid]
        # a certificate from another CA: nothing is sent, the verification failure is the recorded reason
        node.settings.destinations[0].tls_ca = str(pki / "other.pem")
        with node.sessions.begin() as s:
            s.execute(update(Export).values(state="pending", attempts=0))
        assert wait_until(lambda: _last_error(node) is not None and "SSL" in _last_error(node)), _last_error(node)
    finally:
        node.stop()
        pacs.stop()


def _attempts(node) -> int:
    with node.sessions() as s:
        return s.scalar(select(func.count()).select_from(ExportAttempt))


def _last_error(node):
    with node.sessions() as s:
        return s.scalars(select(Export.last_error)).first()
