"""bench/bench_lofo.py: a fold trains on everything but the held-out family, with the recipe asked for."""
import json
from pathlib import Path

from helpers import bench_module


def _fold(tmp_path, *extra):
    lofo = bench_module("bench_lofo")
    args = lofo.parser().parse_args(["--init", "classic.keras", "--classic", "cls", "--work", str(tmp_path), *extra])
    train = {f: Path(f"train-{f}") for f in lofo.FAMILIES}
    test = {f: Path(f"test-{f}") for f in lofo.FAMILIES}
    return lofo.retrain_command(args, train, test, "lowdose", "lowdose")


def test_a_fold_never_sees_the_held_out_family(tmp_path):
    cmd = _fold(tmp_path)
    data = cmd[cmd.index("--data") + 1:cmd.index("--split-date")]
    assert data[0] == "cls" and "train-lowdose" not in data and "test-lowdose" not in data
    assert {"train-intensifier", "train-flatpanel", "train-sharp", "test-sharp"} <= set(data)
    assert cmd[cmd.index("--init") + 1] == "classic.keras"
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "run-without-lowdose")


def test_the_recipe_reaches_retrain(tmp_path):
    """The 2026-11-30 folds' recipe by default (float32, constant rate, best checkpoint); the options change it."""
    plain = _fold(tmp_path)
    assert plain[plain.index("--mixed-precision") + 1] == "off" and "--lr-floor" not in plain
    assert plain[plain.index("--keep") + 1] == "best"
    cmd = _fold(tmp_path, "--mixed-precision", "auto", "--lr-floor", "0.02", "--keep", "last", "--minutes", "18")
    assert cmd[cmd.index("--mixed-precision") + 1] == "auto" and cmd[cmd.index("--lr-floor") + 1] == "0.02"
    assert cmd[cmd.index("--keep") + 1] == "last" and cmd[cmd.index("--time-budget") + 1] == "18.0"
    assert "--equalization" not in plain  # the paper's input unless asked: then retrain trains on CLAHE
    clahe = _fold(tmp_path, "--equalization", "clahe")
    assert clahe[clahe.index("--equalization") + 1] == "clahe"


def test_family_sets_take_the_stone_label(tmp_path):
    """--stone-label seen makes the family sets with the truth a reader could draw (the phantom records it)."""
    lofo = bench_module("bench_lofo")
    out = lofo.synth(tmp_path / "fam", "lowdose", 2, 7, "2020-01-01", "2020-02-01", "seen")
    assert (out / "manifest.csv").is_file()
    assert json.loads((out / "dataset.json").read_text())["options"]["stone_label"] == "seen"
