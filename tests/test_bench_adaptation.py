"""bench/bench_adaptation.py's subset: the first N site images, from a phantom directory or a labelme directory
(the form a site's annotations take), still read by the project's reader without problems."""
import datetime as dt
from pathlib import Path

from ercp_node.model.data import read_data
from helpers import bench_module


def test_subset_of_a_labelme_directory(tmp_path, monkeypatch):
    fp, ad = bench_module("foreign_phantom"), bench_module("bench_adaptation")
    fp.generate(3, 11, tmp_path / "site", dt.date(2023, 1, 1), dt.date(2023, 6, 1), sheet=False)
    monkeypatch.chdir(tmp_path)  # relative paths, as on the command line
    ad.subset(Path("site"), Path("two"), 2)
    samples, problems = read_data([tmp_path / "two"])
    assert problems == [] and len(samples) == 2
    assert sorted(Path(s.key).name for s in samples) == ["fp00000.json", "fp00001.json"]


def test_subset_of_a_phantom_directory(tmp_path):
    from helpers import synth

    ad = bench_module("bench_adaptation")
    synth(tmp_path / "ph", count=3, seed=5)
    ad.subset(tmp_path / "ph", tmp_path / "one", 1)
    samples, problems = read_data([tmp_path / "one"])
    assert problems == [] and len(samples) == 1


def test_resume_refuses_another_curve(tmp_path):
    import json

    import pytest

    ad = bench_module("bench_adaptation")
    out = tmp_path / "curve.json"
    out.write_text(json.dumps({"init": "other.keras", "family": "lowdose", "rows": [{"n": 0}]}))
    with pytest.raises(SystemExit, match="another curve"):
        ad.main(["--init", "model.keras", "--family", "foreign", "--train", "t", "--test", "u", "--out", str(out),
                 "--resume"])


def test_retrain_command_passes_the_recipe_on(tmp_path):
    """Each recipe option reaches `ercp-node retrain`: a curve measured with --xla or a cosine really ran with it."""
    ad = bench_module("bench_adaptation")
    base = ["--init", "m.keras", "--family", "foreign", "--train", "t", "--test", "u", "--work", str(tmp_path)]
    plain = ad.retrain_command(ad.parser().parse_args(base), tmp_path / "d", tmp_path / "r")
    assert "--xla" not in plain and "--lr-floor" not in plain and "--rehearse" not in plain
    assert "--freeze-norm" not in plain and plain[plain.index("--val-fraction") + 1] == "0.1"
    cmd = ad.retrain_command(ad.parser().parse_args(base + ["--xla", "--lr-floor", "0.01", "--keep", "last",
                                                            "--rehearse", "a", "b", "--freeze-encoder",
                                                            "--freeze-norm", "--val-fraction", "0"]),
                             tmp_path / "d", tmp_path / "r")
    assert "--xla" in cmd and "--freeze-encoder" in cmd and "--freeze-norm" in cmd
    assert cmd[cmd.index("--val-fraction") + 1] == "0.0"
    assert cmd[cmd.index("--lr-floor") + 1] == "0.01" and cmd[cmd.index("--keep") + 1] == "last"
    assert cmd[cmd.index("--rehearse") + 1:cmd.index("--rehearse") + 3] == ["a", "b"]
    assert cmd[cmd.index("--init") + 1] == "m.keras" and cmd[cmd.index("--data") + 1] == str(tmp_path / "d")
