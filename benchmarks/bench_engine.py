"""`--engine ray` against `--engine local` on this machine: `synth` images/s and `alm predict` crops/s.

One run measures both engines on the same inputs (ratio from one run; each engine `--repeat` times in
alternating order, the fastest kept) and checks that they wrote the same bytes. Ray is started once with this machine's cores (its start-up time is reported apart); each
engine's wall time includes its workers' start (actors import torch, open a renderer, load the
checkpoint), as a CLI run would. Also measured, for the estimate of N nodes: the CPU seconds of the
whole process tree (driver, raylet, workers; the per-image cost whatever else loads the machine), the
driver's own CPU seconds per image on Ray (writing JPEGs, assembling annotations: the part that does
not spread), and the bytes per image that travel through the object store and land on disk.

The ALM is an untrained network of `--backbone` at `--crop` (the default recipe's shape: the time of a
crop does not depend on the weights); each instance is one crop, predicted with the flip test. A
second Ray run with one torch thread per actor (`--threads 1`, as many actors as cores) shows what
the pool gives when bytes identical to local are not required (see `semcorr.alm.distributed`).

Usage: .venv/bin/python benchmarks/bench_engine.py --work /tmp/bench-engine [--images 200] [--size 400x300]
       [--crops 240] [--crop 256] [--backbone efficientnet-lite0] [--cpus N] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semcorr import commands, engine, store  # noqa: E402
from semcorr.alm.distributed import predict_instances  # noqa: E402
from semcorr.alm.model import KeypointNet  # noqa: E402
from semcorr.alm.train import ALM, save_checkpoint  # noqa: E402
from semcorr.synth.generate import SynthOptions  # noqa: E402
from semcorr.synth.prototypes import builtin_prototype  # noqa: E402

CATEGORIES = ("chair", "car", "airplane")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages of this machine."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def tree_times(root: int) -> dict[tuple[int, int], int]:
    """(pid, start tick) -> user + system clock ticks of process `root` and every process below it (on a
    local Ray: the raylet, the object store and the workers)."""
    parents, times = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[19]), int(fields[11]) + int(fields[12]))  # starttime, utime + stime
    tree, grown = {root}, True
    while grown:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        grown, tree = bool(below), tree | below
    return {(pid, times[pid][0]): times[pid][1] for pid in tree if pid in times}


class CpuMeter:
    """CPU seconds of this process tree while a block runs, sampled every `every` seconds per process
    (a worker that exits between two samples loses at most `every` seconds: Ray does not leave the
    times of its dead workers to their parent)."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.first, self.last = every, {}, {}
        self._stop = threading.Event()

    def _sample(self) -> None:
        for key, ticks in tree_times(os.getpid()).items():
            self.first.setdefault(key, ticks)
            self.last[key] = ticks

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> "CpuMeter":
        self._sample()
        self.first = {key: ticks for key, ticks in self.last.items()}  # processes already running: from now
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def seconds(self) -> float:
        started = self.first
        return sum(ticks - started.get(key, 0) for key, ticks in self.last.items()) / os.sysconf("SC_CLK_TCK")


def timed(func, *args, **kwargs) -> tuple[dict[str, float], object]:
    """({wall_s, driver_cpu_s, all_cpu_s}, result) of one call; all_cpu_s counts every process below this one."""
    wall, cpu = time.perf_counter(), time.process_time()
    with CpuMeter() as meter:
        result = func(*args, **kwargs)
    return {"wall_s": round(time.perf_counter() - wall, 2), "driver_cpu_s": round(time.process_time() - cpu, 2),
            "all_cpu_s": round(meter.seconds(), 2)}, result


def files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under `root`."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def untrained_checkpoint(dataset: store.Dataset, backbone: str, crop: int, path: Path) -> Path:
    """An ALM checkpoint of the store's categories with random weights (timing only)."""
    keypoints = {c.name: list(c.keypoints) for c in dataset.categories.values()}
    model = KeypointNet({k: len(v) for k, v in keypoints.items()}, backbone, pretrained=False)
    alm = ALM(model=model, keypoints=keypoints, backbone=backbone, crop_size=crop, round=1, data_hash="bench")
    return save_checkpoint(alm, path)


def best_of(runs: dict[str, tuple], repeat: int) -> tuple[dict[str, dict], dict[str, object]]:
    """Each named run `repeat` times, the order reversed every other round (load on a shared machine
    drifts); per run the timings of its fastest wall time (`timed`), and the last result."""
    timings: dict[str, dict] = {}
    results: dict[str, object] = {}
    names = list(runs)
    for round_index in range(repeat):
        for name in names if round_index % 2 == 0 else names[::-1]:
            func, args, kwargs = runs[name]
            took, results[name] = timed(func, *args, **kwargs)
            if name not in timings or took["wall_s"] < timings[name]["wall_s"]:
                timings[name] = took
    return timings, results


def bench_synth(work: Path, options: SynthOptions, repeat: int) -> dict:
    prototypes = [builtin_prototype(name) for name in CATEGORIES]
    runs = {name: (commands.run_synth, (work / f"synth-{name}", prototypes, options), {"engine": runner})
            for name, runner in (("local", engine.LOCAL), ("ray", engine.Engine(kind="ray")))}
    out, _ = best_of(runs, repeat)
    images = len(prototypes) * options.images_per_category
    local, ray_tree = files(work / "synth-local"), files(work / "synth-ray")
    jpeg = sum(len(v) for k, v in local.items() if k.endswith(".jpg"))
    return {"images": images, **out, "identical": local == ray_tree,
            "jpeg_bytes_per_image": round(jpeg / images), "annotations_bytes": len(local["annotations.json"])}


def bench_predict(work: Path, backbone: str, crop: int, repeat: int, crops: int) -> dict:
    dataset = store.load_dataset(work / "synth-local")
    checkpoint = untrained_checkpoint(dataset, backbone, crop, work / "alm.pt")
    members = dataset.instances[:crops]
    runs = {name: (predict_instances, (runner, checkpoint, dataset, members, 1 / 3), {"threads": threads})
            for name, runner, threads in (("local", engine.LOCAL, None), ("ray", engine.Engine(kind="ray"), None),
                                          ("ray_1_thread_per_actor", engine.Engine(kind="ray"), 1))}
    out, results = best_of(runs, repeat)
    for name in ("ray", "ray_1_thread_per_actor"):
        out[name]["identical"] = all(results[name][k].round(3).tobytes() == results["local"][k].round(3).tobytes()
                                     for k in results["local"])
    return {"crops": len(members), "backbone": backbone, "crop": crop, **out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (replaced)")
    parser.add_argument("--images", type=int, default=200, help="synth images per category (3 categories)")
    parser.add_argument("--size", default="400x300")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=2, help="runs per engine, the fastest kept")
    parser.add_argument("--crops", type=int, default=240, help="instances predicted (the first of the synth store)")
    args = parser.parse_args()
    import ray
    import torch

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    width, height = (int(v) for v in args.size.split("x"))
    report = {"command": " ".join(sys.argv), "cpus": args.cpus, "torch_threads": torch.get_num_threads(),
              "loadavg_start": load_average()}
    started = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             _temp_dir=tempfile.mkdtemp(prefix="scray", dir="/tmp"))
    report["ray_start_s"] = round(time.perf_counter() - started, 2)
    try:
        report["synth"] = bench_synth(args.work, SynthOptions(images_per_category=args.images, width=width,
                                                              height=height, seed=0), args.repeat)
        report["alm_predict"] = bench_predict(args.work, args.backbone, args.crop, args.repeat, args.crops)
    finally:
        ray.shutdown()
    report["loadavg_end"] = load_average()
    synth, alm = report["synth"], report["alm_predict"]
    print(json.dumps(report, indent=1))
    print("\n| step | local /s | ray /s | ray / local | CPU s per item, local | CPU s per item, ray | driver CPU s per "
          "item, ray |\n|---|---|---|---|---|---|---|")
    for label, count, part, keys in (("synth images", synth["images"], synth, ("local", "ray")),
                                     ("alm predict crops", alm["crops"], alm, ("local", "ray")),
                                     ("alm predict crops, 1 thread x cores actors", alm["crops"], alm,
                                      ("local", "ray_1_thread_per_actor"))):
        local, on_ray = (part[k] for k in keys)
        print(f"| {label} | {count / local['wall_s']:.2f} | {count / on_ray['wall_s']:.2f} | "
              f"{local['wall_s'] / on_ray['wall_s']:.2f} | {local['all_cpu_s'] / count:.4f} | "
              f"{on_ray['all_cpu_s'] / count:.4f} | {on_ray['driver_cpu_s'] / count:.4f} |")
    print(f"\nRay start {report['ray_start_s']} s; load average {report['loadavg_start']} -> {report['loadavg_end']}")
    (args.work / "bench_engine.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
