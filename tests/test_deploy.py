"""Deployment files: the systemd unit (`systemd-analyze verify`, and its exposure score), the Dockerfile checked
statically (this machine has no container runtime that can pull a base image: no daemon, no registry access), its
environment accepted by the node's settings, and the container's health check script against a running node."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import free_port
from ercp_node.config.settings import ConfigError, load

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "ercp-node.service"
ERCP_NODE = str(Path(sys.executable).parent / "ercp-node")


def _unit_here(tmp_path) -> Path:
    """The unit with ExecStart pointing at this checkout's ercp-node (verify checks that the binary exists)."""
    text = UNIT.read_text().replace("/opt/ercp-node/bin/ercp-node", ERCP_NODE)
    p = tmp_path / "ercp-node.service"
    p.write_text(text)
    return p


def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze missing (apt-get install systemd); .ci/run installs it")
    unit = _unit_here(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                       timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m[1]) <= 2.0, r.stdout[-3000:]  # systemd: 0-10, lower is safer; "OK" up to 4.9
    text = UNIT.read_text()
    for line in ("User=ercp-node", "NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=ercp-node",
                 "StateDirectoryMode=0700", "UMask=0077", "CapabilityBoundingSet=\n"):
        assert line in text, line
    # a unit that breaks a rule is caught (the check can fail)
    bad = tmp_path / "bad.service"
    bad.write_text(unit.read_text().replace("ExecStart=", "ExecStart=/nonexistent/ercp-node # "))
    r = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 or "not executable" in r.stderr
    # the command line in ExecStart is one the CLI accepts
    exec_start = re.search(r"^ExecStart=(.*)$", UNIT.read_text(), re.M)[1].split()
    r = subprocess.run([ERCP_NODE, *exec_start[1:], "--help"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0 and "--http-port" in r.stdout


def _dockerfile() -> list[tuple[str, str]]:
    lines, cur = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") and not cur:
            continue
        cur += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            if cur.strip():
                word, _, rest = cur.strip().partition(" ")
                lines.append((word.upper(), rest.strip()))
            cur = ""
    return lines


def test_dockerfile_statically(tmp_path):
    ins = _dockerfile()
    words = [w for w, _ in ins]
    assert words[0] == "FROM" and "USER" in words and "HEALTHCHECK" in words and "VOLUME" in words
    user = [r for w, r in ins if w == "USER"][-1]
    assert not user.startswith(("root", "0")) and words.index("USER") > max(
        i for i, w in enumerate(words) if w == "RUN")  # nothing runs as root after USER; the node never does
    assert '"/var/lib/ercp-node"' in [r for w, r in ins if w == "VOLUME"][0]
    hc = [r for w, r in ins if w == "HEALTHCHECK"][0]
    assert "/opt/ercp-node/healthcheck.py" in hc
    for w, r in ins:  # every COPY source exists
        if w == "COPY":
            for src in r.split()[:-1]:
                assert (ROOT / src).exists(), src
    env = {}
    for w, r in ins:
        if w == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", r)))
    assert env["ERCP_NODE_NODE_DATA_DIR"] == "/var/lib/ercp-node"
    exposed = {int(p) for w, r in ins if w == "EXPOSE" for p in r.split()}
    assert exposed == {int(env["ERCP_NODE_NODE_PORT"]), int(env["ERCP_NODE_NODE_HTTP_PORT"])}
    # the image's settings are valid to the node - with the token secret, and refused without it
    node_env = {k: v for k, v in env.items() if k.startswith("ERCP_NODE_")}
    token = tmp_path / "token"
    token.write_text("x" * 32)
    s = load(ROOT / "deploy" / "ercp-node.toml", env={**node_env, "ERCP_NODE_NODE_HTTP_TOKEN_FILE": str(token)})
    assert s.node.http_bind == "0.0.0.0" and s.destinations[0].name == "PACS"
    with pytest.raises(ConfigError, match="node.http_token_file"):
        load(ROOT / "deploy" / "ercp-node.toml", env={**node_env, "ERCP_NODE_NODE_HTTP_TOKEN_FILE": str(tmp_path / "no")})
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    assert "./ercp-node.toml:/etc/ercp-node/ercp-node.toml:ro" in compose and "ercp_node_http_token" in compose
    assert re.search(r"dockerfile: Dockerfile", compose) and "127.0.0.1:8080:8080" in compose


def test_container_health_check_script_against_a_running_node(tmp_path, tiny_model):
    from ercp_node.config.settings import Settings
    from ercp_node.node.service import Node

    token = tmp_path / "token"
    token.write_text("health-token-" + "z" * 20 + "\n")
    s = Settings()
    s.node.bind, s.node.port, s.node.data_dir = "127.0.0.1", free_port(), str(tmp_path / "node")
    s.model.path, s.node.http_port, s.node.http_token_file = str(tiny_model), free_port(), str(token)
    node = Node(s).start()

    def check(**env):
        return subprocess.run([sys.executable, str(ROOT / "deploy" / "healthcheck.py")], capture_output=True,
                              text=True, timeout=30, env=dict(os.environ, ERCP_NODE_NODE_HTTP_PORT=str(s.node.http_port),
                                                              **env)).returncode

    try:
        assert check(ERCP_NODE_NODE_HTTP_TOKEN_FILE=str(token)) == 0
        wrong = tmp_path / "wrong"
        wrong.write_text("not-it-" + "q" * 20)
        assert check(ERCP_NODE_NODE_HTTP_TOKEN_FILE=str(wrong)) == 1  # 401
        node.settings.node.min_free_disk_mb = 2**40
        assert check(ERCP_NODE_NODE_HTTP_TOKEN_FILE=str(token)) == 1  # 503
    finally:
        node.stop()
    assert check(ERCP_NODE_NODE_HTTP_TOKEN_FILE=str(token)) == 1  # nothing listening
