"""bench/train_accel.py: the accelerator run on a tiny data set (on the CPU here), and `finish` turning its output
into a `retrain` run folder whose card says where the epochs were trained."""
import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import bench_module

SHIPPED = Path(__file__).resolve().parents[1] / "ercp_node/model/weights/default.keras"


@pytest.fixture(scope="module")
def accel():
    return bench_module("train_accel")  # registered by name: the worker pool pickles its functions by module name


def test_run_then_finish(accel, tmp_path):
    out = tmp_path / "out"
    rc = accel.main(["run", "--work", str(tmp_path / "w"), "--out", str(out), "--sets", "train-cls", "train-rnd",
                     "train-clin", "--scale", "0.005", "--deadline", "70", "--reserve", "5", "--batch-size", "4",
                     "--val-every", "1000", "--warmup", "2", "--workers", "2", "--train-seconds", "30",
                     "--select", "iou", "--jit", "--prefetch", "2", "--equalization", "clahe"])
    assert rc == 0
    doc = json.loads((out / "train.json").read_text())
    assert doc["equalization"] == "clahe"  # the input's equalisation, for `retrain --equalization` at finish
    from ercp_node.model.inference import Segmenter
    seg = Segmenter.load(out / "best.keras")  # its card beside it: read as trained, not on the paper's input
    assert seg.equalization == "clahe" and seg.version == "out-best"
    assert doc["jit"] is True  # --jit: XLA on the CPU; --prefetch 2 keeps two batches ahead across epochs
    assert doc["train_seconds"] < 50  # --train-seconds ends training before --deadline (plus the last validation)
    assert doc["steps"] > 0 and doc["train_images"] + doc["validation_images"] == 4 + 8 + 8
    assert doc["validation_images"] >= 1
    # where the steps' time went, summed unrounded (a step's parts are milliseconds: rounded per step they vanish)
    t = doc["timing"]
    assert t["steps"] == doc["steps"] and t["prepare_s"] > 0 and t["step_s"] > 0
    assert t["wait_s"] + t["prepare_s"] + t["step_s"] <= doc["train_seconds"] + 0.05  # train_seconds: to 0.1 s
    assert doc["sets"]["train-cls"].startswith("--count 500 --seed 3102")  # the documented set, scaled
    made = json.loads((tmp_path / "w" / "train-clin" / "dataset.json").read_text())
    assert made["count"] == 8 and made["options"]["stone_sizes"] == "clinical"
    assert all(math.isfinite(v) for v in doc["history"]["val_loss"])
    assert set(doc["best"]["val_iou"]) == {"scope", "cbd", "stone"}
    # --select iou: best.keras is the checkpoint with the highest mean IoU on the 512 grid
    fine = doc["history"]["val_iou_512"]
    means = [sum(f.values()) / 3 for f in fine]
    assert doc["select"] == "iou" and doc["best"]["score"] == pytest.approx(max(means), abs=1e-3)
    assert (out / "last.keras").is_file()  # what the run had reached, whatever was best
    model = keras.saving.load_model(out / "best.keras", compile=False)
    assert model.input_shape == (None, 256, 256, 1) and model.dtype_policy.name == "float32"

    run = tmp_path / "run"
    assert accel.main(["finish", "--weights", str(out / "best.keras"), "--train-json", str(out / "train.json"),
                       "--run", str(run)]) == 0
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["epoch"] >= 1 and state["loss"] == "dice+focal"
    assert state["trained_by"]["steps"] == doc["steps"] and state["trained_by"]["history"] == doc["history"]
    assert (run / "checkpoints" / "last.keras").is_file() and (run / "checkpoints" / "best.keras").is_file()


def test_batches_carry_soft_targets_when_labels_are_finer(accel, tmp_path):
    """--mask-scale 2: prepare_arrays keeps labels at 512, a worker's batch carries them as uint8 and to_targets
    turns them into the area fractions soft_one_hot makes on the host (exactly: k x k block means)."""
    import numpy as np

    from ercp_node.model.data import read_data
    from ercp_node.model.retrain import prepare_arrays
    from ercp_node.model.train import ROBUST
    from helpers import synth

    synth(tmp_path / "ph", count=2, seed=3)
    samples, _ = read_data([tmp_path / "ph"])
    x, y = prepare_arrays(samples, 256, workers=1, log=lambda m: None, mask_size=512)
    assert x.shape == (2, 256, 256) and y.shape == (2, 512, 512) and y.dtype == np.uint8
    _, y_hard = prepare_arrays(samples, 256, workers=1, log=lambda m: None)
    accel._init_worker(x, y, ROBUST, 0)
    from ercp_node.model.train import soft_one_hot

    xb, y512 = accel._make_batch((0, np.array([0, 1])))
    assert xb.shape == (2, 256, 256) and y512.shape == (2, 512, 512) and y512.dtype == np.uint8
    xd, yd = accel.to_targets(xb, y512)
    yb = np.asarray(yd)
    assert tuple(xd.shape) == (2, 256, 256, 1) and yb.shape == (2, 256, 256, 4) and yb.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(xd)[..., 0], xb.astype(np.float32))
    np.testing.assert_allclose(yb, np.stack([soft_one_hot(m, (256, 256)) for m in y512]), atol=1e-6)
    np.testing.assert_allclose(yb.sum(-1), 1.0, atol=1e-5)
    accel._init_worker(x, y_hard, ROBUST, 0)
    xh, yh = accel._make_batch((0, np.array([0, 1])))
    assert yh.shape == (2, 256, 256) and yh.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(accel.to_targets(xh, yh)[1]), np.eye(4)[yh])  # labels at 256: one-hot
    np.testing.assert_array_equal(xh, xb)  # same draws: only the targets differ
    # the soft targets' majority is the hard label almost everywhere (they differ on edges only)
    assert (yb.astype(np.float32).argmax(-1) == yh).mean() > 0.97


def test_duct_window_is_the_second_looks_window():
    """train.duct_window cuts what zoom.second_look would: the frame at 256·zoom, the window zoom.window_origin
    places on the duct; from a 512 base at zoom 2 that is the base's own pixels, with the labels at 512."""
    from ercp_node.model.train import duct_window
    from ercp_node.model.zoom import window_origin

    rng = np.random.default_rng(0)
    image = rng.random((512, 512)).astype(np.float32)
    labels = np.zeros((1024, 1024), np.uint8)
    labels[600:760, 700:760] = 2  # a duct, lower right
    labels[700:720, 720:740] = 3  # a stone in it
    labels[0:200, 0:100] = 1  # a scope: not what the window is centred on
    win, lab = duct_window(image, labels, 2.0, 256)
    assert win.shape == (256, 256) and lab.shape == (512, 512) and lab.dtype == np.uint8
    y, x = window_origin(np.isin(labels[::4, ::4], (2, 3)), 2.0)
    np.testing.assert_allclose(win, image[y:y + 256, x:x + 256], atol=1e-6)
    np.testing.assert_array_equal(lab, labels[2 * y:2 * y + 512, 2 * x:2 * x + 512])
    assert (lab == 3).sum() == (labels == 3).sum()  # the whole duct and stone inside
    # another zoom: the same window on a smaller frame, the labels still twice the window's grid
    win, lab = duct_window(image, labels, 1.4, 256)
    assert win.shape == (256, 256) and lab.shape == (512, 512) and (lab == 3).any()
    # jitter moves the window but keeps it inside the zoomed frame
    for seed in range(20):
        w, _ = duct_window(image, labels, 2.0, 256, np.random.default_rng(seed), jitter=300)
        assert w.shape == (256, 256)
    assert duct_window(image, np.where(labels == 1, 1, 0).astype(np.uint8), 2.0) is None  # no duct: no window


def test_run_with_windows(accel, tmp_path):
    """--window: frames kept at 512, a share of the batches' samples are duct windows, and the validation adds
    the windows' IoU, which --select iou averages with the whole frames'."""
    out = tmp_path / "out"
    rc = accel.main(["run", "--work", str(tmp_path / "w"), "--out", str(out), "--sets", "train-cls", "train-rnd",
                     "--scale", "0.01", "--deadline", "90", "--reserve", "5", "--batch-size", "4",
                     "--val-every", "1000", "--warmup", "2", "--workers", "2", "--train-seconds", "20",
                     "--select", "iou", "--prefetch", "2", "--window", "0.5", "--window-zoom", "1.3", "2",
                     "--init", str(SHIPPED), "--freeze-bn"])
    assert rc == 0
    doc = json.loads((out / "train.json").read_text())
    assert doc["freeze_bn"] is True
    # --freeze-bn: the batch-norm statistics are the initial model's, the convolutions trained
    init, best = (keras.saving.load_model(p, compile=False) for p in (SHIPPED, out / "best.keras"))
    bn = [(a, b) for a, b in zip(init.layers, best.layers) if isinstance(a, keras.layers.BatchNormalization)]
    assert bn and all(np.array_equal(*map(keras.ops.convert_to_numpy, (a.moving_mean, b.moving_mean))) for a, b in bn)
    assert any(not np.array_equal(a.get_weights()[0], b.get_weights()[0])
               for a, b in zip(init.layers, best.layers) if isinstance(a, keras.layers.Conv2D))
    assert doc["window"]["share"] == 0.5 and doc["window"]["zoom"] == [1.3, 2.0]
    assert doc["window"]["validation_images"] >= 1
    fine = doc["history"]["val_iou_512"][-1]
    assert set(fine) == {"scope", "cbd", "stone", "window_scope", "window_cbd", "window_stone"}
    assert doc["best"]["score"] == pytest.approx(max(sum(f.values()) / 6 for f in doc["history"]["val_iou_512"]),
                                                 abs=1e-3)
    with pytest.raises(SystemExit, match="--window"):
        accel.main(["run", "--work", str(tmp_path / "w"), "--out", str(out), "--sets", "train-cls",
                    "--window", "0.5", "--window-zoom", "2", "1.3"])


def test_batches_mix_frames_and_windows(accel, tmp_path):
    from ercp_node.model.train import ROBUST
    from ercp_node.model.data import read_data
    from ercp_node.model.retrain import prepare_arrays
    from helpers import synth

    synth(tmp_path / "ph", count=4, seed=5)
    samples, _ = read_data([tmp_path / "ph"])
    x, y = prepare_arrays(samples, 512, workers=1, log=lambda m: None, mask_size=1024)
    accel._init_worker(x, y, ROBUST, 0, (1.0, 2.0, 2.0, 0))  # every sample a window at zoom 2
    xb, yb = accel._make_batch((0, np.arange(4)))
    assert xb.shape == (4, 256, 256) and yb.shape == (4, 512, 512)  # windows: labels at 2x
    yb = np.asarray(accel.to_targets(xb, yb)[1])
    np.testing.assert_allclose(yb.sum(-1), 1.0, atol=1e-5)
    duct_share = yb[..., 2:].sum(-1).mean()
    accel._init_worker(x, y, ROBUST, 0, (0.0, 1.0, 1.0, 0))  # whole frames from the same 512 arrays
    xf, yf = accel._make_batch((0, np.arange(4)))
    assert xf.shape == (4, 256, 256) and yf.shape == (4, 1024, 1024)  # frames: labels at 4x
    yf = np.asarray(accel.to_targets(xf, yf)[1])
    assert yf.shape == (4, 256, 256, 4)
    assert duct_share > 2 * yf[..., 2:].sum(-1).mean()  # the window is the duct, 4x larger
    accel._init_worker(x, y, ROBUST, 0, (0.5, 2.0, 2.0, 0))  # half and half: label grids differ in one batch,
    xm, ym = accel._make_batch((0, np.arange(8) % 4))     # so the worker sends float16 area fractions
    assert ym.shape == (8, 256, 256, 4) and ym.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(accel.to_targets(xm, ym)[1]), ym.astype(np.float32))


def test_probe_times_the_three_feeds(accel, tmp_path):
    """`probe` times a step fed from the host, from the device, and the step alone, per precision and batch."""
    assert accel.main(["probe", "--out", str(tmp_path), "--precisions", "float32", "--batch-sizes", "1",
                       "--base-filters", "4", "--steps", "1"]) == 0
    doc = json.loads((tmp_path / "probe.json").read_text())
    assert [a["feed"] for a in doc["arms"]] == ["host", "device", "compute"]
    assert all(a["ms_per_step_median"] > 0 and a["batch_size"] == 1 for a in doc["arms"])


def test_run_from_a_widened_network_trains_at_its_width(accel, tmp_path):
    """--init with a network bench/widen.py grew: the run builds the start's width (not the preset's), and the
    card says so."""
    from ercp_node.model.retrain import init_width

    width = init_width(SHIPPED) + 2  # wider than the shipped network, whatever width it ships at
    wide = tmp_path / "wide" / "best.keras"
    assert bench_module("widen").main(["--model", str(SHIPPED), "--base-filters", str(width), "--out", str(wide)]) == 0
    out = tmp_path / "out"
    assert accel.main(["run", "--work", str(tmp_path / "w"), "--out", str(out), "--sets", "train-cls",
                       "--scale", "0.01", "--deadline", "60", "--reserve", "5", "--batch-size", "2",
                       "--val-every", "1000", "--warmup", "2", "--workers", "2", "--train-seconds", "10",
                       "--prefetch", "2", "--init", str(wide), "--precision", "mixed_bfloat16"]) == 0
    doc = json.loads((out / "train.json").read_text())
    assert doc["config"]["base_filters"] == width and doc["steps"] > 0
    assert doc["precision"] == "mixed_bfloat16"  # trained in bf16, saved as float32 below
    assert f"widened to {width}" in doc["init"]["version"]
    best = keras.saving.load_model(out / "best.keras", compile=False)
    assert best.get_layer("enc0_conv1").filters == width and best.dtype_policy.name == "float32"
    assert best.get_layer("enc0_conv1").compute_dtype == "float32"


def test_the_shown_collimation_set_is_trained_on_only_when_named(accel):
    """`train-shut-seen` cost the independently written phantom's scope with a narrow rehearsal (docs/model-card.md):
    a run without --sets leaves it out and keeps every other set."""
    assert "train-shut-seen" in accel.SETS and "--shutter random" in accel.SETS["train-shut-seen"]
    assert accel.default_sets() == [n for n in accel.SETS if n != "train-shut-seen"]
