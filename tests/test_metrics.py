import json

import numpy as np
import pytest

from ercp_node.model import metrics as M


def test_image_metrics_hand_computed():
    truth = np.zeros((4, 5), np.uint8)
    pred = np.zeros((4, 5), np.uint8)
    truth[0, :4] = 1  # scope: 4 px
    pred[0, 1:] = 1  # 4 px, 3 overlap -> TP 3, FP 1, FN 1
    truth[2, :2] = 2  # CBD truth 2 px, never predicted -> missed
    pred[3, 4] = 3  # stone predicted, absent in truth -> false alarm
    m = M.image_metrics(truth, pred)
    s = m["duodenoscope"]
    assert (s["tp"], s["fp"], s["fn"]) == (3, 1, 1)
    assert s["iou"] == pytest.approx(3 / 5) and s["precision"] == pytest.approx(3 / 4)
    assert s["recall"] == pytest.approx(3 / 4)
    assert m["cbd"] == {"tp": 0, "fp": 0, "fn": 2, "evaluated": True, "iou": 0.0, "precision": 0.0, "recall": 0.0}
    assert m["stone"]["evaluated"] and m["stone"]["iou"] == 0.0 and m["stone"]["precision"] == 0.0
    with pytest.raises(ValueError):
        M.image_metrics(truth, pred[:3])


def test_absent_in_both_is_not_evaluated():
    z = np.zeros((3, 3), np.uint8)
    m = M.image_metrics(z, z)
    assert all(not v["evaluated"] and v["iou"] is None for v in m.values())


def test_table1_report_and_markdown():
    t1 = np.zeros((2, 4), np.uint8)
    p1 = np.zeros((2, 4), np.uint8)
    t1[0] = 1
    p1[0, :2] = 1  # scope IoU 0.5, P 1, R 0.5
    t1[1, 0] = 3
    p1[1, 0] = 3  # stone perfect
    t2 = np.zeros((2, 4), np.uint8)
    p2 = np.zeros((2, 4), np.uint8)
    t2[0] = 1
    p2[0] = 1  # scope perfect; no stone in either -> stone not evaluated in image 2
    rep = M.table1_report(M.per_image_metrics([t1, t2], [p1, p2]))
    assert rep["n_images"] == 2
    sc = rep["structures"]["duodenoscope"]
    assert sc["n_evaluated"] == 2 and sc["n_both_absent"] == 0
    assert sc["iou_mean"] == pytest.approx(75.0) and sc["iou_sd"] == pytest.approx(np.std([50, 100], ddof=1))
    assert sc["precision_mean"] == pytest.approx(100.0) and sc["recall_mean"] == pytest.approx(75.0)
    assert sc["dataset_iou"] == pytest.approx(100 * 6 / 8)  # pooled: TP 6, FN 2
    st = rep["structures"]["stone"]
    assert st["n_evaluated"] == 1 and st["n_both_absent"] == 1
    assert st["iou_mean"] == pytest.approx(100.0) and st["iou_sd"] is None
    cbd = rep["structures"]["cbd"]
    assert cbd["n_evaluated"] == 0 and cbd["iou_mean"] is None and cbd["dataset_iou"] is None
    json.dumps(rep, allow_nan=False)  # strict JSON: a NaN (e.g. the SD of one value) raises
    md = M.table1_markdown({"DL+CFL": rep})
    lines = md.splitlines()
    assert lines[0] == ("| loss | scope IoU | scope P | scope R | CBD IoU | CBD P | CBD R | stone mIoU | stone P "
                        "| stone R |")
    assert lines[2].startswith("| DL+CFL | 75.00±35.36 | 100.00±0.00 | 75.00±35.36 | n/a | n/a | n/a | 100.00 |")
    assert "absent from both" in md
    assert M.table1_markdown(rep, label="x").splitlines()[2].startswith("| x |")
