"""The package's import graph (module-level and function-level imports alike) has no cycles, and measure/ and
model/ do not reach the phantom (the synthetic generator); `python -m ercp_node.cli` reports a user error as one
line, exit status 2 (cli.py runs as __main__ there, so the sub-commands must not take CLIError from it)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import ercp_node

ROOT = Path(ercp_node.__file__).parent
# No cycle is tolerated (phantom/cli.py now takes iso_date and CLIError from cliutil.py too).
KNOWN: list[set[str]] = []


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        package = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base
                    if target in mods and target not in (m, "ercp_node"):
                        graph[m].add(target)
            elif isinstance(node, ast.Import):
                graph[m].update(a.name for a in node.names if a.name in mods and a.name != m)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = import_graph()
    assert "ercp_node.node.validation" in graph["ercp_node.node.scp"]  # the graph sees what it should
    assert "ercp_node.model.registry" in graph["ercp_node.node.workerproc"]  # (function-level import)
    assert sorted(map(sorted, cycles(graph))) == sorted(map(sorted, KNOWN))


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_measure_and_model_do_not_import_the_phantom():
    """The synthetic generator is a test and demo tool: measure/ and model/ must run on real images without it
    (what they share with it, labelme and outlines, lives in annotation.py), directly or through another module."""
    graph = import_graph()
    assert "ercp_node.annotation" in graph["ercp_node.model.data"]  # the graph sees what it should
    phantom = {m for m in graph if m == "ercp_node.phantom" or m.startswith("ercp_node.phantom.")}
    assert "ercp_node.phantom.render" in phantom
    offenders = {m: sorted(_reachable(graph, m) & phantom) for m in graph
                 if m.startswith(("ercp_node.measure.", "ercp_node.model.")) or m in ("ercp_node.measure", "ercp_node.model")}
    assert {m: found for m, found in offenders.items() if found} == {}
    assert graph["ercp_node.annotation"] <= {"ercp_node.labels"}  # neutral: only the label convention


def test_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_python_m_cli_reports_user_errors_in_one_line(tmp_path):
    env = dict(os.environ, ERCP_NODE_NODE_PORT="notaport")
    r = subprocess.run([sys.executable, "-m", "ercp_node.cli", "config", "check"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("ercp-node config: error:") and "node.port" in r.stderr
    r = subprocess.run([sys.executable, "-m", "ercp_node.cli", "synth", "--count", "0", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--count must be at least 1" in r.stderr, r.stderr
