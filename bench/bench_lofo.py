"""Leave-one-family-out: train without style family X, score on X and on the families it saw.

For each held-out family X of the phantom's style families (intensifier, flatpanel, lowdose, sharp): synth
makes a training set per family (dated before the split) and a frozen test set per family (after it); one
`ercp-node retrain --init MODEL --augment robust --time-budget MINUTES` fine-tunes on the classic set plus the
three other families; the model is scored (the same evaluation as `retrain`) on X's test set — the held-out
IoU — and on the seen families' test sets, whose mean is that model's in-domain IoU. The ratio held-out /
in-domain per structure is the issue's check (goal ≥ 90 %). Runs are resumable (retrain's checkpoints): run
the same command again to continue a fold that ran out of time. Writes bench/results/lofo.json.

    python bench/bench_lofo.py --init <classic-only model> --classic data/train-cls --minutes 30 \
        [--families lowdose ...] [--train-count 300] [--test-count 60]
    # the 2026-12-06 folds: seen-stone truth, bfloat16 where the CPU has AMX, a cosine over the budget, last weights
    python bench/bench_lofo.py --init data/classic/model.keras --classic data/train-cls-seen --stone-label seen \
        --minutes 18 --lr-floor 0.02 --keep last --mixed-precision auto --work data/lofo-seen \
        --out bench/results/lofo-seen.json

MODEL must not have seen any family: the classic-only unet-default-dl-cfl-phantom-2026.11, e.g.
`mkdir -p data/classic && git show b747efb:ercp_node/model/weights/default.keras > data/classic/model.keras &&
git show b747efb:ercp_node/model/weights/default.json > data/classic/model.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_adaptation import score  # noqa: E402 - the same scoring as the adaptation curve (a sibling script)
from ercp_node.phantom.style import FAMILIES  # noqa: E402
from ercp_node.preprocessing.pipeline import EQUALIZATIONS  # noqa: E402

SPLIT = "2024-06-09"
STRUCTURES = ("scope_iou", "cbd_iou", "stone_iou")


def synth(out: Path, family: str, count: int, seed: int, start: str, end: str, stone_label: str = "all") -> Path:
    """A phantom set of one family (made once; an existing manifest is kept)."""
    if not (out / "manifest.csv").is_file():
        subprocess.run([sys.executable, "-m", "ercp_node.cli", "synth", "--count", str(count), "--seed", str(seed),
                        "--style", family, "--start-date", start, "--end-date", end, "--stone-label", stone_label,
                        "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


def seen_families(held: str) -> list[str]:
    return [f for f in FAMILIES if f != held]


def run_dir(args, key: str) -> Path:
    return args.work / f"run-without-{key}"


def retrain_command(args, train: dict, test: dict, held: str, key: str) -> list[str]:
    """The `ercp-node retrain` call of one fold: args.init fine-tuned on the classic set and every family but
    `held` (their test sets only past --split-date, so retrain's own frozen test set)."""
    seen = seen_families(held)
    cmd = [sys.executable, "-m", "ercp_node.cli", "retrain", "--data", str(args.classic),
           *[str(train[f]) for f in seen], *[str(test[f]) for f in seen], "--split-date", SPLIT,
           "--init", str(args.init), "--augment", args.augment, "--lr", str(args.lr), "--epochs", str(args.epochs),
           "--time-budget", str(args.minutes), "--mixed-precision", args.mixed_precision,
           "--out", str(run_dir(args, key)), "--data-dir", str(args.work / f"registry-{key}")]
    if args.lr_floor is not None:
        cmd += ["--lr-floor", str(args.lr_floor)]
    if args.equalization != "global":
        cmd += ["--equalization", args.equalization]
    return cmd + ["--keep", args.keep]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", required=True, help="starting model that has seen no style family")
    ap.add_argument("--classic", required=True, type=Path, help="classic phantom training set (dated before the split)")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--train-count", type=int, default=300)
    ap.add_argument("--test-count", type=int, default=60)
    ap.add_argument("--minutes", type=float, default=30.0, help="training time budget per fold")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--epochs", type=int, default=200, help="a fixed number of epochs (with a generous --minutes) "
                    "makes recipes comparable whatever else shares the CPU")
    ap.add_argument("--augment", default="robust", help="retrain --augment recipe")
    ap.add_argument("--mixed-precision", choices=("auto", "on", "off"), default="off",
                    help="retrain --mixed-precision (off: the 2026-11-30 folds; auto: bfloat16 where this CPU has AMX)")
    ap.add_argument("--lr-floor", type=float, default=None, help="retrain --lr-floor: cosine over the fold's budget")
    ap.add_argument("--keep", choices=("best", "last"), default="best", help="retrain --keep")
    ap.add_argument("--stone-label", choices=("all", "seen"), default="all",
                    help="synth --stone-label of the family sets (seen: the stones a reader could see; use a classic "
                    "set made the same way, and a --work of its own)")
    ap.add_argument("--tag", default="", help="suffix for run folders and fold keys: an ablation next to the "
                    "default folds")
    ap.add_argument("--equalization", choices=EQUALIZATIONS, default="global",
                    help="retrain --equalization: the input's equalisation step (the paper's global one, or CLAHE)")
    ap.add_argument("--work", type=Path, default=ROOT / "data/lofo")
    ap.add_argument("--out", default=str(ROOT / "bench/results/lofo.json"))
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    train, test = {}, {}
    for i, fam in enumerate(FAMILIES):  # seeds by family index: the same sets whichever folds run
        train[fam] = synth(args.work / f"train-{fam}", fam, args.train_count, 3200 + i, "2013-12-02", "2024-06-08",
                           args.stone_label)
        test[fam] = synth(args.work / f"test-{fam}", fam, args.test_count, 3210 + i, SPLIT, "2024-11-21",
                          args.stone_label)
    for held in args.families:
        seen = seen_families(held)
        key = f"{held}-{args.tag}" if args.tag else held
        run = run_dir(args, key)
        cmd = retrain_command(args, train, test, held, key)
        t = time.perf_counter()
        with open(args.work / f"run-without-{key}.log", "a") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
        card = json.loads((run / "model.json").read_text())
        rows = {f: score(run / "model.keras", test[f]) for f in FAMILIES}
        in_domain = {k: round(sum(rows[f][k] for f in seen) / len(seen), 2) for k in STRUCTURES}
        ratio = {k: round(100 * rows[held][k] / in_domain[k], 1) if in_domain[k] else None for k in STRUCTURES}
        fold = {"held_out_family": held, "augment": args.augment, "seen": seen, "epochs": card["epochs"],
                "epochs_asked": args.epochs, "wall_s_this_call": round(time.perf_counter() - t),
                "stone_label": args.stone_label, "equalization": args.equalization, "retrain": ["ercp-node", *cmd[3:]],
                "held_out": rows[held], "in_domain_mean": in_domain, "held_out_pct_of_in_domain": ratio,
                "per_family": rows, "goal_pct": 90}
        print(key, json.dumps(fold["held_out"]), "in-domain", json.dumps(in_domain), "ratio %",
              json.dumps(ratio), flush=True)
        # read just before writing: another fold may have finished meanwhile (folds run side by side)
        old = json.loads(Path(args.out).read_text()).get("folds", {}) if Path(args.out).is_file() else {}
        folds = {**old, key: fold}
        out = {"bench": "leave-one-family-out", "init": args.init, "minutes_per_fold": args.minutes,
               "train_count_per_family": args.train_count, "test_count_per_family": args.test_count,
               "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, no GPU",
               "folds": folds}
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
