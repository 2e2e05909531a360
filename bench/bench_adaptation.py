"""Adaptation curve: a model fine-tuned on N annotated images of a style family it has not seen.

For each N: the first N images of a phantom training set of that family (dated before the split) are copied
into their own phantom directory, `ercp-node retrain --init MODEL --augment robust --time-budget MINUTES`
(--augment: another recipe) fine-tunes on them, and the result is scored on the family's frozen test set (dated
after the split) by the same evaluation as `retrain`. N = 0 is the starting model itself. With --rehearse the
fine-tuning mixes the data the starting model learnt into every epoch (`retrain --rehearse`). With --in-domain
the starting model is also scored on the families it learnt (the reference of the "≥ 95 % of in-domain IoU"
goal), and so is each fine-tuned model (what the site's model forgets of them). --equalization trains the site's
model on another input than the starting model's (retrain --equalization; its card then names it, and every score
feeds each model its own input). Writes bench/results/adaptation.json.

Scoring is the network's own labels (one look, no clean-up) unless --served: then every model — the starting
one, each fine-tuned one, in-domain and site alike — is scored as the node serves it with its default settings
(flip TTA, the second look at the duct, the anatomy clean-up, the stone decision its card names). --rescore
OLD.json scores the runs a curve already trained (WORK/run-FAMILY-N/model.keras) again, keeping their training
figures, without training anything.

    python bench/bench_adaptation.py --init ercp_node/model/weights/default.keras --family lowdose \
        --train data/train-lowdose --test data/test-lowdose --n 10 25 50 --minutes 8

    python bench/bench_adaptation.py --init data/lofo/run-without-lowdose/model.keras --family lowdose \
        --train data/lofo/train-lowdose --test data/lofo/test-lowdose --n 10 25 50 --minutes 20 \
        --rehearse data/train-cls data/lofo/train-{intensifier,flatpanel,sharp} \
        --in-domain data/lofo/test-{intensifier,flatpanel,sharp} --out bench/results/adaptation-rehearsal.json
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
from ercp_node.preprocessing.pipeline import EQUALIZATIONS  # noqa: E402


def subset(src: Path, dst: Path, n: int) -> None:
    """A directory holding the first n images of src: a phantom directory (manifest rows and their files) or a
    labelme directory (the first n annotation files, by name, with the images they point to)."""
    if dst.exists():
        shutil.rmtree(dst)
    if not (src / "manifest.csv").is_file():
        src = src.resolve()  # the images' paths are resolved: compare like with like
        docs = [(p, d) for p in sorted(src.rglob("*.json")) if "shapes" in (d := json.loads(p.read_text()))][:n]
        for p, doc in docs:
            image = (p.parent / doc["imagePath"]).resolve()
            for f in (p, image):  # keep the layout, so imagePath still resolves
                (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dst / f.relative_to(src))
        return
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


def unlabelled_dir(data: Path) -> Path:
    return data.with_name(data.name + "-unlabelled")


def unlabelled_subset(src: Path, dst: Path, start: int, count: int) -> int:
    """A directory of the DICOM images src holds after its first `start` (the site's annotated ones), `count` of
    them, annotations left behind: the site's archive without labels (retrain --unlabelled). Returns how many."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    if (src / "manifest.csv").is_file():
        with open(src / "manifest.csv") as fh:
            files = [src / row["dicom"] for row in csv.DictReader(fh)]
    else:
        docs = [(p, d) for p in sorted(src.resolve().rglob("*.json")) if "shapes" in (d := json.loads(p.read_text()))]
        files = [(p.parent / d["imagePath"]).resolve() for p, d in docs]
    chosen = [f for f in files[start:start + count] if f.suffix.lower() == ".dcm"]
    for f in chosen:
        shutil.copy2(f, dst / f.name)
    return len(chosen)


SERVED = {"tta": "flip", "zoom": 1.4, "postprocess": "anatomy", "stone_min_peak": "model",
          "stone_min_rose_k": "model"}  # the node's [model] defaults (ercp_node/config/settings.py), float32


def load(model: Path, served: bool) -> Segmenter:
    return Segmenter.load(model, cascade=False, **(SERVED if served else {}))


def score(model: Path, test: Path, served: bool = False) -> dict:
    samples, _ = read_data([test])
    report, _ = evaluate_samples(load(model, served), samples)
    s = report["structures"]
    return {"scope_iou": s["duodenoscope"]["iou_mean"], "cbd_iou": s["cbd"]["iou_mean"],
            "stone_iou": s["stone"]["iou_mean"], "n_test": len(samples)}


def retrain_command(args, data: Path, run: Path) -> list[str]:
    """The `ercp-node retrain` call that fine-tunes args.init on the site subset `data` into `run`."""
    cmd = [sys.executable, "-m", "ercp_node.cli", "retrain", "--data", str(data), str(args.test),
           "--split-date", "2024-06-09", "--init", str(args.init), "--augment", args.augment, "--lr", str(args.lr),
           "--epochs", "500", "--batch-size", "8", "--time-budget", str(args.minutes),
           "--mixed-precision", args.mixed_precision, "--out", str(run), "--data-dir", str(args.work / "registry")]
    if args.rehearse:
        cmd += ["--rehearse", *map(str, args.rehearse), "--rehearse-share", str(args.share)]
        if args.restyle:
            cmd += ["--rehearse-restyle", str(args.restyle)]
    if args.unlabelled:
        cmd += ["--unlabelled", str(unlabelled_dir(data))]
    if args.freeze_encoder:
        cmd.append("--freeze-encoder")
    if args.freeze_norm:
        cmd.append("--freeze-norm")
    if args.lr_floor is not None:
        cmd += ["--lr-floor", str(args.lr_floor)]
    cmd += ["--keep", args.keep, "--seed", str(args.seed), "--val-fraction", str(args.val_fraction)]
    if args.xla:
        cmd.append("--xla")
    if args.equalization is not None:
        cmd += ["--equalization", args.equalization]
    return cmd


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", required=True)
    ap.add_argument("--family", required=True)
    ap.add_argument("--train", required=True, type=Path)
    ap.add_argument("--test", required=True, type=Path)
    ap.add_argument("--n", type=int, nargs="+", default=[10, 25, 50])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--augment", choices=("robust", "paper", "none"), default="robust",
                    help="retrain --augment (robust: any orientation, scale, display curve; paper: flips, ±10°)")
    ap.add_argument("--rehearse", nargs="+", default=[], help="data the starting model learnt (retrain --rehearse)")
    ap.add_argument("--share", type=float, default=0.5, help="retrain --rehearse-share")
    ap.add_argument("--restyle", type=float, default=0.0, help="retrain --rehearse-restyle: the share of rehearsal "
                    "images given a site image's look (Fourier domain adaptation)")
    ap.add_argument("--unlabelled", type=int, default=0, metavar="M",
                    help="retrain --unlabelled: M more --train images after a run's N, their annotations left out")
    ap.add_argument("--freeze-encoder", action="store_true")
    ap.add_argument("--freeze-norm", action="store_true", help="retrain --freeze-norm")
    ap.add_argument("--lr-floor", type=float, default=None, help="retrain --lr-floor: cosine over the budget")
    ap.add_argument("--keep", choices=("best", "last", "average"), default="best", help="retrain --keep")
    ap.add_argument("--seed", type=int, default=0, help="retrain --seed (a repeat of a recipe)")
    ap.add_argument("--val-fraction", type=float, default=0.1,
                    help="retrain --val-fraction (0 with --keep last: every site image trains)")
    ap.add_argument("--xla", action="store_true", help="retrain --xla: more steps in the budget on a CPU")
    ap.add_argument("--mixed-precision", choices=("auto", "on", "off"), default="auto",
                    help="retrain --mixed-precision (auto: bf16 on a GPU or a CPU with AMX-BF16)")
    ap.add_argument("--equalization", choices=EQUALIZATIONS, default=None,
                    help="retrain --equalization: the fine-tuned model's input (default: the --init model's)")
    ap.add_argument("--in-domain", nargs="+", type=Path, default=[], help="test sets of the families it learnt")
    ap.add_argument("--work", type=Path, default=ROOT / "data/adaptation")
    ap.add_argument("--out", default=str(ROOT / "bench/results/adaptation.json"))
    ap.add_argument("--served", action="store_true", help="score every model as the node serves it (flip TTA, "
                    "zoom 1.4, anatomy clean-up, its card's stone decision) rather than the network's own labels")
    ap.add_argument("--rescore", type=Path, default=None, metavar="OLD.json",
                    help="train nothing: score again the runs of OLD.json's rows found in --work, keeping their "
                         "training figures")
    ap.add_argument("--resume", action="store_true", help="keep the rows --out already holds for this --init and "
                                                          "--family; measure only the N it lacks")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    def in_domain(model: Path) -> dict:
        if not args.in_domain:
            return {}
        per = {d.name: score(model, d, args.served) for d in args.in_domain}
        keys = ("scope_iou", "cbd_iou", "stone_iou")
        return {"in_domain_mean": {k: round(sum(v[k] for v in per.values()) / len(per), 2) for k in keys},
                "in_domain_sets": per}

    trained = rescore_rows(args) if args.rescore is not None else []
    old = json.loads(Path(args.out).read_text()) if args.resume and Path(args.out).is_file() else {}
    if old and (old.get("init"), old.get("family")) != (args.init, args.family):
        raise SystemExit(f"--resume: {args.out} holds another curve ({old.get('init')}, {old.get('family')})")
    if old and old.get("served", False) != args.served:
        raise SystemExit(f"--resume: {args.out} was scored {'as served' if old.get('served') else 'raw'}")
    rows = old.get("rows") or [{"n": 0, "train_seconds": 0.0, **score(Path(args.init), args.test, args.served),
                                **in_domain(Path(args.init))}]
    reference = rows[0].get("in_domain_mean")

    def pct(row):
        if reference:
            row["pct_of_in_domain"] = {k: round(100 * row[k] / reference[k], 1) for k in reference}
        return row

    def write() -> None:  # after every point: a long curve killed part-way keeps what it measured
        out = {"bench": "adaptation", "family": args.family, "init": args.init, **recipe(args),
               "served": args.served, "scoring": dict(SERVED, precision="float32") if args.served else
               "the network's labels: one look, no TTA, no clean-up, every stone kept",
               "reference": "in_domain_mean of row n=0" if reference else None,
               "machine": f"{platform.machine()}, 2-core CPU, no GPU", "rows": rows}
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.out}")

    print(json.dumps(pct(rows[-1])), flush=True)
    write()
    if args.rescore is not None:
        return rescore(args, trained, rows, pct, write, in_domain)
    for n in args.n:
        if any(r["n"] == n for r in rows):
            continue
        data, run = args.work / f"{args.family}-{n}", args.work / f"run-{args.family}-{n}"
        subset(args.train, data, n)
        if args.unlabelled:
            unlabelled_subset(args.train, unlabelled_dir(data), n, args.unlabelled)
        shutil.rmtree(run, ignore_errors=True)
        cmd = retrain_command(args, data, run)
        t = time.perf_counter()
        with open(args.work / f"{args.family}-{n}.log", "w") as log:  # retrain's progress and test table
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
        elapsed = time.perf_counter() - t
        card = json.loads((run / "model.json").read_text())
        rows.append({"n": n, "train_seconds": card["training_seconds_this_run"], "wall_seconds": round(elapsed, 1),
                     "epochs": card["epochs"], "bf16": bool(card.get("mixed_precision")),
                     **score(run / "model.keras", args.test, args.served),
                     **in_domain(run / "model.keras"), **last_weights(args, run)})
        print(json.dumps(pct(rows[-1])), flush=True)
        write()
    return 0


TRAINING_FIELDS = ("n", "train_seconds", "wall_seconds", "epochs", "bf16")


def recipe(args) -> dict:
    """How a curve's runs were trained: written into its JSON, and what --rescore checks an old curve against."""
    return {"minutes": args.minutes, "lr": args.lr, "augment": args.augment, "restyle": args.restyle,
            "unlabelled": args.unlabelled, "rehearse": [str(d) for d in args.rehearse],
            "share": args.share if args.rehearse else None, "freeze_encoder": args.freeze_encoder,
            "freeze_norm": args.freeze_norm, "lr_floor": args.lr_floor, "keep": args.keep, "seed": args.seed,
            "val_fraction": args.val_fraction, "xla": args.xla, "mixed_precision": args.mixed_precision,
            "equalization": args.equalization}


def rescore_rows(args) -> list[dict]:
    """The trained rows of args.rescore, checked before anything is scored: the same curve and recipe, and each
    row's run still under args.work."""
    old = json.loads(args.rescore.read_text())
    if (old.get("init"), old.get("family")) != (args.init, args.family):
        raise SystemExit(f"--rescore: {args.rescore} is another curve ({old.get('init')}, {old.get('family')})")
    differ = {k: (old.get(k), v) for k, v in recipe(args).items() if k in old and old[k] != v}
    if differ:
        raise SystemExit(f"--rescore: {args.rescore} was trained with another recipe (it, these arguments): {differ}")
    trained = [r for r in old["rows"] if r["n"] > 0]
    missing = [str(run_model(args, r["n"])) for r in trained if not run_model(args, r["n"]).is_file()]
    if missing:
        raise SystemExit(f"--rescore: no trained model at {', '.join(missing)}")
    return trained


def last_weights(args, run: Path) -> dict:
    """With --keep average: the same run's last weights on the site's test set too, a paired comparison free of
    run-to-run spread (the run's last.keras is its last epoch's weights, in its training precision)."""
    if args.keep != "average":
        return {}
    return {"last_weights": score(run / "checkpoints" / "last.keras", args.test, args.served)}


def run_model(args, n: int) -> Path:
    return args.work / f"run-{args.family}-{n}" / "model.keras"


def rescore(args, trained: list[dict], rows: list[dict], pct, write, in_domain) -> int:
    """Each trained row scored again from its run under args.work, its training figures kept."""
    for r in (r for r in trained if not any(have["n"] == r["n"] for have in rows)):
        model = run_model(args, r["n"])
        row = {**{k: r[k] for k in TRAINING_FIELDS if k in r}, "rescored_from": str(args.rescore),
               **score(model, args.test, args.served), **in_domain(model), **last_weights(args, model.parent)}
        rows.append(row)
        rows.sort(key=lambda x: x["n"])
        print(json.dumps(pct(row)), flush=True)
        write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
