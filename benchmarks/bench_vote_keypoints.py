"""Benchmark `semcorr vote-keypoints` on each real prototype at 512 x 512 views.

Runs the full command once per mesh in ../shared/data/prototypes as a separate process and
records its wall time and peak memory (the child's maximum resident set size).
Targets: <= 10 s and <= 2 GB per prototype.

Usage: .venv/bin/python benchmarks/bench_vote_keypoints.py [--work benchmarks/_work_vote]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTOTYPES = REPO.parent / "shared" / "data" / "prototypes"
FRONT_AXES = {"chair_model.obj": "-x", "Duck.glb": "+z", "CesiumMilkTruck.glb": "+x", "bunny.ply": "+z"}


def run_once(mesh: Path, out: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, summary line) of one vote-keypoints process."""
    command = [sys.executable, "-m", "semcorr.cli", "vote-keypoints", str(mesh), "--category", mesh.stem.lower(),
               "--front-axis", FRONT_AXES.get(mesh.name, "+z"), "--size", "512", "--out", str(out)]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "COLUMNS": "200"})
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{mesh.name}: vote-keypoints failed:\n{output}")
    summary = next((line for line in output.splitlines() if " keypoints (" in line), "")
    return wall, usage.ru_maxrss / 1024, summary.strip()


def main() -> int:
    """Run the benchmark and print one row per prototype."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/_work_vote"))
    args = parser.parse_args()
    if not PROTOTYPES.is_dir():
        print(f"skipped: {PROTOTYPES} is absent")
        return 0
    print(f"{'prototype':<22} {'wall':>8} {'peak RSS':>10}  targets <= 10 s, <= 2048 MiB")
    for mesh in sorted(PROTOTYPES.iterdir()):
        wall, rss, summary = run_once(mesh, args.work / mesh.stem)
        verdict = "PASS" if wall <= 10 and rss <= 2048 else "FAIL"
        print(f"{mesh.name:<22} {wall:>7.2f}s {rss:>7.0f} MiB  {verdict}  {summary}")
    shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
