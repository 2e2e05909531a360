"""Named destinations, the dead-letter and `ercp-node resend`, against real receivers (Orthanc, dcmtk storescp)
on loopback; and the configuration errors of the issue (each refused at start, naming the key)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from helpers import count, free_port, storescp, wait_until
from ercp_node.cli import main
from ercp_node.config.settings import ConfigError, Destination, Settings, load, parse_destination
from ercp_node.node.service import Node
from ercp_node.storage.models import AuditEvent, Export, Output

ERCP_NODE = str(Path(sys.executable).parent / "ercp-node")


# ---------------------------------------------------------------------------------------------- configuration
def _load(tmp_path, text: str, name="node.toml"):
    cfg = tmp_path / name
    cfg.write_text(text)
    return load(cfg, env={})


def test_named_destinations_are_read_with_their_kind_and_settings(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token-value\n")
    s = _load(tmp_path, f"""
[destinations.PACS]
ae_title = "ORTHANC"
host = "10.0.0.5"
port = 2762
tls = true
objects = ["SEG", "SR"]
[destinations.cloud]
kind = "dicomweb"
url = "https://pacs.example.org/dicom-web"
auth = "bearer"
token_file = "{token}"
""")
    pacs, cloud = s.destinations
    assert (pacs.name, pacs.kind, pacs.address, pacs.tls, pacs.objects) == (
        "PACS", "dimse", "ORTHANC@10.0.0.5:2762", True, ("SEG", "SR"))
    assert (cloud.name, cloud.kind, cloud.url, cloud.auth) == ("cloud", "dicomweb", "https://pacs.example.org/dicom-web",
                                                                "bearer")
    assert cloud.secret() == "s3cret-token-value"
    assert s.destination("PACS") is pacs and s.destination("cloud") is cloud and s.destination("gone") is None
    shown = str(s.as_dict())
    assert "s3cret" not in shown and str(token) in shown  # where the secret is read from, never the secret
    # an unnamed one keeps working: named by its address
    d = parse_destination("PACS@127.0.0.1:4242")
    assert d.name == "PACS@127.0.0.1:4242" and not d.named


@pytest.mark.parametrize("text, key", [
    ('[destinations.A]\nkind = "hl7"\nurl = "https://x/"\n', "destinations.A.kind"),
    ('[destinations.A]\nkind = "dicomweb"\nurl = "pacs.example.org/dicom-web"\n', "destinations.A.url"),
    ('[destinations.A]\nkind = "dicomweb"\nurl = "ftp://pacs.example.org/"\n', "destinations.A.url"),
    ('[destinations.A]\nkind = "dicomweb"\nurl = "https://pacs/"\nauth = "bearer"\ntoken_file = "/nonexistent/token"\n',
     "destinations.A.token_file"),
    ('[destinations.A]\nkind = "dicomweb"\nurl = "https://pacs/"\nauth = "basic"\nusername = "u"\n'
     'password_file = "{dir}"\n', "destinations.A.password_file"),  # a directory: unreadable as a file
    ('[destinations.A]\nkind = "dicomweb"\nurl = "http://pacs.example.org/"\n', "destinations.A.url"),  # plain http off-host
    ('[destinations.A]\nae_title = "X"\nhost = "h"\nport = 104\n[destinations.A]\nae_title = "Y"\nhost = "h"\nport = 105\n',
     "destinations.A"),
    ('[destinations.pacs]\nae_title = "X"\nhost = "h"\nport = 104\n[destinations.PACS]\nae_title = "Y"\nhost = "h"\n'
     'port = 105\n', "destinations.PACS"),
    ('[destinations.A]\nae_title = "X"\nhost = "h"\n', "destinations.A.port"),
    ('[destinations.A]\nae_title = "X"\nhost = "h"\nport = 104\nurl = "https://x/"\n', "destinations.A"),
    ('[destinations.A]\nae_title = "X"\nhost = "h"\nport = 104\ntls_ca = "/etc/ca.pem"\n', "destinations.A.tls_ca"),
    ('[destinations."bad name"]\nae_title = "X"\nhost = "h"\nport = 104\n', "destinations.bad name"),
])
def test_bad_destinations_are_refused_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text.replace("{dir}", str(tmp_path)))
    assert str(e.value).startswith(key), str(e.value)


def test_duplicate_unnamed_destinations_are_refused():
    s = Settings()
    s.destinations = [parse_destination("PACS@h:104"), parse_destination("PACS@h:104")]
    from ercp_node.config.settings import validate

    with pytest.raises(ConfigError, match="PACS@h:104: two destinations with one name"):
        validate(s)


def test_serve_refuses_to_start_on_a_bad_destination(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text('[destinations.web]\nkind = "dicomweb"\nurl = "https://pacs/"\nauth = "bearer"\n'
                   f'token_file = "{tmp_path / "missing-token"}"\n')
    r = subprocess.run([ERCP_NODE, "serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d"),
                        "--port", str(free_port())], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 2, r.stderr
    assert "destinations.web.token_file: cannot read" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was created


# ---------------------------------------------------------------------------------------------- with a node
@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("carm")
    assert main(["synth", "--count", "2", "--seed", "70", "--size", "512", "--out", str(root),
                 "--workers", "1"]) == 0  # no fork of a process whose threads (nodes, TensorFlow) may hold locks
    return sorted((root / "dicom").glob("*.dcm"))


def _settings(tmp_path, model, destinations, **export) -> Settings:
    s = Settings()
    s.node.bind, s.node.port, s.node.data_dir = "127.0.0.1", free_port(), str(tmp_path / "node")
    s.node.ae_title, s.model.path = "ERCPNODE", str(model)
    s.export.retry_initial_s, s.export.retry_max_s = 0.2, 0.4
    for k, v in export.items():
        setattr(s.export, k, v)
    s.destinations = destinations
    return s


def _storescu(port: int, *files: Path) -> None:
    r = subprocess.run(["storescu", "-aet", "CARM", "-aec", "ERCPNODE", "127.0.0.1", str(port), *map(str, files)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _exports(node) -> list[tuple[str, str]]:
    with node.sessions() as s:
        return sorted(s.execute(select(Export.destination, Export.state)).all())


def test_exports_name_their_destination_and_go_to_it(tmp_path, tiny_model, images, orthanc):
    dest = Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port, ("SEG", "SR"), name="PACS")
    node = Node(_settings(tmp_path, tiny_model, [dest])).start()
    try:
        _storescu(node.settings.node.port, *images)
        assert wait_until(lambda: count(node, Export, Export.state == "sent") == 2 * len(images))
        assert {d for d, _ in _exports(node)} == {"PACS"}  # the name, not an address
        with node.sessions() as s:
            uids = set(s.scalars(select(Output.sop_instance_uid)))
    finally:
        node.stop()
    at_pacs = {orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc.get("/instances")}
    assert at_pacs == uids


def test_removed_destination_stops_its_exports_and_nothing_goes_to_its_old_address(tmp_path, tiny_model, images,
                                                                                    caplog):
    """The issue's defect: a row's AET@HOST:PORT was parsed and sent to, without the TLS configured for it. Now an
    export whose destination left the configuration is `unconfigured`, logged, and sent nowhere - here a plain
    storescp listening at the old address receives nothing."""
    old_port = free_port()  # nothing listens yet: the exports stay pending
    s = _settings(tmp_path, tiny_model, [Destination("PACS", "127.0.0.1", old_port, ("SEG", "SR"), name="SECURE")])
    node = Node(s).start()
    try:
        _storescu(s.node.port, images[0])
        assert wait_until(lambda: count(node, Export, Export.attempts >= 1) == 2)
    finally:
        node.stop()
    # restart without SECURE, and with a plain receiver at its old address and a legacy-style row for it
    received = tmp_path / "received"
    proc = storescp(old_port, received)
    try:
        s2 = _settings(tmp_path, tiny_model, [])
        node = Node(s2)
        with node.sessions.begin() as db:  # an export row as written before destinations had names
            out = db.scalars(select(Output)).first()
            db.add(Export(output_id=out.id, destination=f"PACS@127.0.0.1:{old_port}", state="pending", attempts=0))
        caplog.set_level(logging.ERROR, logger="ercp_node.exporter")
        node.start()
        try:
            assert wait_until(lambda: count(node, Export, Export.state == "unconfigured") == 3, 30)
            time.sleep(1.5)  # several exporter cycles
            assert count(node, Export, Export.state != "unconfigured") == 0
        finally:
            node.stop()
        assert list(received.iterdir()) == []  # nothing sent to the old address
        msgs = [r.getMessage() for r in caplog.records]
        assert any("destination 'SECURE' stopped (state unconfigured)" in m for m in msgs), msgs
        assert any(f"destination 'PACS@127.0.0.1:{old_port}' stopped" in m for m in msgs), msgs
        with node.sessions() as db:
            assert db.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.event == "export-stopped")) == 2
    finally:
        proc.terminate()
        proc.wait(10)
    # resend refuses a destination that is not configured, names it
    cfg = tmp_path / "none.toml"
    cfg.write_text("")
    r = subprocess.run([ERCP_NODE, "resend", "--config", str(cfg), "--data-dir", s.node.data_dir,
                        "--destination", "SECURE"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 2 and "destination 'SECURE' is not configured" in r.stderr, r.stderr


def test_dead_letter_status_and_resend_with_the_same_uids(tmp_path, tiny_model, images, orthanc, capsys):
    dead_port = free_port()  # nothing listens: every attempt fails
    s = _settings(tmp_path, tiny_model, [Destination(orthanc.aet, "127.0.0.1", dead_port, ("SEG", "SR"),
                                                     name="PACS")], max_attempts=3)
    node = Node(s).start()
    try:
        _storescu(s.node.port, *images)
        assert wait_until(lambda: count(node, Export, Export.state == "failed") == 2 * len(images), 60)
        assert count(node, Export, Export.state != "failed") == 0
        with node.sessions() as db:
            assert set(db.scalars(select(Export.attempts))) == {3}
            uids = set(db.scalars(select(Output.sop_instance_uid)))
            job = db.scalars(select(Output.job_id)).first()
    finally:
        node.stop()
    # visible in `ercp-node status`
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\ndata_dir = "{s.node.data_dir}"\n[destinations.PACS]\nae_title = "{orthanc.aet}"\n'
                   f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\nobjects = ["SEG", "SR"]\n')
    assert main(["status", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"PACS {2 * len(images)} failed" in out and "failed exports" in out and "after 3 tries" in out, out
    # the same name now points at a live Orthanc: resend one job, then the rest by destination
    assert main(["resend", "--config", str(cfg), "--job", str(job)]) == 0
    assert "2 export(s) queued again" in capsys.readouterr().out
    assert main(["resend", "--config", str(cfg), "--destination", "PACS"]) == 0
    assert f"{2 * len(images) - 2} export(s) queued again" in capsys.readouterr().out
    s2 = load(cfg, env={})
    s2.node.port, s2.model.path, s2.node.worker_mode = free_port(), str(tiny_model), "thread"
    node = Node(s2).start()
    try:
        assert wait_until(lambda: count(node, Export, Export.state == "sent") == 2 * len(images), 60)
    finally:
        node.stop()
    at_pacs = {orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc.get("/instances")}
    assert at_pacs == uids  # the very objects made before: same SOP Instance UIDs, none new
    assert main(["resend", "--config", str(cfg), "--all-failed"]) == 0  # nothing left to resend
    assert "0 export(s) queued again" in capsys.readouterr().out


def test_dead_letter_by_age(tmp_path, tiny_model, images):
    s = _settings(tmp_path, tiny_model, [Destination("PACS", "127.0.0.1", free_port(), ("SEG",), name="PACS")],
                  max_attempts=0, max_age_h=0.0003)  # ~1 s
    node = Node(s).start()
    try:
        _storescu(s.node.port, images[0])
        assert wait_until(lambda: count(node, Export, Export.state == "failed") == 1, 60)
        with node.sessions() as db:
            e = db.scalars(select(Export)).one()
            assert e.attempts >= 2 and "association failed" in e.last_error
    finally:
        node.stop()
