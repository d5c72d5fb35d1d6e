"""Patch pairs scored per second by each architecture (inference, 64 x 64 grayscale pairs from
memory), on CUDA when present (mixed precision, channels-last), else the CPU. Siamese models
are timed as full pair scoring (both descriptors computed for every pair). Target on one H100 with mixed precision: >= 100,000 pairs/s for 2ch.

Usage: .venv/bin/python benchmarks/bench_patchnet.py [--batch 1024] [--seconds 3] [--arch 2ch ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semcorr.patchnet.models import ARCHITECTURES, PatchNet  # noqa: E402


def pairs_per_second(model: PatchNet, batch: int, seconds: float, device: torch.device) -> float:
    """Score random pairs in batches for about `seconds`; pairs per second."""
    cuda = device.type == "cuda"
    a = torch.randn(batch, model.channels, 64, 64, device=device)
    b = torch.randn(batch, model.channels, 64, 64, device=device)
    if cuda:
        a, b = a.to(memory_format=torch.channels_last), b.to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
        for _ in range(3):
            model(a, b)
        if cuda:
            torch.cuda.synchronize()
        start, done = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            model(a, b)
            done += batch
            if cuda:
                torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def main() -> int:
    """Print one line per architecture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--arch", action="append", default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; batch {args.batch}")
    for architecture in args.arch or ARCHITECTURES:
        torch.manual_seed(0)
        model = PatchNet(architecture).to(device).eval()
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        rate = pairs_per_second(model, args.batch, args.seconds, device)
        print(f"{architecture:16s} {rate:12,.0f} pairs/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
