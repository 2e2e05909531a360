"""Security of the node, driven by real dcmtk tools (storescu, echoscu, storescp) over 127.0.0.1: calling-AE and
peer-address allow lists, DICOM over TLS (mutual), owner-only files, no patient data in logs, no secrets printed.

Certificates are made per test module with the openssl command-line tool."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from sqlalchemy import select

# tests/ is on sys.path (rootdir mode)
from helpers import count as _count
from helpers import free_port, storescu, synth, wait_until

from ercp_node.cli import main
from ercp_node.config.settings import ConfigError, Settings, load, validate
from ercp_node.node.scp import peer_allowed
from ercp_node.node.service import Node
from ercp_node.storage.models import Instance, IntakeFailure

ERCP_NODE = str(Path(sys.executable).parent / "ercp-node")
# Patient identity written into the phantom images; none of it may reach a log or the node's database.
PATIENTS = [("Quixotlan^Zebediah", "PID-7731-QX"), ("Vondrakova^Ilsabeth", "PID-9902-VK")]


# ---------------------------------------------------------------------------------------------- fixtures
def _openssl(cwd: Path, *args: str) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimpleNamespace:
    """A CA signing the node, the C-arm and the PACS; a second, untrusted CA signing a rogue client."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command-line tool is not installed (apt-get install openssl); .ci/run installs it")
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        _openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                 "-days", "2", "-subj", f"/CN=ercp-node test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (d / "leaf.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    for name, ca in (("node", "ca"), ("carm", "ca"), ("pacs", "ca"), ("rogue", "rogue-ca")):
        _openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}")
        _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "leaf.ext")
    _openssl(d, "rsa", "-in", "node.key", "-aes256", "-passout", "pass:not-given-to-the-node", "-out", "encrypted.key")
    for k in d.glob("*.key"):
        k.chmod(0o600)
    return SimpleNamespace(dir=d, ca=d / "ca.pem", **{n: (d / f"{n}.key", d / f"{n}.pem")
                                                      for n in ("node", "carm", "pacs", "rogue")})


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    """Two phantom RF images, each with a distinctive patient name and ID."""
    root = tmp_path_factory.mktemp("src")
    files = synth(root, count=2, seed=70)
    assert len(files) == 2
    for f, (name, pid) in zip(files, PATIENTS):
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID = name, pid
        ds.save_as(f, enforce_file_format=True)
    return files


@pytest.fixture()
def make_node(tmp_path):
    """Intake-only nodes (jobs stay queued) on free loopback ports; stopped at the end of the test."""
    nodes = []

    def make(settings: Settings | None = None, **node) -> Node:
        s = settings or Settings()
        s.node.bind, s.node.port, s.node.ae_title = "127.0.0.1", free_port(), "ERCPNODE"
        s.node.data_dir = str(tmp_path / f"node{len(nodes)}")
        for k, v in node.items():
            setattr(s.node, k, v)
        validate(s)
        n = Node(s, workers=False).start()
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.stop()


def _tls(pair, ca) -> list[str]:
    key, cert = pair
    return ["+tls", str(key), str(cert), "+cf", str(ca)]


def echoscu(node: Node, *flags: str, aet: str = "CARM") -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-aet", aet, "-aec", "ERCPNODE", *flags, "127.0.0.1", str(node.settings.node.port)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _out(r: subprocess.CompletedProcess) -> str:
    return (r.stdout + r.stderr).lower()


def _rejections(node) -> list[IntakeFailure]:
    with node.sessions() as s:
        return list(s.scalars(select(IntakeFailure).where(IntakeFailure.status == "ASSOC-RJ")))


# ---------------------------------------------------------------------------------------------- allow lists
def test_unknown_calling_ae_is_rejected_logged_and_recorded(make_node, sources, caplog):
    s = load(None, env={"ERCP_NODE_NODE_ALLOWED_AE_TITLES": "CARM, MOBILE2"})  # the environment convention
    assert s.node.allowed_ae_titles == ["CARM", "MOBILE2"]
    node = make_node(s)
    caplog.set_level(logging.INFO, logger="ercp_node")
    r = echoscu(node, aet="INTRUDER")
    assert r.returncode != 0
    out = _out(r)  # dcmtk prints the A-ASSOCIATE-RJ it got
    assert "rejected permanent" in out and "service user" in out and "calling ae title not recognized" in out, out
    r = storescu(node, sources[0], aet="INTRUDER")
    assert r.returncode != 0 and "calling ae title not recognized" in _out(r)
    assert _count(node, Instance) == 0
    assert echoscu(node).returncode == 0 and echoscu(node, aet="MOBILE2").returncode == 0
    assert storescu(node, sources[0]).returncode == 0 and _count(node, Instance) == 1
    rows = _rejections(node)
    assert len(rows) == 2 and {x.calling_ae for x in rows} == {"INTRUDER"}
    assert all("calling AE title not recognised" in x.reason and "127.0.0.1" in x.reason for x in rows)
    warnings = [m.getMessage() for m in caplog.records if "rejected" in m.getMessage()]
    assert len(warnings) == 2 and all("INTRUDER" in w and "127.0.0.1" in w for w in warnings)
    r = subprocess.run([ERCP_NODE, "status", "--data-dir", node.settings.node.data_dir],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ASSOC-RJ from INTRUDER" in r.stdout, r.stdout + r.stderr


def test_peer_outside_allowed_hosts_is_rejected(make_node, sources):
    node = make_node(allowed_hosts=["10.0.0.0/8", "192.0.2.7"])
    r = echoscu(node)
    assert r.returncode != 0 and "rejected permanent" in _out(r) and "calling ae title not recognized" in _out(r)
    assert storescu(node, sources[0]).returncode != 0 and _count(node, Instance) == 0
    # recorded by the acceptor after its A-ASSOCIATE-RJ: may land just after the SCU left
    assert wait_until(lambda: len(_rejections(node)) == 2, 10, 0.05), _rejections(node)
    rows = _rejections(node)
    assert len(rows) == 2 and all(x.calling_ae == "CARM" and "allowed_hosts" in x.reason for x in rows)
    time.sleep(0.5)
    assert not node.ae.active_associations  # rejected associations leave no threads behind
    # the same peer from an allowed network, also combined with an AE list
    node = make_node(allowed_hosts=["127.0.0.0/8"], allowed_ae_titles=["CARM"])
    assert echoscu(node).returncode == 0 and storescu(node, sources[0]).returncode == 0
    assert echoscu(node, aet="OTHER").returncode != 0  # AE list still applies
    assert _count(node, Instance) == 1


def test_allow_list_settings_are_validated():
    assert peer_allowed("::ffff:127.0.0.1", [__import__("ipaddress").ip_network("127.0.0.0/8")])
    assert not peer_allowed("not-an-ip", [__import__("ipaddress").ip_network("0.0.0.0/0")])
    assert peer_allowed("203.0.113.9", [])  # empty list: any peer
    s = load(None, env={"ERCP_NODE_NODE_ALLOWED_HOSTS": "10.1.2.3, 192.168.0.0/16,::1"})
    assert s.node.allowed_hosts == ["10.1.2.3", "192.168.0.0/16", "::1"]
    with pytest.raises(ConfigError, match="allowed_hosts.*pacs.example.org"):
        load(None, env={"ERCP_NODE_NODE_ALLOWED_HOSTS": "pacs.example.org"})
    with pytest.raises(ConfigError, match="allowed_ae_titles"):
        load(None, env={"ERCP_NODE_NODE_ALLOWED_AE_TITLES": "CARM,WAY_TOO_LONG_AE_TITLE"})


# ---------------------------------------------------------------------------------------------- TLS
def test_tls_with_client_certificates(make_node, pki, sources):
    node = make_node(tls_cert=str(pki.node[1]), tls_key=str(pki.node[0]), tls_ca=str(pki.ca))
    silent = socket.create_connection(("127.0.0.1", node.settings.node.port))  # connects, never handshakes
    try:
        r = echoscu(node, *_tls(pki.carm, pki.ca))
        assert r.returncode == 0, r.stderr  # a silent peer does not stall the accept loop
        r = storescu(node, sources[0], flags=_tls(pki.carm, pki.ca))
        assert r.returncode == 0, r.stderr
        assert _count(node, Instance) == 1
        assert echoscu(node).returncode != 0, "plain TCP must not work on the TLS port"
        assert storescu(node, sources[1]).returncode != 0
        r = echoscu(node, "+tla", "+cf", str(pki.ca))  # TLS, but no client certificate
        assert r.returncode != 0, "a client without a certificate must be refused"
        r = echoscu(node, *_tls(pki.rogue, pki.ca))  # a certificate from a CA the node does not trust
        assert r.returncode != 0
        r = echoscu(node, *_tls(pki.carm, pki.dir / "rogue-ca.pem"))  # the client does not trust the node
        assert r.returncode != 0
        assert _count(node, Instance) == 1
        assert storescu(node, sources[1], flags=_tls(pki.carm, pki.ca)).returncode == 0  # still serving
        assert _count(node, Instance) == 2
    finally:
        silent.close()


def test_tls_without_client_ca_accepts_anonymous_clients(make_node, pki):
    node = make_node(tls_cert=str(pki.node[1]), tls_key=str(pki.node[0]))
    r = echoscu(node, "+tla", "+cf", str(pki.ca))
    assert r.returncode == 0, r.stderr
    assert echoscu(node).returncode != 0

    def tls12(ciphers: str) -> str:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(pki.ca)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(ciphers)
        with socket.create_connection(("127.0.0.1", node.settings.node.port), timeout=30) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return tls.cipher()[0]

    assert tls12("ECDHE-RSA-AES128-GCM-SHA256") == "ECDHE-RSA-AES128-GCM-SHA256"  # AEAD, forward secret
    for weak in ("ECDHE-RSA-AES128-SHA256", "AES128-GCM-SHA256"):  # CBC; no forward secrecy
        with pytest.raises(ssl.SSLError):
            tls12(weak)


def test_tls_settings_are_validated(pki, tmp_path, capsys):
    key, cert = (str(p) for p in pki.node)
    with pytest.raises(ConfigError, match="set together"):
        load(None, env={"ERCP_NODE_NODE_TLS_CERT": cert})
    with pytest.raises(ConfigError, match="tls_ca"):
        load(None, env={"ERCP_NODE_NODE_TLS_CA": str(pki.ca)})
    with pytest.raises(ConfigError, match="cannot load certificate"):  # key of another certificate
        load(None, env={"ERCP_NODE_NODE_TLS_CERT": cert, "ERCP_NODE_NODE_TLS_KEY": str(pki.carm[0])})
    with pytest.raises(ConfigError, match="cannot load certificate"):
        load(None, env={"ERCP_NODE_NODE_TLS_CERT": cert, "ERCP_NODE_NODE_TLS_KEY": str(tmp_path / "missing.key")})
    cfg = tmp_path / "dest.toml"
    cfg.write_text(f'[[destinations]]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\ntls = true\n'
                   f'tls_ca = "{pki.ca}"\n')
    d = load(cfg, env={}).destinations[0]
    assert d.tls and d.tls_ca == str(pki.ca)
    cfg.write_text('[[destinations]]\nae_title = "PACS"\nhost = "h"\nport = 104\ntsl = true\n')
    with pytest.raises(ConfigError, match="unknown key.*tsl"):
        load(cfg, env={})
    # A passphrase-protected key is refused with a clear message, never prompted for (a service would hang).
    env = dict(os.environ, ERCP_NODE_NODE_TLS_CERT=cert, ERCP_NODE_NODE_TLS_KEY=str(pki.dir / "encrypted.key"))
    r = subprocess.run([ERCP_NODE, "config", "check"], env=env, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "passphrase" in r.stderr, r.stderr
    assert "ENCRYPTED" not in r.stdout + r.stderr and "PRIVATE KEY" not in r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------- files, logs, secrets
def _modes(root: Path) -> dict[str, str]:
    out = {}
    for p in [root, *root.rglob("*")]:
        out[str(p.relative_to(root))] = oct(stat.S_IMODE(p.lstat().st_mode))
    return out


def test_archive_and_database_are_owner_only(make_node, sources):
    old = os.umask(0o022)  # the usual default: anything not created owner-only would show as 0755 / 0644
    try:
        node = make_node()
        assert storescu(node, *sources).returncode == 0
    finally:
        os.umask(old)
    modes = _modes(node.data_dir)
    assert any(k.endswith(".dcm") for k in modes) and "ercp-node.db" in modes
    wrong = {k: m for k, m in modes.items()
             if m != ("0o700" if (node.data_dir / k).is_dir() else "0o600")}
    assert not wrong, wrong


def test_no_patient_data_in_debug_logs_during_intake(make_node, sources, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pynetdicom")
    caplog.set_level(logging.DEBUG, logger="ercp_node")
    node = make_node(allowed_ae_titles=["CARM"])
    assert storescu(node, *sources).returncode == 0
    assert storescu(node, *sources).returncode == 0  # second copies
    assert storescu(node, sources[0], aet="INTRUDER").returncode != 0  # a rejected association
    ds = pydicom.dcmread(sources[0])
    del ds.PixelData  # a refused data set (0xA900) still carries the patient's name
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
    storescu(node, tmp_path / "bad.dcm")
    text = caplog.text
    assert "archived" in text and "refused C-STORE" in text and "INTRUDER" in text  # the log did capture
    _assert_no_patient_data(text, "log")


def _assert_no_patient_data(text: str, where: str) -> None:
    for name, pid in PATIENTS:
        for needle in [pid, *name.split("^")]:
            assert needle.lower() not in text.lower(), f"{needle!r} found in the {where}"


def test_config_check_prints_no_secrets(pki, tmp_path, capsys, monkeypatch):
    key, cert = (str(p) for p in pki.node)
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\ndb_url = "postgresql+psycopg://ercp:Pa55-w0rd-xyz@db.example:5432/ercp'
                   f'?sslpassword=KeyPhrase-abc"\ntls_cert = "{cert}"\ntls_key = "{key}"\ntls_ca = "{pki.ca}"\n'
                   f'allowed_ae_titles = ["CARM"]\nallowed_hosts = ["10.0.0.0/8"]\n')
    assert main(["config", "check", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert key in out and '"allowed_hosts"' in out  # the key's path is shown ...
    body = [ln for ln in Path(key).read_text().splitlines() if ln and not ln.startswith("-----")]
    for secret in ["Pa55-w0rd-xyz", "KeyPhrase-abc", "PRIVATE KEY", *body]:
        assert secret not in out, secret  # ... never its contents, nor database passwords
    monkeypatch.setenv("ERCP_NODE_NODE_DB_URL", "postgresql://ercp:EnvSecret-123@db/ercp")
    assert main(["config", "check"]) == 0
    out = capsys.readouterr().out
    assert "EnvSecret-123" not in out and "ercp:***@db" in out


# ---------------------------------------------------------------------------------------------- whole node
def test_serve_with_tls_allow_lists_and_tls_export(pki, sources, tmp_path):
    """`ercp-node serve` with everything on: mutual TLS in, allow lists, TLS export to a storescp PACS that
    requires the node's certificate. Its whole log holds no patient name or ID, nor does its database, and every
    file it wrote is owner-only."""
    from ercp_node.model.inference import SHIPPED

    pacs_port, node_port, pacs_dir, data = free_port(), free_port(), tmp_path / "pacs", tmp_path / "data"
    pacs_dir.mkdir()
    pacs = subprocess.Popen(["storescp", "-aet", "PACS", "+tls", str(pki.pacs[0]), str(pki.pacs[1]), "+cf",
                             str(pki.ca), "-od", str(pacs_dir), str(pacs_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = tmp_path / "node.toml"
    cfg.write_text(f"""[node]
ae_title = "ERCPNODE"
bind = "127.0.0.1"
port = {node_port}
data_dir = "{data}"
allowed_ae_titles = ["CARM"]
allowed_hosts = ["127.0.0.1/32", "::1"]
tls_cert = "{pki.node[1]}"
tls_key = "{pki.node[0]}"
tls_ca = "{pki.ca}"

[model]
path = "{SHIPPED}"

[export]
retry_initial_s = 0.5
retry_max_s = 2.0

[[destinations]]
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
tls = true
tls_ca = "{pki.ca}"
""")
    log_path = tmp_path / "serve.log"
    old = os.umask(0o022)
    try:
        with open(log_path, "w") as log:
            serve = subprocess.Popen([ERCP_NODE, "serve", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
    finally:
        os.umask(old)
    node = SimpleNamespace(settings=SimpleNamespace(node=SimpleNamespace(port=node_port)))
    try:
        end = time.time() + 180
        while echoscu(node, *_tls(pki.carm, pki.ca)).returncode != 0:
            assert serve.poll() is None and time.time() < end, log_path.read_text()
            time.sleep(0.5)
        r = storescu(node, *sources, flags=_tls(pki.carm, pki.ca))
        assert r.returncode == 0, r.stderr
        assert storescu(node, sources[0], aet="INTRUDER", flags=_tls(pki.carm, pki.ca)).returncode != 0
        db = data / "ercp-node.db"

        def exported() -> bool:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
                done = c.execute("select count(*) from jobs where state = 'done'").fetchone()[0]
                failed = c.execute("select count(*) from jobs where state = 'failed'").fetchone()[0]
                pending = c.execute("select count(*) from exports where state != 'sent'").fetchone()[0]
                sent = c.execute("select count(*) from exports where state = 'sent'").fetchone()[0]
            assert failed == 0, log_path.read_text()
            return done == 2 and sent >= 2 and pending == 0

        end = time.time() + 240
        while not exported():
            assert serve.poll() is None and time.time() < end, log_path.read_text()
            time.sleep(0.5)
        received = [pydicom.dcmread(p, stop_before_pixels=True) for p in pacs_dir.iterdir()]
        assert {d.Modality for d in received} >= {"SEG", "SR"}, log_path.read_text()
        modes = _modes(data)
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
        pacs.terminate()
        pacs.wait(10)
    text = log_path.read_text()
    assert "archived" in text and "INTRUDER" in text and "TLS, client certificates required" in text, text
    _assert_no_patient_data(text, "node's log")
    for f in data.glob("ercp-node.db*"):
        _assert_no_patient_data(f.read_bytes().decode("latin-1"), f.name)
    assert any("outputs" in k for k in modes) and any("archive" in k for k in modes)
    wrong = {k: m for k, m in modes.items() if m != ("0o700" if (data / k).is_dir() else "0o600")}
    assert not wrong, wrong
