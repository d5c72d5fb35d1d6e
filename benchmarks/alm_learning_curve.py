"""ALM learning curves: held-out PCK@0.05 / PCK@0.1 (of the box's longer side) against the number
of training instances, beside the mean-shape baseline, on COCO people and on synthetic renders.

`coco`: the people of ../shared/data/coco-mini-train (non-crowd, >= 1 labelled keypoint), split by
image with seed 0: 25% of the images are held out. `synth`: `semcorr demo`'s store of the three
built-in categories, split 5:2:3 (seed 0), held out = test split, plus a "manual 40%" point (the
non-test instances of `plan_images(..., 0.4, 0.3, seed=0)`'s manual set). The size-N training set
is the first N instances of a permutation (--seed) of the pool, so the sets are nested; sizes
larger than the pool are skipped, `all` is the whole pool. Test instances: >= 1 visible keypoint.
Writes <out>/alm_learning_curve.png and .json; with --results, appends a section to RESULTS.md.
Runs on CUDA when present (the device is chosen inside `train`), else on the CPU.

Usage: .venv/bin/python benchmarks/alm_learning_curve.py both [--sizes 10 20 40 80 all] [--epochs 40]
       [--crop 192] [--backbone efficientnet-lite0] [--results [benchmarks/RESULTS.md]]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from semcorr import commands, store
from semcorr.alm.train import TrainOptions, device, mean_shape_predictions, pck_of_box, predict, train
from semcorr.annotation.plan import plan_images

SHARED = ROOT.parent / "shared" / "data" / "coco-mini-train"
COLUMNS = ("source", "train instances", "epochs run", "PCK@0.05", "PCK@0.1", "PCK@0.1 no vis",
           "mean-shape @0.05", "mean-shape @0.1", "train s", "crops/s", "wall s")


def coco_source() -> tuple[store.Dataset, list, list, list]:
    """(dataset in memory, pool, test instances, extra points) for the COCO people."""
    path = SHARED / "annotations" / "person_keypoints_train2017.json"
    raw = json.loads(path.read_text())
    raw["annotations"] = [a for a in raw["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]
    kept = {a["image_id"] for a in raw["annotations"]}
    raw["images"] = [im for im in raw["images"] if im["id"] in kept]
    dataset = store.dataset_from_coco(raw, path, (SHARED / "images").resolve())
    images = np.random.default_rng(0).permutation(sorted(dataset.images))
    test_ids = set(images[:round(0.25 * len(images))].tolist())
    pool = [i for i in dataset.instances if i.image_id not in test_ids]
    test = [i for i in dataset.instances if i.image_id in test_ids and i.visible.any()]
    return dataset, pool, test, []


def synth_source(work: Path) -> tuple[store.Dataset, list, list, list]:
    """(dataset, pool, test instances, [("manual 40%", instances)]) for `semcorr demo`'s store."""
    from semcorr.synth.generate import SynthOptions
    from semcorr.synth.prototypes import builtin_prototype

    root = work / "synth"
    commands.run_synth(root, [builtin_prototype(n) for n in ("chair", "car", "airplane")],
                       SynthOptions(images_per_category=40, width=400, height=300, seed=0))
    commands.run_split(root, (0.5, 0.2, 0.3), seed=0)
    dataset = store.load_dataset(root)
    splits = store.load_splits(root, dataset)
    pool = [i for i in dataset.instances if splits.get(i.image_id) != "test"]
    test = [i for i in dataset.instances if splits.get(i.image_id) == "test" and i.visible.any()]
    plan = plan_images(sorted(dataset.images), splits, 0.4, 0.3, seed=0)
    manual = set(plan.loc[plan["set"] == "manual", "image_id"].tolist())
    return dataset, pool, test, [("manual 40%", [i for i in pool if i.image_id in manual])]


def subsets(pool: list, sizes: list[str], seed: int) -> list[tuple[str, list]]:
    """Nested subsets: the first N of a seeded permutation of the pool; `all` is the pool."""
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    out = []
    for size in sizes:
        if size == "all":
            out.append(("all", order))
        elif int(size) < len(pool) or (int(size) == len(pool) and "all" not in sizes):
            out.append((size, order[:int(size)]))
    return out


def run_row(source: str, label: str, dataset, train_set: list, test: list, options: TrainOptions) -> dict:
    """Train on `train_set`, evaluate on `test`; one row of the table."""
    started = time.perf_counter()
    alm = train(dataset, train_set, options)
    train_s = time.perf_counter() - started
    guess = predict(alm, dataset, test)
    baseline = mean_shape_predictions(train_set, test, dataset)
    rates = [h["crops_per_s"] for h in alm.history]
    return {"source": source, "label": label, "train instances": len(train_set), "epochs run": len(alm.history),
            "PCK@0.05": pck_of_box(guess, test, 0.05), "PCK@0.1": pck_of_box(guess, test, 0.1),
            "PCK@0.1 no vis": pck_of_box(guess, test, 0.1, use_visibility=False),
            "mean-shape @0.05": pck_of_box(baseline, test, 0.05), "mean-shape @0.1": pck_of_box(baseline, test, 0.1),
            "train s": train_s, "crops/s": float(np.mean(rates)) if rates else 0.0,
            "wall s": time.perf_counter() - started, "test instances": len(test),
            "calibration": {"a": float(alm.calibration.a), "b": float(alm.calibration.b),
                            "points": int(alm.calibration.points)},
            "best val_pck": max((h["val_pck"] for h in alm.history if "val_pck" in h), default=None)}


def cell(row: dict, column: str) -> str:
    """One table cell: floats to one decimal; `all` and extra points named beside their size."""
    value = row[column]
    if column == "train instances" and not row["label"].isdigit():
        return f"{value} ({row['label']})"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def plot(rows: list[dict], path: Path) -> None:
    """PCK@0.1 against training instances (log2 x), ALM and mean-shape lines per source."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, source in enumerate(sorted({r["source"] for r in rows})):
        colour = f"C{index}"
        curve = sorted((r for r in rows if r["source"] == source and (r["label"].isdigit() or r["label"] == "all")),
                       key=lambda r: r["train instances"])
        x = [r["train instances"] for r in curve]
        ax.plot(x, [r["PCK@0.1"] for r in curve], "o-", color=colour, label=f"{source}: ALM")
        ax.plot(x, [r["mean-shape @0.1"] for r in curve], "s--", color=colour, alpha=0.6,
                label=f"{source}: mean shape")
        for r in rows:
            if r["source"] == source and not (r["label"].isdigit() or r["label"] == "all"):
                ax.plot(r["train instances"], r["PCK@0.1"], "*", color=colour, markersize=14,
                        label=f"{source}: ALM, {r['label']}")
                ax.plot(r["train instances"], r["mean-shape @0.1"], "x", color=colour, markersize=9,
                        label=f"{source}: mean shape, {r['label']}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training instances")
    ax.set_ylabel("held-out PCK@0.1 (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("ALM learning curves")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def section(args: argparse.Namespace, options: TrainOptions, rows: list[dict], device_name: str, total: float) -> str:
    """The markdown section for RESULTS.md: command, settings, device, wall times and the table."""
    python, script = Path(sys.executable), Path(sys.argv[0]).resolve()
    command = [str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p) for p in (python, script)] + sys.argv[1:]
    held_out = ", ".join(sorted({f"{r['source']} {r['test instances']}" for r in rows}))
    settings = (f"Backbone {args.backbone} ({'pretrained' if options.pretrained else 'from scratch'}), crop "
                f"{args.crop}x{args.crop}, at most {args.epochs} epochs (early stopping on a validation share where "
                f"the set is large enough), batch {args.batch}, peak learning rate {args.lr:g}, seed {args.seed}. "
                f"Device: {device_name}. "
                f"Total wall time {total:.0f} s. Held-out instances: {held_out}. PCK is of the box's longer side, "
                "in percent; `no vis` ignores the ALM's visibility; `wall s` is training, prediction and scoring.")
    lines = ["", f"# ALM learning curves (`benchmarks/alm_learning_curve.py {args.source}`)", "",
             f"Date: {date.today().isoformat()}. Command:", "", "```", shlex.join(command), "```", "", settings, "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r, c) for c in COLUMNS) + " |" for r in rows]
    png = (args.out / "alm_learning_curve.png").resolve()
    return "\n".join(lines + ["", f"Plot: `{png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}`.", ""])


def main() -> int:
    """Run the curves, print each row as it finishes, write the plot, JSON and (optionally) RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", choices=("coco", "synth", "both"))
    parser.add_argument("--sizes", nargs="+", default=["10", "20", "40", "80", "all"])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--lr", type=float, default=TrainOptions.learning_rate)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="subset permutation and training seed")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "_work" / "learning_curve")
    parser.add_argument("--results", type=Path, nargs="?", const=ROOT / "benchmarks" / "RESULTS.md",
                        help="append a markdown section to this file (default benchmarks/RESULTS.md)")
    args = parser.parse_args()
    if any(s != "all" and not (s.isdigit() and int(s) > 0) for s in args.sizes):
        parser.error("--sizes: positive whole numbers or 'all'")
    options = TrainOptions(backbone=args.backbone, pretrained=args.backbone != "scratch", crop_size=args.crop,
                           epochs=args.epochs, batch_size=args.batch, learning_rate=args.lr, seed=args.seed)
    run_on = device()
    device_name = f"cuda ({torch.cuda.get_device_name()})" if run_on.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {device_name}, backbone {args.backbone}, crop {args.crop}, epochs <= {args.epochs}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="semcorr-curve-") as work:
        for source in (("coco", "synth") if args.source == "both" else (args.source,)):
            dataset, pool, test, extra = coco_source() if source == "coco" else synth_source(Path(work))
            print(f"{source}: pool {len(pool)} instances, held out {len(test)} instances", flush=True)
            for label, train_set in subsets(pool, args.sizes, args.seed) + extra:
                row = run_row(source, label, dataset, train_set, test, options)
                rows.append(row)
                print("  " + ", ".join(f"{c} {cell(row, c)}" for c in COLUMNS), flush=True)
                (args.out / "alm_learning_curve.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "alm_learning_curve.png")
    total = time.perf_counter() - started
    print(f"wrote {args.out / 'alm_learning_curve.png'} and alm_learning_curve.json; total {total:.0f} s", flush=True)
    if args.results is not None:
        with args.results.open("a") as handle:
            handle.write(section(args, options, rows, device_name, total))
        print(f"appended the table to {args.results}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
