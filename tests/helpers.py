"""Helpers shared by the tests, tests/stress and the benches (import them as `from helpers import ...`; tests/ is
on sys.path in pytest's rootdir mode, and the benches put it there): free loopback ports, a real Orthanc PACS,
dcmtk's storescu against a node, phantom images made through the `synth` command, row counts of the node's
database, waiting for a condition, a database at an older schema revision. Fixtures stay in conftest.py; nothing
imports conftest."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def bench_module(name: str):
    """bench/NAME.py imported as module NAME (bench scripts are not a package; their siblings import each other, and
    a worker pool pickles functions by module name, so bench/ goes on sys.path and the module into sys.modules)."""
    import importlib.util
    import sys

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    spec = importlib.util.spec_from_file_location(name, Path(bench) / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def dcmtk_first_on_path(env=os.environ) -> None:
    """Put the PATH directories whose storescp is a Python console script (pynetdicom's, in an activated venv) behind
    the others: the tests and benches run dcmtk's storescp/storescu/echoscu, whose options pynetdicom's lack."""
    from ercp_node.doctor import is_python_script

    dirs = env.get("PATH", "").split(os.pathsep)
    shadow = [d for d in dirs if d and os.path.isfile(os.path.join(d, "storescp"))
              and is_python_script(os.path.join(d, "storescp"))]
    env["PATH"] = os.pathsep.join([d for d in dirs if d not in shadow] + shadow)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Debian's orthanc-dicomweb package (the viewer test serves DICOMweb to OHIF through it)
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class Orthanc:
    """A real Orthanc on free loopback ports (DICOM and REST), storage under `root`; `dicomweb` loads the
    DICOMweb plugin. `modalities`: {name: (AE title, host, port)} Orthanc knows - its storage commitment SCP
    sends its N-EVENT-REPORT on a new association to the modality whose AE title asked. `lua`: a Lua script
    Orthanc runs (LuaScripts), e.g. a ReceivedInstanceFilter. `config`: more configuration (e.g. authentication,
    plugins), `headers`: what the REST calls below send (e.g. its credentials)."""

    def __init__(self, root, dicomweb: bool = False, modalities: dict | None = None, lua: str = "",
                 config: dict | None = None, headers: dict | None = None):
        self.aet, self.headers, self.root = "ORTHANC", dict(headers or {}), root
        root.mkdir(parents=True, exist_ok=True)
        # A free port can be taken again between free_port() and Orthanc's bind (another test's server, or both
        # calls handing back one port): Orthanc then exits at once, so start again on fresh ports; a slow start
        # on a loaded 2-core machine gets a minute.
        for attempt in range(4):
            self.dicom_port = free_port()
            self.http_port = free_port()
            while self.http_port == self.dicom_port:
                self.http_port = free_port()
            if self._start(root, dicomweb, modalities, lua, config, attempt):
                return
        raise RuntimeError(f"Orthanc did not start; see {root / 'orthanc.log'}")

    def _start(self, root, dicomweb, modalities, lua, config, attempt: int) -> bool:
        cfg = {"Name": "ercp-node-tests", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
               "DicomAet": self.aet, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
               "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
               "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True, "Plugins": [], "StableAge": 1,
               "ConcurrentJobs": 1, "HttpThreadsCount": 4}
        if modalities:
            cfg["DicomModalities"] = {name: list(m) for name, m in modalities.items()}
        if lua:
            (root / "script.lua").write_text(lua)
            cfg["LuaScripts"] = [str(root / "script.lua")]
        if dicomweb:
            if not os.path.exists(DICOMWEB_PLUGIN):
                raise RuntimeError(f"{DICOMWEB_PLUGIN} missing: apt-get install orthanc-dicomweb (make tools)")
            cfg["Plugins"] = [DICOMWEB_PLUGIN]
            cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False,
                               "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
            cfg["HttpThreadsCount"] = 8
        cfg.update(config or {})
        (root / "orthanc.json").write_text(json.dumps(cfg))
        return self._launch(f"start {attempt + 1}")

    def _launch(self, what: str) -> bool:
        """Run Orthanc on the written config; True once its REST API answers, False if it exits first (most often
        a port someone else took) or does not answer within a minute (a loaded 2-core machine)."""
        self.log = open(self.root / "orthanc.log", "a")
        self.log.write(f"--- {what}: DICOM {self.dicom_port}, HTTP {self.http_port}\n")
        self.log.flush()
        self.proc = subprocess.Popen([shutil.which("Orthanc"), str(self.root / "orthanc.json")], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        end = time.time() + 60
        while time.time() < end:
            if self.proc.poll() is not None:
                self.log.close()
                return False
            try:
                self.get("/system")
                return True
            except OSError:
                time.sleep(0.2)
        self.proc.kill()
        self.proc.wait(20)
        self.log.close()
        return False

    def get(self, path: str):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", headers=self.headers)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def delete(self, path: str) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", method="DELETE")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

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


def storescu(node, *files: Path, flags=(), aet: str = "CARM", aec: str = "ERCPNODE",
             timeout: float = 60) -> subprocess.CompletedProcess:
    """dcmtk storescu of `files` to a node on 127.0.0.1 (a Node, or its port), calling AE `aet`."""
    port = node if isinstance(node, int) else node.settings.node.port
    return subprocess.run(["storescu", "-aet", aet, "-aec", aec, *flags, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def synth(out: Path, *args: str, count: int = 1, seed: int = 0, size: int = 512) -> list[Path]:
    """Phantom images made by `ercp-node synth` (one worker) into `out`; their DICOM files, sorted."""
    from ercp_node.cli import main

    assert main(["synth", "--count", str(count), "--seed", str(seed), "--size", str(size), "--out", str(out),
                 "--workers", "1", *args]) == 0
    return sorted((out / "dicom").glob("*.dcm"))


def with_patient(files: list[Path], name: str, patient_id: str) -> list[Path]:
    """The files rewritten with this Patient's Name and ID (sentinels that must never reach logs, pages or
    metrics); returns them."""
    import pydicom

    for f in files:
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID = name, patient_id
        ds.save_as(f)
    return files


def count(node, model, *where) -> int:
    """Rows of `model` (an ercp_node.storage.models class) in the node's database matching `where`."""
    from sqlalchemy import func, select

    with node.sessions() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


class Migrations:
    """The node's alembic migrations run on one open connection (see `migrated`)."""

    def __init__(self, connection):
        from alembic.config import Config

        from ercp_node.storage.db import MIGRATIONS

        self.config = Config()
        self.config.set_main_option("script_location", str(MIGRATIONS))
        self.config.attributes["connection"] = connection

    def upgrade(self, revision: str) -> None:
        from alembic import command

        command.upgrade(self.config, revision)

    def downgrade(self, revision: str) -> None:
        from alembic import command

        command.downgrade(self.config, revision)


@contextlib.contextmanager
def migrated(url: str, revision: str):
    """(connection, Migrations) of the database at `url` upgraded to schema `revision`, in one transaction that
    commits on leaving: a node database as an older version left it (insert its rows, then upgrade further)."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            migrations = Migrations(conn)
            migrations.upgrade(revision)
            yield conn, migrations
    finally:
        engine.dispose()


def wait_until(predicate, timeout: float = 120.0, interval: float = 0.2) -> bool:
    """True as soon as `predicate()` is true; False after `timeout` seconds."""
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False


def storescp(port: int, out: Path, aet: str = "PACS") -> subprocess.Popen:
    """dcmtk's storescp as a PACS on 127.0.0.1:port writing what it receives under `out`; returns once it listens."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["storescp", "-aet", aet, "-od", str(out), "+uf", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    raise RuntimeError("storescp did not start")


def masked_frame(dtype=None, value: int = 7, seed: int = 0):
    """A 300 x 400 frame: quantum noise where the beam reached; an electronic mask (one value) over the left 40
    columns and the top 20 rows, with burnt-in text on it; and a scope clipped to the mask's value where it enters
    the field from the left (rows 150–170)."""
    import numpy as np

    dtype = dtype or np.uint16
    rng = np.random.default_rng(seed)
    top = 4000 if dtype == np.uint16 else 250
    f = rng.normal(top / 2, top / 40, (300, 400)).clip(0, top).astype(dtype)
    f[:, :40] = value
    f[:20, :] = value
    f[5:12, 8:30] = top  # text on the mask
    f[150:170, 40:200] = value  # the scope, clipped to black inside the field
    return f


class FixedNet:
    """A stand-in stone net whose output is given (H, W, 3), cropped to each input: the decisions around a network,
    not a network's, are under test. `channels`: its input's (1 the image; 4 with the first stage's prior)."""

    def __init__(self, out, channels: int = 1):
        self.out = out
        self.input_shape = (None, None, None, channels)

    def __call__(self, x, training=False):
        return self.out[None, : x.shape[1], : x.shape[2]]
