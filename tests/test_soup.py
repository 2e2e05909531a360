"""bench/soup.py: weight averaging of fine-tuned models, uniform and greedy."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from ercp_node.model.data import read_data
from ercp_node.model.inference import Segmenter
from ercp_node.model.retrain import save_model
from ercp_node.model.unet import build_unet, get_config
from helpers import bench_module, synth

soup = bench_module("soup")


def _tiny(seed: int, size: int = 64):
    keras.utils.set_random_seed(seed)
    return build_unet(get_config("default", base_filters=4, input_size=size, depth=2))


def test_average_is_the_weighted_mean_array_by_array():
    a = [np.array([1.0, 2.0], np.float32), np.array([[0, 4]], np.int64)]
    b = [np.array([3.0, 6.0], np.float32), np.array([[2, 8]], np.int64)]
    mean = soup.average_weights([a, b])
    np.testing.assert_allclose(mean[0], [2.0, 4.0])
    assert mean[0].dtype == np.float32 and mean[1].dtype == np.int64  # each array's dtype back
    np.testing.assert_array_equal(mean[1], [[1, 6]])
    np.testing.assert_allclose(soup.average_weights([a, b], [0.25, 0.75])[0], [2.5, 5.0])
    np.testing.assert_allclose(soup.average_weights([a])[0], a[0])  # one ingredient: itself


def test_models_of_another_architecture_and_bad_coefficients_are_refused():
    a = [np.zeros((3, 3)), np.zeros(2)]
    with pytest.raises(ValueError, match="one architecture"):
        soup.average_weights([a, [np.zeros((3, 3)), np.zeros(3)]])
    with pytest.raises(ValueError, match="one architecture"):
        soup.average_weights([a, a[:1]])
    for bad in ([0.5], [0.7, 0.7], [1.5, -0.5]):
        with pytest.raises(ValueError, match="coefficients"):
            soup.average_weights([a, a], bad)
    with pytest.raises(ValueError, match="no models"):
        soup.average_weights([])


def test_soup_of_two_networks_holds_their_mean_and_bn_statistics_can_be_estimated_afresh():
    m1, m2 = _tiny(1), _tiny(2)
    s, report = soup.build([m1, m2])
    assert report is None
    for w, w1, w2 in zip(s.get_weights(), m1.get_weights(), m2.get_weights()):
        np.testing.assert_allclose(w, (w1.astype(np.float64) + w2) / 2, rtol=1e-6, atol=1e-7)
    x = np.random.default_rng(0).random((6, 64, 64, 1)).astype(np.float32)
    np.testing.assert_allclose(s.predict(x, verbose=0).sum(-1), 1.0, atol=1e-5)  # a softmax still
    averaged_stats = s.get_weights()
    s2, report = soup.build([m1, m2], bn=x)
    assert report and all(v["variance_ratio"] > 0 for v in report.values())
    # only batch norm's moving statistics moved; every learnt weight is the average's
    changed = [not np.allclose(a, b) for a, b in zip(s2.get_weights(), averaged_stats)]
    stat_names = [w.path for w in s2.weights]
    assert any(changed)
    assert all(("moving_mean" in n or "moving_variance" in n) for n, c in zip(stat_names, changed) if c)


def test_make_writes_a_model_the_node_loads_with_its_ingredients_named(tmp_path):
    paths = []
    config = get_config("default", base_filters=4, input_size=64, depth=2).to_dict()
    for seed in (1, 2):
        p = tmp_path / f"m{seed}.keras"
        save_model(_tiny(seed), p, {"version": f"m{seed}", "config": config, "stone_min_peak": 0.75,
                                    "stone_min_rose_k": 2.0, "stone_min_peak_fit": {"images": 400}})
        paths.append(p)
    out = tmp_path / "soup" / "best.keras"
    assert soup.main(["make", "--models", *map(str, paths), "--coefficients", "0.75", "0.25", "--out", str(out)]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert [i["sha256"] for i in card["soup"]["ingredients"]] == [soup.sha256(p) for p in paths]
    assert card["soup"]["coefficients"] == [0.75, 0.25]
    assert card["version"].startswith("soup-of-2-")
    assert card["config"] == config  # the first ingredient's card describes the soup's network: kept
    # the stone decision and its fit are per network, not inherited
    assert not [k for k in card if k.startswith("stone_min_")]
    seg = Segmenter.load(out)
    w1, w2 = (keras.saving.load_model(p, compile=False).get_weights() for p in paths)
    for w, a, b in zip(seg.model.get_weights(), w1, w2):
        np.testing.assert_allclose(w, 0.75 * a + 0.25 * b, rtol=1e-5, atol=1e-6)
    # ingredients without a card (a run's best.keras): the shipped card is borrowed, its 256-grid config dropped
    bare = []
    for p in paths:
        bare.append(tmp_path / "runs" / p.stem / "best.keras")
        bare[-1].parent.mkdir(parents=True)
        bare[-1].write_bytes(p.read_bytes())
    out2 = tmp_path / "soup2" / "best.keras"
    assert soup.main(["make", "--models", *map(str, bare), "--out", str(out2)]) == 0
    card2 = json.loads(out2.with_suffix(".json").read_text())
    assert json.loads(soup.SHIPPED_CARD.read_text())["config"]["input_size"] == 256
    assert "config" not in card2 and not [k for k in card2 if k.startswith("stone_min_")]
    assert Segmenter.load(out2).input_size == 64


def test_greedy_keeps_an_ingredient_only_where_validation_does_not_fall(tmp_path):
    val = tmp_path / "val"
    synth(val, count=3, seed=11)
    # batch-norm images for a soup: drawn evenly over the directories, as the model takes them
    x = soup.bn_inputs([str(val)], 3, 64)
    assert x.shape == (3, 64, 64, 1) and soup.bn_inputs([str(val), str(val)], 3, 64).shape == (3, 64, 64, 1)
    good = tmp_path / "a.keras"
    save_model(_tiny(1), good, {"version": "a"})
    # an ingredient that can only hurt: every weight scaled far off (its average with `a` is no longer `a`)
    bad_model = _tiny(1)
    bad_model.set_weights([w * 40.0 if w.dtype.kind == "f" else w for w in bad_model.get_weights()])
    bad = tmp_path / "b.keras"
    save_model(bad_model, bad, {"version": "b"})
    out, report = tmp_path / "soup.keras", tmp_path / "greedy.json"
    assert soup.main(["greedy", "--models", str(good), str(good), str(bad), "--val", str(val),
                      "--out", str(out), "--report", str(report)]) == 0
    with pytest.raises(SystemExit):  # the report would overwrite the soup's card
        soup.main(["greedy", "--models", str(good), "--val", str(val), "--out", str(out),
                   "--report", str(out.with_suffix(".json"))])
    doc = json.loads(report.read_text())
    assert doc["validation_images"] == 3 and len(doc["ingredients"]) == 3 and len(doc["steps"]) == 2
    # the rule replayed from the report: ingredients by validation score, best first; each added only where the
    # soup's validation mean does not fall below the best so far
    ranked = sorted(doc["ingredients"], key=lambda i: -i["validation"]["mean"])
    kept, best = [ranked[0]["path"]], ranked[0]["validation"]["mean"]
    for ing, step in zip(ranked[1:], doc["steps"]):
        assert step["add"] == ing["path"]
        assert step["kept"] == (step["score"]["mean"] >= best)
        if step["kept"]:
            kept, best = kept + [ing["path"]], step["score"]["mean"]
    assert doc["soup"] == kept and doc["soup_validation"]["mean"] == best
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["soup"]["selected_on"] == [str(val)] and len(card["soup"]["ingredients"]) == len(kept)


def test_greedy_with_fresh_batch_norm_scores_each_ingredient_with_its_own_fresh_statistics(tmp_path):
    val = tmp_path / "val"
    synth(val, count=2, seed=12)
    paths = []
    for seed in (1, 2):
        paths.append(tmp_path / f"m{seed}.keras")
        save_model(_tiny(seed), paths[-1], {"version": f"m{seed}"})
    report = tmp_path / "greedy.json"
    assert soup.main(["greedy", "--models", *map(str, paths), "--val", str(val), "--bn-data", str(val),
                      "--bn-n", "2", "--out", str(tmp_path / "soup.keras"), "--report", str(report)]) == 0
    doc = json.loads(report.read_text())
    samples, _ = read_data([str(val)])
    x = soup.bn_inputs([str(val)], 2, 64)
    for ing, p in zip(doc["ingredients"], paths):
        alone = keras.saving.load_model(p, compile=False)
        fresh, _ = soup.build([alone], bn=x)
        # like with like: an ingredient is scored as the soup steps are, with statistics estimated afresh
        assert ing["validation"] == soup.validation_score(fresh, samples)
