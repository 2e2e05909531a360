"""Adaptation curve: a model fine-tuned on N annotated images of a style family it has not seen.

For each N: the first N images of a phantom training set of that family (dated before the split) are copied
into their own phantom directory, `ercp-node retrain --init MODEL --augment robust --time-budget MINUTES`
fine-tunes on them, and the result is scored on the family's frozen test set (dated after the split) by
the same evaluation as `retrain`. N = 0 is the starting model itself. Writes bench/results/adaptation.json.

    python bench/bench_adaptation.py --init ercp_node/model/weights/default.keras --family lowdose \
        --train data/train-lowdose --test data/test-lowdose --n 10 25 50 --minutes 8
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ercp_node.model.data import read_data  # noqa: E402
from ercp_node.model.inference import Segmenter  # noqa: E402
from ercp_node.model.retrain import evaluate_samples  # noqa: E402


def subset(src: Path, dst: Path, n: int) -> None:
    """A phantom directory holding the first n images of src (manifest rows and their files)."""
    if dst.exists():
        shutil.rmtree(dst)
    with open(src / "manifest.csv") as fh:
        reader = csv.DictReader(fh)
        rows, fields = list(reader)[:n], reader.fieldnames
    for row in rows:
        for key in ("dicom", "image", "mask", "labelme", "truth"):
            (dst / row[key]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / row[key], dst / row[key])
    with open(dst / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def score(model: Path, test: Path) -> dict:
    samples, _ = read_data([test])
    report, _ = evaluate_samples(Segmenter.load(model), samples)
    s = report["structures"]
    return {"scope_iou": s["duodenoscope"]["iou_mean"], "cbd_iou": s["cbd"]["iou_mean"],
            "stone_iou": s["stone"]["iou_mean"], "n_test": len(samples)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", required=True)
    ap.add_argument("--family", required=True)
    ap.add_argument("--train", required=True, type=Path)
    ap.add_argument("--test", required=True, type=Path)
    ap.add_argument("--n", type=int, nargs="+", default=[10, 25, 50])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--work", type=Path, default=ROOT / "data/adaptation")
    ap.add_argument("--out", default=str(ROOT / "bench/results/adaptation.json"))
    args = ap.parse_args(argv)
    rows = [{"n": 0, "train_seconds": 0.0, **score(Path(args.init), args.test)}]
    print(json.dumps(rows[-1]), flush=True)
    for n in args.n:
        data, run = args.work / f"{args.family}-{n}", args.work / f"run-{args.family}-{n}"
        subset(args.train, data, n)
        shutil.rmtree(run, ignore_errors=True)
        cmd = [sys.executable, "-m", "ercp_node.cli", "retrain", "--data", str(data), str(args.test),
               "--split-date", "2024-06-09", "--init", str(args.init), "--augment", "robust", "--lr", str(args.lr),
               "--epochs", "500", "--batch-size", "8", "--time-budget", str(args.minutes), "--mixed-precision", "auto",
               "--out", str(run), "--data-dir", str(args.work / "registry")]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=open(args.work / f"{args.family}-{n}.log", "w"))
        elapsed = time.perf_counter() - t
        card = json.loads((run / "model.json").read_text())
        rows.append({"n": n, "train_seconds": card["training_seconds_this_run"], "wall_seconds": round(elapsed, 1),
                     "epochs": card["epochs"], **score(run / "model.keras", args.test)})
        print(json.dumps(rows[-1]), flush=True)
    out = {"bench": "adaptation", "family": args.family, "init": args.init, "minutes": args.minutes, "lr": args.lr,
           "machine": f"{platform.machine()}, 2-core CPU, no GPU", "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
