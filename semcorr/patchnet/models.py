"""Patch-comparison networks of Zagoruyko & Komodakis, "Learning to Compare Image Patches via
Convolutional Neural Networks" (CVPR 2015), in torch.

Every model maps two batches of patches (N, C, 64, 64) to a similarity score (N,), larger
meaning more alike; models ending in `-l2` score with minus the L2 distance between
descriptors (they are trained with a hinge embedding loss on that distance, the others with
the hinge loss on the score). Layers follow the paper's notation: C(n, k, s) a convolution
with n filters of size k and stride s followed by ReLU, P(k, s) max pooling, F(n) fully
connected.

- siam / siam-l2: one branch (shared weights) per patch, C(96,7,3)-P(2,2)-C(192,5,1)-P(2,2)-
  C(256,3,1), a descriptor of 256; decision network F(512)-F(1) on the concatenation, or L2.
- pseudo-siam: the same with unshared branches.
- 2ch: both patches as the channels of one input, C(96,7,3)-P(2,2)-C(192,5,1)-P(2,2)-
  C(256,3,1)-F(256)-F(1).
- *-2stream (central-surround): a central stream on the middle 32 x 32 at full resolution and
  a surround stream on the whole patch downsampled to 32 x 32, each C(96,5,1)-P(2,2)-C(96,3,1)-
  P(2,2)-C(192,3,1)-C(192,3,1); 2ch-2stream, siam-2stream, siam-2stream-l2.
- *-spp: the last pooling replaced by spatial-pyramid pooling (1, 2, 4 bins), so patches of
  other sizes than 64 go through unchanged (2ch-spp, siam-spp).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

ARCHITECTURES = ("siam", "siam-l2", "pseudo-siam", "2ch", "2ch-2stream", "siam-2stream", "siam-2stream-l2",
                 "2ch-spp", "siam-spp")
PATCH_SIZE = 64


def _branch(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, 96, 7, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
                         nn.Conv2d(96, 192, 5, 1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
                         nn.Conv2d(192, 256, 3, 1), nn.ReLU(inplace=True), nn.Flatten())


def _stream(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, 96, 5, 1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
                         nn.Conv2d(96, 96, 3, 1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
                         nn.Conv2d(96, 192, 3, 1), nn.ReLU(inplace=True),
                         nn.Conv2d(192, 192, 3, 1), nn.ReLU(inplace=True), nn.Flatten())


class SpatialPyramidPool(nn.Module):
    """Max pooling into 1 x 1, 2 x 2 and 4 x 4 bins, concatenated: a fixed length for any input size."""

    def __init__(self, levels: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.adaptive_max_pool2d(x, level).flatten(1) for level in self.levels], dim=1)


def _spp_branch(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, 96, 7, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
                         nn.Conv2d(96, 192, 5, 1), nn.ReLU(inplace=True),
                         nn.Conv2d(192, 256, 3, 1), nn.ReLU(inplace=True), SpatialPyramidPool())


SPP_FEATURES = 256 * (1 + 4 + 16)


def central_surround(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The middle half of each patch at full resolution, and the whole patch at half resolution."""
    size = x.shape[-1]
    quarter = size // 4
    return x[..., quarter: quarter + size // 2, quarter: quarter + size // 2], F.avg_pool2d(x, 2)


class TwoStream(nn.Module):
    """Central and surround streams over one input; their features concatenated."""

    def __init__(self, channels: int):
        super().__init__()
        self.central, self.surround = _stream(channels), _stream(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre, surround = central_surround(x)
        return torch.cat([self.central(centre), self.surround(surround)], dim=1)


STREAM_FEATURES = 2 * 192 * 2 * 2


def _decision(features: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))


class PatchNet(nn.Module):
    """One of ARCHITECTURES for patches of `channels` channels (1 grayscale, 3 colour)."""

    def __init__(self, architecture: str, channels: int = 1):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {architecture!r}: choose one of {', '.join(ARCHITECTURES)}")
        self.architecture, self.channels = architecture, channels
        self.two_channel = architecture.startswith("2ch")
        self.l2 = architecture.endswith("-l2")
        self.shared = architecture != "pseudo-siam"
        if architecture == "2ch-2stream":
            self.trunk, features = TwoStream(2 * channels), STREAM_FEATURES
        elif architecture == "2ch-spp":
            self.trunk, features = _spp_branch(2 * channels), SPP_FEATURES
        elif architecture == "2ch":
            self.trunk, features = _branch(2 * channels), 256
        elif "2stream" in architecture:
            self.trunk, features = TwoStream(channels), STREAM_FEATURES
        elif architecture == "siam-spp":
            self.trunk, features = _spp_branch(channels), SPP_FEATURES
        else:
            self.trunk, features = _branch(channels), 256
        if architecture == "pseudo-siam":
            self.second = _branch(channels)
        self.descriptor_size = features
        if not self.l2:
            self.decision = _decision(features if self.two_channel else 2 * features,
                                      256 if self.two_channel else 512)

    @property
    def has_descriptor(self) -> bool:
        """Siamese models compute a descriptor per patch (reusable across many pairs)."""
        return not self.two_channel

    def describe(self, x: torch.Tensor, second: bool = False) -> torch.Tensor:
        """Descriptor of each patch (siamese models; `second` picks a pseudo-siamese model's other branch)."""
        if self.two_channel:
            raise ValueError(f"{self.architecture} has no per-patch descriptor")
        return self.second(x) if second and not self.shared else self.trunk(x)

    def compare(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Score from two descriptors."""
        if self.l2:
            return -torch.linalg.vector_norm(first - second, dim=1)
        return self.decision(torch.cat([first, second], dim=1)).squeeze(1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.two_channel:
            return self.decision(self.trunk(torch.cat([a, b], dim=1))).squeeze(1)
        return self.compare(self.describe(a), self.describe(b, second=True))


def hinge_loss(model: PatchNet, scores: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The paper's losses, labels in {-1, 1}: hinge max(0, 1 - y o) on the score, or for L2 models
    the hinge embedding loss on the distance d = -score (d for a match, max(0, margin - d) otherwise)."""
    if model.l2:
        distance = -scores
        return torch.where(labels > 0, distance, F.relu(margin - distance)).mean()
    return F.relu(1.0 - labels * scores).mean()
