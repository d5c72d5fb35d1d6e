"""ALM throughput: training and inference crops per second at 256 x 256, on CUDA when present
(mixed precision, channels-last), else on the CPU. Random crops measure the network
alone; `--loop DATASET` also times the whole training loop (data path included). Targets on one H100: >= 1,500 training and >= 5,000 inference crops/s.

Usage: .venv/bin/python benchmarks/bench_alm.py [--batch 64] [--steps 20] [--backbone efficientnet-lite0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semcorr.alm.data import STRIDE  # noqa: E402
from semcorr.alm.model import KeypointNet  # noqa: E402
from semcorr.alm.train import keypoint_loss  # noqa: E402


def main() -> int:
    """Measure and print crops/s for training and inference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--loop", type=Path, help="also time the whole training loop on this dataset directory")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the --loop run")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    model = KeypointNet({"thing": 17}, args.backbone, pretrained=False).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if cuda:
        images = images.to(memory_format=torch.channels_last)
    side = args.size // STRIDE
    targets = torch.rand(args.batch, 17, side, side, device=device)
    visible = (torch.rand(args.batch, 17, device=device) > 0.3).float()
    optimiser = torch.optim.Adam(model.parameters(), 1e-3)
    scaler = torch.amp.GradScaler(enabled=cuda)

    def train_step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            heat, vis = model(images, "thing")
            loss = keypoint_loss(heat.float(), vis.float(), targets, visible)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()

    def timed(step, count: int) -> float:
        for _ in range(2):
            step()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(count):
            step()
        if cuda:
            torch.cuda.synchronize()
        return count * args.batch / (time.perf_counter() - start)

    model.train()
    train_rate = timed(train_step, args.steps)
    model.eval()

    @torch.no_grad()
    def infer_step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            model(images, "thing")

    infer_rate = timed(infer_step, args.steps)
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{name}, {args.backbone}, batch {args.batch}, {args.size}x{args.size}: "
          f"training {train_rate:,.0f} crops/s, inference {infer_rate:,.0f} crops/s (network only)")
    if args.loop is not None:
        from semcorr import store
        from semcorr.alm.train import TrainOptions, train

        dataset = store.load_dataset(args.loop)
        instances = [i for i in dataset.instances if i.visible.any()]
        options = TrainOptions(backbone=args.backbone, pretrained=False, crop_size=args.size, epochs=args.epochs,
                               batch_size=args.batch, validation_share=0.0, seed=0)
        history = train(dataset, instances, options).history
        rates = [h["crops_per_s"] for h in history[1:]] or [history[0]["crops_per_s"]]
        print(f"{name}: the whole training loop on {args.loop} (decode, augment, heatmaps, DataLoader, network), "
              f"{len(instances)} instances, {len(history)} epochs: {sum(rates) / len(rates):,.0f} crops/s "
              "(first epoch left out: it decodes the images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
