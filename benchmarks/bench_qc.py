"""Planted-error benchmark of `semcorr qc`: how high each cue alone, and the combined suspicion, ranks
planted off-object points, wrong parts and left/right swaps (`semcorr.patchnet.plant`).

Per store and plant seed, each kind is planted alone (`--count` errors) and mixed (a third of each),
and the store is also checked clean. Per kind, pooled over stores and seeds: the share of planted
keypoints in the top k (k = planted keypoints of that run; both points of a swap count) and their
median rank, for each cue's z alone and the combination, with chance; and the share of planted
swaps that `qc` names as a swap of that pair. The appearance cue uses the non-learned gradient
descriptors unless `--checkpoint` gives a network (training one per store is minutes on a CPU).

Stores: `semcorr synth` of the built-in categories (`--store-seeds`), of `--schema`/`--mesh` pairs
(e.g. `vote-keypoints` schemas of the shared meshes), and with `--coco` the COCO people of
../shared/data/coco-mini-train (MISC pairs; their masks are COCO polygons).

Usage: .venv/bin/python benchmarks/bench_qc.py --work /tmp/bench-qc [--store-seeds 0 1] [--plant-seeds 0 1 2]
       [--images 30] [--count 15] [--schema S.json --mesh M.glb ...] [--coco] [--checkpoint 2ch.pt]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semcorr import commands, store
from semcorr.alm.data import category_flip_pairs
from semcorr.errors import SemcorrError
from semcorr.keypoint_schema import load_schema
from semcorr.patchnet import plant, qc
from semcorr.patchnet.train import load_checkpoint
from semcorr.synth.generate import SynthOptions
from semcorr.synth.prototypes import builtin_prototype, load_prototype

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini-train"
RANKINGS = {"mask": "z_mask", "shape": "z_shape", "part": "z_part", "overlap": "z_overlap", "swap": "z_swap",
            "appearance": "z_appearance", "combined": "qc_order"}
ALL_KINDS = plant.KINDS + plant.EXTRA_KINDS
WIDE_SWAP = 0.1  # box sides: swaps of pairs at least this far apart are also reported on their own


def synth_store(root: Path, prototypes: list, images: int, seed: int) -> Path:
    """Render, split 5:2:3 and pair (SPair) a store once; reuse it when it is there."""
    if not (root / store.PAIRS_FILE).is_file():
        commands.run_synth(root, prototypes, SynthOptions(images_per_category=images, width=320, height=240,
                                                          seed=seed))
        commands.run_split(root, (0.5, 0.2, 0.3), seed=0)
        commands.run_build_pairs(root)
    return root


def coco_store(root: Path) -> Path:
    """The COCO people (non-crowd, >= 1 labelled keypoint) as a store, split 6:1:3, MISC pairs."""
    if not (root / store.PAIRS_FILE).is_file():
        path = COCO / "annotations" / "person_keypoints_train2017.json"
        raw = json.loads(path.read_text())
        raw["annotations"] = [a for a in raw["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]
        kept = {a["image_id"] for a in raw["annotations"]}
        raw["images"] = [im for im in raw["images"] if im["id"] in kept]
        raw["info"] = {"description": "COCO people with keypoints", "image_root": str((COCO / "images").resolve())}
        store.save_dataset(store.dataset_from_coco(raw, path, (COCO / "images").resolve()), root)
        commands.run_split(root, (0.6, 0.1, 0.3), seed=0)
        commands.run_build_pairs(root, mode="misc")
    return root


def check(dataset, pairs: pd.DataFrame, model) -> pd.DataFrame:
    """`qc`'s keypoint table of a dataset in memory; `qc_order` is minus each row's place in qc's order
    (off-mask points first, then by suspicion), the combined ranking."""
    bank = qc.patch_bank(dataset, grayscale=model is None or model.channels == 1)
    scorer = qc.descriptor_scorer(bank) if model is None else qc.network_scorer(model, bank)
    table = qc.check_keypoints(dataset, qc.correspondence_scores(dataset, pairs, scorer, bank), bank)
    return table.assign(qc_order=-np.arange(len(table), dtype=np.float64))


def swap_separation(dataset, swap) -> float:
    """How far apart a swapped pair's two points are, in box sides (a pair closer than PCK@0.1's radius
    moves each point less than one acceptance radius)."""
    inst = next(i for i in dataset.instances if i.id == swap.ann_id)
    return float(np.linalg.norm(inst.keypoints[swap.keypoint, :2] - inst.keypoints[swap.other, :2])
                 / max(inst.bbox[2], inst.bbox[3]))


def scenarios(count: int) -> dict[str, dict[str, int]]:
    """Each kind alone (with `on_object`, displacements that land back on the mask), and mixed (a third of
    each of the issue's three kinds)."""
    third = max(1, count // 3)
    return {**{kind: {kind: count} for kind in ALL_KINDS}, "mixed": dict.fromkeys(plant.KINDS, third)}


def run_store(name: str, root: Path, plant_seeds: list[int], count: int, model) -> tuple[list[dict], list[dict]]:
    """Rows per (scenario, kind, ranking) with each planted keypoint's rank, and the clean-store top 20."""
    dataset = store.load_dataset(root)
    pairs = store.load_pairs(root, dataset)
    flips = {c.name: category_flip_pairs(c) for c in dataset.categories.values()}
    clean = check(dataset, pairs, model)
    top = clean.head(20)
    clean_rows = [{"store": name, "keypoints": len(clean), "suspect": int(clean.suspect.sum()),
                   "top20_suspect": int(top.suspect.sum()), "top20_cues": top.cue.value_counts().to_dict(),
                   "top20_min_suspicion": float(top.suspicion.min())}]
    rows = []
    for seed in plant_seeds:
        for scenario, counts in scenarios(count).items():
            try:
                planted_set, planted = plant.plant_errors(dataset, counts, flips, seed)
            except SemcorrError as error:
                print(f"{name} seed {seed} {scenario}: skipped, {error}", file=sys.stderr)
                continue
            suspects = check(planted_set, pairs, model)
            keys = plant.planted_keys(planted)
            k = len(keys)
            for ranking, column in RANKINGS.items():
                ranks = plant.ranks_of(suspects, column, keys)
                for kind, rank in zip(keys.kind, ranks):
                    rows.append({"store": name, "seed": seed, "scenario": scenario, "kind": kind,
                                 "ranking": ranking, "rank": int(rank), "in_top_k": bool(rank < k), "k": k,
                                 "n": len(suspects)})
            swaps = [p for p in planted if p.kind == "swap"]
            if swaps:
                named = plant.swaps_named(suspects, planted)
                apart = [swap_separation(dataset, p) >= WIDE_SWAP for p in swaps]
                for ranking, chosen in (("reported as swap", [True] * len(swaps)),
                                        (f"wide swaps (>= {WIDE_SWAP} box) reported", apart)):
                    picked = [n for n, c in zip(named, chosen) if c]
                    if picked:
                        rows.append({"store": name, "seed": seed, "scenario": scenario, "kind": "swap",
                                     "ranking": ranking, "rank": -1, "in_top_k": float(np.mean(picked)), "k": k,
                                     "n": len(suspects), "swaps": len(picked)})
    return rows, clean_rows


def table(rows: pd.DataFrame, scenario: str) -> str:
    """Markdown: per kind, top-k share / median rank of each ranking, and chance."""
    part = rows[rows.scenario == scenario]
    lines = [f"| kind ({scenario}) | " + " | ".join(RANKINGS)
             + " | chance | swaps named as swaps (all; >= 0.1 box apart) |",
             "|---" * (len(RANKINGS) + 3) + "|"]
    for kind in ALL_KINDS:
        rows_kind = part[part.kind == kind]
        if rows_kind.empty:
            continue
        cells = []
        for ranking in RANKINGS:
            r = rows_kind[rows_kind.ranking == ranking]
            cells.append(f"{100 * r.in_top_k.mean():.0f}% / {np.median(r['rank']):.0f}")
        ranked = rows_kind[rows_kind.ranking == "combined"]
        chance = f"{100 * (ranked.k / ranked.n).mean():.1f}% / {((ranked.n - 1) / 2).mean():.0f}"
        swapped = ""
        for label in ("reported as swap", f"wide swaps (>= {WIDE_SWAP} box) reported"):
            named = rows_kind[rows_kind.ranking == label]
            if len(named):
                share = (named.in_top_k * named.swaps).sum() / named.swaps.sum()
                which = " (all); " if swapped == "" else " (wide)"
                swapped += f"{100 * share:.0f}% of {int(named.swaps.sum())}{which}"
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {chance} | {swapped} |")
    return "\n".join(lines)


def main() -> int:
    """Build or reuse the stores, plant, check, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--store-seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--plant-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=30, help="images per category")
    parser.add_argument("--count", type=int, default=15, help="errors planted per run")
    parser.add_argument("--schema", type=Path, action="append", default=[])
    parser.add_argument("--mesh", type=Path, action="append", default=[])
    parser.add_argument("--coco", action="store_true")
    parser.add_argument("--checkpoint", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    model = load_checkpoint(args.checkpoint) if args.checkpoint else None
    stores = [(f"builtin seed {s}", synth_store(args.work / f"builtin-{s}", [builtin_prototype(n) for n in
                                                 ("chair", "car", "airplane")], args.images, s))
              for s in args.store_seeds]
    for schema, mesh in zip(args.schema, args.mesh):
        parsed = load_schema(schema)
        stores.append((f"{parsed.category} (mesh)", synth_store(args.work / f"mesh-{parsed.category}",
                                                                [load_prototype(mesh, parsed)], args.images, 0)))
    if args.coco:
        stores.append(("coco people", coco_store(args.work / "coco-people")))
    groups: dict[str, list] = {"synthetic": [], "coco": []}
    cleans = []
    for name, root in stores:
        rows, clean = run_store(name, root, args.plant_seeds, args.count, model)
        groups["coco" if name == "coco people" else "synthetic"] += rows
        cleans += clean
        print(f"{name}: done at {time.perf_counter() - start:.0f} s", file=sys.stderr)
    for group, rows in groups.items():
        if not rows:
            continue
        frame = pd.DataFrame(rows)
        print(f"\n### {group} stores: {', '.join(sorted(frame.store.unique()))}; plant seeds "
              f"{args.plant_seeds}; top-k share / median rank\n")
        for scenario in (*ALL_KINDS, "mixed"):
            print(table(frame, scenario) + "\n")
    print("### clean stores: the top 20\n")
    print("| " + " | ".join(cleans[0]) + " |\n" + "|---" * len(cleans[0]) + "|")
    for row in cleans:
        print("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    print(f"\nappearance: {'network ' + str(args.checkpoint) if model else 'gradient descriptors'}; "
          f"wall {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
