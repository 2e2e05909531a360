"""bench/train_accel.py: the accelerator run on a tiny data set (on the CPU here), and `finish` turning its output
into a `retrain` run folder whose card says where the epochs were trained."""
import json
import math

import keras
import pytest

from helpers import bench_module


@pytest.fixture(scope="module")
def accel():
    return bench_module("train_accel")  # registered by name: the worker pool pickles its functions by module name


def test_run_then_finish(accel, tmp_path):
    out = tmp_path / "out"
    rc = accel.main(["run", "--work", str(tmp_path / "w"), "--out", str(out), "--sets", "train-cls", "train-rnd",
                     "train-clin", "--scale", "0.005", "--deadline", "70", "--reserve", "5", "--batch-size", "4",
                     "--val-every", "1000", "--warmup", "2", "--workers", "2", "--train-seconds", "30",
                     "--select", "iou", "--jit", "--prefetch", "2"])
    assert rc == 0
    doc = json.loads((out / "train.json").read_text())
    assert doc["jit"] is True  # --jit: XLA on the CPU; --prefetch 2 keeps two batches ahead across epochs
    assert doc["train_seconds"] < 50  # --train-seconds ends training before --deadline (plus the last validation)
    assert doc["steps"] > 0 and doc["train_images"] + doc["validation_images"] == 4 + 8 + 8
    assert doc["validation_images"] >= 1
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
    """--mask-scale 2: prepare_arrays keeps labels at 512, a worker's batch is (images, area fractions)."""
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
    xb, yb = accel._make_batch((0, np.array([0, 1])))
    assert xb.shape == (2, 256, 256) and yb.shape == (2, 256, 256, 4) and yb.dtype == np.float16
    np.testing.assert_allclose(yb.astype(np.float32).sum(-1), 1.0, atol=2e-3)
    accel._init_worker(x, y_hard, ROBUST, 0)
    xh, yh = accel._make_batch((0, np.array([0, 1])))
    assert yh.shape == (2, 256, 256) and yh.dtype == np.uint8
    np.testing.assert_array_equal(xh, xb)  # same draws: only the targets differ
    # the soft targets' majority is the hard label almost everywhere (they differ on edges only)
    assert (yb.astype(np.float32).argmax(-1) == yh).mean() > 0.97
