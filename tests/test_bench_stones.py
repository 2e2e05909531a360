"""bench/bench_stones.py's per-stone visibility (local CNR) and bench/bench_grid_ceiling.py's truth round trip."""

from __future__ import annotations

import numpy as np
import pytest

from ercp_node.labels import CBD, STONE
from ercp_node.model.data import load_pixels, read_data
from helpers import bench_module, synth


@pytest.fixture(scope="module")
def stones_bench():
    return bench_module("bench_stones")


@pytest.fixture(scope="module")
def ceiling():
    return bench_module("bench_grid_ceiling")


def test_local_cnr_is_the_stones_offset_in_units_of_the_ducts_noise(stones_bench):
    rng = np.random.default_rng(0)
    labels = np.zeros((64, 64), np.uint8)
    labels[16:48, 16:48] = CBD
    stone = np.zeros_like(labels, bool)
    stone[28:36, 28:36] = True
    labels[stone] = STONE
    noise = rng.normal(0, 10, labels.shape)
    bright = 1000 + noise + 25 * stone  # 2.5 noise SDs brighter than its ring
    assert stones_bench.local_cnr(bright, labels, stone) == pytest.approx(2.5, abs=0.6)
    assert stones_bench.local_cnr(1000 + noise, labels, stone) < 0.8  # isodense: nothing to see
    tiny = np.zeros_like(stone)
    tiny[0, 0] = True  # a ring cut by the frame's edge, under 12 pixels: no figure rather than a noisy one
    assert stones_bench.local_cnr(bright, np.where(tiny, STONE, 0).astype(np.uint8), tiny) is None


def test_grid_round_trip_costs_small_stones_first_and_nothing_on_the_images_own_grid(ceiling, tmp_path):
    synth(tmp_path / "ph", count=6, seed=11)
    samples, problems = read_data([tmp_path / "ph"])
    assert not problems and len(samples) == 6
    native = load_pixels(samples[0].image_path, samples[0].frame)[0].shape[0]
    same = ceiling.evaluate(ceiling.GridOracle(samples, native, "hard"), samples)
    assert same["stone_iou"] == 100.0 and same["cbd_iou"] == 100.0 and same["stone_count_exact_pct"] == 100.0
    # the truth's count agrees with the seen count only where no stone is below Rose's criterion
    assert 0.0 <= same["stone_count_exact_seen_pct"] <= 100.0
    seen = ceiling.evaluate(ceiling.GridOracle(samples, 0, "observer"), samples)
    assert seen["stone_count_exact_seen_pct"] == 100.0
    by_k = same["stone_iou_by_visibility"]
    assert sum(b["n"] for b in by_k.values()) > 0
    assert all(b["iou_mean"] in (None, 100.0) for b in by_k.values())
    coarse = {m: ceiling.evaluate(ceiling.GridOracle(samples, 128, m), samples) for m in ("hard", "soft")}
    assert 0 < coarse["hard"]["stone_iou"] < 100.0
    assert coarse["soft"]["stone_iou"] >= coarse["hard"]["stone_iou"]  # area fractions keep sub-pixel edges
    small, large = coarse["hard"]["stone_iou_by_size"]["lt4mm"], coarse["hard"]["stone_iou_by_size"]["gt10mm"]
    if small["n"] and large["n"]:
        assert small["iou_mean"] < large["iou_mean"]


def test_observer_ceiling_drops_only_stones_below_roses_criterion(ceiling):
    rng = np.random.default_rng(1)
    labels = np.zeros((96, 96), np.uint8)
    labels[10:86, 30:66] = CBD
    seen, faint = np.zeros_like(labels, bool), np.zeros_like(labels, bool)
    seen[20:32, 40:52], faint[60:66, 44:50] = True, True
    labels[seen | faint] = STONE
    image = 1000 + rng.normal(0, 10, labels.shape) + 20 * seen + 1 * faint  # k ≈ 24 and ≈ 0.6
    out = ceiling.observer(labels, image)
    assert (out[seen] == STONE).all() and (out[faint] == CBD).all()
    assert (out[~(seen | faint)] == labels[~(seen | faint)]).all()


def test_seen_share_counts_the_stones_above_roses_k_from_png_or_dicom(tmp_path):
    """bench/bench_seen_stones.py: one stone well above Rose's k and one isodense stone, read from the PNG and, for
    a set without PNGs, from its DICOM: half the components and the bright stone's share of the pixels are seen."""
    import cv2
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    seen_bench = bench_module("bench_seen_stones")
    rng = np.random.default_rng(1)
    labels = np.zeros((96, 96), np.uint8)
    labels[10:86, 20:76] = CBD
    labels[20:30, 30:40] = STONE  # 100 px, 3 SDs brighter: k = 3 × 10 = 30
    labels[60:66, 40:46] = STONE  # 36 px, isodense
    image = np.clip(120 + rng.normal(0, 4, labels.shape) + 12 * (labels[..., None] == STONE)[..., 0]
                    * (np.arange(96)[:, None] < 40), 0, 255).astype(np.uint8)
    for root, png in ((tmp_path / "png", True), (tmp_path / "dcm", False)):
        (root / "masks").mkdir(parents=True)
        cv2.imwrite(str(root / "masks" / "a.png"), labels)
        if png:
            (root / "images").mkdir()
            cv2.imwrite(str(root / "images" / "a.png"), image)
        else:
            (root / "dicom").mkdir()
            ds = pydicom.Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # SC
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 96, 96, 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.PixelData = (255 - image).tobytes()  # inverted: k does not depend on the sign
            ds.save_as(root / "dicom" / "a.dcm", enforce_file_format=True)
        r = seen_bench.share(root, 5.0)
        assert (r["stone_components"], r["components_seen"], r["images_with_an_unseen_stone"]) == (2, 1, 1)
        assert r["stone_pixels_seen_pct"] == pytest.approx(100 * 100 / 136, abs=0.1)


def test_paths_are_served_as_asked_and_keep_peak_widens_the_centre_gate(stones_bench, tiny_model, tmp_path):
    """The bench end to end on an untrained first stage and stone net: the served settings reach each path, and a
    keep peak the first stage's softmax always reaches keeps every component (= the ungated path)."""
    import json

    import keras

    from ercp_node.model.stonenet import StoneNetConfig, build_stone_net

    synth(tmp_path / "ph", count=3, seed=5)
    keras.utils.set_random_seed(0)
    cfg = StoneNetConfig(base_filters=4, depth=2, margin_px=8, grid=64)
    stones = tmp_path / "stones.keras"
    build_stone_net(cfg).save(stones)
    stones.with_suffix(".json").write_text(json.dumps({"version": "tiny-stones", "config": cfg.to_dict()}))
    out = tmp_path / "stones.json"
    assert stones_bench.main(["--model", str(tiny_model), "--stones", str(stones), "--data", str(tmp_path / "ph"),
                              "--cine", "0", "--tta", "flip", "--postprocess", "anatomy", "--stone-decision", "0.5:3",
                              "--keep-peak", "1e-9", "0.9", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["served"] == {"tta": "flip", "zoom": 1.0, "postprocess": "anatomy", "stone_decision": [0.5, 3.0],
                           "precision": "float32"}
    rows = r["sets"]["ph"]
    assert set(rows) == {"paper-256", "cascade-576", "cascade-576-no-centre-gate", "cascade-576-keep-1e-09",
                         "cascade-576-keep-0.9"}
    assert all(row["n"] == 3 for row in rows.values())

    def same(a, b):
        return all(a[k] == b[k] for k in a if k != "ms_per_image")
    # the gate drops some of this net's components (the ungated CBD differs), and the lowest keep peak restores them
    assert not same(rows["cascade-576"], rows["cascade-576-no-centre-gate"])
    assert same(rows["cascade-576-keep-1e-09"], rows["cascade-576-no-centre-gate"])
