"""The paper's evaluation (NumPy only): per image and per structure IoU, precision and recall from label maps,
then mean +- SD over images in percent (Table 1).

Per image and structure, with TP/FP/FN counted over pixels:
  IoU = TP / (TP + FP + FN),  precision = TP / (TP + FP),  recall = TP / (TP + FN).

Absent-structure rule (the paper leaves it open):
- a structure absent from both truth and prediction in an image is *not evaluated* there: it is left out of
  that structure's means and SDs (it would otherwise be an undefined 0/0) and counted in `n_both_absent`;
- in every evaluated image all three metrics are defined: a structure missed entirely (truth only) scores
  IoU 0, recall 0 and precision 0; a structure predicted where there is none (prediction only) scores IoU 0,
  precision 0 and recall 0. So each structure's three means use the same k = `n_evaluated` images.
SDs are sample SDs (ddof = 1); with fewer than 2 evaluated images they are None. `dataset_iou` pools TP, FP,
FN over all images first (a pixel-level IoU of the whole test set, the Keras OneHotIoU view) for comparison.
"""
from __future__ import annotations

import numpy as np

from ..labels import LABELS

STRUCTURES = {label.name: label.value for label in LABELS}  # "duodenoscope", "cbd", "stone"
_TABLE_NAMES = {label.name: label.short for label in LABELS}


def image_metrics(truth: np.ndarray, pred: np.ndarray) -> dict:
    """Two label maps of one image (same shape) -> {structure: {tp, fp, fn, evaluated, iou, precision,
    recall}}; the three ratios are fractions in [0, 1], or None where the structure is not evaluated."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    out = {}
    for name, label in STRUCTURES.items():
        t, p = truth == label, pred == label
        tp = int(np.count_nonzero(t & p))
        fp = int(np.count_nonzero(p)) - tp
        fn = int(np.count_nonzero(t)) - tp
        evaluated = tp + fp + fn > 0

        def ratio(num: int, den: int) -> float | None:
            return (num / den if den else 0.0) if evaluated else None

        out[name] = {"tp": tp, "fp": fp, "fn": fn, "evaluated": evaluated, "iou": ratio(tp, tp + fp + fn),
                     "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn)}
    return out


def per_image_metrics(truths, preds) -> list[dict]:
    return [image_metrics(t, p) for t, p in zip(truths, preds, strict=True)]


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    a = 100.0 * np.asarray(values, np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else None)


def table1_report(per_image: list[dict]) -> dict:
    """Per-image metrics -> {"n_images", "structures": {name: {iou_mean, iou_sd, precision_mean, ...,
    dataset_iou, n_evaluated, n_both_absent}}}, all metrics in percent (None where undefined)."""
    report = {"n_images": len(per_image), "structures": {}}
    for name in STRUCTURES:
        rows = [img[name] for img in per_image]
        ev = [r for r in rows if r["evaluated"]]
        s = {}
        for metric in ("iou", "precision", "recall"):
            s[f"{metric}_mean"], s[f"{metric}_sd"] = _mean_sd([r[metric] for r in ev])
        tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
        s["dataset_iou"] = 100.0 * tp / (tp + fp + fn) if tp + fp + fn else None
        s["n_evaluated"], s["n_both_absent"] = len(ev), len(rows) - len(ev)
        report["structures"][name] = s
    return report


def _cell(mean, sd) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.2f}" if sd is None else f"{mean:.2f}±{sd:.2f}"


def table1_markdown(reports: dict, label: str = "model", first_column: str = "loss") -> str:
    """Markdown in the paper's Table 1 layout, one row per report. `reports` is one table1_report (row named
    `label`) or a mapping {row label (e.g. loss name): report}."""
    if "structures" in reports:
        reports = {label: reports}
    head = [first_column]
    for name in STRUCTURES:
        t = _TABLE_NAMES[name]
        head += [f"{t} {'mIoU' if name == 'stone' else 'IoU'}", f"{t} P", f"{t} R"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row_label, rep in reports.items():
        cells = [row_label]
        for name in STRUCTURES:
            s = rep["structures"][name]
            cells += [_cell(s[f"{m}_mean"], s[f"{m}_sd"]) for m in ("iou", "precision", "recall")]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for row_label, rep in reports.items():
        ks = ", ".join(f"{_TABLE_NAMES[n]} {rep['structures'][n]['n_evaluated']}" for n in STRUCTURES)
        notes.append(f"{row_label}: {rep['n_images']} images; evaluated per structure: {ks}")
    lines += ["", "Mean ± SD over images, %. A structure absent from both truth and prediction in an image is "
                  "left out of that structure's statistics. " + "; ".join(notes) + "."]
    return "\n".join(lines)
