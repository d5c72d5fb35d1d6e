"""Training, scoring and checkpoints of patch-comparison networks (GPU when present, else CPU)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from semcorr import atomic
from semcorr.errors import SemcorrError
from semcorr.patchnet.models import PatchNet, hinge_loss
from semcorr.patchnet.patches import PatchPairs, normalise


@dataclass
class PatchTrainOptions:
    """Patch-network training options: Adam with weight decay and a one-cycle schedule (the paper
    used averaged SGD; Adam reaches a usable network in far fewer steps on a CPU)."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 5e-4
    augment: bool = True
    seed: int = 0


def device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _augment(first: torch.Tensor, second: torch.Tensor, generator: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's augmentation: the same random flip and 90-degree rotation for both patches."""
    if torch.rand(1, generator=generator).item() < 0.5:
        first, second = first.flip(-1), second.flip(-1)
    turns = int(torch.randint(0, 4, (1,), generator=generator).item())
    return torch.rot90(first, turns, (-2, -1)), torch.rot90(second, turns, (-2, -1))


def train(architecture: str, data: PatchPairs, options: PatchTrainOptions, progress=None) -> PatchNet:
    """Train one architecture on labelled patch pairs with the hinge loss."""
    torch.manual_seed(options.seed)
    run_on = device()
    cuda = run_on.type == "cuda"
    if not cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)
    channels = 1 if data.first.ndim == 3 else data.first.shape[-1]
    model = PatchNet(architecture, channels).to(run_on)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    first = torch.from_numpy(normalise(data.first))
    second = torch.from_numpy(normalise(data.second))
    labels = torch.from_numpy(data.labels.astype(np.float32) * 2 - 1)
    optimiser = torch.optim.AdamW(model.parameters(), options.learning_rate, weight_decay=options.weight_decay)
    scaler = torch.amp.GradScaler(enabled=cuda)
    generator = torch.Generator().manual_seed(options.seed)
    steps = options.epochs * -(-len(labels) // options.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, options.learning_rate, total_steps=steps)
    task = progress.add_task(f"train {architecture}", total=steps) if progress else None
    model.train()
    for _ in range(options.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), options.batch_size):
            index = order[start: start + options.batch_size]
            a, b = first[index].to(run_on), second[index].to(run_on)
            if options.augment:
                a, b = _augment(a, b, generator)
            if torch.rand(1, generator=generator).item() < 0.5:
                a, b = b, a  # the order of a pair carries no meaning
            with torch.autocast(run_on.type, dtype=torch.float16, enabled=cuda):
                loss = hinge_loss(model, model(a, b).float(), labels[index].to(run_on))
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            schedule.step()
            if progress:
                progress.update(task, advance=1, description=f"train {architecture} loss {loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def score(model: PatchNet, first: np.ndarray, second: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Similarity of each pair of uint8 patches (larger = more alike)."""
    run_on = next((p.device for p in model.parameters()), torch.device("cpu"))
    cuda = run_on.type == "cuda"
    model.eval()
    out = []
    for start in range(0, len(first), batch_size):
        a = torch.from_numpy(normalise(first[start: start + batch_size])).to(run_on)
        b = torch.from_numpy(normalise(second[start: start + batch_size])).to(run_on)
        with torch.autocast(run_on.type, dtype=torch.float16, enabled=cuda):
            out.append(model(a, b).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def save_checkpoint(model: PatchNet, path: Path, meta: dict | None = None) -> Path:
    """Weights plus architecture, channels and `meta` (plain values), loadable with weights_only=True."""
    import io

    buffer = io.BytesIO()
    torch.save({"architecture": model.architecture, "channels": model.channels, "meta": meta or {},
                "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, buffer)
    atomic.write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def load_checkpoint(path: Path, architecture: str | None = None) -> PatchNet:
    """The network in a checkpoint; one-line SemcorrError naming the file and what is wrong when it is
    missing, unreadable, an ALM checkpoint, missing keys, or of another architecture."""
    from semcorr.alm.train import read_torch_file
    from semcorr.patchnet.models import ARCHITECTURES

    path = Path(path)
    state = read_torch_file(path, "patchnet")
    if not isinstance(state, dict):
        raise SemcorrError(f"{path}: not a patchnet checkpoint (holds a {type(state).__name__}, not a dict); "
                           "give a file written by `semcorr patchnet train`")
    if "architecture" not in state and str(state.get("format", "")).startswith("semcorr-alm"):
        raise SemcorrError(f"{path}: an ALM checkpoint, not a patchnet one; give a file written by "
                           "`semcorr patchnet train`")
    missing = [key for key in ("architecture", "channels", "state_dict") if key not in state]
    if missing:
        raise SemcorrError(f"{path}: not a patchnet checkpoint: missing {', '.join(missing)}; give a file "
                           "written by `semcorr patchnet train`")
    stored, channels, weights = state["architecture"], state["channels"], state["state_dict"]
    if stored not in ARCHITECTURES:
        raise SemcorrError(f"{path}: damaged patchnet checkpoint: architecture {stored!r} is not one of "
                           f"{', '.join(ARCHITECTURES)}")
    if isinstance(channels, bool) or channels not in (1, 3):
        raise SemcorrError(f"{path}: damaged patchnet checkpoint: channels {channels!r} is not 1 or 3")
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise SemcorrError(f"{path}: damaged patchnet checkpoint: state_dict must map names to tensors")
    meta = state.get("meta", {})
    if not isinstance(meta, dict):
        raise SemcorrError(f"{path}: damaged patchnet checkpoint: meta is a {type(meta).__name__}, not a dict")
    if architecture is not None and stored != architecture:
        raise SemcorrError(f"{path}: a {stored} checkpoint, not {architecture}; train {architecture} or pick "
                           f"--arch {stored}")
    model = PatchNet(stored, channels)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise SemcorrError(f"{path}: the weights do not fit the {stored} network ({' '.join(first.split())[:160]})"
                           "; train again") from None
    model.meta = meta
    return model.to(device()).eval()


def options_dict(options: PatchTrainOptions) -> dict:
    """Options as plain values for checkpoints and reports."""
    return asdict(options)


def timed(function, *args, **kwargs):
    """(result, seconds)."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start
