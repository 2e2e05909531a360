"""Weight averaging of fine-tuned models (a "model soup"): one network, the cost of one at inference.

Wortsman et al. 2022 ("Model soups: averaging weights of multiple fine-tuned models improves accuracy without
increasing inference time", ICML) and WiSE-FT (Wortsman et al. 2022, CVPR: "Robust fine-tuning of zero-shot
models") found that averaging the weights of models fine-tuned from the same start raises accuracy and, more,
accuracy under distribution shift, where each fine-tune alone does not. Every CPU candidate of this project since
the long run was fine-tuned from the shipped model and refused or level by the gate (docs/model-card.md); their
average is one more candidate that costs no training. The ingredients must share the architecture and come from
one start (averaging unrelated networks does not work).

Batch norm: the moving mean and variance are averaged like every other weight, or (`--bn-data`) estimated afresh
for the averaged network on training images (layer by layer, bench_normadapt.adapt_batch_norm), since the mean of
two networks' statistics need not be their average's.

    # the uniform soup of given models
    python bench/soup.py make --models ercp_node/model/weights/default.keras data/runs/a/best.keras \
        --out data/runs/soup/best.keras
    # greedy soup (the paper's recipe): ingredients by their validation score, each kept only where the average
    # with it scores at least as well on the validation images; writes the soup and a JSON of every step
    python bench/soup.py greedy --models ... --val data/val-cls-seen data/val-rnd-seen \
        --out data/runs/soup/best.keras --report bench/results/soup.json

Selection is on validation images only; the gate (bench/gate.py) and the test sets judge the result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SHIPPED_CARD = ROOT / "ercp_node" / "model" / "weights" / "default.json"


def average_weights(weight_lists: list[list[np.ndarray]], coefficients: list[float] | None = None) -> list[np.ndarray]:
    """[model's get_weights()] → their weighted mean, array by array (float64 sums, each array's own dtype back).
    Refuses models whose arrays differ in number or shape: not one architecture."""
    if not weight_lists:
        raise ValueError("no models to average")
    n = len(weight_lists)
    c = np.full(n, 1.0 / n) if coefficients is None else np.asarray(coefficients, np.float64)
    if c.shape != (n,) or np.any(c < 0) or not np.isclose(c.sum(), 1.0):
        raise ValueError(f"need {n} non-negative coefficients summing to 1, got {list(c)}")
    first = weight_lists[0]
    for k, w in enumerate(weight_lists[1:], 1):
        if len(w) != len(first) or any(a.shape != b.shape for a, b in zip(w, first)):
            raise ValueError(f"model {k} does not have the first model's weights (count or shapes differ): "
                             "a soup needs one architecture")
    out = []
    for arrays in zip(*weight_lists):
        acc = sum(ci * np.asarray(a, np.float64) for ci, a in zip(c, arrays))
        out.append(acc.astype(arrays[0].dtype))
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def bn_inputs(data_dirs: list[str], n: int, size: int, seed: int = 0) -> np.ndarray:
    """n training images drawn evenly over the directories (seeded), preprocessed as the model takes them."""
    from bench_normadapt import grid_inputs
    from ercp_node.model.data import read_data

    rng = np.random.default_rng(seed)
    per = [read_data([d])[0] for d in data_dirs]
    take = []
    for k, samples in enumerate(per):
        m = n // len(per) + (1 if k < n % len(per) else 0)
        idx = rng.choice(len(samples), size=min(m, len(samples)), replace=False)
        take += [samples[i] for i in sorted(idx)]
    return grid_inputs(take, size)


def build(models: list, coefficients: list[float] | None = None, bn: np.ndarray | None = None):
    """Average `models` (Keras models of one architecture) into a copy of the first; with `bn`, the batch-norm
    statistics are then estimated on those inputs. → (soup model, batch-norm report or None)."""
    import keras

    from bench_normadapt import adapt_batch_norm

    soup = keras.models.clone_model(models[0])
    soup.set_weights(average_weights([m.get_weights() for m in models], coefficients))
    report = adapt_batch_norm(soup, bn) if bn is not None else None
    return soup, report


def save(soup, out: Path, paths: list[Path], coefficients: list[float] | None, bn_note: dict | None,
         extra: dict | None = None) -> dict:
    from ercp_node.model.retrain import save_model
    from ercp_node.model.unet import UNetConfig, build_unet

    own = Path(paths[0]).with_suffix(".json")  # the first ingredient's card, else (a run's best.keras) the shipped one
    card = json.loads((own if own.is_file() else SHIPPED_CARD).read_text())
    n = len(paths)
    card.update({
        "version": f"soup-of-{n}-" + time.strftime("%Y.%m.%d", time.gmtime()),
        "soup": {"ingredients": [{"path": str(p), "sha256": sha256(p)} for p in paths],
                 "coefficients": list(coefficients) if coefficients is not None else [1.0 / n] * n,
                 "batch_norm": bn_note or "the ingredients' moving statistics averaged", **(extra or {})},
    })
    for key in [k for k in card if k.startswith("stone_min_")]:
        card.pop(key)  # the stone decision and its fit are per network (bench/stone_confidence.py --fit)
    cfg = card.get("config")
    if cfg is not None and [w.shape for w in build_unet(UNetConfig(**cfg)).weights] != [w.shape for w in soup.weights]:
        card.pop("config")  # the shipped card, borrowed, describes another network than these ingredients
    save_model(soup, out, card)
    return card


def validation_score(model, samples) -> dict:
    """The network alone (no TTA, no clean-up) on samples: Table 1's mean IoU per structure and their mean."""
    from bench_robustness import evaluate
    from ercp_node.model.inference import Segmenter

    row = evaluate(Segmenter(model, {}, None), samples)["none"]
    s = {k: row[k] for k in ("scope_iou", "cbd_iou", "stone_iou")}
    s["mean"] = round(float(np.mean(list(s.values()))), 4)
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("make", "greedy"):
        p = sub.add_parser(name)
        p.add_argument("--models", nargs="+", required=True, type=Path, help="ingredients (.keras, one start)")
        p.add_argument("--out", required=True, type=Path, help="the soup (.keras; its card beside it)")
        p.add_argument("--bn-data", nargs="*", default=[], help="training directories: batch-norm statistics "
                       "estimated on them for the soup (default: the ingredients' averaged)")
        p.add_argument("--bn-n", type=int, default=400, help="images for --bn-data (evenly over the directories)")
    sub.choices["make"].add_argument("--coefficients", nargs="*", type=float, help="default: uniform")
    g = sub.choices["greedy"]
    g.add_argument("--val", nargs="+", required=True, help="validation directories (the selection's only data)")
    g.add_argument("--report", type=Path, required=True, help="JSON: every ingredient's and every step's score")
    args = ap.parse_args(argv)

    from ercp_node.model.data import read_data

    if args.cmd == "greedy" and args.report.resolve() == args.out.with_suffix(".json").resolve():
        ap.error(f"--report {args.report} is where the soup's card goes: name another file")
    for p in args.models:
        if not p.is_file():
            ap.error(f"model {p} not found")
    from ercp_node.model.inference import Segmenter

    t0 = time.time()
    models = [Segmenter.load(p, cascade=False).model for p in args.models]
    size = int(models[0].input_shape[1])
    bn = bn_inputs(args.bn_data, args.bn_n, size) if args.bn_data else None
    bn_note = {"data": args.bn_data, "images": int(len(bn))} if bn is not None else None

    if args.cmd == "make":
        soup, _ = build(models, args.coefficients, bn)
        card = save(soup, args.out, args.models, args.coefficients, bn_note)
        print(json.dumps(card["soup"], indent=1))
        return 0

    def soup_of(idx: list[int]):
        # a lone ingredient is itself, unless batch norm is estimated afresh: every score compares like with like
        return models[idx[0]] if len(idx) == 1 and bn is None else build([models[j] for j in idx], None, bn)[0]

    samples, _ = read_data(args.val)
    scores = []
    for i, p in enumerate(args.models):
        s = validation_score(soup_of([i]), samples)
        scores.append(s)
        print(f"{p}: {s}", flush=True)
    order = sorted(range(len(models)), key=lambda i: -scores[i]["mean"])
    kept, best, soup, steps = [order[0]], scores[order[0]], None, []
    for i in order[1:]:
        trial = soup_of(kept + [i])
        s = validation_score(trial, samples)
        keep = s["mean"] >= best["mean"]
        steps.append({"add": str(args.models[i]), "score": s, "kept": keep})
        print(f"+ {args.models[i]}: {s} -> {'kept' if keep else 'not kept'}", flush=True)
        if keep:
            kept, best, soup = kept + [i], s, trial
    soup = soup if soup is not None else soup_of(kept)  # the last kept trial is the soup: not built twice
    paths = [args.models[j] for j in kept]
    save(soup, args.out, paths, None, bn_note, {"selected_on": args.val, "validation": best})
    doc = {"what": "greedy model soup (bench/soup.py); network alone, no TTA, no clean-up, on the validation sets",
           "validation_sets": args.val, "validation_images": len(samples), "batch_norm": bn_note or "averaged",
           "ingredients": [{"path": str(p), "sha256": sha256(p), "validation": s}
                           for p, s in zip(args.models, scores)],
           "steps": steps, "soup": [str(p) for p in paths], "soup_validation": best, "out": str(args.out),
           "seconds": round(time.time() - t0, 1), "machine": f"{platform.machine()}, {platform.processor() or ''}"}
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
