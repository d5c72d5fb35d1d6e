"""One function per CLI command: read the dataset directory, call the builders, write results.

The CLI only parses options, calls one of these and prints the summary they return.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from semcorr import atomic, store
from semcorr.builders.spair_pairs import build_spair_pairs, spair_units
from semcorr.builders.splits import assign_splits, split_units
from semcorr.builders.statistics import azimuth_table, category_table, difficulty_table
from semcorr.engine import LOCAL, Engine
from semcorr.errors import SemcorrError
from semcorr.exports.spair import SpairExportReport, export_spair
from semcorr.keypoint_schema import load_schema
from semcorr.paths import refuse_overlap
from semcorr.synth.generate import SynthOptions, synthesize
from semcorr.synth.prototypes import BUILTIN_CATEGORIES, Prototype, builtin_prototype, load_prototype

Progress = Callable[[int], None] | None


def resolve_prototypes(categories: list[str], schemas: list[Path], meshes: list[Path]) -> list[Prototype]:
    """Built-in categories by name, plus (schema, mesh) prototypes; a schema may name its own mesh."""
    prototypes = [builtin_prototype(name) for name in categories]
    if meshes and len(meshes) != len(schemas):
        raise SemcorrError(f"--mesh given {len(meshes)} times for {len(schemas)} --schema; give one mesh per "
                           "schema, or none when every schema names its mesh")
    for index, schema_path in enumerate(schemas):
        schema = load_schema(schema_path)
        mesh = meshes[index] if meshes else schema.mesh
        if mesh is None:
            raise SemcorrError(f"{schema_path}: names no 'mesh'; pass --mesh for it")
        prototypes.append(load_prototype(mesh, schema))
    names = [p.name for p in prototypes]
    if len(set(names)) != len(names):
        raise SemcorrError(f"category names repeat: {', '.join(names)}")
    if not prototypes:
        raise SemcorrError(f"no categories: pass --category ({', '.join(BUILTIN_CATEGORIES)}) or --schema")
    return prototypes


def run_synth(out_dir: Path, prototypes: list[Prototype], options: SynthOptions, progress: Progress = None,
              engine: Engine = LOCAL) -> store.Dataset:
    """Render a synthetic store into `out_dir` (replaced atomically), locally or in Ray actors."""
    with atomic.staged_directory(Path(out_dir), "dataset") as staging:
        dataset = synthesize(prototypes, options, staging, progress=progress, engine=engine)
        store.save_dataset(dataset, staging)
    dataset.image_root = Path(out_dir) / store.IMAGES_DIR
    return dataset


def run_split(root: Path, ratios: tuple[float, float, float], seed: int) -> pd.DataFrame:
    """Write `splits.json`; returns image counts per category and split.

    An image with instances of several categories is split once (under its main category,
    see `split_units`) but counted under every category it holds.
    """
    from semcorr.builders.splits import split_counts

    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SemcorrError(f"--seed {seed!r}: use a whole number >= 0")
    dataset = store.load_dataset(root)
    instances = dataset.instance_table()
    if instances.empty:
        raise SemcorrError(f"{Path(root) / store.ANNOTATIONS_FILE}: holds no annotations to split")
    units = split_units(instances)
    splits = assign_splits(units, ratios=ratios, seed=seed)
    store.save_splits(splits, root)
    return split_counts(instances, splits)


@dataclass
class PairsResult:
    """What build-pairs wrote."""

    pairs: pd.DataFrame
    skipped: pd.DataFrame
    path: Path


def run_build_pairs(root: Path, mode: str = "spair", max_pairs: int = 30000, threshold: float = 0.3,
                    share_of: str = "category", seed: int = 0) -> PairsResult:
    """Build the pairs table of a split store and write `pairs.parquet`.

    Args:
        root: dataset directory with splits.json.
        mode: "spair" (single instance, all sharing pairs) or "misc" (multi-instance, sampled).
        max_pairs, threshold, share_of, seed: MISC sampling and filtering (see `builders.misc_pairs`).
    """
    from semcorr.builders.misc_pairs import build_misc_pairs, misc_units

    if mode not in ("spair", "misc"):
        raise SemcorrError(f"--mode {mode!r}: use spair or misc")
    dataset = store.load_dataset(root)
    splits = store.load_splits(root, dataset)
    if mode == "misc":
        units, counts = misc_units(dataset, splits)
        pairs = build_misc_pairs(units, counts, max_pairs=max_pairs, threshold=threshold, denominator=share_of,
                                 seed=seed)
        path = store.save_pairs(pairs, root)
        return PairsResult(pairs=pairs, skipped=pd.DataFrame(columns=["image_id", "category", "reason"]), path=path)
    units, visible, skipped = spair_units(dataset, splits)
    pairs = build_spair_pairs(units, visible)
    path = store.save_pairs(pairs, root)
    return PairsResult(pairs=pairs, skipped=skipped, path=path)


@dataclass
class StatsResult:
    """The statistics tables and the files they went to."""

    difficulty: pd.DataFrame
    categories: pd.DataFrame
    files: list[Path]
    misc: dict[str, pd.DataFrame] | None = None  # MISC stores: "instances" and "pairs" tables


def run_stats(root: Path, out_dir: Path | None = None, dataset: store.Dataset | None = None) -> StatsResult:
    """Tables 1 and 2 (CSV) and Figures 1 and 2 (PNG) of a store with pairs.

    MISC pairs (`build-pairs --mode misc`) have no viewpoint label: their Table 1 has the
    scale, truncation and occlusion factors, Figure 2 (azimuth) is not drawn, and the MISC
    tables are written instead: images per category by instance count
    (`misc_instances.csv`) and, per category, correspondences per pair, keypoint share and
    pairs with overlapping instances (`misc_pairs.csv`).
    """
    from semcorr.figures import plot_azimuth_histograms, plot_difficulty_pies

    root = Path(root)
    out_dir = Path(out_dir) if out_dir else root / "stats"
    if dataset is None:  # the caller may pass the store it has already loaded
        dataset = store.load_dataset(root, check_files=False)
    splits = store.load_splits(root, dataset)
    pairs = store.load_pairs(root, dataset)
    from semcorr.builders.statistics import is_misc, misc_instance_table, misc_pair_table

    difficulty = difficulty_table(pairs)
    categories = category_table(pairs)
    tables = [("table1_difficulty.csv", difficulty, True), ("table2_categories.csv", categories, True)]
    misc = None
    if is_misc(pairs):
        misc = {"instances": misc_instance_table(dataset.instance_table(), splits), "pairs": misc_pair_table(pairs)}
        tables += [("misc_instances.csv", misc["instances"], True), ("misc_pairs.csv", misc["pairs"], True)]
    else:
        units, _, _ = spair_units(dataset, splits)
        azimuth = azimuth_table(units)
        tables.append(("azimuth_by_split.csv", azimuth, False))
    files = []
    for name, table, index in tables:
        flat = table.copy()
        if isinstance(flat.columns, pd.MultiIndex):
            flat.columns = [f"{a} {b}" for a, b in flat.columns]
        atomic.write_text(out_dir / name, flat.to_csv(index=index))
        files.append(out_dir / name)
    files.append(plot_difficulty_pies(difficulty, out_dir / "fig1_difficulty_pies.png"))
    if misc is None:
        files.append(plot_azimuth_histograms(azimuth, out_dir / "fig2_azimuth_histograms.png"))
    return StatsResult(difficulty=difficulty, categories=categories, files=files, misc=misc)


def run_export_spair(root: Path, out_dir: Path, progress: Progress = None, allow_over_30: bool = False
                     ) -> SpairExportReport:
    """Export a store's SPair pairs in the SPair-71k layout (refusing categories of more than 30 keypoints
    unless `allow_over_30`)."""
    dataset = store.load_dataset(root)
    refuse_overlap(out_dir, [root, dataset.image_root])
    pairs = store.load_pairs(root, dataset)
    return export_spair(dataset, pairs, out_dir, progress=progress, allow_over_30=allow_over_30)


@dataclass
class FilterResult:
    """What coco-filter kept and why it turned the rest away."""

    dataset: store.Dataset
    report: pd.DataFrame
    path: Path


def _read_coco(path: Path) -> dict:
    """A COCO JSON file's top-level object; SemcorrError naming the file when it is not one."""
    path = Path(path)
    try:
        coco = store.read_json(path)
    except UnicodeDecodeError:
        raise SemcorrError(f"{path}: not UTF-8 text (gzipped?); give the uncompressed COCO JSON file") from None
    except RecursionError:
        raise SemcorrError(f"{path}: JSON nested too deeply; give a COCO JSON file") from None
    if not isinstance(coco, dict):
        raise SemcorrError(f"{path}: top level: expected a COCO object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            coco[key] = []
        elif not isinstance(coco[key], list):
            raise SemcorrError(f"{path}: top level: {key!r} is a {type(coco[key]).__name__}, not a list; "
                               "write a COCO file")
    return coco


def _keypoint_categories(extra: dict, path: Path, names: dict[int, str]) -> dict[int, dict]:
    """Category id -> {"keypoints", "skeleton" (0-based)} of a COCO keypoints file, checked."""
    from semcorr.builders import coco_filter as cf

    out = {}
    for index, raw in enumerate(extra["categories"]):
        if not (isinstance(raw, dict) and cf.is_coco_id(raw.get("id")) and raw["id"] in names):
            continue
        if raw.get("name", names[raw["id"]]) != names[raw["id"]]:
            continue  # another category under the same id: not this one's schema
        record = f"categories[{index}] ({names[raw['id']]!r})"
        keypoints = raw.get("keypoints", [])
        if not (isinstance(keypoints, list) and all(isinstance(k, str) for k in keypoints)):
            raise SemcorrError(f"{path}: {record}: 'keypoints' is not a list of names; fix the keypoints file")
        skeleton = raw.get("skeleton", []) or []
        if not (isinstance(skeleton, list) and all(
                isinstance(e, list) and len(e) == 2 and all(isinstance(i, int) and not isinstance(i, bool)
                                                            and 1 <= i <= len(keypoints) for i in e)
                for e in skeleton)):
            raise SemcorrError(f"{path}: {record}: 'skeleton' is not a list of 1-based keypoint index pairs; "
                               "fix the keypoints file")
        out[raw["id"]] = {"keypoints": tuple(keypoints), "skeleton": tuple((a - 1, b - 1) for a, b in skeleton)}
    return out


def run_coco_filter(instances_json: Path, image_dir: Path, out_dir: Path, categories: list[str] | None = None,
                    keypoints_json: Path | None = None, options=None, schemas: list[Path] = (),
                    engine: Engine = LOCAL) -> FilterResult:
    """Curate a COCO instances file into a store (see `builders.coco_filter` for the rules).

    Keypoints come from `keypoints_json` (COCO person keypoints) where it has them, each
    imported point with provenance "imported" in the instance's `keypoint_provenance` (the
    shape `annotation.review.merge` writes); a malformed keypoints record leaves its instance
    unlabelled and is counted in the report's `bad_keypoints`. Without `keypoints_json` every
    instance starts unlabelled. A category named by one of `schemas` (keypoint schema JSON)
    gets that schema's keypoint names, skeleton and flip pairs, unlabelled until annotation.

    Raises:
        SemcorrError: unknown categories, a missing images folder, an output that overlaps
            an input, or a selection that keeps no image (nothing is written then).
    """
    from collections import Counter

    from semcorr.builders import coco_filter as cf
    from semcorr.paths import refuse_file_target

    options = options or cf.FilterOptions()
    instances_json, image_dir, out_dir = Path(instances_json), Path(image_dir), Path(out_dir)
    refuse_file_target(out_dir)
    # replacing the output must never delete an input; an output inside the images folder is harmless
    refuse_overlap(out_dir, [instances_json, image_dir, keypoints_json, *schemas], inside_ok=True)
    if not image_dir.is_dir():
        raise SemcorrError(f"{image_dir}: images folder does not exist; give the folder that holds the COCO images")
    designed = {schema.category: schema for schema in (load_schema(path) for path in schemas)}
    coco = _read_coco(instances_json)
    names = cf.checked_categories(coco)
    known = sorted(set(names.values()))
    if categories:
        unknown = [c for c in dict.fromkeys(categories) if c not in known]
        if unknown:
            raise SemcorrError(f"{instances_json}: no category {', '.join(map(repr, unknown))} in the file; "
                               f"it has: {', '.join(known) or '(none)'}")
    wanted = set(categories or cf.MISC_CATEGORIES)
    doubled = sorted({n for n in names.values() if n in wanted and list(names.values()).count(n) > 1})
    if doubled:
        raise SemcorrError(f"{instances_json}: categories: the name(s) {', '.join(map(repr, doubled))} belong to "
                           "several category ids; give each category its own name")
    screened = cf.screen_instances(coco, wanted, options, image_dir, engine=engine)
    kept, rejected_units = cf.select_images(screened, options)
    report = cf.selection_report(screened, kept, rejected_units)
    if kept.empty:
        present = sorted(wanted & set(known))
        reasons = report.drop(columns=["candidate_images", "kept_images", "kept_instances"], errors="ignore").sum()
        why = ", ".join(f"{k} {int(v)}" for k, v in reasons.items() if v) or "no annotations"
        raise SemcorrError(f"{instances_json}: no image of {', '.join(present) or 'the wanted categories'} passed "
                           f"the filter ({why}); nothing written to {out_dir}; relax the thresholds or choose "
                           "other categories")

    keypoint_anns, keypoint_cats = {}, {}
    if keypoints_json is not None:
        extra = _read_coco(keypoints_json)
        records = [a for a in extra["annotations"] if isinstance(a, dict) and cf.is_coco_id(a.get("id"))]
        times = Counter(a["id"] for a in records)
        keypoint_anns = {a["id"]: a for a in records if times[a["id"]] == 1}  # a duplicated id is ambiguous
        keypoint_cats = _keypoint_categories(extra, Path(keypoints_json), names)
    annotations = coco["annotations"]
    images_ok, _ = cf.checked_images(coco)
    categories_out = {}
    kept_names = set(kept["category"])
    for category_id, name in names.items():
        if name not in kept_names:
            continue
        raw = next(c for c in coco["categories"] if isinstance(c, dict) and c.get("id") == category_id)
        supercategory = raw.get("supercategory", "")
        supercategory = supercategory if isinstance(supercategory, str) else ""
        schema = keypoint_cats.get(category_id, {})
        if name in designed and not schema.get("keypoints"):
            design = designed[name]
            categories_out[category_id] = store.Category(
                id=category_id, name=name, supercategory=supercategory,
                keypoints=design.names, skeleton=design.skeleton, descriptions=design.descriptions,
                flip_pairs=design.flip_pairs, schema_version=design.version)
            continue
        categories_out[category_id] = store.Category(
            id=category_id, name=name, supercategory=supercategory,
            keypoints=schema.get("keypoints", ()), skeleton=schema.get("skeleton", ()))
    images, instances = {}, []
    bad_keypoints: dict[str, int] = {}
    for row in kept.itertuples():
        raw = annotations[row.index]
        image = images_ok[raw["image_id"]]
        images[image["id"]] = store.ImageInfo(id=image["id"], file_name=image["file_name"], width=image["width"],
                                              height=image["height"])
        category = categories_out[raw["category_id"]]
        keypoints = np.zeros((category.num_keypoints, 3))
        attributes: dict = {"source": "coco"}
        source = keypoint_anns.get(raw["id"])
        if source is not None and category.num_keypoints:
            imported = cf.imported_keypoints(source, category.num_keypoints, image["width"], image["height"])
            if imported is None or source.get("image_id") != raw["image_id"] or source.get(
                    "category_id") != raw["category_id"]:
                bad_keypoints[category.name] = bad_keypoints.get(category.name, 0) + 1
            else:
                keypoints = imported
                labelled = np.flatnonzero(imported[:, 2] > 0)
                if len(labelled):
                    attributes["keypoint_provenance"] = {
                        str(int(k)): {"action": "imported", "round": 0, "annotator": "coco",
                                      "source": Path(keypoints_json).name} for k in labelled}
        instances.append(store.Instance(
            id=raw["id"], image_id=raw["image_id"], category_id=raw["category_id"], bbox=raw["bbox"],
            keypoints=keypoints, segmentation=raw["segmentation"], area=float(row.area),
            truncated=bool(row.truncated), extra_attributes=attributes))
    if keypoints_json is not None:
        report["bad_keypoints"] = [bad_keypoints.get(str(name), 0) for name in report.index]
    dataset = store.Dataset(images=images, categories=categories_out, instances=instances,
                            image_root=image_dir.resolve(),
                            info={"description": f"semcorr coco-filter of {instances_json.name}",
                                  "image_root": str(image_dir.resolve())})
    with atomic.staged_directory(out_dir, "dataset") as staging:
        store.save_dataset(dataset, staging)
        atomic.write_text(staging / "coco_filter_report.csv", report.to_csv())
    return FilterResult(dataset=dataset, report=report, path=out_dir)


def store_files(root: Path) -> list[Path]:
    """The files of a dataset directory that no output may replace."""
    return [Path(root) / name for name in (store.ANNOTATIONS_FILE, store.SPLITS_FILE, store.PAIRS_FILE)]


def run_export_coco(root: Path, out_path: Path, sigmas: list[str] = ()) -> list[Path]:
    """COCO keypoints JSON of a store, with its pairs (if any) as a sidecar.

    Args:
        sigmas: per-category OKS sigmas as "category=s1,s2,..." (one per keypoint) or
            "category=s" (the same for every keypoint).
    """
    from semcorr.exports.coco import export_coco

    dataset = store.load_dataset(root, check_files=False)
    chosen: dict[str, list[float]] = {}
    for text in sigmas:
        name, _, values = text.partition("=")
        try:
            numbers = [float(v) for v in values.split(",")]
        except ValueError:
            numbers = []
        category = next((c for c in dataset.categories.values() if c.name == name), None)
        if category is None or not numbers or any(v <= 0 for v in numbers):
            raise SemcorrError(f"--sigmas {text!r}: expected CATEGORY=s or CATEGORY=s1,...,sK with positive values "
                               "and a category of the dataset")
        if len(numbers) == 1:
            numbers = numbers * category.num_keypoints
        if len(numbers) != category.num_keypoints:
            raise SemcorrError(f"--sigmas {text!r}: {len(numbers)} values for {category.num_keypoints} keypoints")
        chosen[name] = numbers
    out_path = Path(out_path)
    for written in (out_path, out_path.with_name(out_path.stem + ".pairs.json")):
        refuse_overlap(written, [root, dataset.image_root, *store_files(root)], inside_ok=True)
    pairs = store.load_pairs(root, dataset) if (Path(root) / store.PAIRS_FILE).exists() else None
    return export_coco(dataset, out_path, pairs, sigmas=chosen)


def run_export_misc(root: Path, out_dir: Path) -> dict[str, int]:
    """MISC-style export of a store's multi-instance pairs."""
    from semcorr.exports.misc import export_misc

    dataset = store.load_dataset(root)
    refuse_overlap(out_dir, [root, dataset.image_root])
    return export_misc(dataset, store.load_pairs(root, dataset), out_dir)


POSE_IMPORT_FORMATS = ("sleap", "dlc", "nwb", "labelstudio")
POSE_EXPORT_FORMATS = ("sleap", "dlc")


DESIGN_STEPS = 7  # progress steps `design_keypoints` reports


@dataclass(frozen=True)
class DesignJob:
    """One prototype for vote-keypoints: its mesh, category, output folder and votes (or None)."""

    mesh: Path
    category: str
    out: Path
    votes: Path | None = None


def design_jobs(meshes: list[Path], categories: list[str], votes: list[Path], out: Path | None) -> list[DesignJob]:
    """One job per mesh: `--category` (and `--votes`, when given) once per mesh, in order; one mesh writes
    to `out` (default ./<category>-keypoints), several to `out`/<category>-keypoints (default ./)."""
    if not meshes:
        raise SemcorrError("no mesh: give the prototype mesh (or several, each with its --category)")
    if len(categories) != len(meshes):
        raise SemcorrError(f"--category given {len(categories)} times for {len(meshes)} meshes; give one per mesh, "
                           "in the same order")
    if votes and len(votes) != len(meshes):
        raise SemcorrError(f"--votes given {len(votes)} times for {len(meshes)} meshes; give one per mesh, or none")
    if len(set(categories)) != len(categories):
        raise SemcorrError(f"categories repeat: {', '.join(categories)}; each mesh needs its own category")
    if len(meshes) == 1:
        folders = [out or Path(f"{categories[0]}-keypoints")]
    else:
        folders = [(out or Path(".")) / f"{name}-keypoints" for name in categories]
    return [DesignJob(m, c, o, votes[i] if votes else None)
            for i, (m, c, o) in enumerate(zip(meshes, categories, folders))]


def _design_each(options, jobs: list[DesignJob]) -> list:
    from semcorr.keypoint_design.design import design_keypoints

    return [design_keypoints(job.mesh, job.category, job.out, job.votes, options) for job in jobs]


def _absolute(job: DesignJob) -> DesignJob:
    """`job` with absolute paths (a Ray worker does not run in this folder)."""
    votes = Path(job.votes).expanduser().resolve() if job.votes is not None else None
    return DesignJob(Path(job.mesh).expanduser().resolve(), job.category, Path(job.out).expanduser().resolve(), votes)


def run_vote_keypoints(jobs: list[DesignJob], options, engine: Engine = LOCAL, progress: Progress = None) -> list:
    """`design_keypoints` of every job (a `DesignResult` each, in job order): one after another here,
    or one Ray task per prototype, each writing its own folder; the same files either way.

    On a cluster of several machines the meshes, votes and output folders must be on a filesystem
    every node mounts at the same path.
    """
    from functools import partial

    from semcorr.engine import map_chunks
    from semcorr.keypoint_design.design import checked_options, design_keypoints

    checked_options(options)  # a bad option is one line before any work, here or on the cluster
    advance = progress or (lambda _n: None)
    if engine.kind == "local":
        return [design_keypoints(job.mesh, job.category, job.out, job.votes, options,
                                 progress=lambda _step: advance(1)) for job in jobs]
    return map_chunks(engine, partial(_design_each, options), [_absolute(job) for job in jobs], chunk_size=1,
                      progress=lambda n: advance(n * DESIGN_STEPS))


def run_import(fmt: str, source: Path, out_dir: Path, images: Path | None = None, config: Path | None = None,
               category: str | None = None):
    """Import a pose tool's labels (through sleap-io) as a new dataset directory; returns its InterchangeReport."""
    from semcorr.formats import dlc, labelstudio, nwb, sleap

    source = Path(source)
    if not source.exists():
        raise SemcorrError(f"{source}: not found; give the {fmt} file or project to import")
    refuse_overlap(out_dir, [source])
    if fmt == "labelstudio":
        if images is None:
            raise SemcorrError("import labelstudio needs --images: the folder holding the tasks' images")
        refuse_overlap(out_dir, [images])
        return labelstudio.load_labelstudio(source, out_dir, images, config,
                                            category or labelstudio.DEFAULT_CATEGORY)
    loaders = {"sleap": sleap.load_sleap, "dlc": dlc.load_dlc, "nwb": nwb.load_nwb}
    if fmt not in loaders:
        raise SemcorrError(f"unknown import format {fmt!r}; use one of {', '.join(POSE_IMPORT_FORMATS)}")
    return loaders[fmt](source, out_dir)


def run_export_pose(fmt: str, root: Path, out: Path, scorer: str = "semcorr"):
    """Export a store as a SLEAP file or DeepLabCut projects (through sleap-io); returns its InterchangeReport."""
    from semcorr.formats import dlc, sleap

    if fmt == "sleap":
        return sleap.save_sleap(root, out)
    return dlc.save_dlc(root, out, scorer)


def run_evaluate(root: Path, predictions: Path | None, baseline: str | None, split: str | None,
                 alphas: tuple[float, ...], by: str, out_dir: Path | None):
    """Evaluate predictions (or a built-in baseline) on a store's pairs; tables to CSV.

    Everything is checked before anything is written: the options, the predictions (every
    record, against the whole pairs table) and the output folder (never the dataset itself,
    a folder holding it, or a folder inside its images).
    """
    from semcorr.evaluation import evaluate as ev
    from semcorr.paths import refuse_file_target, refuse_overlap

    if (predictions is None) == (baseline is None):
        raise SemcorrError("give exactly one of --predictions FILE or --baseline identity")
    if baseline not in (None, "identity"):
        raise SemcorrError(f"--baseline {baseline!r}: the built-in baseline is 'identity'")
    if by not in ("bbox", "image"):
        raise SemcorrError(f"--by {by!r}: use bbox (SPair) or image")
    if split not in (None, "all") and split not in store.SPLIT_NAMES:
        raise SemcorrError(f"--split {split!r}: use one of {', '.join(store.SPLIT_NAMES)} or all")
    alphas = ev.check_alphas(alphas)
    root = Path(root)
    out_dir = Path(out_dir) if out_dir else root / "evaluation"
    refuse_file_target(out_dir, "--out")
    refuse_overlap(out_dir, [root / store.ANNOTATIONS_FILE, root / store.SPLITS_FILE, root / store.PAIRS_FILE,
                             root / store.IMAGES_DIR], "--out")
    if predictions is not None and Path(predictions).parent.resolve() == out_dir.resolve() and Path(
            predictions).name in {f"{name}.csv" for name in ev.TABLE_NAMES}:
        raise SemcorrError(f"--out {out_dir}: would overwrite the predictions {predictions}; choose another folder")
    dataset = store.load_dataset(root, check_files=False)
    pairs = store.load_pairs(root)
    preds = ev.load_predictions(predictions) if predictions is not None else None
    if preds is not None:
        ev.check_known(preds, pairs, str(predictions))
    if split not in (None, "all"):
        pairs = pairs[(pairs["split"] == split).to_numpy()].reset_index(drop=True)
    if pairs.empty:
        raise SemcorrError(f"{root / store.PAIRS_FILE}: no pairs in split {split}")
    if preds is not None:
        wanted = set(pairs["pair_id"].astype(str))  # predictions of other splits are not evaluated
        preds, source = {**preds, "pairs": {k: v for k, v in preds["pairs"].items() if k in wanted}}, str(predictions)
    else:
        preds, source = ev.identity_predictions(dataset, pairs), "identity baseline"
    if ev.is_misc(pairs):
        result = ev.evaluate_misc(dataset, pairs, preds, alphas, source=source)
    else:
        result = ev.evaluate_spair(dataset, pairs, preds, alphas, by=by, source=source)
    for name, table in result.tables.items():
        atomic.write_text(out_dir / f"{name}.csv", table.to_csv())
    return result, out_dir


def run_viewpoint(root: Path, schemas: list[Path], overwrite: bool = False, method: str = "weak") -> pd.DataFrame:
    """Estimate azimuth bins of instances from their keypoints and the category prototypes.

    Prototypes come from keypoint schema files (`vote-keypoints` output, or any schema with
    its mesh) and, for categories named like a built-in one, from the built-in. Instances
    that already have an azimuth bin keep it unless `overwrite`. Returns one row per
    instance tried (ann_id, category, azimuth_deg, azimuth_bin, confidence, written). `method`:
    "weak" (weak-perspective fit) or "pnp" (cv2.solvePnP with a focal-length prior).
    """
    from semcorr.builders.viewpoint import METHODS, PNP_FOCAL_PRIOR, estimate_viewpoint

    if method not in METHODS:
        raise SemcorrError(f"--method {method!r}: use one of {', '.join(METHODS)}")

    dataset = store.load_dataset(root, check_files=False)
    prototypes = {p.name: p for p in resolve_prototypes([], schemas, [])} if schemas else {}
    for category in dataset.categories.values():
        if category.name not in prototypes and category.name in BUILTIN_CATEGORIES:
            prototypes[category.name] = builtin_prototype(category.name)
    if not prototypes:
        raise SemcorrError("no 3D keypoints for any category: pass --schema (from `semcorr vote-keypoints`)")
    rows = []
    for inst in dataset.instances:
        category = dataset.categories[inst.category_id]
        prototype = prototypes.get(category.name)
        if prototype is None:
            continue
        index = {name: i for i, name in enumerate(prototype.schema.names)}
        xyz = np.array([prototype.keypoints_xyz[index[n]] if n in index else [np.nan] * 3 for n in category.keypoints])
        image = dataset.images[inst.image_id]
        estimate = estimate_viewpoint(xyz.reshape(-1, 3), inst.keypoints, inst.bbox, method,
                                      (image.width, image.height))
        if estimate is None:
            continue
        write = overwrite or inst.azimuth_bin is None
        if write:
            inst.azimuth_bin = estimate.azimuth_bin
            inst.extra_attributes.update({"azimuth_deg_est": round(estimate.azimuth_deg, 2),
                                          "viewpoint_confidence": round(estimate.confidence, 4),
                                          "viewpoint_source": "weak-perspective fit" if method == "weak" else
                                          f"cv2.solvePnP, focal = {PNP_FOCAL_PRIOR}"})
        rows.append({"ann_id": inst.id, "category": category.name, "azimuth_deg": estimate.azimuth_deg,
                     "azimuth_bin": estimate.azimuth_bin, "confidence": estimate.confidence, "written": write})
    store.save_dataset(dataset, root)
    return pd.DataFrame(rows, columns=["ann_id", "category", "azimuth_deg", "azimuth_bin", "confidence", "written"])


def run_annotate_plan(root: Path, manual: float, first: float, seed: int, clear_labels: bool = False,
                      cleared: dict | None = None) -> pd.DataFrame:
    """Plan the annotation rounds of a store into `annotation/plan.json` (with a hash of its splits).

    `clear_labels`: first keep `annotations.json` as `annotation/imported_labels.json` and set every
    keypoint to unlabelled, so a loop started from imported labels starts unlabelled. `cleared`
    (a dict) receives `keypoints` and `copy` for the summary.
    """
    from semcorr.annotation.plan import clear_labels as clear
    from semcorr.annotation.plan import plan_images, save_plan

    dataset = store.load_dataset(root, check_files=False)
    splits_path = Path(root) / store.SPLITS_FILE
    splits = store.load_splits(root) if splits_path.exists() else {}
    plan = plan_images(list(dataset.images), splits, manual, first, seed)
    if clear_labels:
        count, copy = clear(root, dataset)
        if count:
            store.save_dataset(dataset, root)
        if cleared is not None:
            cleared.update(keypoints=count, copy=copy)
    save_plan(root, plan, seed, manual, first, splits)
    return plan


def annotated_instances(dataset: store.Dataset, image_ids: set[int] | None = None) -> list:
    """Instances with at least one labelled keypoint (optionally only in `image_ids`)."""
    return [i for i in dataset.instances if i.labelled.any() and (image_ids is None or i.image_id in image_ids)]


def reviewed_only(instance: store.Instance) -> store.Instance:
    """A copy without the keypoints no person has looked at (`auto-accepted`): the ALM never learns its own guesses."""
    provenance = instance.extra_attributes.get("keypoint_provenance") or {}
    unreviewed = [int(k) for k, entry in provenance.items()
                  if isinstance(entry, dict) and entry.get("action") == "auto-accepted" and str(k).isdigit()
                  and int(k) < len(instance.keypoints)]
    if not unreviewed:
        return instance
    keypoints = instance.keypoints.copy()
    keypoints[unreviewed] = (np.nan, np.nan, 0)
    return dataclasses.replace(instance, keypoints=keypoints)


def alm_checkpoint_path(root: Path, round_index: int) -> Path:
    """Where round N's ALM checkpoint lives in the dataset directory."""
    return Path(root) / "annotation" / f"alm_round{round_index}.pt"


def alm_training_instances(root: Path, dataset: store.Dataset) -> list:
    """What the ALM trains on: labelled instances outside the test split, without unreviewed keypoints."""
    splits = store.load_splits(root) if (Path(root) / store.SPLITS_FILE).exists() else {}
    return [i for i in (reviewed_only(inst) for inst in annotated_instances(dataset))
            if splits.get(i.image_id) != "test" and i.labelled.any()]


def run_alm_train(root: Path, round_index: int, options, out: Path | None = None, progress=None):
    """Train the ALM on the labelled, non-test instances; warm-start from round N-1 when it exists."""
    from semcorr.alm.train import load_checkpoint, save_checkpoint, train

    dataset = store.load_dataset(root)
    training = alm_training_instances(root, dataset)
    previous = alm_checkpoint_path(root, round_index - 1)
    init = load_checkpoint(previous) if round_index > 1 and previous.exists() else None
    alm = train(dataset, training, options, round_index=round_index, init=init, progress=progress)
    target = Path(out) if out else alm_checkpoint_path(root, round_index)
    refuse_overlap(target, [root, dataset.image_root, *store_files(root)], inside_ok=True)
    path = save_checkpoint(alm, target)
    return alm, path, len(training), init is not None


def run_alm_eval(root: Path, checkpoint: Path, split: str = "test") -> dict[str, float]:
    """PCK@0.1 of the box on held-out annotated instances, beside the mean-shape baseline.

    `alm_pck` counts a labelled point the ALM hides as a miss; `alm_pck_ignoring_visibility` scores
    every labelled point at its predicted place (standard PCK, like the mean shape, which hides nothing).
    """
    from semcorr.alm.train import load_checkpoint, mean_shape_predictions, pck_of_box, predict

    dataset = store.load_dataset(root)
    splits = store.load_splits(root)
    held_out = [i for i in annotated_instances(dataset) if splits.get(i.image_id) == split and i.visible.any()]
    training = [i for i in annotated_instances(dataset) if splits.get(i.image_id) not in (split, None)]
    if not held_out:
        raise SemcorrError(f"no annotated instances in split {split} to evaluate on")
    alm = load_checkpoint(checkpoint)
    predicted = predict(alm, dataset, held_out)
    return {"instances": len(held_out), "alm_pck": pck_of_box(predicted, held_out),
            "alm_pck_ignoring_visibility": pck_of_box(predicted, held_out, use_visibility=False),
            "mean_shape_pck": pck_of_box(mean_shape_predictions(training, held_out, dataset), held_out)}


REVIEW_SETS = {1: "manual", 2: "alm1", 3: "alm2"}


def run_review_push(root: Path, round_index: int, url: str | None, token: str | None,
                    image_set: str | None = None, checkpoint: Path | None = None,
                    auto_accept: float | None = None) -> dict[str, int]:
    """Push a round's images to Label Studio: round 1 empty (manual), later rounds with ALM predictions.

    The images are the plan's set for the round (1 manual, 2 alm1, 3 alm2) unless `image_set`
    names one; predictions come from `checkpoint`, by default the round N-1 ALM.

    `auto_accept` P (off when None): once the tasks are pushed, every predicted visible keypoint
    whose calibrated score is at least P is written into the store as `auto-accepted` (round,
    annotator "alm", score), unless a person already placed or decided it; it stays in the pushed
    predictions, so reviewers see it and can correct it (their action wins at pull). The counts
    then include `auto_accepted`.
    """
    from semcorr.alm.train import load_checkpoint, predict
    from semcorr.annotation import review
    from semcorr.annotation.labelstudio import LabelStudio
    from semcorr.annotation.plan import check_splits, images_in, load_plan, record_push

    auto_accept = review.check_auto_accept(auto_accept)
    client = LabelStudio.from_env(url, token)
    dataset = store.load_dataset(root)
    plan = load_plan(root)
    splits = store.load_splits(root) if (Path(root) / store.SPLITS_FILE).exists() else {}
    check_splits(root, plan, splits)
    chosen = image_set or REVIEW_SETS.get(round_index, "alm2")
    image_ids = images_in(plan, chosen)
    members = [i for i in dataset.instances if i.image_id in set(image_ids)]
    if auto_accept is not None and chosen == "manual":
        raise SemcorrError(f"--auto-accept {auto_accept:g}: round {round_index} pushes the manual set, which has no "
                           "ALM predictions to accept; leave --auto-accept out for it")
    predictions = None
    if chosen != "manual":
        path = checkpoint or alm_checkpoint_path(root, round_index - 1)
        alm = load_checkpoint(path)
        predictions = predict(alm, dataset, members)
    # instances already labelled (other than by this round's own review) may be in the ALM's training data
    prelabelled = [i.id for i in members if review.labelled_before_round(i, round_index)]
    counts = review.push(client, root, dataset, image_ids, round_index, predictions)
    accepted_info = None
    if auto_accept is not None and predictions is not None:  # the store changes only once the push succeeded
        counts["auto_accepted"] = review.apply_auto_accept(dataset, predictions, auto_accept, round_index)
        if counts["auto_accepted"]:
            store.save_dataset(dataset, root)
        accepted_info = {"threshold": auto_accept, "keypoints": counts["auto_accepted"]}
    record_push(root, round_index, image_ids, prelabelled, auto_accept=accepted_info)
    return counts


def run_review_connect(root: Path, backend_url: str, url: str | None, token: str | None) -> dict[str, int]:
    """Attach the ALM backend at `backend_url` to each category's project (once); counts attached / already there.

    Label Studio asks a backend on connect (`/health`, `/setup`), so it must be running.
    """
    import urllib.parse

    from semcorr.annotation import review
    from semcorr.annotation.labelstudio import LabelStudio, to_plain

    parsed = urllib.parse.urlparse(backend_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise SemcorrError(f"--backend {backend_url!r}: not an http(s) URL; write it like http://127.0.0.1:9090")
    client = LabelStudio.from_env(url, token)
    problems = client.preflight()
    if problems:
        raise SemcorrError("; ".join(problems))
    dataset = store.load_dataset(root, check_files=False)
    counts = {"attached": 0, "already": 0}
    for category in sorted(dataset.categories.values(), key=lambda c: c.id):
        project = review.find_project(client, review.project_title(root, category.name))
        if project is None:
            continue
        attached = to_plain(client.call("GET /api/ml", client.sdk.ml.list, project=project["id"]))
        if any(b.get("url", "").rstrip("/") == backend_url.rstrip("/") for b in attached):
            counts["already"] += 1
            continue
        client.call("POST /api/ml", client.sdk.ml.create, project=project["id"], url=backend_url.rstrip("/"),
                    title="semcorr ALM", is_interactive=False)
        counts["attached"] += 1
    if not counts["attached"] + counts["already"]:
        raise SemcorrError(f"{root}: no Label Studio project of this dataset yet; run `semcorr review push` first")
    return counts


def run_review_pull(root: Path, round_index: int, url: str | None, token: str | None):
    """Export, keep the raw export, classify the reviewers' actions and merge them into the store."""
    from semcorr.annotation import review
    from semcorr.annotation.labelstudio import LabelStudio
    from semcorr.annotation.plan import PLAN_FILE, labelled_when_pushed, load_plan, mark_status

    client = LabelStudio.from_env(url, token)
    dataset = store.load_dataset(root)
    has_plan = (Path(root) / PLAN_FILE).exists()
    seen = labelled_when_pushed(load_plan(root), round_index) if has_plan else None
    reviews = review.pull(client, root, dataset, round_index)  # raw exports are saved before anything is merged
    changed = review.merge(dataset, reviews, round_index)
    store.save_dataset(dataset, root)
    if has_plan:
        mark_status(root, sorted({r.image_id for r in reviews if r.actions}), f"reviewed round {round_index}")
    return review.round_report(reviews, dataset, seen=seen), reviews, changed


def protected_inputs(root: Path, dataset: store.Dataset | None = None) -> list[Path]:
    """What a viewer or report output must never replace or lie inside: the store's files, images, annotation work."""
    from semcorr.annotation.plan import PLAN_FILE

    image_root = dataset.image_root if dataset is not None else Path(root) / store.IMAGES_DIR
    return [*store_files(root), Path(root) / store.IMAGES_DIR, image_root, (Path(root) / PLAN_FILE).parent]


def checked_png_target(out: Path, inputs: list[Path]) -> Path:
    """`out` as a PNG path that replaces no input; SemcorrError otherwise."""
    out = Path(out)
    if out.suffix.lower() != ".png" or out.is_dir():
        raise SemcorrError(f"--out {out}: give the path of a .png file to write")
    refuse_overlap(out, inputs, "--out")
    return out


def run_show_pair(root: Path, pair_id: int, out: Path | None = None, height: int | None = None) -> Path:
    """Draw one pair of a dataset directory or an SPair-layout export into a PNG; returns its path."""
    from semcorr.viewers.drawing import png_bytes
    from semcorr.viewers.pair_view import is_spair_export, pair_from_spair_export, pair_from_store, render_pair

    root = Path(root)
    out = Path(out) if out else Path(f"pair_{int(pair_id)}.png")
    if is_spair_export(root) and not (root / store.ANNOTATIONS_FILE).exists():
        checked_png_target(out, [root])
        view = pair_from_spair_export(root, pair_id)
    elif (root / store.ANNOTATIONS_FILE).is_file() or not root.is_dir():
        checked_png_target(out, protected_inputs(root))
        view = pair_from_store(root, pair_id)
    else:
        raise SemcorrError(f"{root}: neither a dataset directory (no {store.ANNOTATIONS_FILE}) nor an SPair-layout "
                           "export (no Layout/large); give one of them")
    atomic.write_bytes(out, png_bytes(render_pair(view, height=height)))
    return out


def run_show_image(root: Path, image_id: int, out: Path | None = None) -> Path:
    """Draw one image of a dataset directory with its annotations into a PNG; returns its path."""
    from semcorr.viewers.drawing import png_bytes
    from semcorr.viewers.image_view import render_image

    out = Path(out) if out else Path(f"image_{int(image_id)}.png")
    dataset = store.load_dataset(root, check_files=False)
    checked_png_target(out, protected_inputs(root, dataset))
    atomic.write_bytes(out, png_bytes(render_image(dataset, image_id)))
    return out


def run_report(root: Path, out_dir: Path | None, options, progress: Progress = None):
    """Write the dataset report (index.html, img/, stats/) into `out_dir`, replaced atomically.

    `out_dir` defaults to `<dataset name>-report` in the current folder; it may not be, hold or
    lie inside the dataset, its images, the --qc file or a --schema-dir. Returns the
    `viewers.report.ReportSummary`.
    """
    from semcorr.paths import refuse_file_target
    from semcorr.viewers.report import write_report

    root = Path(root)
    dataset = store.load_dataset(root, check_files=False)
    out_dir = Path(out_dir) if out_dir else Path(f"{root.resolve().name}-report")
    refuse_file_target(out_dir, "--out")
    refuse_overlap(out_dir, [root, dataset.image_root, options.qc, *options.schema_dirs], "--out")
    if options.max_pairs_per_cell < 0 or options.qc_rows < 1 or options.thumbnail_height < 32:
        raise SemcorrError("--max-pairs-per-cell must be >= 0, --qc-rows >= 1 and --thumbnail-height >= 32")
    has_pairs = (root / store.PAIRS_FILE).is_file()
    with atomic.staged_directory(out_dir, "report") as staging:
        stats = run_stats(root, staging / "stats", dataset) if has_pairs else None
        summary = write_report(staging, root, dataset, stats, options, progress)
    summary.path = out_dir / "index.html"
    return summary
