"""Shared fixtures: a real Orthanc PACS on loopback ports, started and stopped by the tests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Debian's orthanc-dicomweb package (the viewer test serves DICOMweb to OHIF through it)
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class Orthanc:
    def __init__(self, root, dicomweb: bool = False):
        self.dicom_port, self.http_port, self.aet = free_port(), free_port(), "ORTHANC"
        root.mkdir(parents=True, exist_ok=True)
        cfg = {"Name": "ercp-node-tests", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
               "DicomAet": self.aet, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
               "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
               "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True, "Plugins": [], "StableAge": 1,
               "ConcurrentJobs": 1, "HttpThreadsCount": 4}
        if dicomweb:
            if not os.path.exists(DICOMWEB_PLUGIN):
                raise RuntimeError(f"{DICOMWEB_PLUGIN} missing: apt-get install orthanc-dicomweb (make tools)")
            cfg["Plugins"] = [DICOMWEB_PLUGIN]
            cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False,
                               "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
            cfg["HttpThreadsCount"] = 8
        (root / "orthanc.json").write_text(json.dumps(cfg))
        self.log = open(root / "orthanc.log", "w")
        self.proc = subprocess.Popen([shutil.which("Orthanc"), str(root / "orthanc.json")], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        end = time.time() + 30
        while time.time() < end:
            try:
                self.get("/system")
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not start; see {root / 'orthanc.log'}")

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def upload(self, path) -> dict:
        """POST one DICOM file to Orthanc's REST API (/instances); its answer (ID, Status)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/instances", data=open(path, "rb").read(),
                                     headers={"Content-Type": "application/dicom"}, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


@pytest.fixture()
def orthanc(tmp_path):
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed (apt-get install orthanc); .ci/run installs it")
    o = Orthanc(tmp_path / "orthanc")
    yield o
    o.stop()


@pytest.fixture(autouse=True)
def _node_database(monkeypatch):
    """ERCP_TEST_NODE_DB=postgres: every node a test configures through Settings (without a db_url of its own) uses a
    fresh PostgreSQL database on the server of ERCP_TEST_DB_URL instead of SQLite in its data dir; .ci/run runs
    tests/test_node_e2e.py so. Otherwise nothing changes."""
    if os.environ.get("ERCP_TEST_NODE_DB", "sqlite") == "sqlite":
        yield None
        return
    from stress.harness import pg_admin_url, pg_create, pg_drop

    from ercp_node.config.settings import Settings

    admin = pg_admin_url()
    if admin is None:
        pytest.fail("ERCP_TEST_NODE_DB=postgres needs ERCP_TEST_DB_URL=postgresql+psycopg://user:pass@host/db")
    url = pg_create(admin)
    monkeypatch.setattr(Settings, "db_url", lambda self: self.node.db_url or url)
    yield url
    pg_drop(admin, url)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A small untrained U-Net: node tests prove the plumbing, not accuracy (that is evaluate's job)."""
    import keras

    from ercp_node.model.retrain import save_model
    from ercp_node.model.unet import build_unet, get_config

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    save_model(build_unet(get_config("default", base_filters=4, input_size=64)), path,
               {"version": "tiny-test-model", "preset": "default", "loss": "dice+focal"})
    return path
