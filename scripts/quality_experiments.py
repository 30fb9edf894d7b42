"""Measure candidate improvements on a labelled catalog (the numbers in docs/QUALITY.md).

    python scripts/quality_experiments.py --catalog ../shared/datasets/myntra-fashion/products.csv \
        --min-per-label 20 --out build/quality

For each input variant it runs the backbone once (and once more on mirrored images), pools the
feature map both by average (the shipped default) and by GeM, then evaluates every combination,
with and without a catalog-fitted PCA-whitening. Results go to ``<out>/experiments.json``.

    python scripts/quality_experiments.py --catalog ... --postprocess-index build/evaluation/index

tries re-ranking ideas on an index's stored vectors instead (``<out>/postprocessing.json``), and

    python scripts/quality_experiments.py --catalog ... --category-first-index build/evaluation/index

sweeps the category-first vote (``k`` × temperature) on plain and whitened vectors: the queries are split
in two halves, the setting is chosen on half A and reported on half B (``<out>/category_first.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision import transforms

from catalog.fetch import ImageSource
from evaluation.metrics import evaluate, labelled_rows
from evaluation.ranked import gallery_view, ranked_rows
from handlers.backbones import SPECS, build_model, efficientnet_lite0_weights
from indexstore.store import open_store, read_current
from modelio.imaging import decode_image
from ranking.calibration import Calibration, fit_calibration
from ranking.category_first import CategoryVote, Grouping
from ranking.neighbours import neighbours
from ranking.whitening import fit_whitening

VARIANTS = {
    # name: (resize, crop). The shipped default resizes the short side to 256 and centre-crops 224.
    "crop224": (256, 224),
    "full224": (224, 224),
    "full288": (288, 288),
}


#: PCA-whitening settings tried on every variant: (components kept, whitening power).
WHITENING_GRID = [(128, 1.0), (256, 1.0), (512, 1.0), (256, 0.5), (512, 0.5)]


def pooled_features(model, images, variant: str, flip: bool, batch: int = 64) -> dict[str, np.ndarray]:
    resize, crop = VARIANTS[variant]
    pre = SPECS["efficientnet_lite0"].preprocess
    steps = [transforms.Resize(resize, interpolation=transforms.InterpolationMode(pre.interpolation)),
             transforms.CenterCrop(crop)]
    if flip:
        steps.append(transforms.RandomHorizontalFlip(p=1.0))
    tf = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)])
    avg, gem = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            fmap = model.forward_features(torch.stack([tf(im) for im in images[start:start + batch]]))
            avg.append(fmap.mean(dim=(2, 3)))
            gem.append(fmap.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3))
    return {"avg": torch.cat(avg).numpy(), "gem": torch.cat(gem).numpy()}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def neighbour_average(x: np.ndarray, k: int, alpha: float = 3.0) -> np.ndarray:
    """Each row plus its top-k neighbours (itself excluded), weighted by sim^alpha: the query side of
    alpha-query expansion, or the database side of DBA."""
    idx, scores, _, _ = neighbours(x, k)
    return unit(x + (np.clip(scores, 0, None)[..., None] ** alpha * x[idx]).sum(axis=1))


def precision_split(queries: np.ndarray, qlab: np.ndarray, db: np.ndarray, dblab: np.ndarray) -> dict:
    top = np.argsort(-(queries @ db.T), axis=1)[:, :10]
    rel = dblab[top] == qlab[:, None]
    return {f"precision@{k}": round(float(rel[:, :k].mean()), 4) for k in (1, 5, 10)}


def postprocessing(index_dir: Path, label_column: str, min_per_label: int) -> dict:
    """Re-ranking candidates on the stored vectors of an index (no re-embedding): alpha-QE (leave-one-out),
    database-side augmentation (DBA; on a 20% held-out query split, because DBA mixes the database vectors
    and leave-one-out would leak the query into its neighbours), and ImageNet class logits."""
    index = read_current(open_store(index_dir))
    labels = np.array([p.get(label_column, "") for p in index.products])
    names, counts = np.unique(labels, return_counts=True)
    keep = np.isin(labels, names[counts >= min_per_label]) & (labels != "")
    x, lab = index.embeddings[keep], labels[keep]
    white = fit_whitening(x, 512, 0.5).apply(x)
    out: dict[str, dict] = {"plain": evaluate(x, lab).metrics, "whiten-d512-p0.5": evaluate(white, lab).metrics}
    for name, vec in (("plain", x), ("whiten-d512-p0.5", white)):
        for k in (3, 5, 10):
            q = neighbour_average(vec, k)
            sim = q @ vec.T
            np.fill_diagonal(sim, -np.inf)
            top = np.argsort(-sim, axis=1)[:, :10]
            rel = lab[top] == lab[:, None]
            out[f"{name}/aqe-k{k}"] = {f"precision@{n}": round(float(rel[:, :n].mean()), 4) for n in (1, 5, 10)}
        held_out = np.random.default_rng(0).random(len(vec)) < 0.2
        q, db = vec[held_out], vec[~held_out]
        out[f"{name}/split"] = precision_split(q, lab[held_out], db, lab[~held_out])
        for k in (3, 5, 10):
            augmented = neighbour_average(db, k)
            out[f"{name}/split/dba-k{k}"] = precision_split(q, lab[held_out], augmented, lab[~held_out])
    state = torch.load(efficientnet_lite0_weights(), weights_only=True)
    weight, bias = state["_fc.weight"].numpy(), state["_fc.bias"].numpy()
    logits = (x * 15.0) @ weight.T + bias  # 15 ≈ the mean norm of the pooled features before normalising
    out["imagenet-logits"] = evaluate(unit(logits), lab).metrics
    return out


VOTE_GRID = [(k, t) for k in (1, 5, 10, 20) for t in (1.0, 2.0, 4.0, 8.0)]


def category_first_sweep(index_dir: Path, label_column: str, min_per_label: int) -> dict:
    """Leave-one-out p@1/p@10 of category-first ranking for each vote setting, on query halves A and B."""
    index = read_current(open_store(index_dir))
    labels = np.array([str(p.get(label_column, "")) for p in index.products])
    names, counts = np.unique(labels, return_counts=True)
    keep = np.isin(labels, names[counts >= min_per_label]) & (labels != "")
    x, lab = index.embeddings[keep], labels[keep]
    half_a = np.random.default_rng(0).random(len(lab)) < 0.5
    out: dict[str, dict] = {}
    spaces = {"plain": x}
    if index.whitening() is not None:
        spaces["whitened"] = index.whitening().apply(x)
    for space, vec in spaces.items():
        scale = Calibration(fit_calibration(vec, list(lab))["points"])
        settings = [("similarity alone", None)] + [(f"k{k}-t{t:g}", CategoryVote(k, t)) for k, t in VOTE_GRID]
        alone = np.eye(len(vec), dtype=bool)  # each row left out of its own ranking
        for name, vote in settings:
            grouping = Grouping.from_labels(list(lab), scale.percent, vote or CategoryVote())
            idx = ranked_rows(gallery_view(vec, grouping, scale), vec, 10, vote is not None, excluded=alone)
            rel = lab[idx] == lab[:, None]
            out[f"{space}/{name}"] = {f"{part}/precision@{n}": round(float(rel[rows, :n].mean()), 4)
                                      for part, rows in (("A", half_a), ("B", ~half_a)) for n in (1, 10)}
            print(f"  {space}/{name:16s} {out[f'{space}/{name}']}", flush=True)
        tried = [key for key in out if key.startswith(f"{space}/k")]
        best = max(tried, key=lambda key: (out[key]["A/precision@10"], out[key]["A/precision@1"]))
        out[f"{space}/chosen on A"] = {"setting": best, **out[best]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--label-column", default="category")
    parser.add_argument("--min-per-label", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("build/quality"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--postprocess-index", type=Path,
                        help="instead: try re-ranking ideas on the stored vectors of this index")
    parser.add_argument("--category-first-index", type=Path,
                        help="instead: sweep the category-first vote settings on this index")
    args = parser.parse_args(argv)
    if args.category_first_index:
        results = category_first_sweep(args.category_first_index, args.label_column, args.min_per_label)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "category_first.json").write_text(json.dumps(results, indent=2))
        return 0
    if args.postprocess_index:
        results = postprocessing(args.postprocess_index, args.label_column, args.min_per_label)
        print(json.dumps(results, indent=2))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "postprocessing.json").write_text(json.dumps(results, indent=2))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows = labelled_rows(args.catalog, args.label_column, args.min_per_label)
    labels = np.array([r[args.label_column] for r in rows])
    source = ImageSource(args.catalog.resolve().parent, args.out / "cache")
    images = [decode_image(source.fetch(r["image_url"])) for r in rows]
    model = build_model("efficientnet_lite0", efficientnet_lite0_weights())
    results: dict[str, dict] = {}
    for variant in args.variants.split(","):
        started = time.time()
        plain = pooled_features(model, images, variant, flip=False)
        mirrored = pooled_features(model, images, variant, flip=True)
        print(f"{variant}: features in {time.time() - started:.0f}s", flush=True)
        for pool in ("avg", "gem"):
            for flip in (False, True):
                vec = unit(plain[pool] + mirrored[pool]) if flip else unit(plain[pool])
                name = f"{variant}/{pool}" + ("/flip" if flip else "")
                results[name] = evaluate(vec, labels).metrics
                keys = [name]
                for dims, power in WHITENING_GRID:
                    key = f"{name}/whiten-d{dims}-p{power}"
                    results[key] = evaluate(fit_whitening(vec, dims, power).apply(vec), labels).metrics
                    keys.append(key)
                for key in keys:
                    m = results[key]
                    print(f"  {key:40s} p@1 {m['precision@1']:.4f} p@5 {m['precision@5']:.4f} "
                          f"p@10 {m['precision@10']:.4f} mAP@10 {m['mAP@10']:.4f}", flush=True)
        (args.out / "experiments.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
