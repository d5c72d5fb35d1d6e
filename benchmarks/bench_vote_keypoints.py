"""Benchmark `semcorr vote-keypoints` on each real prototype at 512 x 512 views.

Runs the full command once per mesh in ../shared/data/prototypes as a separate process and
records its wall time and peak memory (the child's maximum resident set size).
Targets: <= 10 s and <= 2 GB per prototype.

Usage: .venv/bin/python benchmarks/bench_vote_keypoints.py [--work benchmarks/_work_vote] [--keep]
(--keep leaves each prototype's output folder, contact sheets included, under --work)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTOTYPES = REPO.parent / "shared" / "data" / "prototypes"
FRONT_AXES = {"chair_model.obj": "-x", "Duck.glb": "+x", "CesiumMilkTruck.glb": "+x", "bunny.ply": "+z"}


def run_once(mesh: Path, out: Path) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS MiB, summary line) of one vote-keypoints process."""
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
    found = re.search(r"\d+ keypoints \([^)]*\), \d+ flip pairs", " ".join(output.split()))
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss / 1024, found.group(0) if found else ""


def main() -> int:
    """Run the benchmark and print one row per prototype."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/_work_vote"))
    parser.add_argument("--keep", action="store_true", help="keep the output folders (contact sheets)")
    args = parser.parse_args()
    if not PROTOTYPES.is_dir():
        print(f"skipped: {PROTOTYPES} is absent")
        return 0
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (CPU time is the child's "
          "user + system time: what the run costs whatever else the machine is doing)")
    print(f"{'prototype':<22} {'wall':>8} {'CPU':>8} {'peak RSS':>10}  targets <= 10 s, <= 2048 MiB")
    for mesh in sorted(PROTOTYPES.iterdir()):
        wall, cpu, rss, summary = run_once(mesh, args.work / mesh.stem)
        verdict = "PASS" if wall <= 10 and rss <= 2048 else "FAIL"
        print(f"{mesh.name:<22} {wall:>7.2f}s {cpu:>7.2f}s {rss:>7.0f} MiB  {verdict}  {summary}")
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
