"""bench/gate.py, the default model's gate (docs/model-card.md): non-inferior on every structure within the margin
by the paired bootstrap's lower bound, and better on one; a model cannot pass against itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import bench_module, synth

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gate():
    return bench_module("gate")


def tables(rng, n=250, shift=None, sd=4.0, base=None):
    """Two sets of per-image IoU (%); stones in the truth of ~60 % of images (None elsewhere: not evaluated)."""
    shift = shift or {}
    out = {}
    for k, name in enumerate(("a", "b")):
        b = base[name] if base else None
        t = {}
        for s, mean in (("duodenoscope", 91.0), ("cbd", 84.0), ("stone", 36.0)):
            if b is None:
                v = np.clip(rng.normal(mean, 10.0, n), 0, 100)
                t[s] = [None if s == "stone" and i % 5 < 2 else float(x) for i, x in enumerate(v)]
            else:
                t[s] = [None if x is None else float(x + shift.get(s, 0.0) + rng.normal(0, sd))  # unclipped: no bias
                        for x in b[s]]
        out[name] = t
    return out


def test_the_same_outputs_are_non_inferior_but_not_better(gate):
    a = tables(np.random.default_rng(0))
    r = gate.decide(a, a)
    assert not r["promote"] and "better on no structure" in r["reason"]
    for s in gate.STRUCTURES:
        assert r["structures"][s]["delta"] == 0 and r["structures"][s]["non_inferior"] and not r["structures"][s]["better"]


def test_a_clear_gain_with_noise_elsewhere_is_promoted(gate):
    rng = np.random.default_rng(1)
    a = tables(rng)
    c = tables(rng, base=a, shift={"stone": 2.0, "duodenoscope": -0.02})
    r = gate.decide(a, c)
    assert r["promote"], r["reason"]
    st = r["structures"]
    assert st["stone"]["better"] and st["stone"]["ci_low"] > 0
    assert st["duodenoscope"]["non_inferior"] and st["duodenoscope"]["ci_low"] < 0 < st["duodenoscope"]["ci_high"]
    assert abs(st["stone"]["delta"] - 2.0) < 0.6


def test_a_loss_beyond_the_margin_is_refused_whatever_it_gains(gate):
    rng = np.random.default_rng(2)
    a = tables(rng)
    c = tables(rng, base=a, shift={"stone": 5.0, "cbd": -1.5})
    r = gate.decide(a, c)
    assert not r["promote"] and r["reason"].startswith("not non-inferior on cbd")
    assert r["structures"]["cbd"]["ci_high"] < 0


def test_the_bootstrap_is_reproducible_and_checks_its_inputs(gate):
    rng = np.random.default_rng(3)
    a = tables(rng)
    c = tables(rng, base=a, shift={"cbd": 0.3})
    assert gate.decide(a, c, seed=7) == gate.decide(a, c, seed=7)
    with pytest.raises(ValueError, match="different number of images"):
        gate.decide(a, {"a": c["a"], "b": {s: v[:-1] for s, v in c["b"].items()}})
    with pytest.raises(ValueError, match="different sets"):
        gate.decide(a, {"b": c["b"], "a": c["a"]})


def test_the_shipped_model_cannot_pass_its_own_gate(gate, tmp_path):
    synth(tmp_path / "t", count=4, seed=11)
    out = tmp_path / "gate.json"
    shipped = str(ROOT / "ercp_node/model/weights/default.keras")
    assert gate.main(["--candidate", shipped, "--active", shipped, "--data", str(tmp_path / "t"), "--boot", "200",
                      "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["promote"] is False and r["sets"] == {"t": 4}
    assert r["per_image"]["active"] == r["per_image"]["candidate"]
    assert all(r["structures"][s]["delta"] == 0 for s in gate.STRUCTURES)
    assert r["active"]["version"] == r["candidate"]["version"]
    assert r["candidate"]["card"] is True and r["candidate"]["equalization"] == "global"  # the input it was read on
    assert gate.main(["--recompute", str(out), "--boot", "100"]) == 0  # from the kept per-image IoUs, no model
    again = json.loads(out.read_text())
    assert again["promote"] is False and again["n_boot"] == 100 and again["per_image"] == r["per_image"]
    # each model with its own second look: the same network at two zooms gives other labels
    assert gate.main(["--candidate", shipped, "--active", shipped, "--data", str(tmp_path / "t"), "--boot", "200",
                      "--active-zoom", "1.4", "--candidate-zoom", "2", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r["active"]["zoom"], r["candidate"]["zoom"]) == (1.4, 2.0) and "2026-12-03" in r["rule"]
    assert r["per_image"]["active"] != r["per_image"]["candidate"]


def test_the_statistic_is_table1s_mean_over_all_evaluated_images(gate):
    # sets of unequal evaluated counts: the pooled mean (how retrain reads the frozen set), not the mean of set means
    a = {"x": {s: [10.0, None, 30.0] for s in gate.STRUCTURES}, "y": {s: [90.0] for s in gate.STRUCTURES}}
    c = {"x": {s: [10.0, None, 30.0] for s in gate.STRUCTURES}, "y": {s: [94.0] for s in gate.STRUCTURES}}
    r = gate.decide(a, c, n_boot=50)
    assert r["structures"]["cbd"]["active"] == pytest.approx(130 / 3, abs=1e-3)
    assert r["structures"]["cbd"]["delta"] == pytest.approx(4 / 3, abs=1e-3)


def test_the_rule_of_2026_12_05_non_inferior_on_the_500_better_over_all_sets(gate):
    """A third set may show the gain; the old sets alone judge non-inferiority: a gain only on the new set ships, a
    loss on an old set that the new set's gain would hide in the pooled mean does not."""
    rng = np.random.default_rng(5)
    a = tables(rng)
    new = tables(rng)["a"]
    active = {"a": a["a"], "b": a["b"], "shut": new}
    same = tables(rng, base=a, shift={}, sd=0.5)
    gained = tables(rng, base={"a": new, "b": new}, shift={"duodenoscope": 12.0}, sd=0.5)["a"]
    ok = gate.decide_split(active, {"a": same["a"], "b": same["b"], "shut": gained}, ["a", "b"])
    assert ok["promote"], ok["reason"]
    assert ok["non_inferior_on"]["sets"] == ["a", "b"] and ok["structures"]["duodenoscope"]["better"]
    assert not gate.decide(a, same)["promote"]  # on the old sets alone: better on nothing
    worse = tables(rng, base=a, shift={"duodenoscope": -3.0}, sd=0.5)
    hidden = gate.decide_split(active, {"a": worse["a"], "b": worse["b"], "shut": gained}, ["a", "b"])
    assert gate.decide(active, {"a": worse["a"], "b": worse["b"], "shut": gained})["structures"]["duodenoscope"][
        "non_inferior"]  # pooled over every set the loss is hidden ...
    assert not hidden["promote"] and "not non-inferior on duodenoscope" in hidden["reason"]  # ... not by this rule
    assert gate.decide_split(active, active, None) == gate.decide(active, active)
    with pytest.raises(ValueError, match="not judged"):
        gate.decide_split(active, active, ["a", "c"])


def test_a_model_without_its_card_is_judged_on_the_papers_input_and_says_so(gate, tmp_path, capsys):
    """A CLAHE net whose card was lost would be misjudged on the global input: the gate warns, and the JSON keeps
    which input each model was read on."""
    import shutil

    synth(tmp_path / "t", count=2, seed=12)
    bare = tmp_path / "bare.keras"
    shutil.copyfile(ROOT / "ercp_node/model/weights/default.keras", bare)
    out = tmp_path / "gate.json"
    assert gate.main(["--candidate", str(bare), "--data", str(tmp_path / "t"), "--boot", "50", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["candidate"] == {"path": str(bare), "version": "bare", "equalization": "global", "card": False,
                              "zoom": 1.0}
    assert r["active"]["card"] is True
    assert "WARNING: no card beside" in capsys.readouterr().out
