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
    assert "--rehearse-restyle" not in plain
    assert "--unlabelled" not in plain
    assert "--equalization" not in plain  # the --init model's input, as retrain resolves it
    assert "--freeze-norm" not in plain and plain[plain.index("--val-fraction") + 1] == "0.1"
    assert plain[plain.index("--augment") + 1] == "robust"
    cmd = ad.retrain_command(ad.parser().parse_args(base + ["--xla", "--lr-floor", "0.01", "--keep", "last",
                                                            "--rehearse", "a", "b", "--freeze-encoder",
                                                            "--freeze-norm", "--val-fraction", "0",
                                                            "--augment", "paper", "--restyle", "0.5",
                                                            "--unlabelled", "100", "--equalization", "clahe"]),
                             tmp_path / "d", tmp_path / "r")
    assert "--xla" in cmd and "--freeze-encoder" in cmd and "--freeze-norm" in cmd
    assert cmd[cmd.index("--val-fraction") + 1] == "0.0" and cmd[cmd.index("--augment") + 1] == "paper"
    assert cmd[cmd.index("--rehearse-restyle") + 1] == "0.5"
    assert cmd[cmd.index("--equalization") + 1] == "clahe"
    assert ad.recipe(ad.parser().parse_args(base + ["--equalization", "clahe"]))["equalization"] == "clahe"
    assert cmd[cmd.index("--unlabelled") + 1] == str(tmp_path / "d-unlabelled")
    assert cmd[cmd.index("--lr-floor") + 1] == "0.01" and cmd[cmd.index("--keep") + 1] == "last"
    assert cmd[cmd.index("--rehearse") + 1:cmd.index("--rehearse") + 3] == ["a", "b"]
    assert cmd[cmd.index("--init") + 1] == "m.keras" and cmd[cmd.index("--data") + 1] == str(tmp_path / "d")


def test_served_scoring_is_the_nodes_default_settings():
    """--served must score what a site's node would serve: the bench's settings are the node's [model] defaults."""
    from ercp_node.config.settings import ModelSettings

    ad = bench_module("bench_adaptation")
    node = ModelSettings()
    for key, value in ad.SERVED.items():
        assert getattr(node, key) == value, key


def _curve(tmp_path, **over):
    import json

    old = {"init": "m.keras", "family": "foreign", "minutes": 20.0, "lr": 3e-4, "rehearse": [], "freeze_encoder": False,
           "freeze_norm": True, "lr_floor": 0.01, "keep": "last", "seed": 0,
           "rows": [{"n": 0}, {"n": 25, "train_seconds": 1198.2, "epochs": 325}], **over}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    return path


def test_rescore_refuses_another_recipe_or_missing_runs_before_scoring(tmp_path):
    """--rescore checks the old curve's recipe and that every run is still there before it loads any model (the
    init named here does not exist, so any scoring would fail with another error)."""
    import pytest

    ad = bench_module("bench_adaptation")
    base = ["--init", "m.keras", "--family", "foreign", "--train", "t", "--test", "u", "--work", str(tmp_path),
            "--minutes", "20", "--freeze-norm", "--lr-floor", "0.01", "--keep", "last", "--served",
            "--out", str(tmp_path / "new.json")]
    with pytest.raises(SystemExit, match="another recipe.*freeze_norm"):
        ad.main(base[:base.index("--freeze-norm")] + base[base.index("--freeze-norm") + 1:]
                + ["--rescore", str(_curve(tmp_path))])
    with pytest.raises(SystemExit, match="another curve"):
        ad.main(base + ["--rescore", str(_curve(tmp_path, family="lowdose"))])
    with pytest.raises(SystemExit, match="no trained model at .*run-foreign-25"):
        ad.main(base + ["--rescore", str(_curve(tmp_path))])
    run = tmp_path / "run-foreign-25"
    run.mkdir()
    (run / "model.keras").write_bytes(b"")
    args = ad.parser().parse_args(base + ["--rescore", str(_curve(tmp_path))])
    assert [r["n"] for r in ad.rescore_rows(args)] == [25]


def test_resume_refuses_to_mix_served_and_raw_scores(tmp_path):
    import json

    import pytest

    ad = bench_module("bench_adaptation")
    out = tmp_path / "curve.json"
    out.write_text(json.dumps({"init": "m.keras", "family": "foreign", "served": False, "rows": [{"n": 0}]}))
    with pytest.raises(SystemExit, match="scored raw"):
        ad.main(["--init", "m.keras", "--family", "foreign", "--train", "t", "--test", "u", "--out", str(out),
                 "--resume", "--served"])


def test_unlabelled_subset_takes_the_images_after_the_annotated_ones(tmp_path):
    """The site's unannotated archive in a curve: DICOM images N.. of the training set, nothing of their labels."""
    from ercp_node.cli import main

    ad = bench_module("bench_adaptation")
    src = tmp_path / "ph"
    assert main(["synth", "--count", "5", "--seed", "3", "--size", "512", "--out", str(src), "--workers", "1"]) == 0
    assert ad.unlabelled_subset(src, tmp_path / "u", 2, 10) == 3
    import csv

    with open(src / "manifest.csv") as fh:
        want = sorted(Path(row["dicom"]).name for row in list(csv.DictReader(fh))[2:])
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == want
    site = tmp_path / "site"  # a labelme directory: the images its annotation files name, in their order
    bench_module("foreign_phantom").generate(3, 11, site, dt.date(2023, 1, 1), dt.date(2023, 6, 1), sheet=False)
    assert ad.unlabelled_subset(site, tmp_path / "v", 1, 5) == 2
    assert all(p.suffix == ".dcm" for p in (tmp_path / "v").iterdir())
    assert not any(p.suffix == ".json" for p in (tmp_path / "v").rglob("*"))


def test_pseudo_label_quality_scores_what_a_self_training_run_labelled(tmp_path):
    """bench/pseudo_label_quality.py on a real (tiny) retrain --unlabelled run: the start's, the teacher's and the
    run's labels for the unannotated images, scored against their annotations."""
    import json

    from ercp_node.cli import main

    ad, pq = bench_module("bench_adaptation"), bench_module("pseudo_label_quality")
    src, site, unl = tmp_path / "ph", tmp_path / "site", tmp_path / "unl"
    assert main(["synth", "--count", "10", "--seed", "5", "--size", "512", "--out", str(src), "--workers", "1"]) == 0
    ad.subset(src, site, 6)
    assert ad.unlabelled_subset(src, unl, 6, 4) == 4
    tiny = ["--base-filters", "4", "--input-size", "64", "--batch-size", "4", "--data-dir", str(tmp_path / "n")]
    assert main(["retrain", "--data", str(site), "--out", str(tmp_path / "base"), "--epochs", "1", *tiny]) == 0
    run = tmp_path / "run"
    assert main(["retrain", "--data", str(site), "--out", str(run), "--epochs", "2", "--unlabelled", str(unl),
                 "--init", str(tmp_path / "base" / "model.keras"), *tiny]) == 0
    out = tmp_path / "q.json"
    assert pq.main(["--run", str(run), "--unlabelled", str(unl), "--truth", str(src),
                    "--start", str(tmp_path / "base" / "model.keras"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 4 and result["grid"] == 64 and len(result["models"]) == 3
    for scores in result["models"].values():
        assert all(0 <= scores[k] <= 100 for k in ("duodenoscope_iou", "cbd_iou"))


def test_averaged_runs_are_also_scored_by_their_last_weights(tmp_path, monkeypatch):
    ad = bench_module("bench_adaptation")
    base = ["--init", "m.keras", "--family", "foreign", "--train", "t", "--test", "u", "--work", str(tmp_path)]
    monkeypatch.setattr(ad, "score", lambda model, test, served=False: {"scored": str(model)})
    assert ad.last_weights(ad.parser().parse_args(base + ["--keep", "last"]), tmp_path / "r") == {}
    got = ad.last_weights(ad.parser().parse_args(base + ["--keep", "average"]), tmp_path / "r")
    assert got == {"last_weights": {"scored": str(tmp_path / "r" / "checkpoints" / "last.keras")}}
