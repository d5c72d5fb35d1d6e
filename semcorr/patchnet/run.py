"""The `patchnet train`, `patchnet eval` and `qc` commands: files in, tables and files out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from semcorr import atomic, store
from semcorr.engine import LOCAL, Engine
from semcorr.errors import SemcorrError
from semcorr.patchnet import metrics, qc
from semcorr.patchnet.models import ARCHITECTURES
from semcorr.patchnet.patches import PatchPairs, sample_pairs
from semcorr.patchnet.phototour import load_phototour
from semcorr.patchnet.train import PatchTrainOptions, load_checkpoint, options_dict, save_checkpoint, score, timed
from semcorr.patchnet.train import train as train_network


def is_phototour(path: Path) -> bool:
    """A Photo Tour folder has info.txt; a dataset directory has annotations.json."""
    return (Path(path) / "info.txt").is_file() and not (Path(path) / store.ANNOTATIONS_FILE).is_file()


def patch_pairs(source: Path, split: str, count: int, seed: int) -> PatchPairs:
    """Labelled patch pairs from a dataset directory's split (sampled), or a Photo Tour folder's match file."""
    if is_phototour(source):
        data = load_phototour(source)
        chosen = np.random.default_rng(seed).permutation(len(data.pairs))[:count]
        pairs = data.pairs[np.sort(chosen)]
        labels = data.labels[np.sort(chosen)]
        return PatchPairs(data.patches[pairs[:, 0]], data.patches[pairs[:, 1]], labels,
                          np.where(labels == 1, "match", "non_match"))
    dataset = store.load_dataset(source)
    table = store.load_pairs(source, dataset)
    rows = table if split == "all" else table[table.split.astype(str) == split]
    if rows.empty:
        raise SemcorrError(f"{Path(source) / store.PAIRS_FILE}: no pairs in split {split!r}; run build-pairs")
    return sample_pairs(dataset, rows, count, seed)


@dataclass
class PatchnetTable:
    """One row per architecture (FPR95 and AUC on the evaluation pairs) and the files written."""

    table: pd.DataFrame
    files: list[Path] = field(default_factory=list)


def run_patchnet_train(source: Path, architectures: list[str], out_dir: Path, options: PatchTrainOptions,
                       train_pairs: int = 20000, test_pairs: int = 5000, test_source: Path | None = None,
                       progress=None) -> PatchnetTable:
    """Train each architecture on the trn split (or a Photo Tour folder), evaluate on the test split
    (or `test_source`); write `<arch>.pt`, `patchnet_table.csv` and `roc.png` into `out_dir`."""
    unknown = [a for a in architectures if a not in ARCHITECTURES]
    if unknown:
        raise SemcorrError(f"--arch {', '.join(unknown)}: choose from {', '.join(ARCHITECTURES)}")
    training = patch_pairs(source, "trn", train_pairs, options.seed)
    testing = patch_pairs(test_source or source, "test", test_pairs, options.seed + 1)
    out_dir = Path(out_dir)
    rows, curves, files = [], {}, []
    for architecture in architectures:
        model, seconds = timed(train_network, architecture, training, options, progress)
        scores = score(model, testing.first, testing.second)
        files.append(save_checkpoint(model, out_dir / f"{architecture}.pt",
                                     {"options": options_dict(options), "train_pairs": len(training),
                                      "source": str(Path(source).resolve())}))
        curves[architecture] = (scores, testing.labels)
        rows.append(_row(architecture, scores, testing, len(training), seconds))
    return _write_table(rows, curves, out_dir, files, "patch pairs: ROC on the test pairs")


def _row(architecture: str, scores: np.ndarray, testing: PatchPairs, trained_on: int, seconds: float | None) -> dict:
    row = {"architecture": architecture, "train_pairs": trained_on, "test_pairs": len(testing),
           "fpr95": round(metrics.fpr_at_recall(scores, testing.labels), 2),
           "auc": round(metrics.auc(scores, testing.labels), 4)}
    return row if seconds is None else {**row, "train_seconds": round(seconds, 1)}


def _write_table(rows: list[dict], curves: dict, out_dir: Path, files: list[Path], title: str) -> PatchnetTable:
    table = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out_dir / "patchnet_table.csv", table.to_csv(index=False))
    files += [out_dir / "patchnet_table.csv", metrics.plot_roc(curves, out_dir / "roc.png", title)]
    return PatchnetTable(table, files)


def run_patchnet_eval(source: Path, checkpoints: list[Path], out_dir: Path, split: str = "test",
                      pairs: int = 5000, seed: int = 1) -> PatchnetTable:
    """FPR95 / AUC / ROC of trained checkpoints on a dataset split or a Photo Tour folder."""
    testing = patch_pairs(source, split, pairs, seed)
    rows, curves = [], {}
    for path in checkpoints:
        model = load_checkpoint(path)
        scores = score(model, testing.first, testing.second)
        name = f"{model.architecture} ({Path(path).name})" if len(checkpoints) > 1 else model.architecture
        curves[name] = (scores, testing.labels)
        rows.append(_row(model.architecture, scores, testing, model.meta.get("train_pairs", 0), None))
    return _write_table(rows, curves, Path(out_dir), [], f"patch pairs: ROC on {split}")


@dataclass
class QcResult:
    """What `qc` found and wrote."""

    suspects: pd.DataFrame
    images: pd.DataFrame
    cycles: pd.DataFrame
    correspondences: int
    padded: int
    files: list[Path]
    chains: int = 0


def run_qc(root: Path, checkpoint: Path | None, out_dir: Path, top: int = 20, split: str = "all", triples: int = 20,
           seed: int = 0, architecture: str | None = None, engine: Engine = LOCAL) -> QcResult:
    """Give every labelled keypoint its mask, shape, swap and appearance cues and one combined
    suspicion (`qc.check_keypoints`); rank keypoints and images; check cycle consistency on
    multi-instance (MISC) pairs; write CSVs and a contact sheet.

    Without `checkpoint` the appearance cue compares non-learned gradient descriptors; `engine` runs
    the per-instance mask work (`qc.mask_column`) here or on Ray, with the same tables.
    """
    dataset = store.load_dataset(root)
    pairs = store.load_pairs(root, dataset)
    if split != "all":
        pairs = pairs[pairs.split.astype(str) == split]
    if pairs.empty:
        raise SemcorrError(f"{Path(root) / store.PAIRS_FILE}: no pairs to check in split {split!r}")
    model = load_checkpoint(checkpoint, architecture) if checkpoint is not None else None
    bank = qc.patch_bank(dataset, grayscale=model is None or model.channels == 1)
    scorer = qc.network_scorer(model, bank) if model is not None else qc.descriptor_scorer(bank)
    correspondences = qc.correspondence_scores(dataset, pairs, scorer, bank)
    suspects = qc.check_keypoints(dataset, correspondences, bank, engine)
    images = qc.image_suspicion(suspects)
    cycles, chains = pd.DataFrame(columns=["category", "kind"]), 0
    if "src_ann_id" not in pairs.columns:  # multi-instance (MISC) pairs
        checked = [qc.cycle_check(scorer, bank, qc.image_triples(pairs, name, triples, seed), name)
                   for name in sorted(pairs.category.astype(str).unique())]
        cycles = pd.concat([c for c, _ in checked], ignore_index=True)
        chains = sum(n for _, n in checked)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name, table in (("suspects.csv", suspects), ("suspect_images.csv", images), ("cycles.csv", cycles)):
        atomic.write_text(out_dir / name, table.to_csv(index=False, float_format="%.4f"))
        files.append(out_dir / name)
    files.append(qc.suspect_sheet(dataset, bank, suspects, correspondences, out_dir / "suspects.png", top))
    return QcResult(suspects, images, cycles, len(correspondences), bank.padded, files, chains)


def task_notes(suspects: pd.DataFrame, image_ids: list[int], per_image: int = 3) -> dict[int, str]:
    """Per image: its most suspect keypoints with the cue that fired, for the reviewer to look at first.

    A suspects table without cue columns (from `qc` before the cues, or made by hand) gives no notes.
    """
    if not {"cue", "reason", "name"} <= set(suspects.columns):
        return {}
    chosen = suspects[suspects.image_id.isin(image_ids) & (suspects.cue.fillna("") != "")]
    return {int(image_id): "; ".join(f"{r.name} (ann {r.ann_id}): {r.cue} - {r.reason}"
                                     for r in group.head(per_image).itertuples())
            for image_id, group in chosen.groupby("image_id", sort=True)}


def push_suspects(root: Path, suspects: pd.DataFrame, round_index: int, url: str | None, token: str | None,
                  top: int) -> dict[str, int]:
    """Send the images of the `top` suspects to Label Studio as a review round: the current labels
    go as predictions, each keypoint's score 1 minus its share of the worst suspicion (0 for a point
    clearly off its mask, `cues.OFF_MASK`); each task's
    data gets `semcorr_qc`, the suspects and the cue that fired (`task_notes`)."""
    from semcorr.annotation import review
    from semcorr.annotation.labelstudio import LabelStudio

    dataset = store.load_dataset(root)
    chosen = suspects.head(top)
    image_ids = sorted(set(chosen.image_id.astype(int)))
    worst = max(float(suspects.suspicion.max()), 1e-6)
    off = suspects.off_mask if "off_mask" in suspects else pd.Series(False, index=suspects.index)
    suspicion = {(int(a), int(k)): worst if o else float(s)
                 for a, k, s, o in zip(suspects.ann_id, suspects.keypoint, suspects.suspicion, off)}
    predictions = {}
    for inst in dataset.instances:
        if inst.image_id in image_ids:
            confidence = [1.0 - max(0.0, suspicion.get((inst.id, k), 0.0)) / worst for k in range(len(inst.keypoints))]
            predictions[inst.id] = np.column_stack([inst.keypoints[:, :3], np.clip(confidence, 0, 1)])
    client = LabelStudio.from_env(url, token)
    notes = task_notes(suspects, image_ids)
    counts = review.push(client, root, dataset, image_ids, round_index, predictions, notes)
    counts["noted"] = 0  # tasks that existed before this push and get their notes now
    for category in sorted({dataset.categories[i.category_id].name for i in dataset.instances
                            if i.image_id in notes}):
        project = review.find_project(client, review.project_title(root, category))
        for task in client.all_tasks(project["id"]) if project else []:
            image_id = task.get("data", {}).get("semcorr_image_id")
            if image_id in notes and task["data"].get("semcorr_qc") != notes[image_id]:
                client.patch(f"/api/tasks/{task['id']}", {"data": {**task["data"], "semcorr_qc": notes[image_id]}})
                counts["noted"] += 1
    return counts
