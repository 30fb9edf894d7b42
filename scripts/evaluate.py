"""Retrieval quality of a catalog index: leave-one-out, or held-out (``--split``).

    python scripts/evaluate.py --catalog products.csv --label-column category [--index DIR]
    python scripts/evaluate.py --catalog products.csv --split 0.2 --label-column article_type+base_colour

With ``--split F`` a seeded fraction F of each category's products are held out as queries and everything
fitted (whitening, calibration, category vote) is fitted on the rest (evaluation/held_out.py); relevance
is ``--label-column`` (columns joined with ``+`` must all agree), precision also normalised by the best
possible. ``--split-per-label 40 --split-labels 30`` samples a smaller catalog (e.g. 960 + 240).

Builds the index with the project's own pipeline (or reuses ``--index`` when it already holds a
published version), keeps labels with at least ``--min-per-label`` products, lets every product
query all the others, and writes ``evaluation.json`` and ``evaluation.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from catalog.fetch import FetchError, ImageSource
from evaluation.held_out import evaluate_held_out, held_out_split, joined_labels
from evaluation.metrics import evaluate, labelled_rows
from gateway.config import Config
from indexstore.store import IndexNotFound, open_store, read_current
from modelio.imaging import DEFAULT_MAX_PIXELS, ImageError
from ranking import MatchSettings
from ranking.appearance import HIST_SIZE, AppearanceSettings, colour_column, colour_histogram
from ranking.calibration import UNCALIBRATED, Calibration, fit_calibration
from ranking.category_first import Grouping
from ranking.neighbours import fit_threshold
from safeio.paths import cache_home


def load_or_build(catalog: Path, index_dir: Path, embedder_kind: str, torchserve_url: str, cache_dir: Path):
    store = open_store(index_dir)
    try:
        return read_current(store)
    except IndexNotFound:
        pass
    from catalog.build import build_index

    if embedder_kind == "local":
        from handlers.embedder import Embedder

        embedder = Embedder.create("auto")
    else:
        from modelserver.client import TorchServeClient

        embedder = TorchServeClient(torchserve_url)
    print(build_index(catalog, index_dir, embedder, cache_dir).summary(), file=sys.stderr)
    return read_current(store)


def markdown(report: dict) -> str:
    m = report["metrics"]
    lines: list[str] = [
        f"# Retrieval quality: {report['catalog']}",
        "",
        f"Backbone `{report['backbone']}`, {m['queries']} queries over {m['labels']} labels "
        f"(`{report['label_column']}`, ≥ {report['min_per_label']} products each), leave-one-out, "
        f"{'whitened' if report['whitening'] else 'plain'} vectors.",
        "",
        "| ranking | precision@1 | precision@5 | precision@10 | mAP@10 |",
        "| --- | --- | --- | --- | --- |",
    ]
    rows = [("category-first (the gateway's default)", m), ("similarity alone", report["visual_only_metrics"])]
    for name, r in rows if report["category_first"] else rows[1:]:
        lines.append(f"| {name} | {r['precision@1']:.4f} | {r['precision@5']:.4f} | {r['precision@10']:.4f} "
                     f"| {r['mAP@10']:.4f} |")
    lines += [
        "",
        "| scores (cosine) | pairs | p5 | p25 | p50 | p75 | p95 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in report["scores"].items():
        lines.append(f"| {name} | {s['pairs']} | {s['p5']} | {s['p25']} | {s['p50']} | {s['p75']} | {s['p95']} |")
    t = report["threshold"]
    lines += ["", f"Best separating cosine: {t['cosine']} (keeps {t['same_label_kept']:.1%} of same-label pairs, "
              f"drops {t['different_label_dropped']:.1%} of different-label pairs).", ""]
    cal = report.get("calibration") or {}
    if "threshold_cosine" in cal and not report.get("whitening_ignored"):
        lines += [f"Calibration stored in the index: 70% = cosine {cal['threshold_cosine']} (keeps "
                  f"{cal['matches_kept']:.1%} of same-category nearest matches, drops "
                  f"{cal['different_label_dropped']:.1%} of unrelated pairs); 40% = cosine "
                  f"{cal['unrelated_median_cosine']:.3f}, the median unrelated pair.", ""]
    lines += ["| label | products | precision@1 | precision@10 |", "| --- | --- | --- | --- |"]
    for name, s in sorted(report["per_label"].items(), key=lambda kv: -kv[1]["precision@10"]):
        lines.append(f"| {name} | {s['count']} | {s['precision@1']:.3f} | {s['precision@10']:.3f} |")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--label-column", default="category")
    parser.add_argument("--index", type=Path, help="index folder to reuse or build (default: <out>/index)")
    parser.add_argument("--min-per-label", type=int, default=20)
    parser.add_argument("--embedder", choices=("local", "torchserve"), default="local")
    parser.add_argument("--torchserve-url", default="http://127.0.0.1:8080")
    parser.add_argument("--out", type=Path, default=Path("build/evaluation"))
    parser.add_argument("--cache-dir", type=Path, default=cache_home(Config.from_env().xdg_cache_home) / "images",
                        help="image download cache")
    parser.add_argument("--no-whitening", action="store_true",
                        help="evaluate the plain pooled features, ignoring the index's whitening")
    parser.add_argument("--no-category-first", action="store_true",
                        help="rank by similarity alone (the gateway's category_first=false)")
    parser.add_argument("--split", type=float, default=0.0, help="hold out this fraction of each category")
    parser.add_argument("--seed", type=int, default=0, help="the held-out split's seed")
    parser.add_argument("--split-per-label", type=int, default=0, help="sample this many products per category")
    parser.add_argument("--split-labels", type=int, default=0, help="sample this many categories")
    parser.add_argument("--no-appearance", action="store_true",
                        help="held-out: order inside the category by the CNN alone (no colour re-ranking)")
    parser.add_argument("--appearance-weight", type=float, help="held-out: try this weight (tuning)")
    parser.add_argument("--ridge", type=float, help="held-out: try this ridge regularisation (tuning)")
    parser.add_argument("--protocol", choices=("catalog", "shopper-photo"), default="catalog",
                        help="shopper-photo: scenes of catalog products, searched whole and cropped (exact product)")
    parser.add_argument("--archive", type=Path, default=Path("model_store/embedding.mar"),
                        help="shopper-photo: the model archive whose model embeds the scenes in-process")
    parser.add_argument("--scenes", type=int, default=200, help="shopper-photo: scenes per run")
    parser.add_argument("--part", choices=("tune", "report"), default="report",
                        help="shopper-photo: which half of the products the scenes show")
    parser.add_argument("--colour-power", type=float, help="try this colour exponent in the match (tuning)")
    parser.add_argument("--save-scenes", type=int, default=0, help="shopper-photo: write this many scenes as JPEGs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.protocol == "shopper-photo":
        return shopper_photo_main(args)
    if args.split:
        return held_out_main(args)
    index = load_or_build(args.catalog, args.index or args.out / "index", args.embedder, args.torchserve_url,
                          args.cache_dir)
    keep = {r["id"] for r in labelled_rows(args.catalog, args.label_column, args.min_per_label)}
    rows = [i for i, p in enumerate(index.products) if str(p["id"]) in keep]
    if len(rows) < 2:
        print("error: fewer than 2 labelled products to evaluate", file=sys.stderr)
        return 2
    labels = np.array([index.products[i][args.label_column] for i in rows])
    stored = index.whitening()
    whitening = None if args.no_whitening else stored  # the space the gateway searches
    vectors = (whitening.apply(index.embeddings) if whitening else index.embeddings)[rows]
    # The stored calibration belongs to the stored space; the plain vectors of a whitened index get the
    # calibration a build without whitening would have stored.
    calibration = (fit_calibration(vectors, list(labels)) if stored and not whitening
                   else index.manifest.get("calibration"))
    scale = Calibration((calibration or {}).get("points") or UNCALIBRATED)
    grouping = Grouping.from_labels(list(labels), scale.percent)
    result = evaluate(vectors, labels, grouping=None if args.no_category_first else grouping, calibration=scale)
    visual = evaluate(vectors, labels) if not args.no_category_first else result
    report = {"catalog": str(args.catalog), "backbone": index.backbone_id, "label_column": args.label_column,
              "index_version": index.version, "whitening": index.manifest.get("whitening") if whitening else None,
              "whitening_ignored": args.no_whitening,
              "min_per_label": args.min_per_label, "category_first": not args.no_category_first,
              **result.as_dict(), "visual_only_metrics": visual.metrics,
              "threshold": fit_threshold(result.same_hist, result.diff_hist),
              "calibration": index.manifest.get("calibration")}
    (args.out / "evaluation.json").write_text(json.dumps(report, indent=2))
    (args.out / "evaluation.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def held_out_main(args: argparse.Namespace) -> int:
    """``--split``: queries are held-out products; writes ``held_out.json`` and ``held_out.md``."""
    index = load_or_build(args.catalog, args.index or args.out / "index", args.embedder, args.torchserve_url,
                          args.cache_dir)
    products = list(index.products)
    categories = np.array([str(p.get("category") or "") for p in products])
    split = held_out_split(categories, args.split, args.seed, args.split_per_label, args.split_labels,
                           args.min_per_label)
    if not len(split.queries):
        print("error: no category has enough products to hold any out", file=sys.stderr)
        return 2
    labels = joined_labels(products, args.label_column.split("+"))
    keys = np.array([str(p.get("image_sha256") or "") for p in products])
    settings = None if args.no_whitening else index.manifest.get("whitening")
    hists = colours = None
    if not args.no_appearance:
        hists = histograms(products, args.catalog, args.cache_dir)
        column = colour_column(products)
        colours = np.array([str(p.get(column) or "").strip() if column else "" for p in products])
    tuned = AppearanceSettings(**{k: v for k, v in (("weight", args.appearance_weight), ("ridge", args.ridge),
                                                    ("unsupervised_weight", args.appearance_weight)) if v is not None})
    report = {"catalog": str(args.catalog), "backbone": index.backbone_id, "label_column": args.label_column,
              "split": args.split, "seed": args.seed, "per_label": args.split_per_label,
              "labels": args.split_labels, "whitening": settings,
              **evaluate_held_out(np.asarray(index.embeddings), categories, labels, keys, split, settings,
                                  hists=hists, colours=colours, settings=tuned, match=match_settings(args))}
    (args.out / "held_out.json").write_text(json.dumps(report, indent=2))
    (args.out / "held_out.md").write_text(held_out_markdown(report))
    print(held_out_markdown(report))
    return 0


def shopper_photo_main(args: argparse.Namespace) -> int:
    """``--protocol shopper-photo``: writes ``shopper_photo.json`` and ``shopper_photo.md``."""
    from evaluation.shopper_photo import EmbedderClient, ProtocolSettings, evaluate_scenes, load_photo, make_scenes
    from gateway.service import SearchService
    from handlers.embedder import Embedder

    index_dir = args.index or args.out / "index"
    load_or_build(args.catalog, index_dir, args.embedder, args.torchserve_url, args.cache_dir)
    config = Config.from_env({}, index_uri=str(index_dir), index_cache_dir=str(args.out / "index-cache"))
    service = SearchService(config, EmbedderClient(Embedder.from_archive(args.archive)))
    service.indexes.load()
    index = service.require_index()
    index.view = replace(index.view, settings=match_settings(args))
    source = ImageSource(args.catalog.parent, args.cache_dir)

    def photo(row: int):
        try:
            return load_photo(source.fetch(str(index.products[row]["image_url"])))
        except FetchError:
            return None

    settings = ProtocolSettings(seed=args.seed, scenes=args.scenes, part=args.part)
    scenes = make_scenes(photo, len(index), settings)
    for i, scene in enumerate(scenes[: args.save_scenes]):
        (args.out / f"scene-{i:03d}.jpg").write_bytes(scene.jpeg)
    report = {"catalog": str(args.catalog), "backbone": index.backbone_id, "index_version": index.version,
              "seed": args.seed, "part": args.part, **evaluate_scenes(service, scenes)}
    (args.out / "shopper_photo.json").write_text(json.dumps(report, indent=2))
    (args.out / "shopper_photo.md").write_text(shopper_photo_markdown(report))
    print(shopper_photo_markdown(report))
    return 0


def match_settings(args: argparse.Namespace) -> MatchSettings:
    """The shipped ``MatchSettings``, or the colour exponent ``--colour-power`` tries instead."""
    return MatchSettings() if args.colour_power is None else MatchSettings(colour_power=args.colour_power)


def shopper_photo_markdown(report: dict) -> str:
    lines = [f"# Shopper photos: {report['catalog']}", "",
             f"Backbone `{report['backbone']}`; {report['scenes']} scenes of the `{report['part']}` half "
             f"(seed {report['seed']}); the index holds the whole catalog.", "",
             "| query | ranking | exact product first (recall@1) | in the top 10 | box IoU ≥ 0.5 |",
             "| --- | --- | --- | --- | --- |"]
    for key, entry in report.items():
        if isinstance(entry, dict) and "recall@1" in entry:
            query, ranking = key.split("/")
            iou = f"{entry['iou_at_least_0.5']:.3f}" if "iou_at_least_0.5" in entry else ""
            lines.append(f"| {query} | {ranking} | {entry['recall@1']:.3f} | {entry['recall@10']:.3f} | {iou} |")
    return "\n".join(lines) + "\n"


def histograms(products: list[dict], catalog: Path, cache_dir: Path) -> np.ndarray:
    """Each product's colour histogram, from its image as the build reads it (zeros where it cannot)."""
    source = ImageSource(catalog.parent, cache_dir)
    out = np.zeros((len(products), HIST_SIZE), np.float32)
    for i, product in enumerate(products):
        try:
            out[i] = colour_histogram(source.fetch(str(product["image_url"])), DEFAULT_MAX_PIXELS)
        except (FetchError, ImageError):
            pass
    return out


def held_out_markdown(report: dict) -> str:
    lines = [f"# Held-out retrieval quality: {report['catalog']}", "",
             f"Backbone `{report['backbone']}`; gallery {report['gallery']}, held-out queries {report['queries']} "
             f"(split {report['split']}, seed {report['seed']}); {report['twin_pairs_excluded']} twin pairs "
             f"excluded; fitted on the gallery only.", "",
             f"| ranking | category p@1 | category p@10 | `{report['label_column']}` p@10 | normalised p@10 |",
             "| --- | --- | --- | --- | --- |"]
    for name in ("category_first", "similarity_alone"):
        c, f = report[name]["category"], report[name]["label"]
        lines.append(f"| {name.replace('_', ' ')} | {c['precision@1']:.4f} | {c['precision@10']:.4f} | "
                     f"{f['precision@10']:.4f} | {f['normalised_precision@10']:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
