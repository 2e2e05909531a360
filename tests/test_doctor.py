"""`ercp-node doctor`: versions, backend and devices, model and where it runs, tools, configuration problems."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ERCP_NODE = str(Path(sys.executable).parent / "ercp-node")
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), TF_CPP_MIN_LOG_LEVEL="2")


def _doctor(*args):
    r = subprocess.run([ERCP_NODE, "doctor", *args], capture_output=True, text=True, timeout=300, env=ENV)
    return r.returncode, r.stdout, r.stderr


def test_doctor_on_a_valid_configuration(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\nhttp_port = 8080\n'
                   '[destinations.PACS]\nae_title = "PACS"\nhost = "10.0.0.5"\nport = 104\n')
    rc, out, err = _doctor("--config", str(cfg), "--json")
    assert rc == 0, out + err
    rep = json.loads(out)
    assert rep["problems"] == [] and rep["configuration"] == "valid"
    assert rep["packages"]["keras"] == "3.15.1" and rep["backend"]["tensorflow"] == "2.21.0"
    assert rep["backend"]["runs_on"] in ("CPU", "GPU:0") and rep["model"]["runs_on"] == rep["backend"]["runs_on"]
    assert rep["model"]["version"] == "unet-default-dl-cfl-phantom-robust-2026.12.04-gpu-seen9" and rep["model"]["exists"]
    assert rep["model"]["precision"] in ("float32", "bfloat16")  # model.precision "auto", resolved for this machine
    assert rep["tools"]["storescu"] and rep["destinations"] == ["PACS: dimse PACS@10.0.0.5:104 [SEG,SR,GSPS]"]
    assert rep["http"] == "127.0.0.1:8080"
    rc, out, _ = _doctor("--config", str(cfg))
    assert rc == 0 and "problems    none" in out and "runs on" in out


def test_doctor_names_configuration_problems(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text('[model]\npath = "/nonexistent/model.keras"\n[destinations.web]\nkind = "dicomweb"\n'
                   'url = "pacs.example.org/dicom-web"\n')
    rc, out, _ = _doctor("--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert rc == 1
    assert "destinations.web.url 'pacs.example.org/dicom-web' has no scheme" in out
    cfg.write_text('[model]\npath = "/nonexistent/model.keras"\n')
    rc, out, _ = _doctor("--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert rc == 1 and "model file /nonexistent/model.keras is missing" in out


def test_dcmtk_tools_are_found_behind_pynetdicoms_console_scripts(tmp_path, monkeypatch):
    """pynetdicom ≥ 3 puts its own storescp/storescu in the venv's bin: the doctor and the tests mean dcmtk's."""
    import os
    import shutil

    from helpers import dcmtk_first_on_path

    from ercp_node.doctor import is_python_script, which_tool

    venv_bin = tmp_path / "venv-bin"
    venv_bin.mkdir()
    script = venv_bin / "storescp"
    script.write_text("#!/opt/venv/bin/python\nfrom pynetdicom.apps.storescp.storescp import main\n")
    script.chmod(0o755)
    real = shutil.which("storescp", path="/usr/bin:/bin")
    assert real and not is_python_script(real) and is_python_script(script)
    env = {"PATH": os.pathsep.join([str(venv_bin), "/usr/bin", "/bin"])}
    monkeypatch.setenv("PATH", env["PATH"])
    assert which_tool("storescp") == real and shutil.which("storescp") == str(script)
    dcmtk_first_on_path(env)
    assert env["PATH"].split(os.pathsep) == ["/usr/bin", "/bin", str(venv_bin)]
