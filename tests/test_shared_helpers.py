"""Test helpers live in one place (tests/helpers.py): no test or bench imports conftest, and no test module
defines its own copy of a shared helper."""
from __future__ import annotations

import ast
import re
import socket
from pathlib import Path

# tests/ is on sys.path (rootdir mode)
from helpers import free_port

TESTS = Path(__file__).parent
SHARED = {"free_port", "count", "_count", "_wait", "wait_until", "synth", "Orthanc", "storescp", "_storescp", "migrated",
          "Migrations"}


def _python_files():
    return sorted(p for p in [*TESTS.rglob("*.py"), *(TESTS.parent / "bench").glob("*.py")] if p.name != "helpers.py")


def test_nothing_imports_conftest():
    pattern = re.compile(r"^\s*(from conftest import|import conftest)", re.M)
    assert [str(p) for p in _python_files() if pattern.search(p.read_text())] == []


def test_no_test_module_copies_a_shared_helper():
    copies = []
    for p in _python_files():
        if p.parent.name == "bench":
            continue  # the benches may run without tests/ on their path
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in SHARED:
                copies.append(f"{p.relative_to(TESTS)}: {node.name}")
    assert copies == []


def test_free_port_is_free():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # raises when taken
