"""How right were a self-training run's own labels? (`retrain --unlabelled`)

The site images a run was given without annotations are, in a bench curve, phantom images whose labels exist:
this scores the labels the run drew for them — its first stage's weights, the image and its mirror averaged, as
retrain draws them — and, beside them, the starting model's and the finished run's, against the truth, on the
model grid (the grid retrain trains on). Reads the run's cached preprocessed images, so it scores exactly what
the run labelled.

    python bench/pseudo_label_quality.py --run data/adapt-pl/run-foreign-25 \
        --unlabelled data/adapt-pl/foreign-25-unlabelled --truth data/train-foreign \
        --start ercp_node/model/weights/default.keras --out bench/results/pseudo-label-quality.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ercp_node.model.data import fingerprint, load_training_pair, read_data, read_unlabelled, Sample  # noqa: E402
from ercp_node.model.metrics import per_image_metrics, table1_report  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="a retrain --unlabelled run directory")
    ap.add_argument("--unlabelled", required=True, type=Path, help="the directory the run got as --unlabelled")
    ap.add_argument("--truth", required=True, type=Path, help="the annotated set those images come from")
    ap.add_argument("--start", required=True, type=Path, help="the model the run started from")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import keras

    from ercp_node.model.train import pseudo_label

    items, _, _ = read_unlabelled([args.unlabelled])
    key = fingerprint([Sample(f"{p}#{f}", "", None, "", p, f) for p, f in items])
    caches = list((args.run / "cache").glob(f"unlabelled-{key}-*.npz"))
    if len(caches) != 1:
        raise SystemExit(f"no cached images of {args.unlabelled} in {args.run / 'cache'} (another run's directory?)")
    with np.load(caches[0]) as z:  # retrain left out images it could not decode: so does this
        images = z["x"]
        unreadable = {str(p) for p, _ in (z["problems"] if "problems" in z.files else [])}
    items = [item for item in items if item[0] not in unreadable]
    samples, _ = read_data([args.truth])
    by_name = {Path(s.image_path).name: s for s in samples}
    missing = [p for p, _ in items if Path(p).name not in by_name]
    if missing:
        raise SystemExit(f"{len(missing)} unlabelled images have no annotation in {args.truth}, e.g. {missing[0]}")
    size = images.shape[1]
    truth = [load_training_pair(by_name[Path(p).name], size)[1] for p, _ in items]
    out = {"bench": "pseudo_label_quality", "run": str(args.run), "images": len(items), "grid": size,
           "labels": "argmax of the softmax of the image and its mirror averaged (retrain's pseudo_label)",
           "machine": f"{platform.machine()}, 2-core CPU, no GPU", "models": {}}
    for name, path in (("start", args.start), ("teacher: the first stage's last weights",
                                               args.run / "checkpoints" / "first" / "last.keras"),
                       ("the run's last weights", args.run / "checkpoints" / "last.keras")):
        labels = pseudo_label(keras.saving.load_model(path, compile=False), images)
        s = table1_report(per_image_metrics(truth, list(labels)))["structures"]
        out["models"][name] = {"path": str(path), **{f"{k}_iou": round(s[k]["iou_mean"], 2)
                                                     for k in ("duodenoscope", "cbd", "stone")}}
        print(name, out["models"][name], flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
